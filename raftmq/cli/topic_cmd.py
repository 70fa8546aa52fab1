"""``raftmq topic create|list|describe|alter|delete``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import click
from rich.console import Group
from rich.table import Table

from raftmq.cli.cluster_moves import DURATION, EXIT_INTERRUPTED, fmt_timeout, watch
from raftmq.cli.cluster_status import collect, partitions_table
from raftmq.cli.common import (
    CommandFailed,
    ConfigProblem,
    RaftMQGroup,
    bootstrap_option,
    err,
    fmt_bytes,
    fmt_duration_ms,
    fmt_ids,
    fmt_int,
    fmt_seconds,
    kv_table,
    out,
    safe,
)
from raftmq.client.admin import Admin
from raftmq.client.metadata import ClusterMetadata, TopicInfo
from raftmq.cluster import limits
from raftmq.cluster.errors import ClientTimeout, ConnectionFailed, UnknownTopicOrPartition

# `topic create --wait`: at least this long, longer for big topics; and a row per partition up to this many.
_CREATE_WAIT_S_MIN = 20.0
_CREATE_WAIT_S_PER_PARTITION = 0.1
_PARTITION_ROWS_MAX = 64

# How often `topic alter --wait` asks the controller (a poll interval; tests lower it).
POLL_INTERVAL_S = 0.5


@click.group("topic", cls=RaftMQGroup)
def topic() -> None:
    """Create, list, describe and delete topics."""


def _config_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    unset = {k for k, v in config.items() if v is None or v == ""}  # no dead-letter exchange, say
    for key in ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "min_insync_replicas",
                "message_ttl_ms", "dead_letter_exchange", "dead_letter_routing_key"):
        if key in config and key not in unset:
            value = config[key]
            if key == "message_ttl_ms" and value == -1:
                shown = "never (-1)"
            elif key.endswith("_ms"):
                shown = f"{fmt_duration_ms(value)} ({value})"
            elif key.endswith("_bytes"):
                shown = f"{fmt_bytes(value)} ({value})"
            else:
                shown = safe(str(value))
            rows.append((key, shown))
    for key in sorted(set(config) - {k for k, _ in rows} - unset):
        rows.append((safe(key), safe(str(config[key]))))
    return rows


@topic.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(1, limits.partitions_per_topic_max), default=1,
              show_default=True)
@click.option("--replication-factor", "-r", type=click.IntRange(1, 99), default=None,
              help="Replicas per partition [default: the number of brokers].")
@click.option("--retention-ms", type=int, default=None, help="Delete segments older than this (-1: never).")
@click.option("--retention-bytes", type=int, default=None,
              help="Keep at most this much per partition (-1: no limit).")
@click.option("--segment-bytes", type=click.IntRange(1), default=None, help="Roll log segments at this size.")
@click.option("--segment-ms", type=click.IntRange(1), default=None, help="Roll log segments after this long.")
@click.option("--min-insync-replicas", type=click.IntRange(1), default=None,
              help="acks=all needs this many in-sync replicas [broker default: 2].")
@click.option("--message-ttl-ms", type=click.IntRange(1), default=None,
              help="Share-group consumers do not get records older than this; they are dead-lettered [never].")
@click.option("--dead-letter-exchange", default=None,
              help="Exchange this topic's rejected, over-delivered and expired records are published to.")
@click.option("--dead-letter-routing-key", default=None,
              help="Routing key of those publishes [the record's own].")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every partition has a leader.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=None,
              help=f"Seconds to wait for the leaders [{_CREATE_WAIT_S_MIN:g}, or "
                   f"{_CREATE_WAIT_S_PER_PARTITION:g} per partition if more].")
@bootstrap_option()
def create(name: str, partitions: int, replication_factor: int | None, retention_ms: int | None,
           retention_bytes: int | None, segment_bytes: int | None, segment_ms: int | None,
           min_insync_replicas: int | None, message_ttl_ms: int | None, dead_letter_exchange: str | None,
           dead_letter_routing_key: str | None, wait: bool, timeout_s: float | None, bootstrap: list[str]) -> None:
    """Create topic NAME."""
    if timeout_s is None:
        # Each broker opens its replicas one after another (a few hundred a minute on a small machine), so a
        # topic of thousands of partitions takes minutes to have every leader.
        timeout_s = max(_CREATE_WAIT_S_MIN, _CREATE_WAIT_S_PER_PARTITION * partitions)
    wait_s = timeout_s
    config = {k: v for k, v in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes),
                                ("segment_bytes", segment_bytes), ("segment_ms", segment_ms),
                                ("min_insync_replicas", min_insync_replicas), ("message_ttl_ms", message_ttl_ms),
                                ("dead_letter_exchange", dead_letter_exchange),
                                ("dead_letter_routing_key", dead_letter_routing_key)) if v is not None}

    async def run() -> TopicInfo:
        async with Admin(bootstrap) as admin:
            info = await admin.create_topic(name, partitions, replication_factor, config, timeout_s=wait_s)
            if wait:
                started = time.monotonic()
                with err().status(f"waiting for leaders of {partitions} partition(s) ...") as status:

                    def progress(led: int, total: int) -> None:
                        status.update(f"waiting for leaders: {led:,} of {total:,} partition(s) led "
                                      f"[dim]({fmt_seconds(time.monotonic() - started)} of at most "
                                      f"{fmt_timeout(wait_s)})[/]")

                    info = await admin.wait_for_topic(name, timeout_s=wait_s, on_progress=progress)
            return info

    info = asyncio.run(run())
    console = out()
    console.print(f"[green]created topic {safe(info.name)}[/]: {info.partition_count} partition(s), "
                  f"replication factor {info.replication_factor}")
    console.print(_partition_summary(info))


def _partition_summary(info: TopicInfo) -> Table | Group:
    if len(info.partitions) > _PARTITION_ROWS_MAX:
        return _leader_summary(info)
    table = Table(title_justify="left")
    table.add_column("partition", justify="right")
    table.add_column("leader")
    table.add_column("replicas")
    for part in info.partitions:
        leader = str(part.leader_id) if part.leader_id is not None else "[yellow]electing[/]"
        table.add_row(str(part.partition), leader, ",".join(map(str, part.replicas)))
    return table


def _leader_summary(info: TopicInfo) -> Group:
    """Too many partitions for a row each: how many each broker leads and hosts (`cluster status` lists them)."""
    table = Table()
    for column in ("broker", "leads", "hosts"):
        table.add_column(column, justify="right")
    brokers = sorted({b for p in info.partitions for b in p.replicas})
    for broker in brokers:
        table.add_row(str(broker), f"{sum(1 for p in info.partitions if p.leader_id == broker):,}",
                      f"{sum(1 for p in info.partitions if broker in p.replicas):,}")
    electing = sum(1 for p in info.partitions if p.leader_id is None)
    if electing:
        table.add_row("[yellow]electing[/]", f"{electing:,}", "")
    return Group(f"{len(info.partitions):,} partitions, by broker (`raftmq cluster status` lists each partition):",
                 table)


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


def _alter_headline(name: str, timeout_s: float) -> Callable[[ClusterMetadata, float], str]:
    def headline(meta: ClusterMetadata, elapsed_s: float) -> str:
        info = meta.topic(name)
        running = sum(1 for m in meta.moves if m.topic == name)
        shape = (f"{info.partition_count} partition(s), replica sets of "
                 f"{fmt_ids(sorted({len(p.replicas) for p in info.partitions}))}") if info is not None else "?"
        return (f"topic {safe(name)}: {shape}; [bold]{running}[/] move(s) running "
                f"[dim]({fmt_seconds(elapsed_s)} of at most {fmt_timeout(timeout_s)})[/]")
    return headline


async def _alter(bootstrap: list[str], name: str, partitions: int | None, replication_factor: int | None,
                 wait: bool, timeout_s: float) -> tuple[TopicInfo, ClusterMetadata | None]:
    async with Admin(bootstrap) as admin:
        info = await admin.alter_topic(name, partitions, replication_factor)
        if not wait:
            return info, None

        def waiter(show: Callable[[ClusterMetadata], None]) -> Awaitable[ClusterMetadata]:
            return admin.wait_for_moves(name, timeout_s=timeout_s, partitions=partitions,
                                        replication_factor=replication_factor, on_progress=show,
                                        poll_interval_s=POLL_INTERVAL_S)

        try:
            final = await watch(waiter, _alter_headline(name, timeout_s), lambda m: m.topic == name,
                                f"moves of topic {name}")
        except ClientTimeout as exc:
            raise CommandFailed("ALTER_TIMEOUT", f"the moves of topic {name!r} did not end within "
                                f"{fmt_timeout(timeout_s)}: {exc.message}",
                                "they go on: watch them with raftmq cluster status") from None
        if final is None:
            err().print(f"[yellow]stopped waiting; the moves of topic {safe(name)} go on[/] "
                        "(raftmq cluster status shows them)")
            raise click.exceptions.Exit(EXIT_INTERRUPTED)
        return info, final


@topic.command("alter")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(1, limits.partitions_per_topic_max), default=None,
              help="New partition count (can only grow).")
@click.option("--replication-factor", "-r", type=click.IntRange(1, 99), default=None,
              help="New replicas per partition (reached by moving replicas).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait (showing progress) until the topic's moves end.")
@click.option("--timeout", "timeout_s", type=DURATION, default="10m", show_default=True,
              help="How long to wait (e.g. 90s, 10m); the moves go on after it.")
@bootstrap_option()
def alter(name: str, partitions: int | None, replication_factor: int | None, wait: bool, timeout_s: float,
          bootstrap: list[str]) -> None:
    """Add partitions to topic NAME or change its replication factor."""
    if partitions is None and replication_factor is None:
        raise ConfigProblem("nothing to alter", "give --partitions N and/or --replication-factor R")
    started = time.monotonic()
    info, final = asyncio.run(_alter(bootstrap, name, partitions, replication_factor, wait, timeout_s))
    asked = ", ".join(part for part in (f"{partitions} partitions" if partitions is not None else "",
                                        f"replication factor {replication_factor}"
                                        if replication_factor is not None else "") if part)
    console = out()
    if final is None:
        console.print(f"[green]topic {safe(name)} altered[/] ({asked}); moves may still run: "
                      "raftmq cluster status shows them")
        return
    done = final.topic(name) or info
    console.print(f"[green]topic {safe(name)} altered[/] ({asked}) and its moves ended in "
                  f"{fmt_seconds(time.monotonic() - started)}")
    console.print(_partition_summary(done))


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
