"""Queue mode end to end (client/share_consumer.py on an in-process cluster): share consumers read the same
partition, each record is delivered to one of them at a time, a record not acknowledged within its
visibility timeout is delivered again with a higher delivery count, one delivered max_deliveries times is
parked in <topic>.DLT, a rejected record never comes back, and no record is acknowledged twice.

Method: records appended through the leader; consumers poll in turn or concurrently; the visibility timeout
is real time (a few hundred ms), waited for with deadlines.
"""

from __future__ import annotations

import asyncio
import collections
import random
from pathlib import Path
from typing import Any

import pytest
from raftmq.client import Consumer, ShareConsumer
from raftmq.cluster.dead_letters import parse_dead_letter

from tests.inprocess import InProcessCluster

pytestmark = pytest.mark.asyncio
FAST: dict[str, Any] = {"request_timeout_ms": 2000, "max_wait_ms": 50, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 50}


def share(cluster: InProcessCluster, seed: int, **options: Any) -> ShareConsumer:
    return ShareConsumer(cluster.urls, "jobs", topics=["tasks"], rng=random.Random(seed), **{**FAST, **options})


async def test_competing_consumers_each_record_accepted_once(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("tasks", partitions=2)
        for partition in range(2):
            await cluster.append_records("tasks", partition, [f"{partition}-{i}".encode() for i in range(15)])
        accepted: collections.Counter[tuple[int, int]] = collections.Counter()
        per_consumer: collections.Counter[int] = collections.Counter()

        async def work(index: int) -> None:
            async with share(cluster, index, max_records=4) as consumer:
                while sum(accepted.values()) < 30:
                    for item in await consumer.poll(timeout_ms=200):
                        accepted[(item.record.partition, item.record.offset)] += 1
                        per_consumer[index] += 1
                        consumer.acknowledge(item)
                    assert await consumer.flush() == []

        await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(3))), 20)
        assert set(accepted) == {(p, o) for p in range(2) for o in range(15)}
        assert max(accepted.values()) == 1


async def test_redelivery_after_the_visibility_timeout_and_dead_letters(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("tasks", partitions=1)
        await cluster.append_records("tasks", 0, [b"slow", b"bad", b"fine"])
        async with share(cluster, 1, lock_ms=300, max_deliveries=2, max_records=3) as first, \
                share(cluster, 2, lock_ms=300, max_deliveries=2, max_records=3) as second:
            taken = await first.poll(timeout_ms=1000)
            assert [(i.record.value, i.delivery_count) for i in taken] == [(b"slow", 1), (b"bad", 1), (b"fine", 1)]
            assert await second.poll(timeout_ms=0) == []  # all locked by the first
            first.reject(taken[1])  # "bad": never again
            first.acknowledge(taken[2])
            assert await first.flush() == []
            again = await second.poll(timeout_ms=3000)  # "slow" comes back once its lock expired
            assert [(i.record.value, i.delivery_count) for i in again] == [(b"slow", 2)]
            first.acknowledge(taken[0])
            refused = await first.flush()  # too late: its lock expired, the second consumer holds it now
            assert [offset for _tp, offset in refused] == [0]
            # The second consumer does not acknowledge either: the third delivery is over max_deliveries (2).
            assert await second.poll(timeout_ms=1500) == []
            await asyncio.wait_for(_until(lambda: second.parked == 1 or first.parked == 1, second), 10)
        async with Consumer(cluster.urls, max_wait_ms=50) as reader:
            reader.assign([("tasks.DLT", 0)])
            parked = await reader.poll(timeout_ms=3000)
        assert [r.value for r in parked] == [b"slow"]
        letter = parse_dead_letter(parked[0].headers)
        assert letter is not None and (letter.topic, letter.offset, letter.attempts) == ("tasks", 0, 2)


async def _until(done: Any, consumer: ShareConsumer) -> None:
    while not done():
        await consumer.poll(timeout_ms=200)
