"""Shared by the Kafka-client tests: starting a real 3-broker cluster with Kafka listeners, unique topic
names, and raftmq's own client for the cross-protocol checks (a record produced over Kafka reads back over
raftmq's HTTP API and the other way round)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import msgpack
import requests
from raftmq.client import SyncAdmin, SyncConsumer, SyncProducer
from raftmq.cluster.batch import iter_batches
from raftmq.deploy.local_cluster import LocalCluster

# Every client wait in these tests is bounded by this (seconds).
CLIENT_TIMEOUT_S = 20.0


def start_kafka_cluster(root: Path) -> LocalCluster:
    cluster = LocalCluster(root, nodes=3, python=sys.executable, leader_rebalance=False, kafka=True)
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(cluster: LocalCluster, name: str, partitions: int = 3) -> None:
    """Through raftmq's own admin client (returns once every partition has a leader)."""
    with SyncAdmin(cluster.urls) as admin:
        admin.create_topic(name, partitions=partitions)
        admin.wait_for_topic(name, timeout_s=CLIENT_TIMEOUT_S)


def read_over_http(cluster: LocalCluster, topic: str, partitions: int, count: int
                   ) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(partition, offset, key, value) of the first ``count`` records, read with raftmq's own consumer."""
    got: list[tuple[int, int, bytes | None, bytes | None]] = []
    with SyncConsumer(cluster.urls) as consumer:
        consumer.assign([(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning(*[(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            got += [(r.partition, r.offset, r.key, r.value) for r in consumer.poll(timeout_ms=500)]
    return sorted(got)


def stored_codecs(cluster: LocalCluster, topic: str, partitions: int) -> list[int]:
    """The codec of every batch of ``topic`` as its leaders store and serve it (one fetch per partition)."""
    codecs: list[int] = []
    for partition in range(partitions):
        leader = cluster.leader_of(topic, partition)
        assert leader is not None, f"{topic}-{partition} has no leader"
        response = requests.get(f"{cluster.nodes[leader].url}/v1/topics/{topic}/partitions/{partition}/records",
                                params={"offset": 0, "max_bytes": 8 << 20}, headers={"Accept": "application/msgpack"},
                                timeout=CLIENT_TIMEOUT_S)
        body = msgpack.unpackb(response.content)
        assert response.status_code == 200, body
        codecs += [header.codec for header, _ in iter_batches(body["batches"])]
    return codecs


def produce_over_http(cluster: LocalCluster, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    with SyncProducer(cluster.urls, acks="all") as producer:
        for key, value in records:
            report = producer.send_and_wait(topic, value, key=key)
            assert report.status == "ok", report
