"""aiokafka 0.14 against raftmq's Kafka listener, unchanged but for the bootstrap address: admin create and
list, produce at acks 0, 1 and all (idempotent), gzip, consume by assign and seek, and records crossing
between the Kafka protocol and raftmq's own HTTP API.

Method: the package's one real 3-broker cluster (tests/integration/kafka_clients/conftest.py); every test uses
its own topic; every wait is bounded."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import (
    CLIENT_TIMEOUT_S,
    create_topic,
    produce_over_http,
    read_over_http,
    unique,
)

pytestmark = pytest.mark.cluster

Row = tuple[int, int, bytes | None, bytes | None]


async def consume(bootstrap: str, topic: str, partitions: int, count: int, *, offset: int | None = None
                  ) -> list[Row]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        if offset is None:
            await consumer.seek_to_beginning(*assigned)
        else:
            for tp in assigned:
                consumer.seek(tp, offset)
        got: list[Row] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += [(r.partition, r.offset, r.key, r.value) for r in records]
        return sorted(got)
    finally:
        await consumer.stop()


async def test_admin_creates_and_lists_topics(kafka_cluster: LocalCluster) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster.kafka_bootstrap)
    await admin.start()
    try:
        name = unique("ak-admin")
        await admin.create_topics([NewTopic(name, 3, 3)])
        assert name in await admin.list_topics()
        response = await admin.create_topics([NewTopic(name, 3, 3)])
        assert [error for _, error, *_ in response.topic_errors] == [TopicAlreadyExistsError.errno]
    finally:
        await admin.close()


@pytest.mark.parametrize(("acks", "idempotent", "compression"), [
    (0, False, None), (1, False, None), ("all", True, "gzip")])
async def test_produce_at_each_ack_level_reads_back_over_both_protocols(
        kafka_cluster: LocalCluster, acks: int | str, idempotent: bool, compression: str | None) -> None:
    topic = unique("ak-produce")
    create_topic(kafka_cluster, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_cluster.kafka_bootstrap, acks=acks,
                                enable_idempotence=idempotent, compression_type=compression, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=b"k%d" % (i % 5), value=b"v%d" % i) for i in range(60)]
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    if acks != 0:
        offsets: dict[int, list[int]] = {}
        for item in metadata:
            offsets.setdefault(item.partition, []).append(item.offset)
        assert all(o == list(range(len(o))) for o in offsets.values()), offsets
    expected = sorted((b"k%d" % (i % 5), b"v%d" % i) for i in range(60))
    over_http = await asyncio.to_thread(read_over_http, kafka_cluster, topic, 3, 60)
    assert sorted((key, value) for _, _, key, value in over_http) == expected
    assert await consume(kafka_cluster.kafka_bootstrap, topic, 3, 60) == over_http


async def test_consume_by_assign_from_an_offset_and_across_protocols(kafka_cluster: LocalCluster) -> None:
    topic = unique("ak-seek")
    create_topic(kafka_cluster, topic, partitions=1)
    await asyncio.to_thread(produce_over_http, kafka_cluster, topic, [(b"k%d" % i, b"v%d" % i) for i in range(5)])
    got = await consume(kafka_cluster.kafka_bootstrap, topic, 1, 4, offset=1)
    assert got == [(0, i, b"k%d" % i, b"v%d" % i) for i in range(1, 5)]
