"""Admin calls and the blocking wrappers against real brokers.

Method: real HTTP to an in-process cluster (tests/inprocess.py). The Sync* wrappers run their own loop
thread; the test calls them through asyncio.to_thread so the brokers (on the test's loop) keep serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raftmq.client import Admin, SyncAdmin, SyncConsumer, SyncProducer, TopicPartition
from raftmq.cluster.errors import ClientTimeout, InvalidPartitions, TopicAlreadyExists, UnknownTopicOrPartition

from tests.inprocess import Fault, InProcessCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(tmp_path, brokers=3) as brokers:
        yield brokers


async def test_topic_lifecycle(cluster: InProcessCluster) -> None:
    async with Admin(cluster.urls, request_timeout_ms=1000) as admin:
        created = await admin.create_topic("orders", partitions=3, replication_factor=3,
                                           config={"retention_ms": 1000})
        assert created.name == "orders" and created.partition_count == 3 and created.replication_factor == 3
        body = cluster.requests_for("/v1/topics")[0].body
        assert body == {"name": "orders", "partitions": 3, "replication_factor": 3,
                        "config": {"retention_ms": 1000}}
        with pytest.raises(TopicAlreadyExists):
            await admin.create_topic("orders")
        with pytest.raises(InvalidPartitions):
            await admin.create_topic("bad", partitions=0)
        await admin.create_topic("audit")
        assert [t.name for t in await admin.list_topics()] == ["audit", "orders"]
        described = await admin.describe_topic("orders")
        assert [p.leader_id for p in described.partitions] == [1, 2, 3]
        assert described.partitions[0].replicas == (1, 2, 3)
        ready = await admin.wait_for_topic("orders", timeout_s=2.0)
        assert ready.partition_count == 3
        await admin.delete_topic("orders")
        with pytest.raises(UnknownTopicOrPartition):
            await admin.describe_topic("orders")
        with pytest.raises(UnknownTopicOrPartition):
            await admin.delete_topic("orders")


async def test_create_goes_to_controller_and_follows_not_leader(cluster: InProcessCluster) -> None:
    async with Admin([cluster.urls[2]], request_timeout_ms=1000) as admin:
        await admin.metadata()  # learn the controller (broker 1: it leads the metadata group)
        cluster.requests.clear()
        cluster.inject("topics", Fault("error", "NOT_LEADER", {"leader_id": 2, "leader_url": cluster.urls[1]},
                                       times=1))
        await admin.create_topic("x")
    posts = [r.broker_id for r in cluster.requests if r.method == "POST"]
    # The controller first, then straight to the broker the details named, which forwards to the controller.
    assert posts == [1, 2, 1]


async def test_metadata_and_health(cluster: InProcessCluster) -> None:
    await cluster.create_topic("t", 2)
    async with Admin(cluster.urls) as admin:
        meta = await admin.metadata(url=cluster.urls[1])
        assert meta.broker_id == 2 and meta.controller_id == 1
        assert [b.broker_id for b in meta.brokers] == [1, 2, 3]
        assert meta.topics[0].partitions[1].role == "leader"  # broker 2 leads t/1
        health = await admin.health(cluster.urls[2])
        assert (health.status, health.broker_id, health.ready) == ("ok", 3, True)
        assert (await admin.health()).broker_id == 1


async def test_wait_for_topic_times_out(cluster: InProcessCluster) -> None:
    async with Admin(cluster.urls) as admin:
        with pytest.raises(ClientTimeout):
            await admin.wait_for_topic("never", timeout_s=0.1)


async def test_wait_for_topic_with_preferred_leaders(cluster: InProcessCluster) -> None:
    await cluster.create_topic("t", 2)  # preferred leaders: broker 1 for t/0, broker 2 for t/1
    cluster.set_leader("t", 0, 2)  # partition 0 led by a non-preferred replica
    async with Admin(cluster.urls) as admin:
        assert (await admin.wait_for_topic("t", timeout_s=2.0)).partitions[0].leader_id == 2
        with pytest.raises(ClientTimeout, match="preferred"):
            await admin.wait_for_topic("t", timeout_s=1.0, preferred_leaders=True)
        cluster.set_leader("t", 0, 1)
        info = await admin.wait_for_topic("t", timeout_s=2.0, preferred_leaders=True)
        assert [p.leader_id for p in info.partitions] == [p.replicas[0] for p in info.partitions]


async def test_sync_wrappers(cluster: InProcessCluster) -> None:
    urls = cluster.urls

    def script() -> tuple[list[int], list[bytes | None], int]:
        with SyncAdmin(urls, request_timeout_ms=2000) as admin:
            admin.create_topic("s", partitions=1)
            assert [t.name for t in admin.list_topics()] == ["s"]
        with SyncProducer(urls, request_timeout_ms=2000, delivery_timeout_ms=3000) as producer:
            offsets = [producer.send_and_wait("s", b"a").offset or 0]
            future = producer.send("s", b"b", key="k")
            assert isinstance(future, concurrent.futures.Future)
            offsets.append(future.result(timeout=5).offset or 0)
            producer.flush(timeout_s=2)
            sent = producer.counters.sent
        with SyncConsumer(urls, request_timeout_ms=2000, max_wait_ms=50) as consumer:
            consumer.assign([("s", 0)])
            assert consumer.end_offsets([("s", 0)]) == {TopicPartition("s", 0): 2}
            values: list[bytes | None] = []
            for _ in range(50):
                values.extend(r.value for r in consumer.poll(timeout_ms=200))
                if len(values) >= 2:
                    break
            assert consumer.position("s", 0) == 2
        return offsets, values, sent

    offsets, values, sent = await asyncio.wait_for(asyncio.to_thread(script), 15.0)
    assert offsets == [0, 1] and values == [b"a", b"b"] and sent == 2


async def test_sync_call_timeout_and_not_started(cluster: InProcessCluster) -> None:
    urls = cluster.urls
    cluster.inject("health", Fault("hang"))

    def script() -> None:
        admin = SyncAdmin(urls)
        with pytest.raises(RuntimeError):
            admin.health()
        with admin:
            with pytest.raises(ClientTimeout):
                admin.health(timeout_s=0.2)
        admin.stop()  # idempotent

    await asyncio.wait_for(asyncio.to_thread(script), 10.0)
