"""confluent-kafka (librdkafka 2.16) against raftmq's Kafka listener, unchanged but for the bootstrap
address: admin create/list/delete (TOPIC_ALREADY_EXISTS on a second create), produce at acks 0, 1 and
all with and without idempotence, gzip, consume by assign from the beginning / an offset / the end, and
records crossing between the Kafka protocol and raftmq's own HTTP API.

Method: the package's one real 3-broker cluster (tests/integration/kafka_clients/conftest.py); every test uses
its own topic; every wait is bounded."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
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


def consume(bootstrap: str, assignment: list[TopicPartition], count: int) -> list[Row]:
    # group.id is required by the client even for assign(); nothing is committed (enable.auto.commit off).
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("unused"),
                         "enable.auto.commit": False})
    try:
        consumer.assign(assignment)
        got: list[Row] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got.append((message.partition(), message.offset(), message.key(), message.value()))
        return sorted(got)
    finally:
        consumer.close()


def test_admin_lists_brokers_and_creates_and_deletes_topics(kafka_cluster: LocalCluster) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_cluster.kafka_bootstrap})
    name = unique("ck-admin")
    assert admin.create_topics([NewTopic(name, 3, 3)])[name].result(CLIENT_TIMEOUT_S) is None
    metadata = admin.list_topics(timeout=CLIENT_TIMEOUT_S)
    advertised = {f"{b.host}:{b.port}" for b in metadata.brokers.values()}
    assert advertised == set(kafka_cluster.kafka_bootstrap.split(","))
    assert metadata.controller_id in metadata.brokers and metadata.cluster_id == kafka_cluster.cluster_id
    partitions = metadata.topics[name].partitions
    assert sorted(partitions) == [0, 1, 2] and all(p.leader in metadata.brokers for p in partitions.values())
    with pytest.raises(KafkaException) as again:
        admin.create_topics([NewTopic(name, 3, 3)])[name].result(CLIENT_TIMEOUT_S)
    assert again.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert admin.delete_topics([name])[name].result(CLIENT_TIMEOUT_S) is None
    assert name not in admin.list_topics(timeout=CLIENT_TIMEOUT_S).topics


@pytest.mark.parametrize("options", [
    {"acks": "0"}, {"acks": "1"}, {"acks": "all"},
    {"acks": "all", "enable.idempotence": True, "compression.type": "gzip"},
], ids=["acks0", "acks1", "acks-all", "idempotent-gzip"])
def test_produce_at_each_ack_level_reads_back_over_both_protocols(kafka_cluster: LocalCluster,
                                                                  options: dict[str, Any]) -> None:
    topic = unique("ck-produce")
    create_topic(kafka_cluster, topic)
    producer = Producer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "linger.ms": 5, **options})
    reports: list[tuple[Any, int, int]] = []
    for i in range(60):
        producer.produce(topic, key=b"k%d" % (i % 5), value=b"v%d" % i,
                         on_delivery=lambda error, message: reports.append((error, message.partition(),
                                                                            message.offset())))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert len(reports) == 60 and [r for r in reports if r[0] is not None] == []
    if options["acks"] != "0":  # acks=0 reports no offset (-1)
        offsets: dict[int, list[int]] = {}
        for _, partition, offset in reports:
            offsets.setdefault(partition, []).append(offset)
        assert all(sorted(o) == list(range(len(o))) for o in offsets.values()), offsets
    expected = sorted((b"k%d" % (i % 5), b"v%d" % i) for i in range(60))
    over_http = read_over_http(kafka_cluster, topic, 3, 60)
    assert sorted((key, value) for _, _, key, value in over_http) == expected
    over_kafka = consume(kafka_cluster.kafka_bootstrap, [TopicPartition(topic, p, OFFSET_BEGINNING)
                                                         for p in range(3)], 60)
    assert over_kafka == over_http


def test_consume_from_an_offset_and_from_the_end(kafka_cluster: LocalCluster) -> None:
    topic = unique("ck-offsets")
    create_topic(kafka_cluster, topic, partitions=1)
    produce_over_http(kafka_cluster, topic, [(b"k", b"v%d" % i) for i in range(5)])
    got = consume(kafka_cluster.kafka_bootstrap, [TopicPartition(topic, 0, 3)], 2)
    assert [(offset, value) for _, offset, _, value in got] == [(3, b"v3"), (4, b"v4")]
    consumer = Consumer({"bootstrap.servers": kafka_cluster.kafka_bootstrap, "group.id": unique("unused"),
                         "enable.auto.commit": False})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=CLIENT_TIMEOUT_S)
        assert (low, high) == (0, 5)
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        assert consumer.poll(1.0) is None  # nothing after the end
    finally:
        consumer.close()
