"""Replica moves: which partitions should move where (``choose_moves``), and the next single-server
membership step of one move (``next_step``). Pure decisions: the controller (``node/controller.py``) and a
partition's leader (``node/reassignment.py``) carry them out.

A move takes a partition from its replica set to a target set one voter at a time (Raft's single-server
change). The rule that keeps a move safe: after every step, the voters that are alive and caught up with the
leader are still a majority of the new voter set. So:

* a dead voter that is leaving is removed first (removing it never lowers the live caught-up count), as
  long as the group keeps at least a majority of the target's size (a wrong "dead" verdict must not shrink
  a group to one voter);
* a new replica is added only when the caught-up voters are a majority of the grown set, and nothing else
  happens until it has caught up (pysyncobj has no non-voting learner: a new voter is a voter at once, so
  it is added while the old replicas alone still make a majority, and waited for);
* a live voter leaves only once every target member has caught up; a leader that must leave first hands its
  leadership to a caught-up target member.

The one exception: a single-voter group (replication factor 1) cannot grow without a moment where the
new voter is needed for a majority; it is added anyway (commits pause until it has caught up).

No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from raftmq.cluster.metadata import BrokerRecord, BrokerState, Topic, majority
from raftmq.cluster.placement import BrokerSlot, Load, replacement


class StepKind(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    TRANSFER = "transfer"  # hand leadership to ``broker`` first
    WAIT = "wait"          # nothing safe to do now (catching up, a change committing)
    DONE = "done"          # the voters are the target


@dataclass(frozen=True)
class Step:
    kind: StepKind
    broker: int | None = None
    why: str = ""


@dataclass(frozen=True)
class GroupView:
    """A partition group as its leader sees it, and what the controller knows of the brokers."""

    voters: tuple[int, ...]
    target: tuple[int, ...]
    leader: int
    caught_up: frozenset[int]  # voters whose log matches the leader's (the leader included)
    alive: frozenset[int]      # brokers that heartbeat to the controller
    pending: bool = False      # a membership change is appended but not committed


def _healthy(view: GroupView, voters: Iterable[int]) -> int:
    return sum(1 for b in voters if b in view.caught_up and b in view.alive)


def next_step(view: GroupView) -> Step:
    if view.pending:
        return Step(StepKind.WAIT, why="a membership change is committing")
    voters, target = set(view.voters), set(view.target)
    if voters == target:
        return Step(StepKind.DONE)
    for broker in view.voters:
        if broker not in target and broker not in view.alive and broker != view.leader \
                and len(voters) - 1 >= majority(len(target)):
            return Step(StepKind.REMOVE, broker, "a dead replica leaves first")
    lagging = [b for b in view.target if b in voters and b not in view.caught_up]
    if lagging:
        return Step(StepKind.WAIT, why=f"broker {lagging[0]} is catching up")
    for broker in view.target:
        if broker not in voters:
            if len(voters) == 1 or _healthy(view, voters) >= majority(len(voters) + 1):
                return Step(StepKind.ADD, broker, "the caught-up replicas stay a majority")
            return Step(StepKind.WAIT, why="too few caught-up replicas to add one safely")
    leaving = sorted((b for b in voters if b not in target), key=lambda b: b == view.leader)
    broker = leaving[0]
    if broker == view.leader:
        heirs = [b for b in view.target if b in view.caught_up and b in view.alive and b != view.leader]
        if not heirs:
            return Step(StepKind.WAIT, why="no caught-up target replica to take the leadership")
        return Step(StepKind.TRANSFER, heirs[0], "the leader leaves the group: hand leadership over first")
    if _healthy(view, voters - {broker}) >= majority(len(voters) - 1):
        return Step(StepKind.REMOVE, broker, "every target replica has caught up")
    return Step(StepKind.WAIT, why="removing it would leave too few caught-up replicas")


# --- which moves to start ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    topic: str
    topic_id: int
    partition: int
    target: tuple[int, ...]
    reason: str  # heal | drain | replication_factor | rebalance


@dataclass(frozen=True)
class Cluster:
    """What ``choose_moves`` needs: the topics, the registered brokers and the time."""

    topics: Sequence[Topic]
    brokers: Mapping[int, BrokerRecord]
    now_ms: int
    heal_grace_ms: int
    moves_max: int


def _live(cluster: Cluster) -> list[BrokerSlot]:
    return [BrokerSlot(b.broker_id, b.rack) for b in cluster.brokers.values() if b.state is BrokerState.ALIVE]


def _gone(cluster: Cluster, broker_id: int) -> str | None:
    """Why a replica on ``broker_id`` must move (None: it may stay)."""
    record = cluster.brokers.get(broker_id)
    if record is None or record.state is BrokerState.REMOVED:
        return "heal"
    if record.state is BrokerState.FENCED and cluster.now_ms - record.state_since_ms >= cluster.heal_grace_ms:
        return "heal"
    if record.state is BrokerState.DRAINING:
        return "drain"
    return None


def _retarget(replicas: tuple[int, ...], rf: int, cluster: Cluster, live: list[BrokerSlot],
              load: Load) -> tuple[tuple[int, ...], str] | None:
    """The target set for one partition (None: it is fine where it is)."""
    reasons = {b: r for b in replicas if (r := _gone(cluster, b)) is not None}
    target = list(replicas)
    for broker, _reason in reasons.items():
        new = replacement(target, live, load, leaving=[broker])
        if new is None:
            continue  # nowhere to go: the replica stays until a broker is added or comes back
        target[target.index(broker)] = new
        load.replicas[new] = load.replicas.get(new, 0) + 1
    reason = next(iter(reasons.values()), "replication_factor")
    while len(target) < rf:
        new = replacement(target, live, load)
        if new is None:
            break
        target.append(new)
        load.replicas[new] = load.replicas.get(new, 0) + 1
    while len(target) > rf:
        target.remove(max(target[1:], key=lambda b: load.replicas.get(b, 0)))
    if tuple(target) == replicas:
        return None
    return tuple(target), reason


def choose_moves(cluster: Cluster) -> list[Move]:
    """New moves to start (within the ``moves_max`` throttle): heal, drain, replication factor, then one
    rebalance step when a live broker hosts two or more replicas more than another."""
    running = sum(1 for t in cluster.topics for target in t.targets if target is not None)
    budget = cluster.moves_max - running
    live = _live(cluster)
    if budget <= 0 or not live:
        return []
    load = Load.of(t.replicas for t in cluster.topics)
    for topic in cluster.topics:  # count where running moves are heading too
        for target, replicas in zip(topic.targets, topic.replicas, strict=True):
            for broker in target or ():
                if broker not in replicas:
                    load.replicas[broker] = load.replicas.get(broker, 0) + 1
    moves: list[Move] = []
    for topic in cluster.topics:
        for partition, replicas in enumerate(topic.replicas):
            if len(moves) >= budget:
                return moves
            if topic.targets[partition] is not None:
                continue
            planned = _retarget(replicas, topic.replication_factor, cluster, live, load)
            if planned is not None:
                moves.append(Move(topic.name, topic.topic_id, partition, planned[0], planned[1]))
    if not moves and running == 0:
        moves += _rebalance(cluster, live, load)
    return moves


def _rebalance(cluster: Cluster, live: list[BrokerSlot], load: Load) -> list[Move]:
    counts = {s.broker_id: load.replicas.get(s.broker_id, 0) for s in live}
    if len(counts) < 2:
        return []
    most = max(counts, key=lambda b: (counts[b], b))
    least = min(counts, key=lambda b: (counts[b], b))
    if counts[most] - counts[least] <= 1:
        return []
    racks = {s.broker_id: s.rack_key for s in live}
    # Moving the preferred-leader slot also moves a leadership: do that when it evens leaderships out.
    move_leader = load.leaders.get(most, 0) > load.leaders.get(least, 0) + 1
    candidates = []
    for topic in cluster.topics:
        for partition, replicas in enumerate(topic.replicas):
            if most in replicas and least not in replicas:
                others = {racks.get(b) for b in replicas if b != most}
                if racks[least] in others and racks[most] not in others:
                    continue  # the move would put two replicas in one rack
                candidates.append((topic, partition, replicas))
    if not candidates:
        return []
    topic, partition, replicas = min(candidates, key=lambda c: (c[2][0] == most) != move_leader)
    target = tuple(least if b == most else b for b in replicas)
    return [Move(topic.name, topic.topic_id, partition, target, "rebalance")]


__all__ = ["Cluster", "GroupView", "Move", "Step", "StepKind", "choose_moves", "next_step"]
