"""Moves (cluster/reassignment.py): the safety rule of every membership step, and which moves start."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.metadata import BrokerRecord, BrokerState, Topic, TopicConfig, majority
from raftmq.cluster.reassignment import Cluster, GroupView, StepKind, choose_moves, next_step

BROKERS = list(range(1, 8))


def _apply(view: GroupView, kind: StepKind, broker: int | None) -> tuple[int, ...]:
    if kind is StepKind.ADD:
        return (*view.voters, broker)  # type: ignore[return-value]
    if kind is StepKind.REMOVE:
        return tuple(b for b in view.voters if b != broker)
    return view.voters


def _healthy(view: GroupView, voters: tuple[int, ...]) -> int:
    return sum(1 for b in voters if b in view.caught_up and b in view.alive)


@st.composite
def views(draw: st.DrawFn) -> GroupView:
    voters = tuple(draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True)))
    target = tuple(draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True)))
    leader = draw(st.sampled_from(voters))
    alive = frozenset(draw(st.sets(st.sampled_from(BROKERS)))) | {leader}
    caught_up = frozenset(draw(st.sets(st.sampled_from(voters)))) | {leader}
    return GroupView(voters, target, leader, caught_up, alive, draw(st.booleans()))


@settings(max_examples=1500, deadline=None)
@given(views())
def test_a_step_never_leaves_fewer_caught_up_voters_than_a_majority(view: GroupView) -> None:
    step = next_step(view)
    after = _apply(view, step.kind, step.broker)
    if step.kind in (StepKind.WAIT, StepKind.DONE, StepKind.TRANSFER):
        if step.kind is StepKind.TRANSFER:
            assert step.broker in view.caught_up and step.broker in view.alive and step.broker in view.target
        if step.kind is StepKind.DONE:
            assert set(view.voters) == set(view.target)
        return
    assert not view.pending
    assert step.broker != view.leader  # a leader leaves only after handing leadership over
    before_ok = _healthy(view, view.voters) >= majority(len(view.voters))
    if len(view.voters) == 1 and step.kind is StepKind.ADD:
        return  # the documented single-voter exception
    if before_ok:
        assert _healthy(view, after) >= majority(len(after)), (step, view)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_move_reaches_its_target_when_everyone_catches_up(data: st.DataObject) -> None:
    """Play a move to its end: every newcomer catches up after each step; it ends at the target."""
    voters = tuple(data.draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True)))
    target = tuple(data.draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True)))
    leader = voters[0]
    for _ in range(30):
        view = GroupView(voters, target, leader, frozenset(voters), frozenset(BROKERS))
        step = next_step(view)
        if step.kind is StepKind.DONE:
            break
        assert step.kind is not StepKind.WAIT, step
        if step.kind is StepKind.TRANSFER:
            leader = step.broker  # type: ignore[assignment]
        voters = _apply(view, step.kind, step.broker)
    assert set(voters) == set(target)


def _topic(replicas: list[tuple[int, ...]], rf: int = 3) -> Topic:
    return Topic("t", 7, len(replicas), rf, tuple(replicas), TopicConfig(), 0)


def _brokers(states: dict[int, BrokerState], since_ms: int = 0) -> dict[int, BrokerRecord]:
    return {b: BrokerRecord(b, f"http://h:{b}", f"h:{b}", None, 1, state, since_ms) for b, state in states.items()}


def _cluster(topic: Topic, states: dict[int, BrokerState], *, now_ms: int = 10_000, moves_max: int = 8) -> Cluster:
    return Cluster([topic], _brokers(states), now_ms, heal_grace_ms=5_000, moves_max=moves_max)


def test_a_broker_fenced_past_the_grace_period_is_healed_elsewhere() -> None:
    topic = _topic([(1, 2, 3), (2, 3, 4), (3, 4, 5)])
    alive = {b: BrokerState.ALIVE for b in range(1, 6)}
    assert choose_moves(_cluster(topic, {**alive, 3: BrokerState.FENCED}, now_ms=4_000)) == []  # within grace
    moves = choose_moves(_cluster(topic, {**alive, 3: BrokerState.FENCED}))
    assert {m.partition for m in moves} == {0, 1, 2} and all(m.reason == "heal" for m in moves)
    for move in moves:
        assert 3 not in move.target and len(set(move.target)) == 3


def test_drain_throttle_and_replication_factor() -> None:
    topic = _topic([(1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 1)])
    states = {b: BrokerState.ALIVE for b in range(1, 6)} | {4: BrokerState.DRAINING}
    moves = choose_moves(_cluster(topic, states, moves_max=2))
    assert len(moves) == 2 and all(m.reason == "drain" and 4 not in m.target for m in moves)
    raised = _topic([(1, 2), (2, 3)], rf=3)
    moves = choose_moves(_cluster(raised, {b: BrokerState.ALIVE for b in range(1, 4)}))
    assert [len(m.target) for m in moves] == [3, 3] and moves[0].target[:2] == (1, 2)


def test_a_new_broker_gets_replicas_one_move_at_a_time() -> None:
    topic = _topic([(1, 2, 3), (2, 3, 1), (3, 1, 2), (1, 2, 3)])
    moves = choose_moves(_cluster(topic, {b: BrokerState.ALIVE for b in range(1, 5)}))
    assert len(moves) == 1 and moves[0].reason == "rebalance" and 4 in moves[0].target


def test_a_rebalance_moves_a_preferred_leadership_when_that_evens_leaderships() -> None:
    topic = _topic([(3, 1, 2), (3, 2, 1), (3, 1, 2)])
    moves = choose_moves(_cluster(topic, {b: BrokerState.ALIVE for b in range(1, 5)}))
    assert len(moves) == 1 and moves[0].target[0] == 4  # broker 3 led all three: 4 takes a leadership
