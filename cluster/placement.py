"""Where partition replicas go: pure decisions the controller (``node/controller.py``) makes.

* ``assign_replicas``: a new topic's (or new partitions') replica sets on the live brokers. Each partition
  gets a preferred leader first (among the brokers that keep replicas even, the one leading fewest
  partitions), then the brokers hosting fewest replicas, preferring racks the partition does not use yet.
  Started from an even load, no broker ends more than one replica or one preferred leadership above another
  (racks may make that impossible: a lone broker in its own rack takes a replica of every partition).
* ``replacement``: the broker that takes one replica's place in a move (heal, drain, rebalance).
* ``placement_problems``: the invariant checker the property tests and the controller share.

Ties are broken by a rotation that moves with the partition number, so equal loads still spread.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raftmq.cluster.errors import InvalidReplicationFactor, NotEnoughBrokers
from raftmq.cluster.metadata import CreateTopicRequest, create_topic_payload

Assignment = tuple[tuple[int, ...], ...]

# The replication factor when a topic does not say: three (Kafka's and Redpanda's usual), or every broker
# when there are fewer.
DEFAULT_REPLICATION_FACTOR = 3


@dataclass(frozen=True)
class BrokerSlot:
    broker_id: int
    rack: str | None = None

    @property
    def rack_key(self) -> str:
        # A broker without a rack is its own failure domain.
        return self.rack if self.rack is not None else f"\0broker-{self.broker_id}"


@dataclass
class Load:
    """Replicas and preferred leaderships per broker (what placement balances)."""

    replicas: dict[int, int] = field(default_factory=dict)
    leaders: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, assignments: Iterable[Sequence[Sequence[int]]]) -> Load:
        load = cls()
        for replicas in assignments:
            for replica_set in replicas:
                load.add(replica_set)
        return load

    def add(self, replica_set: Sequence[int]) -> None:
        for broker in replica_set:
            self.replicas[broker] = self.replicas.get(broker, 0) + 1
        if replica_set:
            self.leaders[replica_set[0]] = self.leaders.get(replica_set[0], 0) + 1


def _slots(brokers: Sequence[int] | Sequence[BrokerSlot]) -> list[BrokerSlot]:
    slots = [b if isinstance(b, BrokerSlot) else BrokerSlot(int(b)) for b in brokers]
    return sorted({s.broker_id: s for s in slots}.values(), key=lambda s: s.broker_id)


def _rotated(slots: list[BrokerSlot], by: int) -> list[BrokerSlot]:
    shift = by % len(slots)
    return slots[shift:] + slots[:shift]


def _pick(pool: list[BrokerSlot], chosen: list[BrokerSlot], load: Load) -> BrokerSlot:
    used = {s.rack_key for s in chosen}
    fresh = [s for s in pool if s.rack_key not in used]
    return min(fresh or pool, key=lambda s: load.replicas.get(s.broker_id, 0))


def assign_replicas(partitions: int, replication_factor: int, brokers: Sequence[int] | Sequence[BrokerSlot], *,
                    load: Load | None = None, first_partition: int = 0) -> Assignment:
    """Replica sets (preferred leader first) for ``partitions`` partitions on ``brokers``. ``load`` is what
    the brokers host already (it is updated)."""
    slots = _slots(brokers)
    if not 1 <= replication_factor <= len(slots):
        raise InvalidReplicationFactor(
            f"replication_factor must be between 1 and the number of live brokers ({len(slots)})",
            replication_factor=replication_factor, brokers=len(slots))
    load = load if load is not None else Load()
    members: list[list[int]] = []
    for partition in range(first_partition, first_partition + partitions):
        order = _rotated(slots, partition)
        chosen: list[BrokerSlot] = []
        while len(chosen) < replication_factor:
            chosen.append(_pick([s for s in order if s not in chosen], chosen, load))
        for slot in chosen:
            load.replicas[slot.broker_id] = load.replicas.get(slot.broker_id, 0) + 1
        members.append([s.broker_id for s in chosen])
    leaders = _balanced_leaders(members, dict(load.leaders))
    result = []
    for replica_set, leader in zip(members, leaders, strict=True):
        load.leaders[leader] = load.leaders.get(leader, 0) + 1
        result.append((leader, *[b for b in replica_set if b != leader]))
    return tuple(result)


def _balanced_leaders(members: list[list[int]], leading: dict[int, int]) -> list[int]:
    """A preferred leader per partition, from its members, with leaderships as even as the sets allow:
    greedy first, then augmenting paths (a broker leading too many hands a partition to another member,
    which may hand one of its own on) until no path lowers the spread."""
    leaders: list[int] = []
    for replica_set in members:
        leader = min(replica_set, key=lambda b: leading.get(b, 0))
        leading[leader] = leading.get(leader, 0) + 1
        leaders.append(leader)
    brokers = {b for replica_set in members for b in replica_set}
    for _ in range(len(members) * len(brokers)):  # each round lowers the spread or stops
        path = _augmenting_path(members, leaders, leading, brokers)
        if path is None:
            break
        for partition, new_leader in path:
            leading[leaders[partition]] -= 1
            leading[new_leader] = leading.get(new_leader, 0) + 1
            leaders[partition] = new_leader
    return leaders


def _augmenting_path(members: list[list[int]], leaders: list[int], leading: dict[int, int],
                     brokers: set[int]) -> list[tuple[int, int]] | None:
    """From the broker leading most, a chain of leadership hand-overs ending at a broker leading at least two
    fewer (BFS over partitions this round may change)."""
    top = max(brokers, key=lambda b: leading.get(b, 0))
    previous: dict[int, tuple[int, int] | None] = {top: None}  # broker -> (partition it got, broker that gave)
    queue = [top]
    while queue:
        broker = queue.pop(0)
        if leading.get(broker, 0) <= leading.get(top, 0) - 2:
            path = []
            while previous[broker] is not None:
                partition, giver = previous[broker]  # type: ignore[misc]
                path.append((partition, broker))
                broker = giver
            return path
        for partition, leader in enumerate(leaders):
            if leader != broker:
                continue
            for other in members[partition]:
                if other not in previous:
                    previous[other] = (partition, broker)
                    queue.append(other)
    return None


def replacement(replica_set: Sequence[int], candidates: Sequence[int] | Sequence[BrokerSlot], load: Load, *,
                leaving: Iterable[int] = ()) -> int | None:
    """The broker that should take a replica of ``replica_set`` (a member of ``leaving`` moves out): rack
    diversity among the members that stay first, then the fewest replicas. None: no candidate."""
    slots = _slots(candidates)
    by_id = {s.broker_id: s for s in slots}
    gone = set(leaving)
    staying = [by_id.get(b, BrokerSlot(b)) for b in replica_set if b not in gone]
    pool = [s for s in slots if s.broker_id not in replica_set]
    if not pool:
        return None
    return _pick(pool, staying, load).broker_id


def default_replication_factor(live_brokers: int) -> int:
    return max(1, min(DEFAULT_REPLICATION_FACTOR, live_brokers))


def plan_create_topic(request: CreateTopicRequest, brokers: Sequence[int] | Sequence[BrokerSlot], *,
                      load: Load | None = None) -> dict[str, Any]:
    """The CREATE_TOPIC payload for ``request`` on the live ``brokers`` (``load``: what they host already)."""
    slots = _slots(brokers)
    if not slots:
        raise NotEnoughBrokers("no live broker is registered with the controller yet; retry in a moment")
    replication_factor = request.replication_factor
    if replication_factor is None:
        replication_factor = default_replication_factor(len(slots))
    replicas = assign_replicas(request.partitions, replication_factor, slots, load=load)
    return create_topic_payload(request, replicas)


def placement_problems(assignment: Sequence[Sequence[int]], brokers: Sequence[int] | Sequence[BrokerSlot],
                       replication_factor: int, *, balanced: bool = True) -> list[str]:
    """Why ``assignment`` breaks the placement invariant (empty: it holds)."""
    slots = {s.broker_id: s for s in _slots(brokers)}
    problems = []
    racks = {s.rack_key for s in slots.values()}
    for partition, replica_set in enumerate(assignment):
        if len(replica_set) != replication_factor:
            problems.append(f"partition {partition} has {len(replica_set)} replicas, not {replication_factor}")
        if len(set(replica_set)) != len(replica_set):
            problems.append(f"partition {partition} has two replicas on one broker: {list(replica_set)}")
        if any(b not in slots for b in replica_set):
            problems.append(f"partition {partition} uses a broker that is not live: {list(replica_set)}")
        spanned = {slots[b].rack_key for b in replica_set if b in slots}
        if len(spanned) < min(len(replica_set), len(racks)):
            problems.append(f"partition {partition} spans {len(spanned)} racks where {len(racks)} exist")
    if balanced:
        load = Load.of([assignment])
        for what, counts in (("replicas", load.replicas), ("preferred leaders", load.leaders)):
            values = [counts.get(b, 0) for b in slots]
            if values and max(values) - min(values) > 1:
                problems.append(f"{what} per broker range from {min(values)} to {max(values)}")
    return problems


__all__ = ["DEFAULT_REPLICATION_FACTOR", "Assignment", "BrokerSlot", "Load", "assign_replicas",
           "default_replication_factor", "placement_problems", "plan_create_topic", "replacement"]
