"""Pure state machines: the idempotent-producer table and the metadata state.

Method: hand-made cases for each verdict, a property test that a table rebuilt from the appended batches
(what a restarted replica does) equals the live one, and metadata validation cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import (
    InvalidConfig,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidRequest,
    InvalidTopic,
    StaleBrokerIncarnation,
    TopicAlreadyExists,
    UnknownBroker,
    UnknownTopicOrPartition,
)
from raftmq.cluster.metadata import (
    MetadataState,
    ProducerCheck,
    Topic,
    parse_create_topic,
    parse_producer_name,
)
from raftmq.cluster.placement import assign_replicas, plan_create_topic
from raftmq.cluster.producer_state import PUBLISH_PRODUCER_ID_MIN, ProducerTable, Verdict


def test_producer_verdicts() -> None:
    table = ProducerTable()
    assert table.check(7, 0, 3).verdict is Verdict.APPEND
    assert table.check(7, 5, 3).verdict is Verdict.UNKNOWN_PRODUCER
    table.record(7, 0, 3, base_offset=100, append_time_ms=1)
    duplicate = table.check(7, 0, 3)
    assert duplicate.verdict is Verdict.DUPLICATE and duplicate.base_offset == 100
    assert table.check(7, 3, 2).verdict is Verdict.APPEND
    gap = table.check(7, 4, 1)
    assert gap.verdict is Verdict.OUT_OF_ORDER and gap.expected_sequence == 3
    assert table.check(7, 1, 1).verdict is Verdict.OUT_OF_ORDER  # overlaps a batch inconsistently
    offset = 103
    for sequence in range(3, 3 + 6 * 2, 2):  # six more batches: the first one leaves the window of 5
        table.record(7, sequence, 2, base_offset=offset, append_time_ms=2)
        offset += 2
    assert table.check(7, 0, 3).verdict is Verdict.DUPLICATE_OLD
    assert table.check(7, 13, 2).verdict is Verdict.DUPLICATE


def test_producers_are_forgotten_by_count_and_idle_time() -> None:
    table = ProducerTable(producers_max=3, idle_ms_max=1000)
    for producer_id in range(4):
        table.record(producer_id, 0, 1, base_offset=producer_id, append_time_ms=10)
    assert len(table) == 3 and table.check(0, 1, 1).verdict is Verdict.UNKNOWN_PRODUCER
    table.record(9, 0, 1, base_offset=9, append_time_ms=5000)  # the others are now idle for > 1000 ms
    assert len(table) == 1


def test_publishes_have_their_own_table_and_never_push_producers_out() -> None:
    """Idempotent exchange publishes are one-batch producers with derived ids: many of them must not evict
    a real producer's state (its next batch would be refused UNKNOWN_PRODUCER_ID)."""
    table = ProducerTable(producers_max=2, publishes_max=3, idle_ms_max=1000)
    table.record(7, 0, 1, base_offset=0, append_time_ms=10)
    for n in range(5):
        table.record(PUBLISH_PRODUCER_ID_MIN + n, 0, 2, base_offset=1 + 2 * n, append_time_ms=10)
    assert table.check(7, 1, 1).verdict is Verdict.APPEND
    assert table.check(PUBLISH_PRODUCER_ID_MIN + 4, 0, 2) == (Verdict.DUPLICATE, 9, None)
    assert table.check(PUBLISH_PRODUCER_ID_MIN + 1, 0, 2).verdict is Verdict.APPEND  # left the window of 3
    assert len(table) == 1 + 3
    restored = ProducerTable.from_state(table.to_state(), producers_max=2, publishes_max=3, idle_ms_max=1000)
    assert restored.to_state() == table.to_state()
    assert restored.check(PUBLISH_PRODUCER_ID_MIN + 4, 0, 2).verdict is Verdict.DUPLICATE


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5), st.booleans()), max_size=60),
       st.integers(0, 60))
def test_rebuilt_table_equals_live_table(batches: list[tuple[int, int, bool]], split: int) -> None:
    """A replica that restarts loads the table from its snapshot and replays the batches after it: it must
    make the same decisions as a replica that never stopped."""
    live = ProducerTable(producers_max=3, idle_ms_max=50)
    appended: list[tuple[int, int, int, int, int]] = []
    sequences: dict[int, int] = {}
    offset = 0
    for step, (producer_id, count, retry) in enumerate(batches):
        sequence = sequences.get(producer_id, 0)
        if retry and sequence >= count:
            sequence -= count  # resend something old-ish
        decision = live.check(producer_id, sequence, count)
        if decision.verdict is Verdict.APPEND:
            live.record(producer_id, sequence, count, offset, step * 10)
            appended.append((producer_id, sequence, count, offset, step * 10))
            sequences[producer_id] = sequence + count
            offset += count
    cut = min(split, len(appended))
    snapshot = ProducerTable(producers_max=3, idle_ms_max=50)
    for item in appended[:cut]:
        snapshot.record(*item)
    restored = ProducerTable.from_state(snapshot.to_state(), producers_max=3, idle_ms_max=50)
    for item in appended[cut:]:
        restored.record(*item)
    assert restored.to_state() == live.to_state()


BROKERS = [1, 2, 3]


def test_parse_create_topic_defaults() -> None:
    payload = plan_create_topic(parse_create_topic({"name": "orders", "partitions": 2}), BROKERS)
    assert payload["replication_factor"] == 3
    assert payload["config"]["min_insync_replicas"] == 2
    assert payload["replicas"] == [[1, 2, 3], [2, 3, 1]]


@pytest.mark.parametrize("body,error", [
    ({}, InvalidTopic), ({"name": "a/b"}, InvalidTopic), ({"name": ".."}, InvalidTopic),
    ({"name": "x" * 250}, InvalidTopic), ({"name": 5}, InvalidTopic),
    ({"name": "t", "partitions": 0}, InvalidPartitions), ({"name": "t", "partitions": 10_000}, InvalidPartitions),
    ({"name": "t", "partitions": "3"}, InvalidRequest),
    ({"name": "t", "replication_factor": 4}, InvalidReplicationFactor),
    ({"name": "t", "replication_factor": 0}, InvalidReplicationFactor),
    ({"name": "t", "config": {"bogus": 1}}, InvalidConfig),
    ({"name": "t", "config": {"retention_ms": 0}}, InvalidConfig),
    ({"name": "t", "config": {"min_insync_replicas": 1}}, InvalidConfig),
    ({"name": "t", "config": {"min_insync_replicas": 4}}, InvalidConfig),
    ({"name": "t", "config": {"segment_bytes": 10}}, InvalidConfig), ({"name": "t", "config": []}, InvalidConfig),
    ({"name": "t", "extra": 1}, InvalidRequest),
])
def test_parse_create_topic_rejects(body: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        plan_create_topic(parse_create_topic(body), BROKERS)


def test_metadata_state_machine() -> None:
    state = MetadataState()
    payload = plan_create_topic(parse_create_topic({"name": "t", "partitions": 3}), BROKERS)
    topic = state.apply(10, MetadataOp.CREATE_TOPIC, 1234, payload)
    assert isinstance(topic, Topic) and topic.topic_id == 10 and topic.created_ms == 1234
    assert isinstance(state.apply(11, MetadataOp.CREATE_TOPIC, 1, payload), TopicAlreadyExists)
    assert state.apply(12, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {}) == {"producer_id": 1, "producer_epoch": 0}
    assert state.apply(13, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {}) == {"producer_id": 2, "producer_epoch": 0}
    assert state.apply(13, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {"name": "svc"}) == {"producer_id": 3,
                                                                                      "producer_epoch": 0}
    again = MetadataState.from_bytes(state.to_bytes())
    assert again == state
    assert state.apply(14, MetadataOp.DELETE_TOPIC, 1, {"name": "t"})["deleted"] == "t"
    assert isinstance(state.apply(15, MetadataOp.DELETE_TOPIC, 1, {"name": "t"}), UnknownTopicOrPartition)
    recreated = state.apply(16, MetadataOp.CREATE_TOPIC, 1, payload)
    assert recreated.topic_id == 16  # a new incarnation, a new id
    assert isinstance(state.apply(17, 250, 1, {}), InvalidRequest)


def test_assign_replicas_rotates_preferred_leader() -> None:
    assert [r[0] for r in assign_replicas(4, 3, [3, 1, 2])] == [1, 2, 3, 1]


def test_moves_and_brokers_in_the_metadata_state() -> None:
    state = MetadataState()
    topic = state.apply(5, MetadataOp.CREATE_TOPIC, 1, plan_create_topic(
        parse_create_topic({"name": "t", "partitions": 2}), BROKERS))
    ids = {"name": "t", "topic_id": topic.topic_id, "partition": 0}
    register = {"id": 4, "url": "http://h:4", "peer": "h:5", "rack": None, "incarnation": 2}
    assert state.apply(6, MetadataOp.REGISTER_BROKER, 1, register).state.value == "alive"
    assert isinstance(state.apply(7, MetadataOp.REGISTER_BROKER, 1, {**register, "incarnation": 1}),
                      StaleBrokerIncarnation)
    state.apply(8, MetadataOp.BEGIN_REASSIGNMENT, 1, {**ids, "target": [1, 2, 4], "reason": "heal"})
    assert state.topics["t"].hosted_by(0, 4) and not state.topics["t"].hosted_by(1, 4)
    state.apply(9, MetadataOp.SET_PARTITION_REPLICAS, 1, {**ids, "replicas": [*topic.replicas[0], 4]})
    state.apply(10, MetadataOp.SET_PARTITION_REPLICAS, 1, {**ids, "replicas": [1, 2, 4]})
    state.apply(11, MetadataOp.END_REASSIGNMENT, 1, ids)
    moved = state.topics["t"]
    assert moved.replicas[0] == (1, 2, 4) and moved.targets[0] is None and moved.epochs == (2, 0)
    assert MetadataState.from_bytes(state.to_bytes()) == state
    assert isinstance(state.apply(12, MetadataOp.SET_BROKER_STATE, 1, {"id": 9, "state": "fenced"}), UnknownBroker)


def test_producer_ids_are_checked_and_named_producers_fence_older_instances() -> None:
    state = MetadataState()
    assert state.check_producer(1) is ProducerCheck.UNKNOWN  # never allocated
    assert state.check_producer(0) is ProducerCheck.UNKNOWN
    unnamed = state.apply(1, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {})["producer_id"]
    first = state.apply(2, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {"name": "billing"})
    assert first["producer_epoch"] == 0
    assert state.check_producer(unnamed) is ProducerCheck.CURRENT
    assert state.check_producer(first["producer_id"]) is ProducerCheck.CURRENT
    assert state.check_producer(first["producer_id"] + 1) is ProducerCheck.UNKNOWN
    second = state.apply(3, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {"name": "billing"})
    assert second["producer_epoch"] == 1 and second["producer_id"] != first["producer_id"]
    assert state.check_producer(first["producer_id"]) is ProducerCheck.FENCED
    assert state.check_producer(second["producer_id"]) is ProducerCheck.CURRENT
    other = state.apply(4, MetadataOp.ALLOCATE_PRODUCER_ID, 1, {"name": "shipping"})
    assert other["producer_epoch"] == 0 and state.check_producer(second["producer_id"]) is ProducerCheck.CURRENT
    restored = MetadataState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.check_producer(first["producer_id"]) is ProducerCheck.FENCED
    assert list(restored.producer_names) == ["billing", "shipping"]


@pytest.mark.parametrize("body", [{"name": ""}, {"name": 5}, {"name": "a\nb"}, {"name": "x" * 256}, {"other": 1}, []])
def test_producer_names_are_validated(body: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_producer_name(body)
    assert parse_producer_name({}) is None and parse_producer_name({"name": "svc-1"}) == "svc-1"


def test_a_brokers_kafka_address_is_registered_and_survives_a_snapshot() -> None:
    """Kafka Metadata lists brokers added after the others started from this registry (node/kafka_api.py)."""
    state = MetadataState()
    register = {"id": 4, "url": "http://h:4", "peer": "h:5", "rack": None, "incarnation": 1, "kafka": "h:9095"}
    assert state.apply(1, MetadataOp.REGISTER_BROKER, 1, register).kafka == "h:9095"
    moved = state.apply(2, MetadataOp.REGISTER_BROKER, 1, {**register, "incarnation": 2, "kafka": "h:9096"})
    assert moved.kafka == "h:9096" and MetadataState.from_bytes(state.to_bytes()) == state
    older = {k: v for k, v in register.items() if k != "kafka"}  # a broker without a Kafka listener
    assert state.apply(3, MetadataOp.REGISTER_BROKER, 1, {**older, "id": 5}).kafka is None
