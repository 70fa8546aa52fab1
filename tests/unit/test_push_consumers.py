"""Push consumers of share groups (node/push.py, client/push_consumer.py) on an in-process cluster: the
prefetch window, back-pressure from a consumer that stops acknowledging, the seed's order example (a direct
exchange into an orders topic consumed by three push consumers with manual acks), and a dead-letter
exchange collecting records rejected outright and records nacked until their delivery limit.

Method: real WebSockets against real brokers; the broker's session state (its in-flight records) is read
directly to check the memory bound; every wait is on a condition or a receive with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from raftmq.client.admin import Admin
from raftmq.client.publisher import ExchangePublisher
from raftmq.client.push_consumer import GroupPushConsumer, PushConsumer, PushRecord
from raftmq.cluster.batch import decode_records, iter_stored
from raftmq.cluster.dead_lettering import DeathReason, parse_death
from raftmq.cluster.errors import InvalidRequest, UnknownTopicOrPartition
from raftmq.cluster.push import PrefetchWindow, parse_ack_frame, parse_subscription

from raftmq.cli import cli
from tests.inprocess import InProcessCluster


async def receive_all(consumer: PushConsumer | GroupPushConsumer, count: int, timeout_s: float = 5.0
                      ) -> list[PushRecord]:
    got = []
    while len(got) < count:
        record = await consumer.receive(timeout_s)
        assert record is not None, f"only {len(got)} of {count} records arrived"
        got.append(record)
    return got


def records_held(cluster: InProcessCluster) -> int:
    """Records every push session of every broker holds (the broker-side memory the window bounds)."""
    return sum(node.broker.service.push.records_held for node in cluster.brokers)


@pytest.mark.asyncio
async def test_prefetch_bounds_what_is_in_flight_and_acks_make_room(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs")
        await cluster.append_records("jobs", 0, [b"j%d" % i for i in range(20)])
        async with PushConsumer(cluster.urls, "workers", topics=["jobs"], prefetch=3) as consumer:
            first = await receive_all(consumer, 3)
            assert [r.value for r in first] == [b"j0", b"j1", b"j2"]
            # A consumer that does not acknowledge gets nothing more, and the broker holds only its window.
            assert await consumer.receive(0.5) is None
            assert records_held(cluster) == 3
            await consumer.ack(first[0])
            assert (await receive_all(consumer, 1))[0].value == b"j3"
            assert await consumer.receive(0.3) is None
            for record in first[1:]:
                await consumer.ack(record)
            assert [r.value for r in await receive_all(consumer, 2)] == [b"j4", b"j5"]
        # The closed connection released what it held: another consumer gets those records.
        async with PushConsumer(cluster.urls, "workers", topics=["jobs"], prefetch=20) as other:
            values = [r.value for r in await receive_all(other, 17)]
            assert await other.receive(0.3) is None
        assert sorted(values) == sorted(b"j%d" % i for i in range(3, 20))  # j0-j2 were acknowledged


@pytest.mark.asyncio
async def test_three_push_consumers_share_an_exchanges_orders_with_manual_acks(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=3)
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("order", "direct")
            await admin.bind("order", "orders", key="order.created")
        async with ExchangePublisher(cluster.urls[:1]) as publisher:
            for i in range(30):
                await publisher.publish("order", b"order-%d" % i, "order.created", key=f"customer-{i}")
        consumers = [PushConsumer(cluster.urls, "fulfilment", topics=["orders"], prefetch=4) for _ in range(3)]
        for consumer in consumers:
            await consumer.start()
        try:
            seen: dict[bytes, int] = {}
            per_consumer = [0, 0, 0]
            while len(seen) < 30:
                progressed = False
                for index, consumer in enumerate(consumers):
                    record = await consumer.receive(0.05)
                    if record is None:
                        continue
                    progressed = True
                    assert dict(record.headers)["x-routing-key"] == b"order.created"
                    seen[record.value or b""] = seen.get(record.value or b"", 0) + 1
                    per_consumer[index] += 1
                    await consumer.ack(record)
                if not progressed:
                    assert sum(per_consumer) < 200, "records keep coming back"
            assert sorted(seen) == sorted(b"order-%d" % i for i in range(30))
            assert set(seen.values()) == {1}  # acknowledged records are never delivered again
            assert sum(1 for n in per_consumer if n > 0) >= 2, per_consumer  # the work was shared
        finally:
            for consumer in consumers:
                await consumer.stop()


@pytest.mark.asyncio
async def test_a_dead_letter_exchange_collects_rejected_records(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("payments")
        await cluster.create_topic("payments-dead")
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("dlx", "fanout")
            await admin.bind("dlx", "payments-dead")
        await cluster.append_records("payments", 0, [b"bad", b"flaky", b"good"])
        async with PushConsumer(cluster.urls, "billing", topics=["payments"], prefetch=5, max_deliveries=2,
                                lock_ms=200, dead_letter_exchange="dlx") as consumer:
            handled = []
            for _ in range(10):
                record = await consumer.receive(3.0)
                if record is None:
                    break
                if record.value == b"bad":
                    await consumer.nack(record, requeue=False)  # unprocessable: straight to the DLX
                elif record.value == b"flaky":
                    await consumer.nack(record, requeue=True)  # keeps failing: the delivery limit dead-letters it
                else:
                    await consumer.ack(record)
                handled.append((record.value, record.delivery_count))
                if len(cluster.stored("payments-dead", 0)) == 2:
                    break
        assert (b"good", 1) in handled and (b"flaky", 2) in handled
        dead = cluster.leader("payments-dead", 0).state_machine.log
        letters = [r for h, chunk in iter_stored(dead.read(0, 1 << 20)) for r in decode_records(chunk, h)]
        by_value = {r.value: parse_death(r.headers) for r in letters}
        assert set(by_value) == {b"bad", b"flaky"}
        assert by_value[b"bad"]["reason"] == DeathReason.REJECTED
        assert by_value[b"flaky"]["reason"] == DeathReason.DELIVERY_LIMIT
        assert (by_value[b"bad"]["topic"], by_value[b"bad"]["partition"], by_value[b"bad"]["offset"]) == \
            ("payments", "0", "0")
        assert by_value[b"flaky"]["count"] == "2"


@pytest.mark.asyncio
async def test_refusals_are_coded_before_the_upgrade(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        with pytest.raises(UnknownTopicOrPartition):
            async with PushConsumer(cluster.urls, "g", topics=["missing"]):
                pass
        with pytest.raises(InvalidRequest):
            async with PushConsumer(cluster.urls, "g", topics=["a"], max_deliveries=0):
                pass


def test_the_pure_parts() -> None:
    window = PrefetchWindow(2)
    window.deliver(("t", 0, 1), 1)
    window.deliver(("t", 0, 2), 1)
    assert window.room == 0
    with pytest.raises(AssertionError):
        window.deliver(("t", 0, 3), 1)
    assert window.settle(("t", 0, 1)) == 1 and window.settle(("t", 0, 1)) is None and window.room == 1
    subscription = parse_subscription("g", {"topics": "b,a,a", "prefetch": "7"})
    assert (subscription.topics, subscription.prefetch) == (("a", "b"), 7)
    for bad in ({"topics": ""}, {"topics": "a", "prefetch": "0"}, {"topics": "a", "prefetch": "+5"},
                {"topics": "a", "prefetch": "1001"}, {"topics": "a", "other": "1"}):
        with pytest.raises(InvalidRequest):
            parse_subscription("g", bad)
    assert parse_ack_frame(msgpack.packb({"acks": [["t", 0, 5, "accept"]]})) == [(("t", 0, 5), "accept")]
    for frame in (b"\xc1", msgpack.packb([]), msgpack.packb({"acks": [["t", 0, 5, "maybe"]]})):
        with pytest.raises(InvalidRequest):
            parse_ack_frame(frame)


@pytest.mark.asyncio
async def test_consume_push_prints_and_acknowledges(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs")
        await cluster.append_records("jobs", 0, [b"j%d" % i for i in range(5)])
        args = ["consume", "jobs", "--group", "cli", "--push", "--prefetch", "2", "--max", "3", "-b", cluster.urls[0]]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["0 0 - j0", "0 1 - j1", "0 2 - j2"]
        # The printed records were acknowledged: the group hands out only the rest.
        async with PushConsumer(cluster.urls, "cli", topics=["jobs"], prefetch=5) as consumer:
            assert [r.value for r in await receive_all(consumer, 2)] == [b"j3", b"j4"]
            assert await consumer.receive(0.3) is None


@pytest.mark.asyncio
async def test_expired_records_go_to_the_dead_letter_exchange(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("quotes", config={"message_ttl_ms": 60_000})
        await cluster.create_topic("stale")
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("expired", "fanout")
            await admin.bind("expired", "stale")
        await cluster.append_records("quotes", 0, [b"old-1", b"old-2"], timestamp_ms=1_000)  # long expired
        await cluster.append_records("quotes", 0, [b"fresh"], timestamp_ms=int(time.time() * 1000))
        async with PushConsumer(cluster.urls, "pricing", topics=["quotes"], dead_letter_exchange="expired") as consumer:
            record = await consumer.receive(5.0)
            assert record is not None and record.value == b"fresh"
            await consumer.ack(record)
            assert await consumer.receive(0.3) is None
        letters = cluster.stored("stale", 0)
        assert [value for _offset, _key, value in letters] == [b"old-1", b"old-2"]
        log = cluster.leader("stale", 0).state_machine.log
        deaths = [parse_death(r.headers) for h, chunk in iter_stored(log.read(0, 1 << 20))
                  for r in decode_records(chunk, h)]
        assert [(d["reason"], d["offset"], d["count"]) for d in deaths] == [("expired", "0", "0"),
                                                                            ("expired", "1", "0")]
