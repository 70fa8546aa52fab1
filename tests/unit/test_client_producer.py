"""Producer against real brokers: batching, ordering, routing, retries, idempotence, outcomes, lifecycle.

Method: real HTTP to an in-process cluster of real brokers (tests/inprocess.py: the broker's own service,
validation and producer dedup on in-memory replication), faults injected per request at the HTTP edge.
"Stored once" and "same bytes resent" are checked on what the leader's log holds and on the request log.
No sleeps: tests wait on futures or on conditions with deadlines; timeouts are short so the module runs in
a few seconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from raftmq.client import DeliveryReport, Producer
from raftmq.cluster.batch import decode_records, iter_stored, parse_batch_header
from raftmq.cluster.errors import (
    BufferExhausted,
    ClientTimeout,
    ConnectionFailed,
    CorruptBatch,
    InvalidAcks,
    NotEnoughReplicas,
    OutcomeUnknown,
    ProducerClosed,
    RecordTooLarge,
    RequestTimedOut,
    UnknownTopicOrPartition,
)
from raftmq.cluster.routing import partition_for

from tests.inprocess import Fault, InProcessCluster, wait_until

FAST: dict[str, Any] = {"request_timeout_ms": 1000, "delivery_timeout_ms": 3000, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 20, "rng": random.Random(1)}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(tmp_path, brokers=2) as brokers:
        await brokers.create_topic("t", 3)
        yield brokers


def producer(cluster: InProcessCluster, **options: Any) -> Producer:
    return Producer(cluster.urls, **{**FAST, **options})


def headers_of(cluster: InProcessCluster) -> list[Any]:
    return [parse_batch_header(r.body["batch"]) for r in cluster.produce_requests()]


async def gather(futures: list[asyncio.Future[DeliveryReport]],
                 timeout_s: float = 5.0) -> list[DeliveryReport]:
    return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)


# --- batching and routing ----------------------------------------------------------------------------------


async def test_linger_collects_records_into_one_batch(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=200) as p:
        futures = [await p.send("t", b"v%d" % i, partition=0) for i in range(50)]
        reports = await gather(futures)
    assert [r.offset for r in reports] == list(range(50))
    assert {r.status for r in reports} == {"ok"} and {r.leader_id for r in reports} == {1}
    assert len(cluster.produce_requests()) == 1
    assert p.counters.batches == 1 and p.counters.acked == 50 and p.counters.sent == 50


async def test_batch_bytes_seals_batches(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=10_000, batch_bytes=1024) as p:
        futures = [await p.send("t", b"x" * 100, partition=1) for i in range(40)]
        await p.flush(5.0)
        reports = await gather(futures)
    assert [r.offset for r in reports] == list(range(40))
    sizes = [len(r.body["batch"]) for r in cluster.produce_requests()]
    assert len(sizes) >= 4 and max(sizes) <= 1024
    assert cluster.stored("t", 1) == [(i, None, b"x" * 100) for i in range(40)]


async def test_linger_zero_sends_at_once(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=0) as p:
        for i in range(3):
            report = await p.send_and_wait("t", b"v", partition=2)
            assert report.offset == i
    assert len(cluster.produce_requests()) == 3


async def test_keys_map_to_partition_for(cluster: InProcessCluster) -> None:
    keys = [b"user-%d" % i for i in range(30)]
    async with producer(cluster) as p:
        first = await gather([await p.send("t", b"a", key=k) for k in keys])
        second = await gather([await p.send("t", b"b", key=k.decode()) for k in keys])  # str keys: UTF-8
    for key, r1, r2 in zip(keys, first, second, strict=True):
        assert r1.partition == r2.partition == partition_for(key, 3)


async def test_keyless_records_are_sticky_per_batch_and_spread(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=10_000, batch_bytes=600) as p:
        futures = [await p.send("t", b"x" * 50) for _ in range(60)]
        await p.flush(5.0)
        reports = await gather(futures)
    # Consecutive records share a partition until the batch seals, then move on.
    changes = sum(1 for a, b in zip(reports, reports[1:], strict=False) if a.partition != b.partition)
    assert 3 <= changes <= len(cluster.produce_requests())
    assert {r.partition for r in reports} == {0, 1, 2}


async def test_order_per_partition_survives_retries(cluster: InProcessCluster) -> None:
    # Faults on some requests; every partition must still hold its records in send order, once.
    cluster.inject("produce", Fault("error", "OUTCOME_UNKNOWN", apply=True, times=2))
    cluster.inject("produce", Fault("drop", apply=True))
    cluster.inject("produce", Fault("error", "NOT_ENOUGH_REPLICAS"))
    async with producer(cluster, linger_ms=1, batch_bytes=400) as p:
        futures = [await p.send("t", b"%d" % i, key=b"k%d" % (i % 5)) for i in range(300)]
        reports = await gather(futures, 10.0)
    assert {r.status for r in reports} == {"ok"}
    for partition in range(3):
        values = [int(v or b"") for _, _, v in cluster.stored("t", partition)]
        expected = [i for i in range(300) if partition_for(b"k%d" % (i % 5), 3) == partition]
        assert values == expected
    assert p.counters.retries >= 4


async def test_headers_and_timestamps_are_stored(cluster: InProcessCluster) -> None:
    async with producer(cluster) as p:
        await p.send_and_wait("t", "é", key="k", headers={"a": "1", "b": None}, partition=0, timestamp_ms=5)
        # An older timestamp than the open batch's first one starts a new batch (deltas must be >= 0).
        f1 = await p.send("t", b"x", partition=0, timestamp_ms=100)
        f2 = await p.send("t", b"y", partition=0, timestamp_ms=50)
        await gather([f1, f2])
    log = cluster.leader("t", 0).state_machine.log
    records = [r for h, chunk in iter_stored(log.read(0, 1 << 20)) for r in decode_records(chunk, h)]
    assert records[0].headers == (("a", b"1"), ("b", None)) and records[0].value == "é".encode()
    assert [r.timestamp_ms for r in records] == [5, 100, 50]


# --- NOT_LEADER and metadata --------------------------------------------------------------------------------


async def test_not_leader_reroutes_using_details(cluster: InProcessCluster) -> None:
    async with producer(cluster) as p:
        await p.send_and_wait("t", b"a", partition=0)
        cluster.set_leader("t", 0, 2)
        cluster.requests.clear()
        report = await p.send_and_wait("t", b"b", partition=0)
    assert report.ok and report.offset == 1 and report.leader_id == 2
    sent = [(r.broker_id, r.path) for r in cluster.requests]
    # Re-routed straight to broker 2 from the NOT_LEADER details: no metadata round trip in between.
    assert sent == [(1, "/v1/topics/t/partitions/0/records"), (2, "/v1/topics/t/partitions/0/records")]


async def test_refresh_metadata_errors_refresh_before_retry(cluster: InProcessCluster) -> None:
    async with producer(cluster) as p:
        await p.send_and_wait("t", b"a", partition=0)
        cluster.requests.clear()
        cluster.inject("produce", Fault("error", "LEADER_NOT_AVAILABLE"))
        await p.send_and_wait("t", b"b", partition=0)
    paths = [r.path for r in cluster.requests]
    assert paths[0].endswith("/records") and paths[1] == "/v1/metadata" and paths[2].endswith("/records")


async def test_unknown_topic_and_partition_raise_from_send(cluster: InProcessCluster) -> None:
    async with producer(cluster, request_timeout_ms=200) as p:
        with pytest.raises(UnknownTopicOrPartition):
            await p.send("missing", b"x")
        with pytest.raises(UnknownTopicOrPartition):
            await p.send("t", b"x", partition=3)
        await cluster.create_topic("late", 1)  # appears after the producer started: found by a refresh
        assert (await p.send_and_wait("late", b"x")).offset == 0


# --- idempotence and retry dedup ----------------------------------------------------------------------------


async def test_retry_after_outcome_unknown_resends_same_bytes_and_dedups(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "OUTCOME_UNKNOWN", apply=True))
    async with producer(cluster) as p:
        futures = [await p.send("t", b"v%d" % i, partition=0) for i in range(5)]
        reports = await gather(futures)
    requests = cluster.produce_requests()
    assert len(requests) == 2 and requests[0].body["batch"] == requests[1].body["batch"]
    assert [r.offset for r in reports] == [0, 1, 2, 3, 4]
    assert all(r.status == "ok" and r.duplicate for r in reports)
    assert len(cluster.stored("t", 0)) == 5  # stored once
    header = parse_batch_header(requests[0].body["batch"])
    assert header.producer_id == p.producer_id and header.base_sequence == 0


async def test_sequences_count_records_per_partition(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=0) as p:
        for count in (3, 2):
            await gather([await p.send("t", b"x", partition=0) for _ in range(count)])
        await p.send_and_wait("t", b"x", partition=1)
    by_partition: dict[int, list[int]] = {}
    for request, header in zip(cluster.produce_requests(), headers_of(cluster), strict=True):
        by_partition.setdefault(int(request.path.split("/")[5]), []).append(header.base_sequence)
    running = 0
    for request, header in zip(cluster.produce_requests(), headers_of(cluster), strict=True):
        if request.path.split("/")[5] == "0":
            assert header.base_sequence == running
            running += header.record_count
    assert by_partition[1] == [0]


async def test_duplicate_sequence_is_ok_without_offset(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "DUPLICATE_SEQUENCE"))
    async with producer(cluster) as p:
        report = await p.send_and_wait("t", b"x", partition=0)
    assert report.status == "ok" and report.offset is None and report.duplicate


async def test_out_of_order_sequence_renumbers_under_new_producer_id(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "OUT_OF_ORDER_SEQUENCE"))
    async with producer(cluster) as p:
        first_id = p.producer_id
        await p.send_and_wait("t", b"a", partition=1)  # rejected once (definite), then renumbered
        assert p.producer_id != first_id and p.counters.producer_id_resets == 1
    headers = headers_of(cluster)
    assert [(h.producer_id, h.base_sequence) for h in headers] == [(first_id, 0), (p.producer_id, 0)]
    assert len(cluster.stored("t", 1)) == 1


async def test_unknown_producer_id_after_indefinite_attempt_is_unknown(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "REQUEST_TIMED_OUT"))
    cluster.inject("produce", Fault("error", "UNKNOWN_PRODUCER_ID"))
    async with producer(cluster) as p:
        first_id = p.producer_id
        future = await p.send("t", b"a", partition=0)
        report = await asyncio.wait_for(future, 5.0)
        assert report.status == "unknown" and isinstance(report.error, RequestTimedOut)
        # The next batch of the partition starts over under a new producer id.
        assert (await p.send_and_wait("t", b"b", partition=0)).ok
    last = headers_of(cluster)[-1]
    assert last.producer_id != first_id and last.base_sequence == 0


async def test_non_idempotent_batches_carry_no_producer_id(cluster: InProcessCluster) -> None:
    async with producer(cluster, idempotent=False) as p:
        await p.send_and_wait("t", b"x", partition=0)
        assert p.producer_id == -1
    header = headers_of(cluster)[0]
    assert (header.producer_id, header.base_sequence) == (-1, -1)
    assert not cluster.requests_for("/v1/producers")


@pytest.mark.parametrize("acks", [0, 1])
async def test_acks_0_and_1_answer_without_offsets(cluster: InProcessCluster, acks: int) -> None:
    async with producer(cluster, acks=acks) as p:
        report = await p.send_and_wait("t", b"x", partition=0)
    assert report.ok and report.offset is None
    assert cluster.produce_requests()[0].body["acks"] == acks


def test_invalid_acks_rejected() -> None:
    with pytest.raises(InvalidAcks):
        Producer(["http://127.0.0.1:1"], acks=2)  # type: ignore[arg-type]


# --- outcome classification ---------------------------------------------------------------------------------


async def test_non_retriable_error_fails_at_once(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "CORRUPT_BATCH"))
    async with producer(cluster) as p:
        future = await p.send("t", b"x", partition=0)
        report = await asyncio.wait_for(future, 5.0)
        with pytest.raises(CorruptBatch):
            report.raise_for_status()
    assert report.status == "failed" and len(cluster.produce_requests()) == 1
    assert p.counters.failed == 1


async def test_unknown_then_definite_failure_is_unknown(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "OUTCOME_UNKNOWN"))
    cluster.inject("produce", Fault("error", "CORRUPT_BATCH"))
    async with producer(cluster) as p:
        report = await asyncio.wait_for(await p.send("t", b"x", partition=0), 5.0)
    assert report.status == "unknown" and isinstance(report.error, OutcomeUnknown)
    assert p.counters.unknown == 1 and p.counters.failed == 0


async def test_retriable_definite_errors_until_deadline_fail(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("error", "NOT_ENOUGH_REPLICAS", times=1000))
    async with producer(cluster, delivery_timeout_ms=300) as p:
        report = await asyncio.wait_for(await p.send("t", b"x", partition=0), 5.0)
    assert report.status == "failed" and isinstance(report.error, NotEnoughReplicas)
    assert len(cluster.produce_requests()) >= 2  # retried (backoff 5-20 ms) until the deadline


async def test_hung_broker_gives_unknown(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("hang", times=1000))
    async with producer(cluster, request_timeout_ms=100, delivery_timeout_ms=250) as p:
        reports = await gather([await p.send("t", b"x", partition=0) for _ in range(3)])
    assert {r.status for r in reports} == {"unknown"}
    assert all(isinstance(r.error, ClientTimeout) for r in reports)


@pytest.mark.parametrize("acks", ["all", 1])
async def test_a_silent_leader_is_left_for_its_successor_without_waiting_for_the_request_timeout(
        cluster: InProcessCluster, acks: str | int) -> None:
    """A paused leader neither answers nor refuses. The producer asks the other brokers, learns that leadership
    moved, and resends there (the same bytes) long before its 60 s request timeout; the held request is never
    released, so only the probe can have found the new leader."""
    cluster.set_leader("t", 0, 1)
    await wait_until(lambda: cluster.leader("t", 0) is cluster.handles("t", 0)[0], what="broker 1 leading t/0")
    async with producer(cluster, acks=acks, request_timeout_ms=60_000, delivery_timeout_ms=120_000) as p:
        cluster.inject("produce", Fault("hang", broker_id=1, times=1000))
        cluster.inject("topics", Fault("hang", broker_id=1, times=1000))  # a paused broker answers nothing
        future = await p.send("t", b"x", partition=0)
        await wait_until(lambda: len(cluster.produce_requests()) == 1, what="the request held at broker 1")
        cluster.set_leader("t", 0, 2)
        report = await asyncio.wait_for(future, 10.0)
    assert report.ok and report.leader_id == 2 and report.offset == (0 if acks == "all" else None)
    requests = cluster.produce_requests()
    assert [r.broker_id for r in requests] == [1, 2] and requests[0].body["batch"] == requests[1].body["batch"]
    assert cluster.stored("t", 0) == [(0, None, b"x")]


async def test_a_slow_leader_that_keeps_leading_is_waited_for(cluster: InProcessCluster) -> None:
    """The probe finds the same leader: the producer keeps waiting for its answer and sends nothing twice."""
    async with producer(cluster, request_timeout_ms=60_000) as p:
        cluster.hold_produce()
        future = await p.send("t", b"x", partition=0)
        await wait_until(lambda: len(cluster.requests_for("/v1/topics/t", "GET")) >= 2,
                         what="the producer asking the brokers who leads")
        cluster.release_produce()
        report = await asyncio.wait_for(future, 10.0)
    assert report.ok and report.offset == 0 and len(cluster.produce_requests()) == 1


async def test_unreachable_leader_fails_definitely(cluster: InProcessCluster) -> None:
    async with producer(cluster, delivery_timeout_ms=300) as p:
        await cluster.brokers[1].stop()  # leader of t/1; requests are refused before they are sent
        report = await asyncio.wait_for(await p.send("t", b"x", partition=1), 5.0)
    assert report.status == "failed" and isinstance(report.error, ConnectionFailed | ClientTimeout)
    assert report.error.details["sent"] is False


async def test_outcome_unknown_then_success_is_ok(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("drop"))  # dropped before the append: retry stores it (not a duplicate)
    async with producer(cluster) as p:
        report = await p.send_and_wait("t", b"x", partition=2)
    assert report.ok and not report.duplicate and report.offset == 0


# --- buffer, flush, stop ------------------------------------------------------------------------------------


async def test_buffer_backpressure_unblocks_when_batches_complete(cluster: InProcessCluster) -> None:
    cluster.hold_produce()
    async with producer(cluster, linger_ms=0, batch_bytes=512, buffer_bytes=1024,
                        delivery_timeout_ms=10_000, request_timeout_ms=10_000) as p:
        futures = [await p.send("t", b"x" * 200, partition=0) for _ in range(4)]  # ~900 bytes buffered
        waiting = asyncio.create_task(p.send("t", b"y" * 200, partition=0))
        await wait_until(lambda: p._buffer.waiting == 1, what="send() waiting for buffer space")
        assert not waiting.done()
        cluster.release_produce()  # batches complete, buffer space returns, the waiting send proceeds
        futures.append(await asyncio.wait_for(waiting, 5.0))
        assert {r.status for r in await gather(futures)} == {"ok"}


async def test_buffer_full_until_deadline_raises_buffer_exhausted(cluster: InProcessCluster) -> None:
    cluster.hold_produce()
    async with producer(cluster, linger_ms=0, batch_bytes=512, buffer_bytes=1024,
                        delivery_timeout_ms=300, request_timeout_ms=10_000) as p:
        await p.send("t", b"x" * 400, partition=1)
        await p.send("t", b"x" * 400, partition=1)
        with pytest.raises(BufferExhausted):
            await p.send("t", b"x" * 400, partition=1)
        cluster.release_produce()


async def test_record_too_large_and_closed(cluster: InProcessCluster) -> None:
    p = producer(cluster)
    with pytest.raises(ProducerClosed):
        await p.send("t", b"x")  # not started
    async with p:
        with pytest.raises(RecordTooLarge):
            await p.send("t", b"x" * (1024 * 1024 + 1))
        with pytest.raises(TypeError):
            await p.send("t", 12)  # type: ignore[arg-type]
    with pytest.raises(ProducerClosed):
        await p.send("t", b"x")


async def test_flush_sends_without_linger(cluster: InProcessCluster) -> None:
    async with producer(cluster, linger_ms=60_000) as p:
        futures = [await p.send("t", b"x", partition=p_) for p_ in (0, 1, 2)]
        await p.flush(5.0)
        assert all(f.done() for f in futures)
        await p.flush(1.0)  # nothing pending: returns at once


async def test_flush_timeout_raises(cluster: InProcessCluster) -> None:
    cluster.hold_produce()
    async with producer(cluster) as p:
        await p.send("t", b"x", partition=0)
        with pytest.raises(ClientTimeout):
            await p.flush(0.05)
        cluster.release_produce()


async def test_stop_resolves_every_future(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("hang", times=1000))
    p = producer(cluster, linger_ms=0, batch_bytes=300, delivery_timeout_ms=60_000, request_timeout_ms=30_000)
    await p.start()
    futures = [await p.send("t", b"x" * 100, partition=i % 3) for i in range(12)]
    await wait_until(lambda: len(cluster.produce_requests()) == 3, what="one request in flight per partition")
    await asyncio.wait_for(p.stop(timeout_s=0.1), 5.0)
    assert all(f.done() for f in futures)
    reports = [f.result() for f in futures]
    in_flight = [r for r in reports if r.status == "unknown"]
    queued = [r for r in reports if r.status == "failed"]
    assert in_flight and queued and len(in_flight) + len(queued) == 12
    assert all(isinstance(r.error, ProducerClosed) for r in queued)
    assert p.counters.unknown + p.counters.failed == 12
    await p.stop()  # idempotent


async def test_on_delivery_callbacks_get_every_report_once_without_futures(cluster: InProcessCluster) -> None:
    reports: list[DeliveryReport] = []
    async with producer(cluster, linger_ms=0) as p:
        results = [await p.send("t", b"v%d" % i, partition=0, on_delivery=reports.append) for i in range(5)]
        await p.flush(5.0)
        assert results == [None] * 5  # no future is made on this path
        assert [r.offset for r in reports] == list(range(5)) and {r.status for r in reports} == {"ok"}
        assert p.counters.acked == 5
        cluster.inject("produce", Fault("error", "CORRUPT_BATCH"))
        await p.send("t", b"bad", partition=1, on_delivery=reports.append)
        await p.flush(5.0)
    assert len(reports) == 6 and reports[-1].status == "failed" and isinstance(reports[-1].error, CorruptBatch)


async def test_a_raising_on_delivery_callback_does_not_break_the_producer(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int | None] = []

    def explode(report: DeliveryReport) -> None:
        seen.append(report.offset)
        raise RuntimeError("user bug")

    async with producer(cluster, linger_ms=0) as p:
        for _ in range(3):
            await p.send("t", b"x", partition=2, on_delivery=explode)
        after = await p.send("t", b"y", partition=2)
        assert (await asyncio.wait_for(after, 5.0)).offset == 3
    assert seen == [0, 1, 2] and p.counters.acked == 4
    assert "on_delivery callback" in caplog.text and "user bug" in caplog.text


async def test_stop_calls_every_on_delivery_callback(cluster: InProcessCluster) -> None:
    cluster.inject("produce", Fault("hang", times=1000))
    reports: list[DeliveryReport] = []
    p = producer(cluster, linger_ms=0, batch_bytes=300, delivery_timeout_ms=60_000, request_timeout_ms=30_000)
    await p.start()
    for i in range(6):
        await p.send("t", b"x" * 100, partition=i % 3, on_delivery=reports.append)
    await wait_until(lambda: len(cluster.produce_requests()) == 3, what="one request in flight per partition")
    await asyncio.wait_for(p.stop(timeout_s=0.1), 5.0)
    assert len(reports) == 6 and {r.status for r in reports} <= {"unknown", "failed"}


async def test_stop_flushes_pending_records(cluster: InProcessCluster) -> None:
    p = producer(cluster, linger_ms=60_000)
    await p.start()
    futures = [await p.send("t", b"x", partition=0) for _ in range(10)]
    await p.stop()
    assert [f.result().offset for f in futures] == list(range(10))


async def test_start_fails_without_brokers() -> None:
    p = Producer(["http://127.0.0.1:9"], request_timeout_ms=300)
    with pytest.raises((ConnectionFailed, ClientTimeout)):
        await p.start()
    await p.stop()


def test_idempotence_needs_acks_all() -> None:
    """As in Kafka: with acks 0/1 the broker answers before it decides whether a sequence is accepted."""
    from raftmq.client import Producer

    assert Producer(["http://127.0.0.1:1"], acks="all").idempotent is True
    assert Producer(["http://127.0.0.1:1"], acks=1).idempotent is False
    assert Producer(["http://127.0.0.1:1"], acks=0, idempotent=False).idempotent is False
    with pytest.raises(ValueError, match="acks='all'"):
        Producer(["http://127.0.0.1:1"], acks=1, idempotent=True)


def test_retries_between_leaders_back_off_briefly() -> None:
    """While a partition has no leader, a retry waits at most client_leader_retry_backoff_ms_max, whatever
    the retry count; other retriable errors keep the growing backoff."""
    from raftmq.client.producer import retry_pause_s
    from raftmq.cluster import limits

    rng = random.Random(3)
    cap = limits.client_leader_retry_backoff_ms_max / 1000
    assert all(retry_pause_s(r, base_ms=100, max_ms=2000, leaderless=True, rng=rng) <= cap for r in range(1, 40))
    assert max(retry_pause_s(r, base_ms=100, max_ms=2000, leaderless=False, rng=rng) for r in range(5, 9)) > cap
