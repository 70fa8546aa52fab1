"""``raftmq group list | describe | reset-offsets``: consumer groups as tables.

``list`` shows each group's state, members and total lag. ``describe`` shows the members (id, instance,
client, epoch, state, what each owns) and, per partition of the subscribed topics, the owner, the committed
offset, the log end and the lag (log end - committed; a partition without a committed offset counts its
whole log as lag), with the total. ``reset-offsets`` shows the offsets it would commit and commits them
only with ``--execute``; the group must have no members.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Group
from rich.table import Table

from raftmq.cli.common import bootstrap_option, out, safe
from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.types import TopicPartition
from raftmq.cluster.errors import RaftMQError


@click.group("group")
def group() -> None:
    """Consumer groups: members, assignments, committed offsets and lag."""


@group.command("list")
@bootstrap_option()
def list_groups(bootstrap: list[str]) -> None:
    """Every consumer group with its state, member count and total lag."""
    groups = asyncio.run(group_summaries(bootstrap))
    if not groups:
        out().print("no consumer groups (start one with: raftmq consume TOPIC --group NAME)")
        return
    out().print(groups_table(groups))


async def group_summaries(bootstrap: Sequence[str]) -> list[tuple[dict[str, Any], int | None]]:
    """Every group (``group_id``, ``state``, ``members``) with its total lag (None: its coordinator did not
    answer, e.g. it is moving)."""
    async with Admin(list(bootstrap)) as admin:
        rows = []
        for item in await admin.list_groups():
            try:
                _rows, total = await _lag_rows(list(bootstrap), await admin.describe_group(str(item["group_id"])))
            except RaftMQError:
                total = None
            rows.append((item, total))
        return rows


def groups_table(groups: Sequence[tuple[dict[str, Any], int | None]]) -> Table:
    table = Table(title=f"{len(groups)} consumer group(s)", title_justify="left")
    for column in ("group", "state", "members", "lag"):
        table.add_column(column, justify="left" if column in ("group", "state") else "right")
    for item, total in groups:
        table.add_row(safe(str(item["group_id"])), str(item["state"]), str(item["members"]),
                      "?" if total is None else f"{total:,}")
    return table


async def _lag_rows(bootstrap: list[str], description: dict[str, Any]
                    ) -> tuple[list[tuple[TopicPartition, str, int | None, int]], int]:
    """(partition, owner, committed, log end) for the group's partitions, and the total lag."""
    committed = {TopicPartition(o["topic"], o["partition"]): int(o["offset"]) for o in description["offsets"]}
    owners: dict[TopicPartition, str] = {}
    for member in description["members"]:
        label = member.get("instance_id") or member["member_id"][:12]
        for topic, partition in member["assigned"]:
            owners[TopicPartition(topic, partition)] = label
        for topic, partition in member["revoking"]:
            owners[TopicPartition(topic, partition)] = f"{label} (revoking)"
    partitions = sorted(set(committed) | set(owners))
    async with Consumer(bootstrap) as consumer:
        ends = await consumer.end_offsets(partitions) if partitions else {}
    rows = [(tp, owners.get(tp, "-"), committed.get(tp), ends[tp]) for tp in partitions]
    total = sum(end - (done if done is not None else 0) for _tp, _owner, done, end in rows)
    return rows, total


@group.command("describe")
@click.argument("group_id")
@bootstrap_option()
def describe(group_id: str, bootstrap: list[str]) -> None:
    """Members, assignment, committed offsets, log end and lag of GROUP_ID."""

    async def run() -> tuple[dict[str, Any], list[tuple[TopicPartition, str, int | None, int]], int]:
        async with Admin(bootstrap) as admin:
            description = await admin.describe_group(group_id)
        rows, total = await _lag_rows(bootstrap, description)
        return description, rows, total

    description, rows, total = asyncio.run(run())
    members = Table(title=f"group {safe(group_id)}: {description['state']}, epoch {description['group_epoch']}, "
                          f"coordinator broker {description['coordinator_id']}", title_justify="left")
    for column in ("member", "instance", "client", "epoch", "state", "owns", "subscription"):
        members.add_column(column)
    for member in description["members"]:
        subscription = member["subscription"]
        subscribed = ", ".join(subscription["topics"] + ([f"/{subscription['pattern']}/"]
                                                         if subscription.get("pattern") else []))
        members.add_row(member["member_id"][:12], str(member.get("instance_id") or "-"),
                        safe(str(member.get("client_id") or "-")), str(member["member_epoch"]), str(member["state"]),
                        str(len(member["assigned"]) + len(member["revoking"])), safe(subscribed))
    partitions = Table(title=f"partitions (total lag {total:,})", title_justify="left")
    for column in ("topic", "partition", "owner", "committed", "log end", "lag"):
        partitions.add_column(column, justify="left" if column in ("topic", "owner") else "right")
    for tp, owner, committed, end in rows:
        lag = end - (committed if committed is not None else 0)
        partitions.add_row(safe(tp.topic), str(tp.partition), owner, "-" if committed is None else f"{committed:,}",
                           f"{end:,}", f"{lag:,}")
    out().print(Group(members, "", partitions))


@group.command("reset-offsets")
@click.argument("group_id")
@click.option("--topic", "topic", required=True, help="The topic whose offsets are reset (every partition).")
@click.option("--to-earliest", "to", flag_value="earliest", help="The log start of each partition.")
@click.option("--to-latest", "to", flag_value="latest", help="The log end of each partition (skip the backlog).")
@click.option("--to-offset", "offset", type=click.IntRange(0), default=None, help="This offset in each partition.")
@click.option("--to-time", "time_ms", type=click.IntRange(0), default=None,
              help="The first record at or after this time (ms since the epoch).")
@click.option("--execute", is_flag=True, help="Commit the offsets (without it: only show them).")
@bootstrap_option()
def reset_offsets(group_id: str, topic: str, to: str | None, offset: int | None, time_ms: int | None,
                  execute: bool, bootstrap: list[str]) -> None:
    """Set GROUP_ID's committed offsets of --topic (dry run unless --execute; the group must be empty)."""
    if sum(x is not None for x in (to, offset, time_ms)) != 1:
        raise click.UsageError("give exactly one of --to-earliest, --to-latest, --to-offset, --to-time")

    async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int], bool]:
        async with Admin(bootstrap) as admin:
            info = await admin.describe_topic(topic)
            partitions = [TopicPartition(topic, p) for p in range(info.partition_count)]
            async with Consumer(bootstrap) as consumer:
                if to == "earliest":
                    wanted = await consumer.beginning_offsets(partitions)
                elif to == "latest" or time_ms is not None:
                    wanted = await consumer.end_offsets(partitions)
                    if time_ms is not None:  # no record that late: the log end
                        found = await consumer.offsets_for_times(dict.fromkeys(partitions, time_ms))
                        wanted = {tp: at if (at := found[tp]) is not None else wanted[tp] for tp in partitions}
                else:
                    assert offset is not None
                    wanted = dict.fromkeys(partitions, offset)
            current = await admin.group_offsets(group_id)
            if execute:  # refused with UNKNOWN_MEMBER_ID while the group has members
                await admin.commit_group_offsets(group_id, wanted, metadata="reset-offsets")
            return wanted, current, execute

    wanted, current, executed = asyncio.run(run())
    table = Table(title=f"group {safe(group_id)}: offsets of {safe(topic)} "
                        f"{'committed' if executed else 'to commit (dry run: add --execute)'}", title_justify="left")
    for column in ("partition", "committed now", "new offset"):
        table.add_column(column, justify="right")
    for tp in sorted(wanted):
        table.add_row(str(tp.partition), str(current.get(tp, "-")), f"{wanted[tp]:,}")
    out().print(table)


@group.command("dead-letter")
@click.argument("group_id")
@click.option("--exchange", default=None, help="Publish the share group's dead records to this exchange.")
@click.option("--routing-key", default="", help="Routing key of those publishes [the record's own].")
@click.option("--clear", is_flag=True, help="Name no dead-letter exchange for the group any more.")
@bootstrap_option()
def dead_letter(group_id: str, exchange: str | None, routing_key: str, clear: bool, bootstrap: list[str]) -> None:
    """Show, set (--exchange) or clear (--clear) the dead-letter exchange of share group GROUP_ID: where its
    rejected records, records over the delivery limit and expired records are published."""
    if clear and exchange is not None:
        raise click.UsageError("give --exchange or --clear, not both")

    async def run() -> dict[str, Any]:
        async with Admin(bootstrap) as admin:
            if exchange is None and not clear:
                return await admin.share_group_dead_letter(group_id)
            return await admin.set_share_group_dead_letter(group_id, exchange, routing_key)

    answer = asyncio.run(run())
    if answer.get("dead_letter_exchange") is None:
        out().print(f"share group {safe(group_id)}: no dead-letter exchange")
        return
    key = answer.get("dead_letter_routing_key") or "(the record's own)"
    out().print(f"share group {safe(group_id)}: dead letters to exchange {safe(answer['dead_letter_exchange'])}, "
                f"routing key {safe(key)}")
