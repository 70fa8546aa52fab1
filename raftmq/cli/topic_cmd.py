"""``raftmq topic create|list|describe|delete``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Group
from rich.table import Table

from raftmq.cli.cluster_cmd import collect, partitions_table
from raftmq.cli.common import (
    RaftMQGroup,
    bootstrap_option,
    err,
    fmt_bytes,
    fmt_duration_ms,
    fmt_int,
    kv_table,
    out,
    safe,
)
from raftmq.client.admin import Admin
from raftmq.client.metadata import TopicInfo
from raftmq.cluster.errors import ConnectionFailed, UnknownTopicOrPartition


@click.group("topic", cls=RaftMQGroup)
def topic() -> None:
    """Create, list, describe and delete topics."""


def _config_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "min_insync_replicas"):
        if key in config:
            value = config[key]
            if key.endswith("_ms"):
                shown = f"{fmt_duration_ms(value)} ({value})"
            elif key.endswith("_bytes"):
                shown = f"{fmt_bytes(value)} ({value})"
            else:
                shown = str(value)
            rows.append((key, shown))
    for key in sorted(set(config) - {k for k, _ in rows}):
        rows.append((key, str(config[key])))
    return rows


@topic.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--replication-factor", "-r", type=click.IntRange(1, 99), default=None,
              help="Replicas per partition [default: the number of brokers].")
@click.option("--retention-ms", type=int, default=None, help="Delete segments older than this (-1: never).")
@click.option("--retention-bytes", type=int, default=None,
              help="Keep at most this much per partition (-1: no limit).")
@click.option("--segment-bytes", type=click.IntRange(1), default=None, help="Roll log segments at this size.")
@click.option("--segment-ms", type=click.IntRange(1), default=None, help="Roll log segments after this long.")
@click.option("--min-insync-replicas", type=click.IntRange(1), default=None,
              help="acks=all needs this many in-sync replicas [broker default: 2].")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every partition has a leader.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 300), default=20.0, show_default=True)
@bootstrap_option()
def create(name: str, partitions: int, replication_factor: int | None, retention_ms: int | None,
           retention_bytes: int | None, segment_bytes: int | None, segment_ms: int | None,
           min_insync_replicas: int | None, wait: bool, timeout_s: float, bootstrap: list[str]) -> None:
    """Create topic NAME."""
    config = {k: v for k, v in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes),
                                ("segment_bytes", segment_bytes), ("segment_ms", segment_ms),
                                ("min_insync_replicas", min_insync_replicas)) if v is not None}

    async def run() -> TopicInfo:
        async with Admin(bootstrap) as admin:
            info = await admin.create_topic(name, partitions, replication_factor, config, timeout_s=timeout_s)
            if wait:
                with err().status(f"waiting for leaders of {partitions} partition(s) ..."):
                    info = await admin.wait_for_topic(name, timeout_s=timeout_s)
            return info

    info = asyncio.run(run())
    console = out()
    console.print(f"[green]created topic {safe(info.name)}[/]: {info.partition_count} partition(s), "
                  f"replication factor {info.replication_factor}")
    console.print(_partition_summary(info))


def _partition_summary(info: TopicInfo) -> Table:
    table = Table(title_justify="left")
    table.add_column("partition", justify="right")
    table.add_column("leader")
    table.add_column("replicas")
    for part in info.partitions:
        leader = str(part.leader_id) if part.leader_id is not None else "[yellow]electing[/]"
        table.add_row(str(part.partition), leader, ",".join(map(str, part.replicas)))
    return table


@topic.command("list")
@bootstrap_option()
def list_topics(bootstrap: list[str]) -> None:
    """Every topic, with partitions, replication and the main settings."""

    async def run() -> list[TopicInfo]:
        async with Admin(bootstrap) as admin:
            return await admin.list_topics()

    topics = asyncio.run(run())
    console = out()
    if not topics:
        console.print("no topics (create one with: raftmq topic create NAME --partitions 3)")
        return
    table = Table(title=f"{len(topics)} topic(s)", title_justify="left")
    for column in ("name", "partitions", "replication", "min ISR", "retention", "retention bytes",
                   "leaders known"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for info in topics:
        with_leader = sum(1 for p in info.partitions if p.leader_id is not None)
        leaders = f"{with_leader}/{info.partition_count}"
        if with_leader < info.partition_count:
            leaders = f"[red]{leaders}[/]"
        table.add_row(safe(info.name), str(info.partition_count), fmt_int(info.replication_factor),
                      fmt_int(info.config.get("min_insync_replicas")),
                      fmt_duration_ms(info.config.get("retention_ms")),
                      fmt_bytes(info.config.get("retention_bytes")), leaders)
    console.print(table)


@topic.command("describe")
@click.argument("name")
@bootstrap_option()
def describe(name: str, bootstrap: list[str]) -> None:
    """Settings of topic NAME and each partition as its leader reports it."""
    snapshot = asyncio.run(collect(bootstrap))
    if not snapshot.reachable:
        raise ConnectionFailed(f"no broker answered at {', '.join(bootstrap)}", sent=False)
    raw = snapshot.topics.get(name)
    if raw is None:
        raise UnknownTopicOrPartition(f"topic {name!r} does not exist", topic=name)
    rows = snapshot.partitions.get(name, [])
    facts = [("topic id", str(raw.get("topic_id", "-"))), ("partitions", str(len(rows))),
             ("replication factor", str(raw.get("replication_factor", "-")))]
    config = raw["config"] if isinstance(raw.get("config"), dict) else {}
    out().print(Group(kv_table(f"topic {name}", facts + _config_rows(config)), "",
                      partitions_table(name, rows, title="partitions")))


@topic.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@bootstrap_option()
def delete(name: str, yes: bool, bootstrap: list[str]) -> None:
    """Delete topic NAME and all its records."""
    if not yes:
        click.confirm(f"Delete topic {name!r} and all its records?", abort=True, err=True)

    async def run() -> None:
        async with Admin(bootstrap) as admin:
            await admin.delete_topic(name)

    asyncio.run(run())
    out().print(f"[green]deleted topic {safe(name)}[/]")
