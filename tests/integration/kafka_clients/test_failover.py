"""An idempotent confluent-kafka producer at acks=all while the partition's leader is SIGKILLed: the client
sees the errors raftmq maps for it (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT),
retries on the new leader, and a full read-back finds every acknowledged record exactly once. And a
kafka-python group consumer whose group coordinator is SIGKILLed mid-session: it finds the new one, nothing it
committed is re-delivered, and its later commits are stored.

Method: its own 3-broker cluster (a broker is killed); one partition, so every record goes to the leader
that is killed; the kill happens once a third of the records are acknowledged; every wait is bounded."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from raftmq.client import SyncConsumer
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import CLIENT_TIMEOUT_S, create_topic, read_over_http, start_kafka_cluster

pytestmark = pytest.mark.cluster
RECORDS = 300


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = start_kafka_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_idempotent_acks_all_producer_loses_and_duplicates_nothing_when_the_leader_is_killed(
        cluster: LocalCluster) -> None:
    topic = "failover"
    create_topic(cluster, topic, partitions=1)
    leader = cluster.wait_for_leader(topic, 0)
    survivors = ",".join(f"127.0.0.1:{n.kafka_port}" for b, n in cluster.nodes.items() if b != leader)
    producer = Producer({"bootstrap.servers": survivors, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 2, "message.timeout.ms": int(CLIENT_TIMEOUT_S * 1000),
                         "max.in.flight.requests.per.connection": 5})
    acked: list[bytes] = []
    failed: list[str] = []

    def delivered(error: object, message: object) -> None:
        if error is None:
            acked.append(message.value())  # type: ignore[attr-defined]
        else:
            failed.append(str(error))

    killed = False
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    for i in range(RECORDS):
        producer.produce(topic, value=b"r%04d" % i, on_delivery=delivered)
        producer.poll(0)
        while not killed and i == RECORDS // 3 and len(acked) < RECORDS // 3 and time.monotonic() < deadline:
            producer.poll(0.05)  # wait for the first third to be acknowledged, then kill the leader
        if i == RECORDS // 3 and not killed:
            cluster.kill(leader)
            killed = True
        producer.poll(0.002)  # paces the sends over the failover instead of one burst before it
    assert producer.flush(CLIENT_TIMEOUT_S * 2) == 0, "every record got a delivery report"
    assert killed and failed == [], failed
    assert len(acked) == RECORDS
    with SyncConsumer([n.url for b, n in cluster.nodes.items() if b != leader]) as consumer:
        end = consumer.end_offsets([(topic, 0)])
    assert list(end.values()) == [RECORDS], "no record stored twice"
    stored = [value for *_, value in read_over_http(cluster, topic, 1, RECORDS)]
    assert sorted(stored) == sorted(acked), "nothing acknowledged lost"


# kafka-python 3 leaves the sockets of refused connections (to the killed broker) for the collector to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_group_consumer_resumes_from_its_commits_when_the_coordinator_is_killed(
        cluster: LocalCluster) -> None:
    """The group coordinator (the leader of the group's __consumer_offsets partition) is SIGKILLed mid-session:
    the member finds the new coordinator, nothing it committed is re-delivered, and what it reads and commits
    afterwards is stored (a fresh consumer of the group sees every commit)."""
    from kafka import KafkaConsumer, TopicPartition

    from tests.integration.kafka_clients.support import produce_over_http

    topic, group = "grp-failover", "failover-group"
    create_topic(cluster, topic, partitions=3)
    produce_over_http(cluster, topic, [(b"k%d" % i, b"first%d" % i) for i in range(30)])

    def consumer() -> KafkaConsumer:
        return KafkaConsumer(topic, bootstrap_servers=cluster.kafka_bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                             heartbeat_interval_ms=500, request_timeout_ms=8000)

    def read(member: KafkaConsumer, want: int) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S * 2
        while len(got) < want and time.monotonic() < deadline:
            for records in member.poll(timeout_ms=200).values():
                got += [r.value for r in records]
        return got

    member = consumer()
    try:
        assert sorted(read(member, 30)) == sorted(b"first%d" % i for i in range(30))
        member.commit()
        coordinator = find_coordinator(cluster, group, asked=1)
        cluster.kill(coordinator)
        produce_over_http(cluster, topic, [(b"k%d" % i, b"second%d" % i) for i in range(12)])
        assert sorted(read(member, 12)) == sorted(b"second%d" % i for i in range(12)), "nothing re-delivered"
        commit_retrying(member)
        assert find_coordinator(cluster, group, asked=next(b for b in cluster.nodes if b != coordinator)) \
            != coordinator
    finally:
        member.close()
    # Bootstrapped from the live brokers only: kafka-python's committed() raises at once when the bootstrap
    # server it picks refuses the connection, instead of trying another.
    live = ",".join(str(node.kafka_address) for b, node in cluster.nodes.items() if b != coordinator)
    checker = KafkaConsumer(bootstrap_servers=live, group_id=group, enable_auto_commit=False)
    try:
        assert sum(checker.committed(TopicPartition(topic, p)) or 0 for p in range(3)) == 42
    finally:
        checker.close()
        gc.collect()  # kafka-python's leaked sockets are finalised here, under this test's warning filter


def commit_retrying(member: Any) -> None:
    """kafka-python's synchronous commit() raises a connection error when it asks a dead broker (still in
    Metadata until the controller fences it) for the coordinator, where an application retries."""
    from kafka.errors import KafkaConnectionError

    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while True:
        try:
            member.commit()
            return
        except KafkaConnectionError:
            assert time.monotonic() < deadline, "no commit within the deadline"
            time.sleep(0.1)  # a retry with a deadline: the client's own reconnect backoff may not apply here


def find_coordinator(cluster: LocalCluster, group: str, *, asked: int) -> int:
    """The group's coordinator as broker ``asked`` answers FindCoordinator (the port it names is a broker's)."""
    from raftmq.cluster.kafka_messages import ApiKey

    from tests.integration.kafka_clients.test_listener import call, connect

    with connect(cluster, asked) as sock:
        answer = call(sock, ApiKey.FIND_COORDINATOR, {"key": group, "key_type": 0})
    assert answer["error_code"] == 0, answer
    assert cluster.nodes[answer["node_id"]].kafka_port == answer["port"]
    return int(answer["node_id"])
