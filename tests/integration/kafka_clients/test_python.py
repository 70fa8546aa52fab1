"""kafka-python 3 against raftmq's Kafka listener, unchanged but for the bootstrap address: admin
create/list/delete, produce at acks 0, 1 and all (idempotent, kafka-python's default), gzip, consume by
assign and offset, and records crossing between the Kafka protocol and raftmq's own HTTP API.

Method: the package's one real 3-broker cluster (tests/integration/kafka_clients/conftest.py); every test uses
its own topic; every wait is bounded."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import (
    CLIENT_TIMEOUT_S,
    create_topic,
    produce_over_http,
    read_over_http,
    unique,
)

pytestmark = pytest.mark.cluster


def consume(bootstrap: str, topic: str, partitions: int, count: int, *, offset: int | None = None
            ) -> list[tuple[int, int, bytes | None, bytes | None]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        if offset is None:
            consumer.seek_to_beginning()
        else:
            for tp in assigned:
                consumer.seek(tp, offset)
        got: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got += [(r.partition, r.offset, r.key, r.value) for r in records]
        return sorted(got)
    finally:
        consumer.close()


def test_admin_creates_lists_and_deletes_topics(kafka_cluster: LocalCluster) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.kafka_bootstrap, request_timeout_ms=15_000)
    try:
        name = unique("kp-admin")
        # kafka-python infers broker 2.3 from our versions: it needs both numbers (no -1 defaults before 2.4).
        admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=3)])
        assert name in admin.list_topics()
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=3)])
        admin.delete_topics([name])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while name in admin.list_topics() and time.monotonic() < deadline:
            pass
        assert name not in admin.list_topics()
    finally:
        admin.close()


@pytest.mark.parametrize(("acks", "idempotent", "compression"), [
    (0, False, None), (1, False, "gzip"), ("all", False, None), ("all", True, "gzip")])
def test_produce_at_each_ack_level_reads_back_over_both_protocols(
        kafka_cluster: LocalCluster, acks: int | str, idempotent: bool, compression: str | None) -> None:
    topic = unique("kp-produce")
    create_topic(kafka_cluster, topic)
    producer = KafkaProducer(bootstrap_servers=kafka_cluster.kafka_bootstrap, acks=acks,
                             enable_idempotence=idempotent, compression_type=compression, linger_ms=5)
    try:
        assert producer.config["enable_idempotence"] is idempotent
        futures = [producer.send(topic, key=b"k%d" % (i % 5), value=b"v%d" % i) for i in range(60)]
        metadata = [future.get(timeout=CLIENT_TIMEOUT_S) for future in futures]
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_S)
    if acks == "all":
        per_partition: dict[int, list[int]] = {}
        for item in metadata:
            per_partition.setdefault(item.partition, []).append(item.offset)
        for offsets in per_partition.values():
            assert offsets == list(range(len(offsets))), "acks=all answers the offsets, in order, no gaps"
    expected = sorted((b"k%d" % (i % 5), b"v%d" % i) for i in range(60))
    over_http = read_over_http(kafka_cluster, topic, 3, 60)
    assert sorted((key, value) for _, _, key, value in over_http) == expected
    over_kafka = consume(kafka_cluster.kafka_bootstrap, topic, 3, 60)
    assert over_kafka == over_http, "both protocols see the same records at the same offsets"


def test_consume_by_assign_from_an_offset_inside_a_batch(kafka_cluster: LocalCluster) -> None:
    topic = unique("kp-seek")
    create_topic(kafka_cluster, topic, partitions=1)
    produce_over_http(kafka_cluster, topic, [(b"k", b"v%d" % i) for i in range(5)])
    got = consume(kafka_cluster.kafka_bootstrap, topic, 1, 3, offset=2)
    assert [(offset, value) for _, offset, _, value in got] == [(2, b"v2"), (3, b"v3"), (4, b"v4")]


def test_records_from_raftmqs_http_api_read_back_over_kafka(kafka_cluster: LocalCluster) -> None:
    topic = unique("kp-cross")
    create_topic(kafka_cluster, topic)
    sent = [(b"user-%d" % i, b"payload-%d" % i) for i in range(20)]
    produce_over_http(kafka_cluster, topic, sent)
    got = consume(kafka_cluster.kafka_bootstrap, topic, 3, 20)
    assert sorted((key, value) for _, _, key, value in got) == sorted(sent)
