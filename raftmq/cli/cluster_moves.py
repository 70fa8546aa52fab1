"""``raftmq cluster drain`` and the progress view shared with ``raftmq topic alter``.

Both ask the controller for a change (docs/api.md "Brokers", "Topics"), then, unless ``--no-wait``, poll the
controller's metadata (client/admin.py ``wait_for_drain`` / ``wait_for_moves``: only the controller knows
how far each move has caught up) and show the moves until the change is done or ``--timeout`` passes.
Ctrl-C stops the waiting, never the change: the controller goes on moving replicas.

Exit codes: 0 done (or asked, with --no-wait); 1 refused by the cluster, cancelled by someone else while
waiting, or not done within --timeout; 2 usage; 130 Ctrl-C (the change goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from raftmq.cli.cluster_status import moves_table
from raftmq.cli.common import (
    BrokerFailure,
    CommandFailed,
    bootstrap_option,
    err,
    fmt_seconds,
    out,
    safe,
    stop_on_signals,
)
from raftmq.client.admin import Admin, hosted_partitions
from raftmq.client.metadata import ClusterMetadata, MoveInfo
from raftmq.cluster.errors import ClientTimeout, RaftMQError

# How often the progress view asks the controller (a poll interval; tests lower it).
POLL_INTERVAL_S = 0.5
# Ctrl-C: the shell convention for "ended by SIGINT"; the change asked for goes on.
EXIT_INTERRUPTED: Final = 130
# How often the progress view redraws (the data changes at most once per poll).
_REFRESH_PER_SECOND: Final = 4
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT_S: Final = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


class Duration(click.ParamType):
    """``90``, ``90s``, ``10m``, ``1.5h``, ``500ms`` -> seconds (a float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration: use e.g. 90s, 10m, 1h", param, ctx)
        return float(match.group(1)) * _UNIT_S[match.group(2)]


DURATION: Final = Duration()


def fmt_timeout(seconds: float) -> str:
    return fmt_seconds(seconds) if seconds < 60 else f"{seconds / 60:g} min"


# --- the progress view ------------------------------------------------------------------------------------


async def until_stopped(work: Awaitable[ClusterMetadata], stop: asyncio.Event) -> ClusterMetadata | None:
    """``work``'s result, or None when ``stop`` is set first (``work`` is then cancelled). ``work`` carries
    its own deadline (the waits of client/admin.py raise ClientTimeout)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


Waiter = Callable[[Callable[[ClusterMetadata], None]], Awaitable[ClusterMetadata]]


async def watch(wait: Waiter, headline: Callable[[ClusterMetadata, float], str],
                relevant: Callable[[MoveInfo], bool], title: str) -> ClusterMetadata | None:
    """Run ``wait(on_progress)`` with a live view on stderr (``headline`` and the ``relevant`` moves) until
    it returns. None when Ctrl-C/SIGTERM stopped the waiting."""
    started = time.monotonic()
    try:
        return await _watch_live(wait, headline, relevant, title, started)
    finally:
        if not err().is_terminal:
            err().print()  # off a terminal, Live leaves its last frame without a line end


async def _watch_live(wait: Waiter, headline: Callable[[ClusterMetadata, float], str],
                      relevant: Callable[[MoveInfo], bool], title: str, started: float) -> ClusterMetadata | None:
    with Live(Text("asking the controller ..."), console=err(), refresh_per_second=_REFRESH_PER_SECOND) as live:

        def show(meta: ClusterMetadata) -> None:
            moves = [m for m in meta.moves if relevant(m)]
            parts: list[Any] = [Text.from_markup(headline(meta, time.monotonic() - started))]
            if moves:
                parts.append(moves_table(moves, from_controller=meta.from_controller, title=title))
            live.update(Group(*parts))

        async with stop_on_signals() as stop:
            return await until_stopped(wait(show), stop)


# --- cluster drain -----------------------------------------------------------------------------------------


def _drain_headline(broker_id: int, timeout_s: float) -> Callable[[ClusterMetadata, float], str]:
    def headline(meta: ClusterMetadata, elapsed_s: float) -> str:
        broker = meta.broker(broker_id)
        hosted = len(hosted_partitions(meta, broker_id))
        state = broker.state if broker is not None else "not listed"
        running = sum(1 for m in meta.moves if m.involves(broker_id))
        return (f"broker {broker_id} ({state}): [bold]{hosted}[/] replica(s) left, {running} move(s) running "
                f"[dim]({fmt_seconds(elapsed_s)} of at most {fmt_timeout(timeout_s)})[/]")
    return headline


async def _drain(bootstrap: list[str], broker_id: int, wait: bool, timeout_s: float) -> ClusterMetadata | None:
    async with Admin(bootstrap) as admin:
        try:
            broker = await admin.drain_broker(broker_id)
        except RaftMQError as exc:
            raise BrokerFailure(exc, context=f"the drain of broker {broker_id} was refused") from exc
        out().print(f"broker {broker_id} is [yellow]{safe(broker.state)}[/]: the controller moves its replicas off "
                    "(a few at a time)")
        if not wait:
            return None

        def waiter(show: Callable[[ClusterMetadata], None]) -> Awaitable[ClusterMetadata]:
            return admin.wait_for_drain(broker_id, timeout_s=timeout_s, on_progress=show,
                                        poll_interval_s=POLL_INTERVAL_S)

        try:
            final = await watch(waiter, _drain_headline(broker_id, timeout_s), lambda m: m.involves(broker_id),
                                f"moves off broker {broker_id}")
        except ClientTimeout as exc:
            raise CommandFailed("DRAIN_TIMEOUT", f"broker {broker_id} is not drained after "
                                f"{fmt_timeout(timeout_s)}: {exc.message}",
                                f"the drain goes on: watch it (raftmq cluster status), wait again (raftmq cluster "
                                f"drain {broker_id}: asking again is safe) or cancel it (raftmq cluster drain "
                                f"{broker_id} --cancel)") from None
        if final is None:
            err().print(f"[yellow]stopped waiting; the drain of broker {broker_id} goes on.[/] Cancel it with: "
                        f"raftmq cluster drain {broker_id} --cancel")
            raise click.exceptions.Exit(EXIT_INTERRUPTED)
        return final


def _report_drained(final: ClusterMetadata, broker_id: int, took_s: float) -> None:
    broker = final.broker(broker_id)
    if broker is not None and broker.state == "alive":
        raise CommandFailed("DRAIN_CANCELLED", f"broker {broker_id} is alive again: its drain was cancelled "
                            "while this command waited", f"drain it again: raftmq cluster drain {broker_id}")
    out().print(f"[green]broker {broker_id} hosts no replicas[/] (drained in {fmt_seconds(took_s)}): it can now be "
                "stopped; once stopped it shows as removed in raftmq cluster status")


def _cancel(bootstrap: list[str], broker_id: int) -> None:
    async def run() -> None:
        async with Admin(bootstrap) as admin:
            await admin.cancel_drain(broker_id)

    try:
        asyncio.run(run())
    except RaftMQError as exc:
        raise BrokerFailure(exc, context=f"cancelling the drain of broker {broker_id}") from exc
    out().print(f"[green]the drain of broker {broker_id} is cancelled[/]: the broker is alive again (moves that "
                "already started finish; raftmq cluster status shows them)")


@click.command("drain")
@click.argument("broker_id", metavar="BROKER", type=click.IntRange(0))
@click.option("--cancel", is_flag=True, help="Cancel the drain: the broker is alive again.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait (showing progress) until the broker hosts nothing.")
@click.option("--timeout", "timeout_s", type=DURATION, default="10m", show_default=True,
              help="How long to wait (e.g. 90s, 10m, 1h); the drain goes on after it.")
@bootstrap_option()
def drain(broker_id: int, cancel: bool, wait: bool, timeout_s: float, bootstrap: list[str]) -> None:
    """Move every replica off broker BROKER so it can be stopped for good.

    Refused (NOT_ENOUGH_BROKERS) when the other live brokers cannot hold its replicas. Ctrl-C stops the
    waiting, not the drain: cancel it with --cancel.
    """
    if cancel:
        _cancel(bootstrap, broker_id)
        return
    started = time.monotonic()
    final = asyncio.run(_drain(bootstrap, broker_id, wait, timeout_s))
    if final is None:
        out().print(f"watch it with: raftmq cluster status (or raftmq cluster drain {broker_id} to wait)")
        return
    _report_drained(final, broker_id, time.monotonic() - started)
