"""``raftmq dlt replay TOPIC.DLT``: send the records parked in a dead-letter topic back where they came from.

What was replayed is remembered as the committed offsets of the group ``<dlt topic>.replay``, so running it
again sends only what was parked since (client/dead_letter.py).
"""

from __future__ import annotations

import asyncio

import click

from raftmq.cli.common import bootstrap_option, out
from raftmq.client.dead_letter import replay_dead_letters


@click.group("dlt")
def dlt() -> None:
    """Dead-letter topics (<topic>.DLT, written by RetryingHandler after its retries)."""


@dlt.command("replay")
@click.argument("dlt_topic")
@click.option("--to", "to_topic", default=None, help="Send to this topic instead of each record's original one.")
@click.option("--group", "group_id", default=None, help="Progress group [default: <dlt topic>.replay].")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send and commit nothing.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Give up when the replay has not finished after this long.")
@bootstrap_option()
def replay(dlt_topic: str, to_topic: str | None, group_id: str | None, dry_run: bool, timeout_s: float,
           bootstrap: list[str]) -> None:
    """Send the records parked in DLT_TOPIC since the last replay back to their topics."""
    report = asyncio.run(replay_dead_letters(bootstrap, dlt_topic, to_topic=to_topic, group_id=group_id,
                                             dry_run=dry_run, timeout_s=timeout_s))
    verb = "would replay" if dry_run else "replayed"
    skipped = f" ({report.skipped} without dead-letter headers skipped)" if report.skipped else ""
    out().print(f"{verb} {report.replayed} record(s) from {dlt_topic}{skipped}")
