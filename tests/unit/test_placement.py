"""Placement (cluster/placement.py): properties checked against one invariant checker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.errors import InvalidReplicationFactor, NotEnoughBrokers
from raftmq.cluster.metadata import parse_create_topic
from raftmq.cluster.placement import (
    BrokerSlot,
    Load,
    assign_replicas,
    placement_problems,
    plan_create_topic,
    replacement,
)


@settings(max_examples=400, deadline=None)
@given(brokers=st.integers(1, 9), partitions=st.integers(1, 40), data=st.data())
def test_spreads_replicas_and_preferred_leaders_evenly(brokers: int, partitions: int, data: st.DataObject) -> None:
    replication_factor = data.draw(st.integers(1, brokers))
    ids = data.draw(st.lists(st.integers(1, 50), min_size=brokers, max_size=brokers, unique=True))
    assignment = assign_replicas(partitions, replication_factor, ids)
    assert placement_problems(assignment, ids, replication_factor) == []


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_racks_are_respected(data: st.DataObject) -> None:
    racks = data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=8))
    slots = [BrokerSlot(i + 1, rack) for i, rack in enumerate(racks)]
    replication_factor = data.draw(st.integers(1, len(slots)))
    assignment = assign_replicas(data.draw(st.integers(1, 30)), replication_factor, slots)
    assert placement_problems(assignment, slots, replication_factor, balanced=False) == []


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_topics_placed_one_after_another_keep_replicas_even(data: st.DataObject) -> None:
    """Across topics the replica counts stay even (preferred leaders are even within each topic)."""
    ids = list(range(1, data.draw(st.integers(3, 7)) + 1))
    load = Load()
    every: list[tuple[int, ...]] = []
    for _ in range(data.draw(st.integers(1, 5))):
        every += assign_replicas(data.draw(st.integers(1, 12)), 3, ids, load=load)
    assert placement_problems(every, ids, 3, balanced=False) == []
    counts = [load.replicas.get(b, 0) for b in ids]
    assert max(counts) - min(counts) <= 1


def test_replacement_prefers_the_least_loaded_broker_in_a_new_rack() -> None:
    slots = [BrokerSlot(1, "a"), BrokerSlot(2, "b"), BrokerSlot(3, "a"), BrokerSlot(4, "c"), BrokerSlot(5, "c")]
    load = Load(replicas={1: 3, 2: 3, 3: 0, 4: 2, 5: 1})
    assert replacement((1, 2, 4), slots, load, leaving=[4]) == 5  # rack c again, not broker 3 in rack a
    assert replacement((1, 2, 3), [1, 2, 3], load) is None


def test_errors_are_coded() -> None:
    with pytest.raises(InvalidReplicationFactor):
        assign_replicas(1, 4, [1, 2, 3])
    with pytest.raises(NotEnoughBrokers):
        plan_create_topic(parse_create_topic({"name": "t"}), [])
    payload = plan_create_topic(parse_create_topic({"name": "t", "partitions": 5}), [1, 2, 3, 4, 5])
    assert payload["replication_factor"] == 3
