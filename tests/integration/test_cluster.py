"""A real three-broker cluster on loopback (separate processes, pysyncobj, real sockets and disks).

Goals (issue 2): every ack level produces and reads back; SIGKILL of a partition leader during a stream of
acks=all produces loses nothing acknowledged and duplicates nothing, and the killed broker catches up to a
byte-identical log; SIGKILL of every broker mid-stream keeps every acks=all record exactly once; an
idempotent retry is stored once; a follower that missed 100k records catches up by itself; min_insync_replicas
fails fast; a torn tail is cut on restart. Method: the real client library, then raw fetches of each
replica's own log (``replica=any``) compared batch by batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from raftmq.client import Admin, Consumer, Producer
from raftmq.cluster import batch as batches
from raftmq.cluster.errors import ProducerFenced
from raftmq.deploy.local_cluster import LocalCluster, wait_until

from tests.conftest import wait_for_condition

pytestmark = pytest.mark.cluster
FAST_CLIENT = {"request_timeout_ms": 3000, "delivery_timeout_ms": 30000, "retry_backoff_ms": 50}


async def _create_topic(cluster: LocalCluster, name: str, partitions: int = 1, **config: Any) -> None:
    async with Admin(cluster.urls) as admin:  # type: ignore[attr-defined]
        await admin.create_topic(name, partitions=partitions, config=config or None)
        await admin.wait_for_topic(name, timeout_s=20)


async def _restart_and_catch_up(session: aiohttp.ClientSession, cluster: LocalCluster, broker_id: int, topic: str,
                                *, end: int, timeout_s: float) -> None:
    """Start a stopped broker again and wait until its own replica of ``topic``/0 reaches ``end``."""
    cluster.start([broker_id])
    await asyncio.to_thread(cluster.wait_ready, [broker_id], timeout_s=30)

    async def caught_up() -> bool:
        fetched = await _fetched_or_none(session, cluster.nodes[broker_id].url, topic, 0)
        return fetched is not None and fetched[1] == end

    await wait_for_condition(caught_up, timeout_s=timeout_s, what=f"broker {broker_id} caught up on {topic}")


class _ReplicaNotReady(Exception):
    """The broker answered 503 BROKER_NOT_READY: it restarted and the partition is still opening."""


async def _fetched_or_none(session: aiohttp.ClientSession, url: str, topic: str, partition: int, *,
                           any_replica: bool = True) -> tuple[list[bytes], int] | None:
    """``_fetch_raw`` for conditions polled across a restart: None while the replica is still opening."""
    try:
        return await _fetch_raw(session, url, topic, partition, any_replica=any_replica)
    except _ReplicaNotReady:
        return None


async def _fetch_raw(session: aiohttp.ClientSession, url: str, topic: str, partition: int, *,
                     any_replica: bool = True) -> tuple[list[bytes], int]:
    """Every stored batch of one broker's replica, as raw bytes, and its high watermark."""
    stored: list[bytes] = []
    offset = 0
    high_watermark = 0
    while True:
        params = {"offset": str(offset), "max_bytes": str(4 * 1024 * 1024)}
        if any_replica:
            params["replica"] = "any"
        async with session.get(f"{url}/v1/topics/{topic}/partitions/{partition}/records", params=params,
                               headers={"Accept": "application/msgpack"}) as response:
            body = msgpack.unpackb(await response.read())
            if response.status == 503 and body.get("error", {}).get("code") == "BROKER_NOT_READY":
                raise _ReplicaNotReady(body)
            assert response.status == 200, body
        high_watermark = body["high_watermark"]
        chunks = list(batches.iter_batches(body["batches"]))
        if not chunks:
            return stored, high_watermark
        for header, chunk in chunks:
            batches.check_batch_crc(chunk, header)
            stored.append(bytes(chunk))
            offset = header.next_offset


def _values(stored: list[bytes]) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(r.offset, r.key, r.value) for chunk in stored for r in batches.decode_records(chunk)]


async def _consume_all(cluster: LocalCluster, topic: str, partitions: int) -> dict[int, list[tuple[int, bytes]]]:
    out: dict[int, list[tuple[int, bytes]]] = {}
    async with Consumer(cluster.urls, max_wait_ms=100, auto_offset_reset="earliest") as consumer:
        ends = await consumer.end_offsets([(topic, p) for p in range(partitions)])
        consumer.assign([(topic, p) for p in range(partitions)])
        for p in range(partitions):
            consumer.seek(topic, p, 0)
            out[p] = []
        deadline = time.monotonic() + 60
        while any(len(out[p]) < ends[(topic, p)] for p in range(partitions)):
            assert time.monotonic() < deadline, "consumer did not reach the high watermarks"
            for record in await consumer.poll(timeout_ms=500, max_records=5000):
                out[record.partition].append((record.offset, record.value))
    return out


class StreamProducer:
    """Sends ``count`` unique values to one partition with acks=all, as fast as the cluster takes them,
    and remembers every report."""

    def __init__(self, cluster: LocalCluster, topic: str, *, partition: int = 0, count: int, prefix: str) -> None:
        self.cluster, self.topic, self.partition, self.count, self.prefix = cluster, topic, partition, count, prefix
        self.reports: list[tuple[bytes, Any]] = []
        self.acked = 0

    async def run(self) -> None:
        async with Producer(self.cluster.urls, acks="all", linger_ms=2, **FAST_CLIENT) as producer:
            pending = []
            for index in range(self.count):
                value = f"{self.prefix}-{index:06d}".encode()
                future = await producer.send(self.topic, value, partition=self.partition)
                future.add_done_callback(self._count)
                pending.append((value, future))
                if len(pending) % 50 == 0:
                    await asyncio.sleep(0)  # let the sender run; the buffer bounds the backlog anyway
            for value, future in pending:
                self.reports.append((value, await future))

    def _count(self, future: asyncio.Future[Any]) -> None:
        if future.result().status == "ok":
            self.acked += 1

    def acked_values(self) -> list[bytes]:
        return [value for value, report in self.reports if report.status == "ok"]


def _assert_exactly_once_in_order(acked: list[bytes], stored: list[bytes], all_sent: list[bytes]) -> None:
    """Every acked value appears exactly once; nothing unknown appears twice; order follows send order."""
    positions: dict[bytes, int] = {}
    for index, value in enumerate(stored):
        assert value not in positions, f"{value!r} stored twice"
        positions[value] = index
    missing = [v for v in acked if v not in positions]
    assert not missing, f"{len(missing)} acked records lost, e.g. {missing[:3]}"
    order = {value: index for index, value in enumerate(all_sent)}
    assert all(v in order for v in stored), "a stored value was never sent"
    ranks = [order[v] for v in stored]
    assert ranks == sorted(ranks), "records are not in send order"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client_session:
        yield client_session


async def test_each_ack_level_produces_and_reads_back(shared_cluster: LocalCluster) -> None:
    await _create_topic(shared_cluster, "acks", partitions=3)
    sent: dict[str, list[bytes]] = {}
    for acks in ("0", "1", "all"):
        async with Producer(shared_cluster.urls, acks=acks, **FAST_CLIENT) as producer:  # type: ignore[arg-type]
            futures = [await producer.send("acks", f"{acks}-{i}".encode(), key=f"k{i % 7}".encode())
                       for i in range(300)]
            reports = [await f for f in futures]
        assert all(r.status == "ok" for r in reports), {r.status for r in reports}
        if acks == "all":
            assert all(r.offset is not None for r in reports)
        sent[acks] = [f"{acks}-{i}".encode() for i in range(300)]
    # acks=0 and 1 return before commit: wait until the leaders have applied everything, then read.
    expected = {v for values in sent.values() for v in values}

    async def everything_readable() -> bool:
        stored = await _consume_all(shared_cluster, "acks", 3)
        return {v for records in stored.values() for _, v in records} >= expected

    await wait_for_condition(everything_readable, timeout_s=30, what="all records readable")
    stored = await _consume_all(shared_cluster, "acks", 3)
    values = [v for records in stored.values() for _, v in records]
    assert len(values) == len(set(values)) == 900


async def test_kill_leader_during_acks_all_stream(own_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    cluster = own_cluster
    await _create_topic(cluster, "failover")
    stream = StreamProducer(cluster, "failover", count=4000, prefix="f")
    task = asyncio.create_task(stream.run())
    await wait_for_condition(lambda: stream.acked >= 500 or task.done(), timeout_s=30, what="500 acks before the kill")
    old_leader = cluster.leader_of("failover", 0)
    assert old_leader is not None
    cluster.kill(old_leader)
    killed_at = time.monotonic()
    new_leader = await asyncio.to_thread(cluster.wait_for_leader, "failover", 0, timeout_s=20,
                                         among=[b for b in cluster.nodes if b != old_leader])
    failover_s = time.monotonic() - killed_at
    await asyncio.wait_for(task, 120)
    assert new_leader != old_leader and failover_s < 10
    acked = stream.acked_values()
    assert len(acked) > 1000, f"only {len(acked)} acks: the producer did not carry on"

    stored_batches, high_watermark = await _fetch_raw(session, cluster.nodes[new_leader].url, "failover", 0,
                                                      any_replica=False)
    stored = [value for _, _, value in _values(stored_batches)]
    assert len(stored) == high_watermark
    _assert_exactly_once_in_order(acked, stored, [v for v, _ in stream.reports])  # type: ignore[misc]

    # The killed broker restarts and converges to the same log, batch for batch (byte-identical).
    await _restart_and_catch_up(session, cluster, old_leader, "failover", end=high_watermark, timeout_s=60)
    replicas = {b: (await _fetch_raw(session, n.url, "failover", 0))[0] for b, n in cluster.nodes.items()}
    reference = replicas[new_leader]
    for broker_id, replica in replicas.items():
        assert replica == reference, f"broker {broker_id}'s log differs from the leader's"


async def test_kill_all_brokers_mid_stream(own_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    cluster = own_cluster
    await _create_topic(cluster, "crash", partitions=2)
    stream = StreamProducer(cluster, "crash", count=3000, prefix="c")
    task = asyncio.create_task(stream.run())
    await wait_for_condition(lambda: stream.acked >= 400 or task.done(), timeout_s=30, what="400 acks")
    for broker_id in cluster.nodes:
        cluster.kill(broker_id)
    acked_before_restart = set(stream.acked_values()) | {v for v, r in stream.reports if r.status == "ok"}
    cluster.start()
    await asyncio.to_thread(cluster.wait_ready, timeout_s=60)
    await asyncio.wait_for(task, 120)
    acked = stream.acked_values()
    assert acked_before_restart <= set(acked)
    leader = await asyncio.to_thread(cluster.wait_for_leader, "crash", 0, timeout_s=20)

    async def leader_has_everything() -> bool:
        fetched = await _fetched_or_none(session, cluster.nodes[leader].url, "crash", 0, any_replica=False)
        return fetched is not None and {v for _, _, v in _values(fetched[0])} >= set(acked)

    await wait_for_condition(leader_has_everything, timeout_s=30, what="every acked record after the restart")
    stored_batches, _ = await _fetch_raw(session, cluster.nodes[leader].url, "crash", 0, any_replica=False)
    stored = [value for _, _, value in _values(stored_batches)]
    _assert_exactly_once_in_order(acked, stored, [v for v, _ in stream.reports])  # type: ignore[misc]


async def test_idempotent_retry_is_stored_once(shared_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    cluster = shared_cluster
    await _create_topic(cluster, "dedup")
    leader = cluster.wait_for_leader("dedup", 0)
    url = f"{cluster.nodes[leader].url}/v1/topics/dedup/partitions/0/records"
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    async with session.post(f"{cluster.nodes[leader].url}/v1/producers", headers=headers) as response:
        producer_id = msgpack.unpackb(await response.read())["producer_id"]

    async def send(batch: bytes) -> dict[str, Any]:
        async with session.post(url, data=msgpack.packb({"acks": "all", "batch": batch}), headers=headers) as answer:
            body = msgpack.unpackb(await answer.read())
            return {"status": answer.status, **body}

    first = batches.encode_batch([(b"k", b"once-%d" % i, [], 1) for i in range(5)], producer_id=producer_id,
                                 base_sequence=0)
    second = batches.encode_batch([(b"k", b"twice-%d" % i, [], 1) for i in range(3)], producer_id=producer_id,
                                  base_sequence=5)
    answer_1 = await send(first)
    answer_2 = await send(second)
    retry_1 = await send(first)  # a retry after, say, a timeout: same producer id and sequence
    retry_2 = await send(second)
    assert answer_1["status"] == answer_2["status"] == 200
    assert retry_1["status"] == retry_2["status"] == 200
    assert retry_1["duplicate"] and retry_1["base_offset"] == answer_1["base_offset"]
    assert retry_2["duplicate"] and retry_2["base_offset"] == answer_2["base_offset"]
    gap = batches.encode_batch([(b"k", b"gap", [], 1)], producer_id=producer_id, base_sequence=100)
    gap_answer = await send(gap)
    assert gap_answer["status"] == 409 and gap_answer["error"]["code"] == "OUT_OF_ORDER_SEQUENCE"
    stored, high_watermark = await _fetch_raw(session, cluster.nodes[leader].url, "dedup", 0, any_replica=False)
    values = [value for _, _, value in _values(stored)]
    assert values == [b"once-%d" % i for i in range(5)] + [b"twice-%d" % i for i in range(3)]
    assert high_watermark == 8


async def test_min_insync_replicas_fails_fast(own_cluster: LocalCluster) -> None:
    cluster = own_cluster
    await _create_topic(cluster, "strict", min_insync_replicas=3)
    async with Producer(cluster.urls, acks="all", **FAST_CLIENT) as producer:
        assert (await producer.send_and_wait("strict", b"all-three")).status == "ok"
        leader = cluster.leader_of("strict", 0)
        follower = next(b for b in cluster.nodes if b != leader)
        cluster.kill(follower)
    async with aiohttp.ClientSession() as client_session:
        url = f"{cluster.nodes[leader].url}/v1/topics/strict/partitions/0/records"  # type: ignore[index]

        async def not_enough_replicas() -> bool:
            started = time.monotonic()
            async with client_session.post(url, json={"acks": "all", "records": [{"value": "x"}]}) as response:
                body = await response.json()
            return response.status == 503 and body["error"]["code"] == "NOT_ENOUGH_REPLICAS" \
                and time.monotonic() - started < 1.0

        # The follower drops out of the in-sync set within replica_lag_time_max (2 s); from then on the
        # request fails at once instead of hanging, and nothing is appended.
        await wait_for_condition(not_enough_replicas, timeout_s=15, what="NOT_ENOUGH_REPLICAS")
        async with client_session.post(url, json={"acks": 1, "records": [{"value": "one"}]}) as response:
            assert response.status == 200  # acks=1 does not need the in-sync replicas


async def test_follower_catches_up_after_missing_100k_records(own_cluster: LocalCluster,
                                                                session: aiohttp.ClientSession) -> None:
    cluster = own_cluster
    await _create_topic(cluster, "catchup")
    leader = cluster.wait_for_leader("catchup", 0)
    follower = next(b for b in cluster.nodes if b != leader)
    cluster.stop([follower])
    total = 100_000
    async with Producer([cluster.nodes[b].url for b in cluster.nodes if b != follower], acks="all",
                        linger_ms=20, batch_bytes=512 * 1024, **FAST_CLIENT) as producer:
        futures = [await producer.send("catchup", b"r%07d" % i + b"." * 60) for i in range(total)]
        reports = [await f for f in futures]
    assert sum(r.status == "ok" for r in reports) == total
    await _restart_and_catch_up(session, cluster, follower, "catchup", end=total, timeout_s=120)
    leader_batches, _ = await _fetch_raw(session, cluster.nodes[leader].url, "catchup", 0)
    follower_batches, _ = await _fetch_raw(session, cluster.nodes[follower].url, "catchup", 0)
    assert follower_batches == leader_batches


async def test_torn_tail_is_cut_on_restart(own_cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    """SIGKILL a follower, tear its last segment's tail (as a crash mid-write would) and flip a byte in the
    batch before it; on restart the broker cuts both, reports it, and refills from the leader."""
    cluster = own_cluster
    await _create_topic(cluster, "torn")
    async with Producer(cluster.urls, acks="all", linger_ms=0, **FAST_CLIENT) as producer:
        for i in range(50):
            assert (await producer.send_and_wait("torn", b"t%03d" % i)).status == "ok"
    leader = cluster.wait_for_leader("torn", 0)
    follower = next(b for b in cluster.nodes if b != leader)
    async def in_sync() -> bool:
        replica, _ = await _fetch_raw(session, cluster.nodes[follower].url, "torn", 0)
        reference, _ = await _fetch_raw(session, cluster.nodes[leader].url, "torn", 0)
        return replica == reference

    await wait_for_condition(in_sync, timeout_s=20, what="follower in sync")
    cluster.kill(follower)
    segment = sorted((cluster.nodes[follower].data_dir / "partitions" / "torn-0").glob("*.log"))[-1]
    data = bytearray(segment.read_bytes())
    data[-200] ^= 0xFF  # corrupt the last batch body
    segment.write_bytes(bytes(data[:-7]))  # and tear the tail
    cluster.start([follower])
    await asyncio.to_thread(cluster.wait_ready, [follower], timeout_s=30)
    wait_until(lambda: "recovery cut" in cluster.nodes[follower].log_path.read_text(), timeout_s=20,
               what="the broker to report what it cut")
    reference, end = await _fetch_raw(session, cluster.nodes[leader].url, "torn", 0)

    async def repaired() -> bool:
        fetched = await _fetched_or_none(session, cluster.nodes[follower].url, "torn", 0)
        return fetched is not None and fetched[0] == reference

    await wait_for_condition(repaired, timeout_s=30, what="the follower refilled its log from the leader")
    assert end == 50


def test_data_survives_a_clean_restart(tmp_path: Path) -> None:
    from tests.integration.conftest import start_cluster

    cluster = start_cluster(tmp_path / "c")
    try:
        asyncio.run(_create_topic(cluster, "keep"))

        async def produce() -> None:
            async with Producer(cluster.urls, acks="all", **FAST_CLIENT) as producer:
                for i in range(20):
                    assert (await producer.send_and_wait("keep", b"k%d" % i)).status == "ok"

        asyncio.run(produce())
        cluster.stop()
        cluster.start()
        cluster.wait_ready(timeout_s=30)

        async def read() -> list[bytes]:
            stored = await _consume_all(cluster, "keep", 1)
            return [value for _, value in stored[0]]

        assert asyncio.run(read()) == [b"k%d" % i for i in range(20)]
    finally:
        cluster.stop()


def test_leadership_moves_to_the_preferred_replica(tmp_path: Path) -> None:
    """Leader balance: each partition's first replica leads once it is caught up (Kafka's preferred leader)."""
    from tests.integration.conftest import start_cluster

    cluster = start_cluster(tmp_path / "c", leader_rebalance=True)
    try:
        asyncio.run(_create_topic(cluster, "balanced", partitions=3))
        replicas = {p["partition"]: p["replicas"] for p in next(
            t for t in cluster.metadata(1)["topics"] if t["name"] == "balanced")["partitions"]}
        wait_until(lambda: all(cluster.leader_of("balanced", p) == replicas[p][0] for p in range(3)),
                   timeout_s=40, what="every partition led by its preferred replica")
        assert sorted(replicas[p][0] for p in range(3)) == [1, 2, 3]  # one leader per broker
    finally:
        cluster.stop()


async def test_leader_without_majority_refuses_writes(own_cluster: LocalCluster) -> None:
    """CheckQuorum: a leader whose followers stop answering (SIGSTOP) refuses writes of every ack level with
    LEADER_NOT_AVAILABLE (retriable: clients look elsewhere) instead of taking acks=1 writes it would lose,
    and stops advertising itself; once the followers are back, writes succeed again."""
    cluster = own_cluster
    await _create_topic(cluster, "quorum")
    leader = cluster.wait_for_leader("quorum", 0)
    followers = [b for b in cluster.nodes if b != leader]
    url = f"{cluster.nodes[leader].url}/v1/topics/quorum/partitions/0/records"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client_session:
        async def produce(acks: Any) -> tuple[int, dict[str, Any]]:
            async with client_session.post(url, json={"acks": acks, "records": [{"value": "x"}]}) as response:
                return response.status, await response.json()

        assert (await produce("all"))[0] == 200
        for follower in followers:
            cluster.pause(follower)
        try:
            async def refused() -> bool:
                status, body = await produce(1)
                return status == 503 and body["error"]["code"] == "LEADER_NOT_AVAILABLE"

            await wait_for_condition(refused, timeout_s=10, what="the cut-off leader to refuse acks=1 writes")
            view = cluster.partition_view(leader, "quorum", 0)
            assert view is not None and view["quorum"] is False and view["leader_id"] is None
        finally:
            for follower in followers:
                cluster.resume(follower)
        new_leader = await asyncio.to_thread(cluster.wait_for_leader, "quorum", 0, timeout_s=20)
        async with client_session.post(f"{cluster.nodes[new_leader].url}/v1/topics/quorum/partitions/0/records",
                                       json={"acks": "all", "records": [{"value": "back"}]}) as response:
            assert response.status == 200


async def test_a_named_producer_is_fenced_by_its_newer_instance(shared_cluster: LocalCluster) -> None:
    """Two instances of one named producer (like a service restarted while the old process still runs):
    the older is fenced at its next send, nothing of it is stored after the fence, the newer writes on."""
    urls = shared_cluster.urls
    async with Admin(urls) as admin:
        await admin.create_topic("fencing", partitions=1)
        await admin.wait_for_topic("fencing", timeout_s=20)
    async with Producer(urls, producer_name="billing") as old:
        assert (await old.send_and_wait("fencing", b"old-1", partition=0)).status == "ok"
        async with Producer(urls, producer_name="billing") as new:
            assert new.producer_epoch == old.producer_epoch + 1 and new.producer_id != old.producer_id
            future = await old.send("fencing", b"old-2", partition=0)
            assert future is not None
            report = await future
            assert report.status == "failed" and isinstance(report.error, ProducerFenced), report
            assert old.fenced
            with pytest.raises(ProducerFenced):
                await old.send("fencing", b"old-3", partition=0)
            assert (await new.send_and_wait("fencing", b"new-1", partition=0)).status == "ok"
    async with Producer(urls) as unnamed:  # unnamed producers are never fenced by anyone
        assert (await unnamed.send_and_wait("fencing", b"other", partition=0)).status == "ok"
    async with Consumer(urls) as consumer:
        consumer.assign([("fencing", 0)])
        consumer.seek("fencing", 0, 0)
        values: list[bytes] = []
        await wait_for_condition(lambda: _poll_into(consumer, values, 3), timeout_s=20, what="three records")
    assert values == [b"old-1", b"new-1", b"other"]


async def _poll_into(consumer: Consumer, values: list[bytes], count: int) -> bool:
    values.extend(record.value for record in await consumer.poll(timeout_ms=200) if record.value is not None)
    return len(values) >= count
