"""``raftmq demo``: a first look at raftmq in well under a minute (what ``make demo`` runs).

A fresh three-node cluster; 1,000 acks=all records; the cluster status; SIGKILL of the leader of
partition 0 while 1,000 more records are produced (and the time until the new leader acknowledges);
the killed broker restarted; everything read back from offset 0 and checked: every acknowledged record
present exactly once, in send order per partition, at the offset its acknowledgement named.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from raftmq.cli.cluster_cmd import _nodes_table, collect, render_status
from raftmq.cli.common import ConfigProblem, err, fmt_ids, fmt_int, out, safe
from raftmq.cli.produce_cmd import ProduceStats, summary_table
from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.producer import Producer
from raftmq.client.types import ConsumerRecord, DeliveryReport, TopicPartition

TOPIC = "demo"
# Three partitions on three brokers: each partition is its own Raft group, and killing one broker leaves
# every partition a majority (two of three replicas) to elect a new leader and keep acknowledging acks=all.
PARTITIONS = 3
NODES = 3
# With more brokers each partition still gets three replicas (a subset the controller picks): one broker down
# leaves every partition a majority, and more replicas would only slow down acks=all.
REPLICATION_FACTOR_MAX = 3
STEPS = 8  # the steps _DemoSteps narrates ("Step n/8")

# Seconds for all brokers (or the restarted one) to serve clients: a start takes a few seconds.
READY_TIMEOUT_S = 30
# Seconds for the new topic's partitions to elect their first leaders.
LEADERS_TIMEOUT_S = 20
# Seconds to find the leader of partition 0 before killing it (it was elected moments ago).
LEADER_TIMEOUT_S = 10
# A record may wait out the election after the kill (a few seconds) well within its delivery timeout; short
# requests and back-offs let the first acknowledgement from the new leader come soon after the election.
DELIVERY_TIMEOUT_MS = 30_000
REQUEST_TIMEOUT_MS = 5_000
RETRY_BACKOFF_MS = 50
RETRY_BACKOFF_MAX_MS = 250
# Reading back: the high watermarks are asked within END_OFFSETS_TIMEOUT_S and reached within
# READ_BACK_TIMEOUT_S (a few thousand small records take well under a second); each poll waits at most
# POLL_TIMEOUT_MS, each fetch at most CONSUMER_MAX_WAIT_MS on the broker.
END_OFFSETS_TIMEOUT_S = 20
READ_BACK_TIMEOUT_S = 30
POLL_TIMEOUT_MS = 500
CONSUMER_MAX_WAIT_MS = 200
# Brokers get this long after SIGTERM to stop cleanly before they are killed.
STOP_TIMEOUT_S = 20.0


@dataclass
class Sent:
    value: bytes
    partition: int
    seq: int  # index among the records sent to this partition (send order)
    report: DeliveryReport | None = None
    done_at: float = 0.0


@dataclass
class Verdict:
    passed: bool
    rows: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    acked: int = 0
    unknown: int = 0
    unknown_present: int = 0
    consumed: int = 0


def verify(sent: Sequence[Sent], consumed: dict[int, list[ConsumerRecord]]) -> Verdict:
    """Every acked record exactly once, in send order per partition, at its acknowledged offset; nothing
    that was not sent; unknown outcomes may be present (once) or absent."""
    by_value = {s.value: s for s in sent}
    verdict = Verdict(passed=True)
    for partition in range(PARTITIONS):
        records = consumed.get(partition, [])
        seen: dict[bytes, int] = {}
        duplicates = unexpected = reordered = wrong_offset = 0
        last_seq = -1
        for record in records:
            value = record.value or b""
            item = by_value.get(value)
            if item is None or item.partition != partition:
                unexpected += 1
                continue
            seen[value] = seen.get(value, 0) + 1
            if seen[value] > 1:
                duplicates += 1
                continue
            if item.seq < last_seq:
                reordered += 1
            last_seq = max(last_seq, item.seq)
            report = item.report
            if (report is not None and report.ok and report.offset is not None
                    and report.offset != record.offset):
                wrong_offset += 1
        mine = [s for s in sent if s.partition == partition]
        acked = [s for s in mine if s.report is not None and s.report.ok]
        unknown = [s for s in mine if s.report is None or not s.report.ok]
        missing = sum(1 for s in acked if s.value not in seen)
        unknown_present = sum(1 for s in unknown if s.value in seen)
        verdict.acked += len(acked)
        verdict.unknown += len(unknown)
        verdict.unknown_present += unknown_present
        verdict.consumed += len(records)
        for count, what in ((missing, "acknowledged records missing"), (duplicates, "duplicates"),
                            (reordered, "records out of send order"), (unexpected, "records never sent"),
                            (wrong_offset, "records at another offset than acknowledged")):
            if count:
                verdict.passed = False
                verdict.problems.append(f"partition {partition}: {count} {what}")

        def cell(n: int) -> str:
            return f"[red]{n}[/]" if n else "0"

        verdict.rows.append([str(partition), fmt_int(len(records)), fmt_int(len(acked)), cell(missing),
                             cell(duplicates), cell(reordered), cell(wrong_offset),
                             f"{unknown_present}/{len(unknown)}"])
    return verdict


class _Narrator:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.step = 0
        self.started = time.monotonic()

    def __call__(self, title: str) -> None:
        self.step += 1
        self.console.print()
        self.console.rule(f"[bold]Step {self.step}/{STEPS}[/]  {title}", align="left")

    def say(self, text: str) -> None:
        self.console.print(text)


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the cluster (must be empty) [default: a temporary folder, removed after].")
@click.option("--records", type=click.IntRange(10, 100_000), default=1000, show_default=True,
              help="Records produced before and again after the leader kill.")
@click.option("--max-seconds", type=click.FloatRange(10, 3600), default=120.0, show_default=True,
              help="Deadline for the whole demo.")
@click.option("--nodes", type=click.IntRange(3, 9), default=NODES, show_default=True,
              help="Brokers; partitions keep replication factor 3 (on a subset when there are more).")
def demo(directory: Path | None, records: int, max_seconds: float, nodes: int) -> None:
    """Start a local cluster (3 nodes by default), produce, kill a leader, produce more, and check every
    acknowledged record."""
    from raftmq.deploy.local_cluster import LocalCluster

    temporary = directory is None
    if directory is not None:
        directory = directory.resolve()
        if directory.exists() and any(directory.iterdir()):
            raise ConfigProblem(f"{directory} is not empty",
                                "give an empty or new folder with --dir, or leave --dir out to use a "
                                "temporary one")
    root = directory or Path(tempfile.mkdtemp(prefix="raftmq-demo-"))
    cluster = LocalCluster(root, nodes=nodes)
    console = out()
    passed = False
    try:
        passed = asyncio.run(asyncio.wait_for(_demo(cluster, records, console), timeout=max_seconds))
    except (TimeoutError, RuntimeError, OSError) as exc:
        reason = str(exc) or f"the demo did not finish within {max_seconds:.0f} s (--max-seconds)"
        console.print(f"[red bold]FAIL[/]: {safe(reason)}")
        console.print(f"Broker logs: {', '.join(str(n.log_path) for n in cluster.nodes.values())}"
                      + (" (removed with the temporary folder; use --dir to keep them)" if temporary else ""))
    finally:
        with err().status("stopping the cluster ..."):
            cluster.stop(timeout_s=STOP_TIMEOUT_S)
        codes = {b: n.process.returncode for b, n in cluster.nodes.items() if n.process is not None}
        killed = [b for b, code in codes.items() if code == -9]
        note = f" (broker(s) {fmt_ids(killed)} needed SIGKILL)" if killed else ""
        console.print(f"Cluster stopped{note}.")
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"Its data stays in {root}.")
    if not passed:
        raise click.exceptions.Exit(1)


async def _produce_phase(producer: Producer, sent: list[Sent], first: int, count: int, phase: int,
                         on_ack: Callable[[Sent], None] | None = None) -> ProduceStats:
    stats = ProduceStats()
    per_partition = [sum(1 for s in sent if s.partition == p) for p in range(PARTITIONS)]
    futures = []
    for index in range(first, first + count):
        partition = index % PARTITIONS
        item = Sent(f"demo-{phase}-{index:06d}".encode(), partition, per_partition[partition])
        per_partition[partition] += 1
        sent.append(item)
        stats.attempted += 1
        future = await producer.send(TOPIC, item.value, key=f"order-{index}", partition=partition)

        def done(f: asyncio.Future[DeliveryReport], item: Sent = item) -> None:
            item.report = f.result()
            item.done_at = time.monotonic()
            stats.on_report(item.report, len(item.value))
            if on_ack is not None and item.report.ok:
                on_ack(item)

        future.add_done_callback(done)
        futures.append(future)
    await asyncio.gather(*futures)
    stats.finished = time.monotonic()
    return stats


async def _consume_all(urls: Sequence[str]) -> dict[int, list[ConsumerRecord]]:
    consumed: dict[int, list[ConsumerRecord]] = {p: [] for p in range(PARTITIONS)}
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    async with Consumer(urls, auto_offset_reset="none", max_wait_ms=CONSUMER_MAX_WAIT_MS) as consumer:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp.topic, tp.partition, 0)
        ends = await consumer.end_offsets(tps, timeout_s=END_OFFSETS_TIMEOUT_S)
        deadline = time.monotonic() + READ_BACK_TIMEOUT_S

        async def behind() -> bool:
            return any([await consumer.position(*tp) < ends[tp] for tp in tps])

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading back did not reach the high watermarks within "
                                   f"{READ_BACK_TIMEOUT_S} s")
            for record in await consumer.poll(timeout_ms=POLL_TIMEOUT_MS):
                if record.offset < ends[TopicPartition(record.topic, record.partition)]:
                    consumed[record.partition].append(record)
    return consumed


async def _demo(cluster: Any, records: int, console: Console) -> bool:
    steps = _DemoSteps(cluster, records, console)
    urls = await steps.start_cluster()
    await steps.create_topic(urls)
    sent, leader = await steps.produce_through_failover(urls)
    await steps.restart(leader)
    verdict = await steps.read_back_and_check(urls, sent)
    steps.print_verdict(verdict)
    return verdict.passed


class _DemoSteps:
    """The demo's steps, in order; each narrates itself on ``console`` (spinners go to stderr)."""

    def __init__(self, cluster: Any, records: int, console: Console) -> None:
        self.cluster = cluster
        self.records = records
        self.console = console
        self.step = _Narrator(console)
        self.status = err()

    async def start_cluster(self) -> list[str]:
        cluster, step = self.cluster, self.step
        step(f"Start a fresh {len(cluster.nodes)}-node cluster")
        step.say(f"Every broker is a real `python -m raftmq.node` process on 127.0.0.1, with its data under "
                 f"{cluster.root}.")
        started = time.monotonic()
        with self.status.status("starting brokers ..."):
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(cluster.wait_ready, timeout_s=READY_TIMEOUT_S)
        urls: list[str] = cluster.urls
        step.say(f"All {len(cluster.nodes)} brokers are ready after {time.monotonic() - started:.1f} s.")
        self.console.print(_nodes_table(cluster, urls))
        return urls

    async def create_topic(self, urls: Sequence[str]) -> None:
        nodes = len(self.cluster.nodes)
        factor = min(nodes, REPLICATION_FACTOR_MAX)
        where = f"all {nodes} brokers" if factor == nodes else f"{factor} of the {nodes} brokers"
        self.step(f"Create topic '{TOPIC}' with {PARTITIONS} partitions, each replicated on {where}")
        async with Admin(urls) as admin:
            await admin.create_topic(TOPIC, PARTITIONS, factor)
            with self.status.status("waiting for partition leaders ..."):
                info = await admin.wait_for_topic(TOPIC, timeout_s=LEADERS_TIMEOUT_S)
        leaders = ", ".join(f"partition {p.partition} -> broker {p.leader_id}" for p in info.partitions)
        self.step.say(f"Leaders: {leaders}. Each partition is its own Raft group.")

    async def produce_through_failover(self, urls: Sequence[str]) -> tuple[list[Sent], int]:
        """Produce, show the status, kill the leader of partition 0 and produce again; returns what was
        sent and the id of the killed broker."""
        sent: list[Sent] = []
        async with Producer(urls, acks="all", delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                            request_timeout_ms=REQUEST_TIMEOUT_MS, retry_backoff_ms=RETRY_BACKOFF_MS,
                            retry_backoff_ms_max=RETRY_BACKOFF_MAX_MS) as producer:
            self.step(f"Produce {self.records:,} records with acks=all")
            self.step.say("acks=all: a record is acknowledged once a majority of its replicas stored it.")
            with self.status.status("producing ..."):
                stats = await _produce_phase(producer, sent, 0, self.records, 1)
            self.console.print(summary_table(stats, retries=producer.counters.retries, title="first batch"))

            self.step("Cluster status")
            self.console.print(render_status(await collect(urls)))

            leader = await self._kill_leader_and_produce(producer, sent)
        return sent, leader

    async def _kill_leader_and_produce(self, producer: Producer, sent: list[Sent]) -> int:
        cluster, step, records = self.cluster, self.step, self.records
        leader: int = await asyncio.to_thread(cluster.wait_for_leader, TOPIC, 0, timeout_s=LEADER_TIMEOUT_S)
        pid = cluster.nodes[leader].pid
        step(f"SIGKILL broker {leader}, the leader of {TOPIC}/0, and keep producing {records:,} records")
        retries_before = producer.counters.retries
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, leader)
        step.say(f"Broker {leader} (pid {pid}) is dead: no shutdown code ran. The other replicas will elect "
                 "a new leader once they miss its heartbeats.")
        first_new: list[Sent] = []

        def on_ack(item: Sent) -> None:
            report = item.report
            if (not first_new and item.partition == 0 and report is not None
                    and report.leader_id is not None and report.leader_id != leader):
                first_new.append(item)

        with self.status.status("producing while a new leader is elected ..."):
            stats = await _produce_phase(producer, sent, records, records, 2, on_ack)
        self.console.print(summary_table(stats, retries=producer.counters.retries - retries_before,
                                         title="during the failover"))
        self._say_failover(first_new[0] if first_new else None, killed_at)
        return leader

    def _say_failover(self, first_new: Sent | None, killed_at: float) -> None:
        """How long partition 0 was without a leader, as the first acknowledgement of its new one shows."""
        if first_new is None:
            self.step.say("[yellow]No acknowledgement from a new leader of partition 0 was seen.[/]")
            return
        assert first_new.report is not None
        self.step.say(f"[green]Partition 0 moved to broker {first_new.report.leader_id} (term "
                      f"{first_new.report.leader_epoch}); its first acknowledgement came "
                      f"{first_new.done_at - killed_at:.2f} s after the kill.[/]")

    async def restart(self, leader: int) -> None:
        cluster = self.cluster
        self.step(f"Restart broker {leader}")
        with self.status.status(f"starting broker {leader} ..."):
            await asyncio.to_thread(cluster.start, [leader])
            await asyncio.to_thread(cluster.wait_ready, [leader], timeout_s=READY_TIMEOUT_S)
        self.step.say(f"Broker {leader} is back (pid {cluster.nodes[leader].pid}); it replays its log and "
                      "catches up from the leaders as a follower.")

    async def read_back_and_check(self, urls: Sequence[str], sent: Sequence[Sent]) -> Verdict:
        self.step("Read everything back from offset 0 and check it")
        with self.status.status("consuming ..."):
            consumed = await _consume_all(urls)
        verdict = verify(sent, consumed)
        self.console.print(_verdict_table(verdict))
        return verdict

    def print_verdict(self, verdict: Verdict) -> None:
        self.step("Verdict")
        if verdict.passed:
            self.console.print(f"[bold green]PASS[/]: all {verdict.acked:,} acknowledged records were read back "
                               f"exactly once, in send order per partition, at their acknowledged offsets "
                               f"({verdict.consumed:,} read; {verdict.unknown} with unknown outcome, "
                               f"{verdict.unknown_present} of them stored).")
        else:
            self.console.print(f"[bold red]FAIL[/]: {safe('; '.join(verdict.problems))}")


def _verdict_table(verdict: Verdict) -> Table:
    table = Table(title=f"topic {TOPIC}: read back vs acknowledged", title_justify="left")
    for column in ("partition", "read", "acked", "missing", "duplicates", "out of order", "wrong offset",
                   "unknown present"):
        table.add_column(column, justify="right")
    for row in verdict.rows:
        table.add_row(*row)
    return table
