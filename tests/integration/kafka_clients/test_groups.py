"""Consumer groups over Kafka's classic protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch) with each client, unchanged but for the bootstrap address: group
consume with commits that a restarted consumer resumes from (nothing re-delivered, nothing skipped), two
consumers splitting a topic's partitions and one taking all of them over when the other leaves, `kcat -G`,
and a group mixing librdkafka, kafka-python and aiokafka (they agree on roundrobin).

Method: the package's one real 3-broker cluster (tests/integration/kafka_clients/conftest.py); every test uses
its own topic and group; every wait is bounded by CLIENT_TIMEOUT_S. Records are produced with raftmq's own
client, so what a group reads is checked against what was acknowledged."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as CkTopicPartition
from kafka import KafkaConsumer, TopicPartition
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import CLIENT_TIMEOUT_S, create_topic, produce_over_http, unique

pytestmark = pytest.mark.cluster

PARTITIONS = 3


def produce(cluster: LocalCluster, topic: str, first: int, count: int) -> set[bytes]:
    values = [f"v{i}".encode() for i in range(first, first + count)]
    produce_over_http(cluster, topic, [(f"k{i}".encode(), v) for i, v in zip(range(first, first + count), values,
                                                                               strict=True)])
    return set(values)


def confluent(bootstrap: str, group: str, **extra: Any) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                     **extra})


def poll_confluent(consumer: Consumer, want: int, *, seen: list[bytes] | None = None) -> list[bytes]:
    got = seen if seen is not None else []
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while len(got) < want and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        assert message.error() is None, message.error()
        got.append(message.value())
    return got


def test_confluent_group_commits_survive_a_restart(kafka_cluster: LocalCluster) -> None:
    topic, group = unique("grp-ck"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    first = produce(kafka_cluster, topic, 0, 30)
    consumer = confluent(kafka_cluster.kafka_bootstrap, group)
    try:
        consumer.subscribe([topic])
        got = poll_confluent(consumer, 30)
        assert set(got) == first and len(got) == 30
        consumer.commit(asynchronous=False)
        committed = consumer.committed([CkTopicPartition(topic, p) for p in range(PARTITIONS)],
                                       timeout=CLIENT_TIMEOUT_S)
        assert sum(tp.offset for tp in committed) == 30
    finally:
        consumer.close()
    second = produce(kafka_cluster, topic, 30, 12)
    restarted = confluent(kafka_cluster.kafka_bootstrap, group)
    try:
        restarted.subscribe([topic])
        got = poll_confluent(restarted, 12)
        assert set(got) == second and len(got) == 12, "a restarted member resumes at the committed offsets"
        assert restarted.poll(0.5) is None
    finally:
        restarted.close()


def wait_for(condition: Callable[[], bool], what: str, poll_s: float = 0.0) -> None:
    """Until ``condition`` holds (it may block in a client's poll itself; else ``poll_s`` between checks)."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if poll_s:
            time.sleep(poll_s)  # a condition poll with a deadline, not a synchronisation


def test_two_confluent_consumers_split_the_partitions_and_one_takes_over(kafka_cluster: LocalCluster) -> None:
    topic, group = unique("grp-split"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    a, b = confluent(kafka_cluster.kafka_bootstrap, group), confluent(kafka_cluster.kafka_bootstrap, group)
    try:
        a.subscribe([topic])
        b.subscribe([topic])

        def split() -> bool:
            a.poll(0.1)
            b.poll(0.1)
            mine, theirs = {p.partition for p in a.assignment()}, {p.partition for p in b.assignment()}
            return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == set(range(PARTITIONS))

        wait_for(split, "two members to split the partitions")
        b.close()

        def taken_over() -> bool:
            a.poll(0.1)
            return {p.partition for p in a.assignment()} == set(range(PARTITIONS))

        wait_for(taken_over, "the remaining member to take every partition")
        values = produce(kafka_cluster, topic, 0, 9)
        assert set(poll_confluent(a, 9)) == values
    finally:
        a.close()


def test_kafka_python_group_commits_and_resumes(kafka_cluster: LocalCluster) -> None:
    topic, group = unique("grp-kp"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    first = produce(kafka_cluster, topic, 0, 20)

    def run(want: int, committed_after: int) -> list[bytes]:
        consumer = KafkaConsumer(topic, bootstrap_servers=kafka_cluster.kafka_bootstrap, group_id=group,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 session_timeout_ms=6000, heartbeat_interval_ms=500)
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(got) < want and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    got += [r.value for r in records]
            consumer.commit()
            committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))
            assert committed == committed_after
            return got
        finally:
            consumer.close()

    got = run(20, 20)
    assert set(got) == first and len(got) == 20
    second = produce(kafka_cluster, topic, 20, 7)
    got = run(7, 27)
    assert set(got) == second and len(got) == 7


def test_aiokafka_group_commits_and_resumes(kafka_cluster: LocalCluster) -> None:
    topic, group = unique("grp-aio"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    first = produce(kafka_cluster, topic, 0, 20)

    async def run(want: int) -> tuple[list[bytes], int]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_cluster.kafka_bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
        await consumer.start()
        try:
            got: list[bytes] = []
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                while len(got) < want:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        got += [r.value for r in records]
            await consumer.commit()
            committed = [await consumer.committed(AioTopicPartition(topic, p)) for p in range(PARTITIONS)]
            return got, sum(c or 0 for c in committed)
        finally:
            await consumer.stop()

    got, committed = asyncio.run(run(20))
    assert set(got) == first and len(got) == 20 and committed == 20
    second = produce(kafka_cluster, topic, 20, 5)
    got, committed = asyncio.run(run(5))
    assert set(got) == second and len(got) == 5 and committed == 25


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (Debian package kcat)")
def test_kcat_balanced_consumer_reads_and_commits(kafka_cluster: LocalCluster) -> None:
    topic, group = unique("grp-kcat"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    values = produce(kafka_cluster, topic, 0, 15)
    command = ["kcat", "-b", kafka_cluster.kafka_bootstrap, "-G", group, "-c", "15", "-f", "%s\n",
               "-X", "auto.offset.reset=earliest", "-X", "enable.auto.commit=true",
               "-X", "auto.commit.interval.ms=100", topic]
    out = subprocess.run(command, capture_output=True, timeout=CLIENT_TIMEOUT_S, check=True, text=True)
    assert set(out.stdout.split()) == {v.decode() for v in values}
    # kcat commits what it consumed as it closes: a group consumer reading the committed offsets sees them.
    checker = KafkaConsumer(bootstrap_servers=kafka_cluster.kafka_bootstrap, group_id=group,
                            enable_auto_commit=False)
    try:
        assert sum(checker.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)) == 15
    finally:
        checker.close()


def test_a_group_of_librdkafka_kafka_python_and_aiokafka_members_shares_the_partitions(
        kafka_cluster: LocalCluster) -> None:
    """The three clients' assignors have only roundrobin in common: the vote picks it, and each member gets
    one partition of three. Each client polls on its own thread (kafka-python joins inside poll(), blocking)."""
    topic, group = unique("grp-mixed"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    bootstrap = kafka_cluster.kafka_bootstrap
    owned: dict[str, set[int]] = {"librdkafka": set(), "kafka-python": set(), "aiokafka": set()}
    stop = threading.Event()

    def librdkafka() -> None:
        consumer = confluent(bootstrap, group)
        try:
            consumer.subscribe([topic])
            while not stop.is_set():
                consumer.poll(0.05)
                owned["librdkafka"] = {p.partition for p in consumer.assignment()}
        finally:
            consumer.close()

    def kafka_python() -> None:
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                 session_timeout_ms=6000, heartbeat_interval_ms=500)
        try:
            while not stop.is_set():
                consumer.poll(timeout_ms=50)
                owned["kafka-python"] = {p.partition for p in consumer.assignment()}
        finally:
            consumer.close()

    async def aiokafka() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
        await consumer.start()
        try:
            while not stop.is_set():
                await consumer.getmany(timeout_ms=50)
                owned["aiokafka"] = {p.partition for p in consumer.assignment()}
        finally:
            await consumer.stop()

    threads = [threading.Thread(target=librdkafka), threading.Thread(target=kafka_python),
               threading.Thread(target=lambda: asyncio.run(aiokafka()))]
    for thread in threads:
        thread.start()
    try:
        def split() -> bool:
            parts = list(owned.values())
            return all(len(o) == 1 for o in parts) and set.union(*parts) == set(range(PARTITIONS))

        wait_for(split, f"the three members to split the partitions (they own {owned})", poll_s=0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (Debian package kcat)")
def test_a_member_killed_without_leaving_is_expired_and_its_partitions_move(kafka_cluster: LocalCluster) -> None:
    """A `kcat -G` member SIGKILLed (no LeaveGroup): its session expires on the coordinator, the remaining
    member hears REBALANCE_IN_PROGRESS on its heartbeat, rejoins, and owns every partition."""
    topic, group = unique("grp-expiry"), unique("g")
    create_topic(kafka_cluster, topic, PARTITIONS)
    survivor = confluent(kafka_cluster.kafka_bootstrap, group)
    doomed = subprocess.Popen(["kcat", "-b", kafka_cluster.kafka_bootstrap, "-G", group, "-q",
                               "-X", "session.timeout.ms=2000", "-X", "heartbeat.interval.ms=300", topic],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        survivor.subscribe([topic])

        def owned() -> set[int]:
            survivor.poll(0.1)
            return {p.partition for p in survivor.assignment()}

        wait_for(lambda: 0 < len(owned()) < PARTITIONS, "kcat and the consumer to share the partitions")
        doomed.kill()
        doomed.wait(CLIENT_TIMEOUT_S)
        wait_for(lambda: owned() == set(range(PARTITIONS)), "the survivor to own every partition")
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(CLIENT_TIMEOUT_S)
        survivor.close()
