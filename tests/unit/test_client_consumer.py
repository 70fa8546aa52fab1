"""Consumer against real brokers: assign/seek/poll, long-poll, skip below position, CRC checks,
OFFSET_OUT_OF_RANGE policies, NOT_LEADER re-routing, bounded prefetch, offsets endpoint, follow mode.

Method: records are produced through the leader of an in-process cluster of real brokers
(tests/inprocess.py: cluster.append_records, one batch and one segment per call),
then read through real HTTP. Waits are on poll() deadlines or conditions; no sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from raftmq.client import Consumer, ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import CorruptBatch, InvalidOffset, OffsetOutOfRange

from tests.inprocess import Fault, InProcessCluster, wait_until

FAST: dict[str, Any] = {"request_timeout_ms": 1000, "max_wait_ms": 100, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 20, "rng": random.Random(2)}
TP0 = TopicPartition("t", 0)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(tmp_path, brokers=2) as brokers:
        await brokers.create_topic("t", 2)
        await brokers.append_records("t", 0, [b"a0", b"a1", b"a2"], timestamp_ms=1000)
        await brokers.append_records("t", 0, [b"b3", b"b4", b"b5"], timestamp_ms=2000)
        yield brokers


def consumer(cluster: InProcessCluster, **options: Any) -> Consumer:
    return Consumer(cluster.urls, **{**FAST, **options})


async def poll_n(c: Consumer, count: int, timeout_s: float = 5.0) -> list[ConsumerRecord]:
    """Poll until ``count`` records arrived (or fail after ``timeout_s``)."""
    out: list[ConsumerRecord] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < count:
            out.extend(await c.poll(timeout_ms=1000))
    return out


async def test_assign_and_poll_from_earliest(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 0), ("t", 1)])
        records = await poll_n(c, 6)
        assert [(r.offset, r.value) for r in records] == [
            (0, b"a0"), (1, b"a1"), (2, b"a2"), (3, b"b3"), (4, b"b4"), (5, b"b5")]
        assert records[0] == ConsumerRecord("t", 0, 0, 1000, None, b"a0", ())
        assert await c.position("t", 0) == 6
        assert await c.position("t", 1) == 0
        assert c.assignment() == [TP0, TopicPartition("t", 1)]


async def test_max_records_bounds_a_poll(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        first = await c.poll(timeout_ms=2000, max_records=4)
        assert [r.offset for r in first] == [0, 1, 2, 3]
        assert [r.offset for r in await poll_n(c, 2)] == [4, 5]


async def test_seek_mid_batch_skips_records_below_position(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        c.seek("t", 0, 4)  # inside the second batch, which the broker returns whole
        records = await poll_n(c, 2)
        assert [r.offset for r in records] == [4, 5]
        c.seek("t", 0, 1)
        assert [r.offset for r in await poll_n(c, 5)] == [1, 2, 3, 4, 5]
        fetches = [r for r in cluster.requests if r.path.endswith("/records") and r.method == "GET"]
        assert fetches[0].query["offset"] == "4"


async def test_long_poll_returns_new_records(cluster: InProcessCluster) -> None:
    async with consumer(cluster, max_wait_ms=5000) as c:
        c.assign([("t", 1)])
        poll = asyncio.create_task(c.poll(timeout_ms=5000))

        def waiting_at_end() -> bool:
            return any(r.method == "GET" and r.path == "/v1/topics/t/partitions/1/records"
                       and r.query.get("max_wait_ms") == "5000" for r in cluster.requests)

        await wait_until(waiting_at_end, what="a long-poll fetch at the end of t/1")
        assert not poll.done()
        await cluster.append_records("t", 1, [b"new"])
        records = await asyncio.wait_for(poll, 5.0)
        assert [(r.offset, r.value) for r in records] == [(0, b"new")]


async def test_poll_times_out_empty(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 1)])
        assert await c.poll(timeout_ms=50) == []


async def test_follow_mode_async_iteration(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        seen = []
        async with asyncio.timeout(5.0):
            async for record in c:
                seen.append(record.offset)
                if len(seen) == 6:
                    break
        assert seen == list(range(6))


async def test_corrupt_batch_raises_and_pauses_until_seek(cluster: InProcessCluster) -> None:
    cluster.inject("fetch", Fault("corrupt"))
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        got: list[ConsumerRecord] = []
        with pytest.raises(CorruptBatch):
            async with asyncio.timeout(5.0):
                while True:
                    got.extend(await c.poll(timeout_ms=1000))
        # The batches before the corrupt one were returned; the position is at the bad batch.
        assert [r.offset for r in got] == [0, 1, 2]
        assert await c.position("t", 0) == 3
        assert await c.poll(timeout_ms=50) == []  # paused: raised once, no more fetches
        c.seek("t", 0, 3)  # the fault was one-shot: a re-fetch is clean
        assert [r.offset for r in await poll_n(c, 3)] == [3, 4, 5]


async def test_check_crcs_off_skips_verification(cluster: InProcessCluster) -> None:
    # Flip a byte of the first batch's MaxTimestamp: decoding still works, only the CRC-32C check objects.
    cluster.inject("fetch", Fault("corrupt", corrupt_index=40))
    async with consumer(cluster, check_crcs=False) as c:
        c.assign([("t", 0)])
        assert [r.offset for r in await poll_n(c, 6)] == list(range(6))
    cluster.inject("fetch", Fault("corrupt", corrupt_index=40))
    async with consumer(cluster, check_crcs=True) as c:
        c.assign([("t", 0)])
        with pytest.raises(CorruptBatch):
            await poll_n(c, 1)


async def test_undecodable_batch_raises_once_without_crc_checks(cluster: InProcessCluster) -> None:
    cluster.inject("fetch", Fault("corrupt"))  # the last byte of the last batch's body
    async with consumer(cluster, check_crcs=False) as c:
        c.assign([("t", 0)])
        c.seek("t", 0, 3)
        with pytest.raises(CorruptBatch):
            await poll_n(c, 1)
        assert await c.poll(timeout_ms=50) == []  # paused
        assert await c.position("t", 0) == 3
        c.seek("t", 0, 3)
        assert [r.value for r in await poll_n(c, 3)] == [b"b3", b"b4", b"b5"]


@pytest.mark.parametrize(("policy", "expected"), [("earliest", [4, 5]), ("latest", [])])
async def test_out_of_range_reset_policies(cluster: InProcessCluster, policy: str, expected: list[int]) -> None:
    cluster.truncate_before("t", 0, 4)  # retention removed the first batch: log start is now 3
    async with consumer(cluster, auto_offset_reset=policy) as c:
        c.assign([("t", 0)])
        c.seek("t", 0, 0)
        if expected:
            records = await poll_n(c, 3)
            assert [r.offset for r in records] == [3, 4, 5]
        else:
            await wait_until(lambda: c._parts[TP0].position == 6, what="reset to the high watermark")
            assert await c.poll(timeout_ms=50) == []


async def test_out_of_range_policy_none_raises(cluster: InProcessCluster) -> None:
    cluster.truncate_before("t", 0, 3)
    async with consumer(cluster, auto_offset_reset="none") as c:
        c.assign([("t", 0)])
        with pytest.raises(OffsetOutOfRange):
            await c.position("t", 0)  # no position and policy none
        c.seek("t", 0, 1)
        with pytest.raises(OffsetOutOfRange) as info:
            await poll_n(c, 1)
        assert info.value.details["log_start_offset"] == 3
        c.seek("t", 0, 3)
        assert [r.offset for r in await poll_n(c, 3)] == [3, 4, 5]


async def test_offset_above_end_is_retried_before_reset(cluster: InProcessCluster) -> None:
    async with consumer(cluster, request_timeout_ms=5000) as c:
        c.assign([("t", 0)])
        c.seek("t", 0, 8)  # beyond the high watermark (6): maybe a new leader that has not caught up
        await wait_until(lambda: sum(1 for r in cluster.requests if r.query.get("offset") == "8") >= 2,
                         what="a retry at offset 8")
        await cluster.append_records("t", 0, [b"c6", b"c7", b"c8"])  # the log catches up
        records = await poll_n(c, 1)
        assert records[0].offset == 8 and records[0].value == b"c8"


async def test_latest_without_position_reads_only_new_records(cluster: InProcessCluster) -> None:
    async with consumer(cluster, auto_offset_reset="latest") as c:
        c.assign([("t", 0)])
        assert await c.position("t", 0) == 6
        await cluster.append_records("t", 0, [b"n"])
        assert [r.offset for r in await poll_n(c, 1)] == [6]


async def test_not_leader_reroutes_fetch(cluster: InProcessCluster) -> None:
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        await c.position("t", 0)  # learn the leader (broker 1)
        cluster.set_leader("t", 0, 2)
        records = await poll_n(c, 6)
        assert len(records) == 6
    brokers = [r.broker_id for r in cluster.requests if r.method == "GET" and r.path.endswith("/records")]
    assert brokers[0] == 1 and brokers[-1] == 2


async def test_read_from_any_replica_uses_replica_param(cluster: InProcessCluster) -> None:
    async with Consumer([cluster.urls[1]], read_from_any_replica=True, **FAST) as c:
        c.assign([("t", 0)])
        assert len(await poll_n(c, 6)) == 6
    fetch = next(r for r in cluster.requests if r.method == "GET" and r.path.endswith("/records"))
    assert fetch.query["replica"] == "any" and fetch.broker_id == 2  # the bootstrap broker's replica


async def test_prefetch_is_bounded_in_bytes(cluster: InProcessCluster) -> None:
    for i in range(20):
        await cluster.append_records("t", 1, [b"x" * 1000] * 50, timestamp_ms=10 + i)  # ~50 KB batches
    cap = limits.batch_bytes_max
    async with consumer(cluster, fetch_max_bytes=64 * 1024, prefetch_bytes_max=cap) as c:
        c.assign([("t", 1)])
        await wait_until(lambda: c._budget.waiting == 1, what="the fetcher blocked on the prefetch bound")
        assert c._budget.used_bytes <= cap
        buffered = sum(chunk.size_bytes for chunk in c._parts[TopicPartition("t", 1)].chunks)
        assert 0 < buffered <= cap
        records = await poll_n(c, 1000, timeout_s=10.0)
        assert [r.offset for r in records] == list(range(1000))


async def test_offsets_endpoint_helpers(cluster: InProcessCluster) -> None:
    cluster.truncate_before("t", 0, 3)
    async with consumer(cluster) as c:
        assert await c.beginning_offsets([("t", 0)]) == {TP0: 3}
        assert await c.end_offsets([("t", 0), ("t", 1)]) == {TP0: 6, TopicPartition("t", 1): 0}
        by_time = await c.offsets_for_times({("t", 0): 2001, ("t", 1): 5})
        # The broker answers at batch granularity (docs/api.md "Offsets"): the batch of records 3-5 holds 2001.
        assert by_time == {TP0: 3, TopicPartition("t", 1): None}
        c.assign([("t", 0), ("t", 1)])
        await c.seek_to_end()
        assert await c.position("t", 0) == 6
        await c.seek_to_beginning(("t", 0))
        assert await c.position("t", 0) == 3
        with pytest.raises(KeyError):
            c.seek("x", 0, 1)
        with pytest.raises(ValueError):
            c.seek("t", 0, -1)


async def test_non_retriable_fetch_error_surfaces(cluster: InProcessCluster) -> None:
    cluster.inject("fetch", Fault("error", "INVALID_OFFSET"))
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        with pytest.raises(InvalidOffset):
            await poll_n(c, 1)


async def test_retriable_fetch_errors_are_retried(cluster: InProcessCluster) -> None:
    cluster.inject("fetch", Fault("error", "LEADER_NOT_AVAILABLE", times=2))
    cluster.inject("fetch", Fault("drop"))
    async with consumer(cluster) as c:
        c.assign([("t", 0)])
        assert len(await poll_n(c, 6)) == 6


async def test_reassign_keeps_positions_and_stop_is_clean(cluster: InProcessCluster) -> None:
    c = consumer(cluster)
    with pytest.raises(RuntimeError):
        await c.poll()
    c.assign([("t", 0)])
    await c.start()
    assert len(await poll_n(c, 6)) == 6
    c.assign([("t", 0), ("t", 1)])
    assert await c.position("t", 0) == 6
    c.assign([("t", 1)])
    assert c.assignment() == [TopicPartition("t", 1)]
    await c.stop()
    await c.stop()
    assert not c._tasks


async def test_no_long_poll_does_not_spin(cluster: InProcessCluster) -> None:
    def fetches() -> int:
        return sum(1 for r in cluster.requests if r.method == "GET" and r.path.endswith("/records"))

    async with consumer(cluster, max_wait_ms=0, retry_backoff_ms=50, retry_backoff_ms_max=50) as c:
        c.assign([("t", 1)])
        await wait_until(lambda: fetches() >= 1, what="the first fetch")
        before = fetches()
        assert await c.poll(timeout_ms=200) == []
        assert fetches() - before <= 10  # backed off between empty answers (25-50 ms each), no spinning


@pytest.mark.parametrize("codec", [1, 3, 4])  # gzip, lz4, zstd: as a Kafka client compresses
async def test_a_compressed_client_batch_is_served_as_sent_and_read_by_the_consumer(
        cluster: InProcessCluster, codec: int) -> None:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from raftmq.cluster.batch import iter_batches
    from raftmq.node.operations import Acks, FetchRequest, ProduceRequest

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(50):
        builder.append(i, timestamp=5000 + i, key=b"k%d" % i, value=b"v%d" % i * 20, headers=[("h", b"x")])
    produced = bytes(builder.build())
    leader = next(n for n in cluster.running() if n.broker.replicas.partitions.get(("t", 1)) is cluster.leader("t", 1))
    service = cluster.service(leader.broker_id)
    result = await service.produce(ProduceRequest("t", 1, produced, Acks.ALL, 5000))
    assert result.base_offset == 0
    fetched = (await service.fetch(FetchRequest("t", 1, 0, 1 << 20, 0))).batches
    [(header, served)] = list(iter_batches(fetched))
    assert header.codec == codec and bytes(served[16:]) == produced[16:], "stored and served as the client sent it"
    async with consumer(cluster) as c:
        c.assign([("t", 1)])
        records = await poll_n(c, 50)
    assert [(r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in records] == \
        [(i, 5000 + i, b"k%d" % i, b"v%d" % i * 20, (("h", b"x"),)) for i in range(50)]
