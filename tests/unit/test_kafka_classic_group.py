"""Kafka's classic group protocol: the rendezvous decisions (cluster/kafka_classic_group.py) and the hooks it
uses in the replicated group state (cluster/consumer_groups.py: classic joins, installed assignments).

Goal: join phases end exactly when Kafka's coordinator ends them (every current member rejoined, the initial
delay of a new group, or the wait's end), protocol selection agrees with Kafka's vote (a mixed librdkafka /
kafka-python / aiokafka group lands on roundrobin), the consumer-protocol payloads decode, and in the
replicated state a classic generation is owned only as the leader assigned it, with commits fenced by it.
Method: examples for each rule; hypothesis for the vote and for random assignments installed over random
joins and leaves (no partition ever owned twice, commits accepted exactly for owned partitions)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.cluster.consumer_groups import GroupOp, GroupsState, HeartbeatResult
from raftmq.cluster.errors import InconsistentGroupProtocol, InvalidRequest, InvalidTopic, StaleMemberEpoch
from raftmq.cluster.kafka_classic_group import (
    ClassicGroup,
    Joiner,
    Phase,
    assignment_partitions,
    encode_assignment,
    encode_subscription,
    select_protocol,
    subscription_topics,
)

G = "g"
DELAY, WAIT = 500, 30_000


def joiner(member: str, protocols: tuple[str, ...] = ("range", "roundrobin"), *, rebalance_ms: int = 10_000,
           protocol_type: str = "consumer") -> Joiner:
    return Joiner(member, None, "client", 6000, rebalance_ms, protocol_type,
                  tuple((name, encode_subscription(["t"])) for name in protocols))


def test_payloads_decode_as_kafkas_consumer_protocol() -> None:
    assert subscription_topics(encode_subscription(["b", "a", "b"]), count_max=100) == ("a", "b")
    assert assignment_partitions(encode_assignment({"t": [0, 2], "u": [1]}, b"user"), count_max=100) == {
        ("t", 0), ("t", 2), ("u", 1)}
    assert assignment_partitions(b"", count_max=100) == frozenset()
    with pytest.raises(InvalidRequest):
        subscription_topics(b"\x00\x00\x00\x00\x00\x05ab", count_max=100)  # one topic, cut short
    with pytest.raises(InvalidTopic):
        subscription_topics(encode_subscription(["bad/name"]), count_max=100)


def test_a_mixed_group_votes_for_roundrobin_and_kafka_clients_alone_keep_range() -> None:
    librdkafka, kafka_python, aiokafka = joiner("a"), joiner("b"), joiner("c", ("roundrobin",))
    assert select_protocol([librdkafka, kafka_python, aiokafka], librdkafka) == "roundrobin"
    assert select_protocol([librdkafka, kafka_python], librdkafka) == "range"
    with pytest.raises(InconsistentGroupProtocol):
        select_protocol([joiner("a", ("range",)), joiner("b", ("sticky",))], joiner("a", ("range",)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded machine
@given(st.lists(st.lists(st.sampled_from(["range", "roundrobin", "sticky", "coop"]), min_size=1, max_size=4,
                         unique=True), min_size=1, max_size=6))
def test_the_vote_picks_a_protocol_every_member_supports(preferences: list[list[str]]) -> None:
    joiners = [joiner(f"m{i}", tuple(p)) for i, p in enumerate(preferences)]
    common = set.intersection(*(set(p) for p in preferences))
    if not common:
        with pytest.raises(InconsistentGroupProtocol):
            select_protocol(joiners, joiners[0])
        return
    chosen = select_protocol(joiners, joiners[0])
    assert chosen in common
    votes = [next(name for name in p if name in common) for p in preferences]
    assert votes.count(chosen) == max(votes.count(name) for name in common)


def test_a_new_group_waits_the_initial_delay_then_forms_one_generation() -> None:
    group = ClassicGroup(G)
    group.join(joiner("a"), frozenset(), 0, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    group.join(joiner("b"), frozenset(), 100, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    assert group.phase is Phase.JOINING and not group.ready(DELAY - 1)
    assert group.ready(DELAY)
    outcome = group.complete()
    assert outcome.leader == "a" and [m.member_id for m in outcome.members] == ["a", "b"]
    assert group.phase is Phase.SYNCING and group.members == {"a", "b"}
    group.install({"a": b"x"})
    assert group.phase is Phase.STABLE and group.assignments == {"a": b"x", "b": b""}


def test_a_rebalance_ends_when_every_member_rejoined_or_the_wait_ran_out() -> None:
    group = ClassicGroup(G, generation=4, members=frozenset({"a", "b"}), leader="b")
    group.join(joiner("a", rebalance_ms=2000), frozenset({"a", "b"}), 0, initial_delay_ms=DELAY,
               rebalance_wait_ms_max=WAIT)
    assert not group.ready(1999), "b has not rejoined and its wait is not over"
    assert group.ready(2000), "the wait ran out: a forms the generation alone"
    group.join(joiner("b"), frozenset({"a", "b"}), 10, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    assert group.ready(10), "every current member rejoined: no need to wait"
    assert group.complete().leader == "b", "the leader stays the leader when it rejoins"


def test_a_leave_or_an_expiry_starts_a_rebalance_that_no_longer_waits_for_the_member() -> None:
    group = ClassicGroup(G, generation=4, members=frozenset({"a", "b", "c"}))
    group.start_rebalance(frozenset({"a", "b"}), 0, rebalance_wait_ms_max=WAIT)
    group.join(joiner("a"), frozenset({"a", "b"}), 1, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    assert not group.ready(2)
    group.forget("b")
    assert group.ready(2)


def test_a_member_with_another_protocol_type_or_no_common_assignor_is_refused() -> None:
    group = ClassicGroup(G)
    group.join(joiner("a", ("range",)), frozenset(), 0, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    with pytest.raises(InconsistentGroupProtocol):
        group.join(joiner("b", ("range",), protocol_type="connect"), frozenset(), 0, initial_delay_ms=DELAY,
                   rebalance_wait_ms_max=WAIT)
    with pytest.raises(InconsistentGroupProtocol):
        group.join(joiner("c", ("sticky",)), frozenset(), 0, initial_delay_ms=DELAY, rebalance_wait_ms_max=WAIT)
    assert set(group.joining) == {"a"}


# --- the replicated state's classic hooks ----------------------------------------------------------------


def classic_join(state: GroupsState, member: str) -> HeartbeatResult:
    result = state.apply(GroupOp.HEARTBEAT, 0, {
        "group_id": G, "member_id": member, "instance_id": None, "member_epoch": 0, "client_id": "c",
        "subscription": {"topics": ["t"], "pattern": None}, "owned": [], "topics": {"t": 4},
        "session_timeout_ms": 6000, "rebalance_timeout_ms": 10_000, "classic": True})
    assert isinstance(result, HeartbeatResult)
    return result


def install(state: GroupsState, generation: int, target: dict[str, list[int]]) -> Any:
    return state.apply(GroupOp.SET_TARGET, 0, {"group_id": G, "group_epoch": generation, "install": True,
                                               "target": {m: [["t", p] for p in ps] for m, ps in target.items()}})


def commit(state: GroupsState, member: str, partitions: list[int]) -> Any:
    epoch = state.groups[G].members[member].member_epoch
    return state.apply(GroupOp.COMMIT_OFFSETS, 0, {"group_id": G, "member_id": member, "member_epoch": epoch,
                                                   "offsets": [["t", p, 7, ""] for p in partitions]})


def test_a_classic_generation_owns_exactly_the_leaders_assignment() -> None:
    state = GroupsState()
    classic_join(state, "a")
    generation = classic_join(state, "b").group_epoch
    assert all(not m.owned for m in state.groups[G].members.values()), "a classic join owns nothing yet"
    assert install(state, generation, {"a": [0, 1, 2], "b": [3]}) == {"group_epoch": generation}
    members = state.groups[G].members
    assert members["a"].assigned == {("t", 0), ("t", 1), ("t", 2)} and members["b"].assigned == {("t", 3)}
    assert commit(state, "a", [0, 1]) == {"committed": 2}
    assert isinstance(commit(state, "b", [0]), StaleMemberEpoch), "b does not own t-0"
    # A rejoin (the next generation) gives everything up at once: eager, so old owners cannot commit.
    again = classic_join(state, "a").group_epoch
    assert again > generation and not state.groups[G].members["a"].owned
    assert isinstance(commit(state, "a", [0]), StaleMemberEpoch)
    assert isinstance(install(state, generation, {"a": [0]}), StaleMemberEpoch), "an old generation's assignment"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "install"]), st.sampled_from("abc"),
                          st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), max_size=6)), max_size=25))
def test_installed_assignments_never_give_a_partition_to_two_members(steps: list[tuple[str, str, list[Any]]]) -> None:
    state = GroupsState()
    for action, member, pairs in steps:
        group = state.groups.get(G)
        if action == "join":
            classic_join(state, member)
        elif action == "leave" and group is not None and member in group.members:
            state.apply(GroupOp.HEARTBEAT, 0, {"group_id": G, "member_id": member, "member_epoch": -1})
        elif action == "install" and group is not None:
            target: dict[str, list[int]] = {}
            taken: set[int] = set()
            for owner, partition in pairs:
                if partition not in taken:
                    taken.add(partition)
                    target.setdefault(owner, []).append(partition)
            install(state, group.group_epoch, target)
        group = state.groups.get(G)
        if group is None:
            continue
        owned = [p for m in group.members.values() for p in m.owned]
        assert len(owned) == len(set(owned))
        for m in group.members.values():
            for partition in range(4):
                accepted = not isinstance(commit(state, m.member_id, [partition]), StaleMemberEpoch)
                assert accepted == (("t", partition) in m.owned)
