"""Effectively-once consume-transform-produce (client/exactly_once.py) on an in-process cluster.

Goal: each input record's outputs are in the output topic exactly once, even when the input offsets were
committed late (a crash after the outputs were written) or an input's outputs were only partly written.
Method: a first processor handles the first inputs; the group's commit is then set back to 0 without the
helper's metadata (what a crash before any commit leaves: outputs written, offsets not); a second processor
must find those outputs in the output log and write only what is missing. One output is pre-written by hand
to stand for a half-finished input. The output topic is then counted by the ``eos.source`` header.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest
from raftmq.client import Admin, Consumer, Producer, TopicPartition
from raftmq.client.exactly_once import SOURCE_HEADER, ExactlyOnceProcessor, Output
from raftmq.client.types import ConsumerRecord

from tests.inprocess import InProcessCluster, wait_until

pytestmark = pytest.mark.asyncio
FAST: dict[str, Any] = {"request_timeout_ms": 2000, "max_wait_ms": 50, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 50, "session_timeout_ms": 600}


def twice(record: ConsumerRecord) -> list[Output]:
    """Two outputs per input: deterministic, as the guarantee requires."""
    return [(record.key, (record.value or b"") + b"-a", []), (record.key, (record.value or b"") + b"-b", [])]


async def run_until(cluster: InProcessCluster, processor: ExactlyOnceProcessor, done: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await wait_until(lambda: done() or task.done(), timeout_s=15, what="the processor to finish")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def outputs(cluster: InProcessCluster) -> collections.Counter[str]:
    counted: collections.Counter[str] = collections.Counter()
    async with Consumer(cluster.urls, max_wait_ms=50) as reader:
        reader.assign([("out", 0), ("out", 1)])
        ends = await reader.end_offsets([("out", 0), ("out", 1)])
        await reader.seek_to_beginning()
        read = 0
        async with asyncio.timeout(10):
            while read < sum(ends.values()):
                for record in await reader.poll(timeout_ms=200):
                    counted[(dict(record.headers)[SOURCE_HEADER] or b"").decode()] += 1
                    read += 1
    return counted


async def test_outputs_are_written_once_across_a_lost_commit_and_a_half_written_input(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("in", partitions=2)
        await cluster.create_topic("out", partitions=2)
        for partition in range(2):
            await cluster.append_records("in", partition, [f"{partition}:{i}".encode() for i in range(5)])
        first = ExactlyOnceProcessor(cluster.urls, "enrich", topics=["in"], output_topic="out", transform=twice,
                                     fence_settle_ms=0, **FAST)
        await run_until(cluster, first, lambda: all(lane.done_through == 5 for lane in first._lanes.values())
                        and len(first._lanes) == 2)
        async with Admin(cluster.urls) as admin:  # the commits are lost: offsets back to 0, no metadata
            await admin.commit_group_offsets("enrich", {TopicPartition("in", p): 0 for p in range(2)})
        for partition in range(2):
            await cluster.append_records("in", partition, [f"{partition}:{i}".encode() for i in range(5, 8)])
        async with Producer(cluster.urls, acks="all") as producer:  # input in/1@5 half written: output 0 only
            report = await producer.send_and_wait("out", b"1:5-a", partition=1,
                                                  headers=[(SOURCE_HEADER, b"in/1/5/0/2")])
            assert report.ok
        second = ExactlyOnceProcessor(cluster.urls, "enrich", topics=["in"], output_topic="out", transform=twice,
                                      fence_settle_ms=0, **FAST)
        await run_until(cluster, second, lambda: all(lane.done_through == 8 for lane in second._lanes.values())
                        and len(second._lanes) == 2)
        assert second.skipped == 10  # the first five of each partition were complete in the output log
        counted = await outputs(cluster)
        expected = {f"in/{p}/{o}/{i}/2" for p in range(2) for o in range(8) for i in range(2)}
        assert set(counted) == expected and max(counted.values()) == 1
        async with Admin(cluster.urls) as admin:
            assert await admin.group_offsets("enrich") == {TopicPartition("in", p): 8 for p in range(2)}
