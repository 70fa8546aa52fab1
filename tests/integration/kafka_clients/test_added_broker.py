"""A broker added after the cluster started appears in Kafka Metadata on every broker, although the other
brokers' configs do not list it: its Kafka address travels in its registration with the controller (the
broker registry), not only in [[brokers]] config. Kafka clients then dial it like any other broker.

Method: its own 3-broker cluster (a broker is added); Metadata asked over the Kafka protocol of an original
broker until the new one is listed at its own Kafka port; every wait is bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq.cluster.kafka_messages import ApiKey
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import CLIENT_TIMEOUT_S, start_kafka_cluster
from tests.integration.kafka_clients.test_listener import call, connect

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = start_kafka_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


def listed(cluster: LocalCluster, asked: int) -> dict[int, int]:
    with connect(cluster, asked) as sock:
        metadata = call(sock, ApiKey.METADATA, {"topics": [], "allow_auto_topic_creation": False})
    return {b["node_id"]: b["port"] for b in metadata["brokers"]}


def test_a_broker_added_later_is_listed_in_kafka_metadata_by_the_original_brokers(cluster: LocalCluster) -> None:
    assert listed(cluster, 1) == {b: n.kafka_port for b, n in cluster.nodes.items()}
    added = cluster.add_node()
    cluster.wait_ready([added], timeout_s=CLIENT_TIMEOUT_S)
    expected = {b: n.kafka_port for b, n in cluster.nodes.items()}
    assert added in expected
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    for original in (1, 2, 3):
        while (seen := listed(cluster, original)) != expected:
            assert time.monotonic() < deadline, f"broker {original} lists {seen}, not {expected}"
            time.sleep(0.1)  # a condition poll with a deadline: registration reaches every broker's metadata
