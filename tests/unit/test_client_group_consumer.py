"""The group consumer (client/group_consumer.py) against an in-process cluster of real brokers.

Goal: what a user of consumer groups relies on. Three consumers share six partitions and every record is
processed once; a consumer that dies loses its partitions to the others within its session timeout and,
at-least-once, nothing is skipped; killing the coordinator's broker loses no committed offset; a member
that lost its partitions cannot commit; a static member restarts without a reassignment; and the two
delivery modes show, by counting under a crash, duplicates (at-least-once) versus losses (at-most-once).

Method: records are produced through the leader (cluster.append_records); each consumer runs in its own
task that polls and records what it processed; waits are on conditions with deadlines. A "crash" is
``stop(commit=False, leave=False)``: the group hears nothing more from the member.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from raftmq.client import GroupConsumer, SyncGroupConsumer, TopicPartition
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC, group_partition_for
from raftmq.cluster.errors import RaftMQError, UnknownMemberId

from tests.inprocess import InProcessCluster, wait_until

pytestmark = pytest.mark.asyncio
FAST: dict[str, Any] = {"request_timeout_ms": 2000, "max_wait_ms": 50, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 50, "session_timeout_ms": 1000, "auto_commit_interval_ms": 100}


class Worker:
    """One group member polling in a task; ``processed`` counts every record it handled."""

    def __init__(self, cluster: InProcessCluster, group: str, processed: collections.Counter[tuple[int, int]],
                 *, handle_at_most: int | None = None, **options: Any) -> None:
        self.consumer = GroupConsumer(cluster.urls, group, **{"topics": ["orders"], **FAST,
                                                              "rng": random.Random(len(processed)), **options})
        self.processed = processed
        self.handle_at_most = handle_at_most  # stop handling (a crash mid-batch) after this many records
        self.handled = 0
        self.task: asyncio.Task[None] | None = None
        self.crashed = asyncio.Event()

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for record in await self.consumer.poll(timeout_ms=100):
                if self.handle_at_most is not None and self.handled >= self.handle_at_most:
                    self.crashed.set()
                    return
                self.processed[(record.partition, record.offset)] += 1
                self.handled += 1

    async def stop(self, *, crash: bool = False) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop(commit=not crash, leave=not crash)


async def produce(cluster: InProcessCluster, partitions: int, per_partition: int, start: int = 0) -> None:
    for partition in range(partitions):
        await cluster.append_records("orders", partition, [f"{partition}-{start + i}".encode()
                                                           for i in range(per_partition)])


def everything(partitions: int, per_partition: int) -> set[tuple[int, int]]:
    return {(p, o) for p in range(partitions) for o in range(per_partition)}


async def test_three_consumers_share_six_partitions_and_process_every_record_once(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=6)
        await produce(cluster, 6, 20)
        processed: collections.Counter[tuple[int, int]] = collections.Counter()
        workers = [Worker(cluster, "billing", processed) for _ in range(3)]
        for worker in workers:
            await worker.start()
        await wait_until(lambda: sorted(len(w.consumer.assignment()) for w in workers) == [2, 2, 2], timeout_s=10,
                         what="two partitions each")
        await wait_until(lambda: set(processed) == everything(6, 20), timeout_s=10, what="every record")
        assert max(processed.values()) == 1
        owned = [tp for w in workers for tp in w.consumer.assignment()]
        assert sorted(owned) == [TopicPartition("orders", p) for p in range(6)]
        for worker in workers:
            await worker.stop()
        async with GroupConsumer(cluster.urls, "billing", topics=["orders"], **FAST) as reader:
            assert await reader.committed() == {TopicPartition("orders", p): 20 for p in range(6)}


async def test_a_dead_consumer_s_partitions_move_without_a_gap(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=6)
        await produce(cluster, 6, 10)
        processed: collections.Counter[tuple[int, int]] = collections.Counter()
        workers = [Worker(cluster, "billing", processed) for _ in range(3)]
        for worker in workers:
            await worker.start()
        await wait_until(lambda: set(processed) == everything(6, 10), timeout_s=10, what="the first records")
        victim, survivors = workers[0], workers[1:]
        await victim.stop(crash=True)
        killed_at = time.monotonic()
        await produce(cluster, 6, 10, start=10)
        await wait_until(lambda: sum(len(w.consumer.assignment()) for w in survivors) == 6, timeout_s=10,
                         what="the survivors to own every partition")
        rebalance_s = time.monotonic() - killed_at
        assert rebalance_s < 5  # session timeout 1 s + a heartbeat or two
        await wait_until(lambda: set(processed) == everything(6, 20), timeout_s=10, what="every record, no gap")
        for worker in survivors:
            await worker.stop()


async def test_killing_the_coordinator_s_broker_loses_no_committed_offset(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=3)
        await produce(cluster, 3, 10)
        processed: collections.Counter[tuple[int, int]] = collections.Counter()
        worker = Worker(cluster, "billing", processed, session_timeout_ms=3000)
        await worker.start()
        await wait_until(lambda: set(processed) == everything(3, 10), timeout_s=10, what="the first records")
        committed = await worker.consumer.commit()
        assert committed == 3
        before = await worker.consumer.committed()
        topic = cluster.service(1).metadata.topic(GROUP_STATE_TOPIC)
        coordinator = cluster.leader(GROUP_STATE_TOPIC, group_partition_for("billing", topic.partitions))
        victim = next(n for n in cluster.running() if n.broker.replicas is not None
                      and coordinator in n.broker.replicas.partitions.values())
        await victim.shutdown()
        await produce_when_led(cluster, 3, 10, start=10)
        await cluster.pass_time_until(lambda: set(processed) >= everything(3, 20), timeout_s=30,
                                      what="the consumer to go on under the new coordinator")
        after = await worker.consumer.committed(timeout_s=10)
        assert all(after[tp] >= before[tp] for tp in before)
        assert max(processed.values()) == 1  # the member kept its partitions: nothing was read twice
        await worker.stop()


async def produce_when_led(cluster: InProcessCluster, partitions: int, per_partition: int, start: int) -> None:
    for partition in range(partitions):
        await cluster.pass_time_until(lambda p=partition: _led(cluster, p), timeout_s=20,  # type: ignore[misc]
                                      what=f"a leader for orders-{partition}")
    await produce(cluster, partitions, per_partition, start)


def _led(cluster: InProcessCluster, partition: int) -> bool:
    return any(h.group.status.is_leader and h.group.status.quorum and h.group.status.caught_up
               for h in cluster.handles("orders", partition)
               if any(n.broker.replicas is not None and h in n.broker.replicas.partitions.values()
                      for n in cluster.running()))


async def test_a_member_that_lost_its_partitions_cannot_commit_them(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=2)
        await produce(cluster, 2, 5)
        processed: collections.Counter[tuple[int, int]] = collections.Counter()
        zombie = Worker(cluster, "billing", processed, auto_commit=False)
        await zombie.start()
        await wait_until(lambda: set(processed) == everything(2, 5), timeout_s=10, what="the records")
        zombie.task.cancel()  # type: ignore[union-attr]
        zombie.consumer._heartbeat_task.cancel()  # a paused process: no heartbeats
        other = Worker(cluster, "billing", collections.Counter())
        await other.start()
        await wait_until(lambda: len(other.consumer.assignment()) == 2, timeout_s=10,
                         what="the other member to take over")
        with pytest.raises(UnknownMemberId):
            await zombie.consumer.commit({TopicPartition("orders", 0): 5})
        await other.stop()
        await zombie.consumer.stop(commit=False, leave=False)


async def test_a_static_member_restarts_without_a_reassignment(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=4)
        first = Worker(cluster, "billing", collections.Counter(), instance_id="host-a", session_timeout_ms=5000)
        second = Worker(cluster, "billing", collections.Counter(), instance_id="host-b", session_timeout_ms=5000)
        await first.start()
        await second.start()
        await wait_until(lambda: len(first.consumer.assignment()) == 2 and len(second.consumer.assignment()) == 2,
                         timeout_s=10, what="two partitions each")
        held = first.consumer.assignment()
        await first.stop()  # leaves statically: the partitions wait for host-a
        again = Worker(cluster, "billing", collections.Counter(), instance_id="host-a", session_timeout_ms=5000)
        await again.start()
        await wait_until(lambda: again.consumer.assignment() == held, timeout_s=10, what="host-a's partitions back")
        assert len(second.consumer.assignment()) == 2
        await again.stop()
        await second.stop()


async def test_glob_subscription_seek_and_manual_commits(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=1)
        await produce(cluster, 1, 5)
        assigned: list[list[TopicPartition]] = []
        async with GroupConsumer(cluster.urls, "g", pattern="ord*", auto_commit=False,
                                 on_assigned=assigned.append, **FAST) as consumer:
            records = await poll_until(consumer, lambda got: len(got) >= 5)
            assert [r.offset for r in records] == [0, 1, 2, 3, 4]
            assert assigned == [[TopicPartition("orders", 0)]]
            consumer.seek("orders", 0, 2)
            again = await poll_until(consumer, lambda got: len(got) >= 3)
            assert [r.offset for r in again] == [2, 3, 4]
            results: list[tuple[int | None, RaftMQError | None]] = []
            await consumer.commit_async({TopicPartition("orders", 0): 3}, metadata="half",
                                        callback=lambda n, e: results.append((n, e)))
            assert results == [(1, None)]
            assert await consumer.committed() == {TopicPartition("orders", 0): 3}
            assert await consumer.commit() == 1
            assert await consumer.committed() == {TopicPartition("orders", 0): 5}


async def poll_until(consumer: GroupConsumer, done: Callable[[list[Any]], bool], timeout_s: float = 10) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while not done(got):
            got.extend(await consumer.poll(timeout_ms=200))
    return got


@pytest.mark.parametrize("delivery", ["at_least_once", "at_most_once"])
async def test_delivery_modes_under_a_consumer_crash(tmp_path: Path, delivery: str) -> None:
    """One consumer handles 5 of the 20 records a poll gave it, then crashes; a second one takes over.
    At-least-once: every record is handled, the ones after the last commit twice. At-most-once: no record
    twice, the 15 the crashed consumer had been given but not handled are never handled."""
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=1)
        await produce(cluster, 1, 20)
        processed: collections.Counter[tuple[int, int]] = collections.Counter()
        options: dict[str, Any] = {"delivery": delivery, "auto_commit_interval_ms": 60_000}
        crashing = Worker(cluster, "billing", processed, handle_at_most=5, **options)
        await crashing.start()
        await asyncio.wait_for(crashing.crashed.wait(), 10)
        await crashing.stop(crash=True)
        survivor = Worker(cluster, "billing", processed, **options)
        await survivor.start()
        if delivery == "at_least_once":
            await wait_until(lambda: set(processed) == everything(1, 20), timeout_s=10, what="every record")
            assert sum(processed.values()) == 25  # the first 5 twice: nothing was committed before the crash
            assert {key for key, count in processed.items() if count == 2} == everything(1, 5)
        else:
            await wait_until(lambda: len(survivor.consumer.assignment()) == 1, timeout_s=10, what="the takeover")
            await produce(cluster, 1, 1, start=20)  # a marker: once it is handled, everything before it was
            await wait_until(lambda: (0, 20) in processed, timeout_s=10, what="the marker")
            assert max(processed.values()) == 1
            assert set(processed) == everything(1, 5) | {(0, 20)}  # 15 records lost
        await survivor.stop()


async def test_the_blocking_wrapper_reads_commits_and_leaves(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=2)
        await produce(cluster, 2, 3)

        def read_and_commit() -> tuple[int, dict[TopicPartition, int]]:
            with SyncGroupConsumer(cluster.urls, "sync", topics=["orders"], auto_commit=False, **FAST) as consumer:
                got = 0
                deadline = time.monotonic() + 10
                while got < 6 and time.monotonic() < deadline:
                    got += len(consumer.poll(timeout_ms=200))
                consumer.commit()
                return got, consumer.committed()

        got, committed = await asyncio.to_thread(read_and_commit)  # the cluster keeps running on this loop
        assert got == 6 and committed == {TopicPartition("orders", p): 3 for p in range(2)}
