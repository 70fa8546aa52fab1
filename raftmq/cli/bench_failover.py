"""``raftmq bench failover``: per-partition time from a leader's SIGKILL to the first acks=all write that
another leader acknowledged (issue 10's failover figure).

A fresh local cluster hosts N partitions (RF 3). One acks=all producer (linger 0) writes to every partition
in turn at a bounded total rate; after the warm-up the broker that leads the most partitions (about a third
once leaders are balanced) is killed with SIGKILL. Every delivery report is timestamped on arrival; for
each partition the killed broker led, the failover time is the first successful report after the kill
that names another broker. The resolution per partition is about partitions / rate seconds, reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raftmq.cli.bench import machine_facts
from raftmq.cli.bench_cluster import create_topics, fresh_cluster, leaders, topic_names, wait_for_leaders
from raftmq.cli.bench_stats import Delivery, PartitionKey, failover_summary, failover_times
from raftmq.cli.common import CommandFailed, out
from raftmq.client.admin import Admin
from raftmq.client.producer import Producer
from raftmq.client.types import DeliveryReport
from raftmq.cluster.errors import RaftMQError

if TYPE_CHECKING:
    from raftmq.deploy.local_cluster import LocalCluster

_READY_TIMEOUT_S = 60.0
# Each record's value: small, the figure is about leadership, not bytes.
_VALUE = b"raftmq-failover-bench-" * 4
# Sends resolve within the delivery deadline; the flush after the load gets that plus a little.
_DELIVERY_TIMEOUT_MS = 30_000
_FLUSH_GRACE_S = 5.0
# The sender yields to the event loop at least this often when it is behind schedule.
_YIELD_EVERY = 64
_TICK_S = 0.25
# After the kill the survivors' metadata is polled this often to see when each partition has a new leader:
# the resolution of the "new leader known" figure, at a cost of a few small requests per second.
_LEADER_WATCH_S = 0.05


@dataclass
class _Load:
    """The producer's schedule and what came back."""

    topics: list[tuple[str, int]]
    rate: float
    seconds: float
    deliveries: list[Delivery] = field(default_factory=list)
    leaders_seen: list[Delivery] = field(default_factory=list)  # metadata polls after the kill
    sent: int = 0
    ok: int = 0

    @property
    def keys(self) -> list[PartitionKey]:
        return [(name, p) for name, count in self.topics for p in range(count)]

    def on_delivery(self, report: DeliveryReport) -> None:
        self.deliveries.append(Delivery(time.monotonic(), (report.topic, report.partition), report.ok,
                                        report.leader_id))
        self.ok += report.ok


async def _send_load(producer: Producer, load: _Load, started: float) -> None:
    """Record i is due at started + i / rate, to partition i mod N: every partition at rate / N."""
    total, keys = int(load.rate * load.seconds), load.keys
    for index in range(total):
        delay = started + index / load.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the rate schedule, not a synchronisation
        elif index % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
        topic, partition = keys[index % len(keys)]
        await producer.send(topic, _VALUE, partition=partition, on_delivery=load.on_delivery)
        load.sent += 1


async def _progress_until(load: _Load, started: float, until: float, label: str, progress: Progress,
                          task: Any) -> None:
    """Redraw the progress line until ``until`` (monotonic), the schedule's own clock."""
    while (now := time.monotonic()) < until:
        progress.update(task, completed=now - started, description=f"{label}: sent {load.sent:,}, ok {load.ok:,}")
        await asyncio.sleep(min(_TICK_S, until - now))


def _victim(led: dict[PartitionKey, int | None]) -> tuple[int, list[PartitionKey]]:
    """The broker leading the most partitions, and those partitions."""
    counts = collections.Counter(leader for leader in led.values() if leader is not None)
    if not counts:
        raise CommandFailed("NO_LEADER", "no partition has a leader to kill")
    victim = min(counts, key=lambda broker: (-counts[broker], broker))
    return victim, sorted(key for key, leader in led.items() if leader == victim)


async def _kill_at(cluster: LocalCluster, load: _Load, started: float, warmup_s: float,
                   progress: Progress, task: Any) -> tuple[int, list[PartitionKey], float]:
    """After the warm-up, SIGKILL the broker that leads the most partitions; returns it, its partitions
    and the kill time (taken just before the signal)."""
    await _progress_until(load, started, started + warmup_s, "warm-up", progress, task)
    async with Admin(cluster.urls) as admin:
        led = leaders(await admin.metadata(), load.topics)
    victim, victim_keys = _victim(led)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.kill, victim)  # SIGKILL, then reaps (the loop keeps timestamping)
    return victim, victim_keys, killed_at


async def _watch_leaders(urls: list[str], load: _Load, until: float) -> None:
    """From the kill to ``until``: poll the surviving brokers' metadata and record each partition's leader
    as a Delivery (ok = a leader is known). This splits a failover into the brokers' election and the
    client's move to the new leader."""
    async with Admin(urls) as admin:
        while time.monotonic() < until:
            for url in urls:
                with contextlib.suppress(RaftMQError):
                    metadata = await admin.metadata(url=url, timeout_s=max(0.1, until - time.monotonic()))
                    now = time.monotonic()
                    load.leaders_seen.extend(Delivery(now, key, leader is not None, leader)
                                             for key, leader in leaders(metadata, load.topics).items())
            await asyncio.sleep(_LEADER_WATCH_S)  # poll interval, bounded by ``until``


async def _drive(cluster: LocalCluster, load: _Load, warmup_s: float,
                 retry_backoff_ms: int) -> tuple[int, list[PartitionKey], float]:
    async with Producer(cluster.urls, acks="all", linger_ms=0, retry_backoff_ms=retry_backoff_ms,
                        delivery_timeout_ms=_DELIVERY_TIMEOUT_MS) as producer:
        started = time.monotonic()
        sender = asyncio.create_task(_send_load(producer, load, started))
        watcher: asyncio.Task[None] | None = None
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=out(),
                      transient=True) as progress:
            task = progress.add_task("load", total=load.seconds)
            try:
                victim, victim_keys, killed_at = await _kill_at(cluster, load, started, warmup_s, progress, task)
                survivors = [node.url for broker_id, node in cluster.nodes.items() if broker_id != victim]
                watcher = asyncio.create_task(_watch_leaders(survivors, load, started + load.seconds))
                await _progress_until(load, started, started + load.seconds, f"broker {victim} killed", progress,
                                      task)
                await asyncio.wait_for(sender, timeout=_FLUSH_GRACE_S)
                await asyncio.wait_for(watcher, timeout=_FLUSH_GRACE_S)
            finally:
                for pending in (sender, watcher):
                    if pending is not None and not pending.done():
                        pending.cancel()
        with contextlib.suppress(RaftMQError):
            await producer.flush(timeout_s=_DELIVERY_TIMEOUT_MS / 1000 + _FLUSH_GRACE_S)
    return victim, victim_keys, killed_at


async def run_failover(partitions: int, brokers: int, rate: float, seconds: float, warmup_s: float,
                       timeouts: tuple[float, float], retry_backoff_ms: int) -> dict[str, Any]:
    """The whole measurement on a fresh cluster; ``timeouts``: (leaders, balance) deadlines in seconds."""
    topics = topic_names("failover", partitions)
    load = _Load(topics, rate, seconds)
    with fresh_cluster(brokers, _READY_TIMEOUT_S) as cluster:
        async with Admin(cluster.urls) as admin:
            await create_topics(admin, topics, replication_factor=3)
            await wait_for_leaders(admin, topics, timeouts[0])
            # Leader balancing moves each partition to its preferred replica a few seconds after it has a leader
            # (node/replication.py): waited for, bounded, so that the victim leads about a third.
            if timeouts[1] > 0:
                with contextlib.suppress(CommandFailed):  # an unbalanced cluster is measured as it is
                    await wait_for_leaders(admin, topics, timeouts[1], preferred=True)
        victim, victim_keys, killed_at = await _drive(cluster, load, warmup_s, retry_backoff_ms)
    times = failover_times(load.deliveries, killed_at, victim, victim_keys)
    elected = failover_times(load.leaders_seen, killed_at, victim, victim_keys)
    outcomes = collections.Counter("ok" if d.ok else "not ok" for d in load.deliveries)
    return {
        "killed_broker": victim,
        "killed_after_s": round(warmup_s, 2),
        "summary": failover_summary(times),
        "new_leader_known": failover_summary(elected),
        "new_leader_known_ms": _per_partition_ms(elected),
        "per_partition_ms": _per_partition_ms(times),
        "records": {"sent": load.sent, "ok": outcomes["ok"], "not_ok": outcomes["not ok"]},
        "resolution_ms": round(1000.0 * len(load.keys) / rate, 1),
    }


def _per_partition_ms(times: dict[PartitionKey, float | None]) -> dict[str, float | None]:
    return {f"{topic}/{partition}": None if value is None else round(value * 1000, 1)
            for (topic, partition), value in sorted(times.items())}


def failover_table(partitions: int, result: dict[str, Any]) -> Table:
    """One row per measure, both counted from the SIGKILL, over the partitions the killed broker led."""
    table = Table(title=f"bench failover: {partitions:,} partitions (RF 3), SIGKILL of broker "
                        f"{result['killed_broker']} (led {result['summary']['partitions']})", title_justify="left")
    for name in ("from the kill to", "partitions", "reached", "not reached", "p50 ms", "p99 ms", "max ms"):
        table.add_column(name, justify="left" if name == "from the kill to" else "right")
    fmt = (lambda v: "-" if v is None else f"{v:,.1f}")  # noqa: E731
    for label, key in (("a new leader known (metadata)", "new_leader_known"),
                       ("first acks=all write acknowledged", "summary")):
        row = result[key]
        table.add_row(label, str(row["partitions"]), str(row["recovered"]), str(row["not_recovered"]),
                      fmt(row["p50_ms"]), fmt(row["p99_ms"]), fmt(row["max_ms"]))
    records = result["records"]
    table.caption = (f"records sent {records['sent']:,}, ok {records['ok']:,}, not ok {records['not_ok']:,}; "
                     f"one record per partition every {result['resolution_ms']:,.1f} ms; metadata polled every "
                     f"{_LEADER_WATCH_S * 1000:.0f} ms")
    return table


@click.command("failover")
@click.option("--partitions", type=click.IntRange(1, 10_000), default=30, show_default=True,
              help="Partitions in total (RF 3), spread over as many topics as the per-topic limit needs.")
@click.option("--brokers", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--records-per-s", "rate", type=click.FloatRange(1, 50_000), default=2_000.0, show_default=True,
              help="The producer's total rate, spread evenly over the partitions.")
@click.option("--seconds", type=click.FloatRange(2, 600), default=10.0, show_default=True,
              help="How long the load runs (the kill is inside it).")
@click.option("--warmup-seconds", "warmup_s", type=click.FloatRange(0.5, 600), default=3.0, show_default=True,
              help="Load before the kill.")
@click.option("--retry-backoff-ms", type=click.IntRange(0, 10_000), default=100, show_default=True,
              help="The producer's first retry backoff (the client default).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Deadline for every partition to have a leader before the load.")
@click.option("--balance-timeout", "balance_s", type=click.FloatRange(0, 600), default=20.0, show_default=True,
              help="Wait at most this long for leaders on their preferred replicas (balanced, so the victim "
                   "leads about a third); 0 = kill at once.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the figures as JSON here.")
def failover(partitions: int, brokers: int, rate: float, seconds: float, warmup_s: float, retry_backoff_ms: int,
             timeout_s: float, balance_s: float, report_path: Path | None) -> None:
    """Kill the broker leading the most partitions under an acks=all load; per-partition failover times."""
    if warmup_s >= seconds:
        raise click.BadParameter("must be shorter than --seconds", param_hint="'--warmup-seconds'")
    report: dict[str, Any] = {
        "tool": "raftmq bench failover", "report_version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": ["raftmq", *sys.argv[1:]], "machine": machine_facts(),
        "settings": {"partitions": partitions, "brokers": brokers, "records_per_s": rate, "seconds": seconds,
                     "warmup_s": warmup_s, "retry_backoff_ms": retry_backoff_ms, "acks": "all", "linger_ms": 0},
    }
    timeouts = (timeout_s, balance_s)
    report.update(asyncio.run(run_failover(partitions, brokers, rate, seconds, warmup_s, timeouts, retry_backoff_ms)))
    out().print(failover_table(partitions, report))
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        out().print(f"report written to {report_path}")
    if report["summary"]["not_recovered"]:
        raise CommandFailed("NOT_FAILED_OVER", f"{report['summary']['not_recovered']} partition(s) had no "
                            "successful write on another leader before the load ended",
                            "raise --seconds, or see the brokers' logs")
