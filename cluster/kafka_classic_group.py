"""Kafka's classic group protocol (JoinGroup / SyncGroup / Heartbeat / LeaveGroup): the rendezvous decisions,
and the consumer protocol's subscription and assignment payloads.

The group's replicated state (members, generation, the assignment each member owns, committed offsets) is
raftmq's consumer-group state (``cluster/consumer_groups.py``): a classic generation *is* the group epoch
there, each member that completes a join is a member there, and the leader member's assignment is installed
there (``SET_TARGET`` with ``install``), so offset commits are fenced by the same ownership rules as raftmq's
own group members. What lives here is what Kafka itself keeps only in the coordinator's memory and clients
rebuild by rejoining: the join phase in progress (who has rejoined, their protocols), the leader, and the
assignment bytes waiting for followers' SyncGroup. A new coordinator starts with none of it: members of the
current generation keep heartbeating and committing, and the next rebalance starts from the replicated
member list.

The phases, as Kafka's GroupCoordinator has them:

* ``joining`` (PreparingRebalance): a JoinGroup starts or extends it; it ends when every member of the
  current generation has rejoined (after at least ``initial_delay_ms`` for a group that had no members, so a
  burst of consumers starting together forms one generation), or when the longest rebalance timeout of the
  members it waits for has passed (members that did not rejoin are removed).
* ``syncing`` (CompletingRebalance): the joins are answered; the leader computes the assignment with its
  client-side assignor and sends it in SyncGroup; followers' SyncGroups wait for it.
* ``stable``: the assignment is installed and every SyncGroup is answered.

Protocol selection is Kafka's: the candidates are the protocols every member supports; each member votes for
its first (most preferred) candidate; the most votes wins (ties: the leader's order). librdkafka and
kafka-python offer ``range, roundrobin``, aiokafka ``roundrobin``: a mixed group agrees on ``roundrobin``.

Payloads (protocol type ``consumer``, Kafka's ConsumerProtocol): a subscription is int16 version, topics
(array of strings), user data (nullable bytes), and from v1 on fields the broker does not need; an assignment
is int16 version, (topic, int32 partitions) array, user data. Only the topics are read: everything else is
relayed as the member sent it.

No I/O here.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from raftmq.cluster.consumer_groups import Partition
from raftmq.cluster.errors import InconsistentGroupProtocol, InvalidRequest
from raftmq.cluster.kafka_codec import DecodeError, Field, Reader, Schema, decode, encode
from raftmq.cluster.metadata import validate_topic_name

CONSUMER_PROTOCOL_TYPE: Final = "consumer"

_SUBSCRIPTION: Schema = (Field("version", "int16"), Field("topics", "string", array=True))
_ASSIGNMENT: Schema = (
    Field("version", "int16"),
    Field("partitions", (Field("topic", "string"), Field("partitions", "int32", array=True)), array=True),
    Field("user_data", "nullable_bytes", default=None),
)


def subscription_topics(metadata: bytes, *, count_max: int) -> tuple[str, ...]:
    """The topics of a consumer-protocol subscription (what a member's JoinGroup metadata carries)."""
    try:
        decoded = decode(_SUBSCRIPTION, Reader(metadata), 0, count_max=count_max)
    except DecodeError as exc:
        raise InvalidRequest(f"a JoinGroup subscription that is not Kafka's consumer protocol: {exc.message}") \
            from None
    topics = tuple(sorted(set(decoded["topics"])))
    for topic in topics:
        validate_topic_name(topic)
    return topics


def assignment_partitions(assignment: bytes, *, count_max: int) -> frozenset[Partition]:
    """The partitions of a consumer-protocol assignment (what the leader's SyncGroup gives one member); an
    empty payload is no partitions (Kafka's clients send that for a member the assignor left out)."""
    if not assignment:
        return frozenset()
    try:
        decoded = decode(_ASSIGNMENT[:2], Reader(assignment), 0, count_max=count_max)
    except DecodeError as exc:
        raise InvalidRequest(f"a SyncGroup assignment that is not Kafka's consumer protocol: {exc.message}") \
            from None
    return frozenset((entry["topic"], int(p)) for entry in decoded["partitions"] for p in entry["partitions"])


def encode_assignment(partitions: Mapping[str, list[int]], user_data: bytes | None = None) -> bytes:
    """A v0 consumer-protocol assignment (tests and tools build them with this)."""
    body = {"version": 0, "partitions": [{"topic": t, "partitions": ps} for t, ps in sorted(partitions.items())],
            "user_data": user_data}
    return bytes(encode(_ASSIGNMENT, body, 0).parts)


def encode_subscription(topics: list[str]) -> bytes:
    writer = encode(_SUBSCRIPTION, {"version": 0, "topics": topics}, 0)
    writer.fixed("int32", -1)  # user data: null
    return bytes(writer.parts)


class Phase(enum.Enum):
    JOINING = "joining"
    SYNCING = "syncing"
    STABLE = "stable"


@dataclass(frozen=True)
class Joiner:
    """One member's JoinGroup, as the join phase keeps it."""

    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]  # (name, metadata), most preferred first


@dataclass(frozen=True)
class JoinOutcome:
    """What the end of a join phase decided: the generation's protocol and leader, and its members."""

    protocol: str
    leader: str
    members: tuple[Joiner, ...]  # the leader first, then in join order

    def metadata_of(self, member: Joiner) -> bytes:
        return dict(member.protocols)[self.protocol]


@dataclass
class ClassicGroup:
    """The soft rendezvous state of one group on its coordinator."""

    group_id: str
    phase: Phase = Phase.STABLE
    generation: int = -1  # the generation the last join phase produced (-1: none since this coordinator began)
    leader: str | None = None
    protocol_type: str | None = None
    joining: dict[str, Joiner] = field(default_factory=dict)  # rejoined in the phase in progress
    awaited: frozenset[str] = frozenset()  # members of the current generation the phase waits for
    phase_started_ms: int = 0
    phase_ends_ms: int = 0  # the phase completes at this time even if some awaited members never rejoin
    members: frozenset[str] = frozenset()  # the generation's members (after the phase)
    assignments: dict[str, bytes] = field(default_factory=dict)  # the leader's SyncGroup, per member

    def join(self, joiner: Joiner, current_members: frozenset[str], now_ms: int, *, initial_delay_ms: int,
             rebalance_wait_ms_max: int) -> None:
        """Record a JoinGroup; starts a join phase unless one is in progress. ``current_members``: the
        members of the replicated group now (the ones a new phase waits for)."""
        self._check_protocols(joiner)
        if self.phase is not Phase.JOINING:
            self.phase = Phase.JOINING
            self.joining = {}
            self.assignments = {}
            self.awaited = current_members
            self.phase_started_ms = now_ms
            self.phase_ends_ms = now_ms + (initial_delay_ms if not current_members else 0)
        self.joining[joiner.member_id] = joiner
        if not self.awaited:
            wait_ms = initial_delay_ms  # a new group: wait for the others starting with it
        else:
            wait_ms = min(max(j.rebalance_timeout_ms for j in self.joining.values()), rebalance_wait_ms_max)
        self.phase_ends_ms = max(self.phase_ends_ms, self.phase_started_ms + wait_ms)
        if len(self.joining) == 1 and self.protocol_type is None:
            self.protocol_type = joiner.protocol_type

    def start_rebalance(self, current_members: frozenset[str], now_ms: int, *, rebalance_wait_ms_max: int) -> None:
        """The group changed without a JoinGroup (a member left, expired or was fenced): the others learn it
        from REBALANCE_IN_PROGRESS on their next heartbeat and rejoin within the wait."""
        if self.phase is Phase.JOINING:
            self.awaited = self.awaited & current_members
            return
        self.phase = Phase.JOINING
        self.joining = {}
        self.assignments = {}
        self.awaited = current_members
        self.phase_started_ms = now_ms
        self.phase_ends_ms = now_ms + rebalance_wait_ms_max

    def forget(self, member_id: str) -> None:
        """A member left: the join phase no longer waits for it."""
        self.joining.pop(member_id, None)
        self.awaited = self.awaited - {member_id}
        self.members = self.members - {member_id}

    def ready(self, now_ms: int) -> bool:
        """Whether the join phase can complete now."""
        if self.phase is not Phase.JOINING or not self.joining:
            return False
        if now_ms >= self.phase_ends_ms:
            return True
        return bool(self.awaited) and self.awaited <= self.joining.keys()

    def complete(self) -> JoinOutcome:
        """End the join phase: the members that rejoined form the next generation. Its number is the group
        epoch the replicated state reaches by adding them: the caller sets ``generation`` once it has it
        (until then the members' requests carry a generation that is not current yet)."""
        joiners = list(self.joining.values())
        leader = self.leader if self.leader in self.joining else joiners[0].member_id
        protocol = select_protocol(joiners, self.joining[leader])
        ordered = (self.joining[leader], *(j for j in joiners if j.member_id != leader))
        self.phase = Phase.SYNCING
        self.leader = leader
        self.members = frozenset(self.joining)
        self.joining = {}
        self.awaited = frozenset()
        return JoinOutcome(protocol, leader, ordered)

    def install(self, assignments: Mapping[str, bytes]) -> None:
        """The leader's SyncGroup was installed: the group is stable."""
        self.assignments = {member: assignments.get(member, b"") for member in self.members}
        self.phase = Phase.STABLE

    def _check_protocols(self, joiner: Joiner) -> None:
        if not joiner.protocols:
            raise InconsistentGroupProtocol("a JoinGroup without protocols")
        others = [j for j in self.joining.values() if j.member_id != joiner.member_id]
        if self.protocol_type is not None and (others or self.members) and joiner.protocol_type != self.protocol_type:
            raise InconsistentGroupProtocol(f"group {self.group_id} uses protocol type {self.protocol_type!r}, "
                                            f"not {joiner.protocol_type!r}")
        if others and not _candidates([*others, joiner]):
            raise InconsistentGroupProtocol(f"member {joiner.member_id} supports none of the assignors the members "
                                            f"of group {self.group_id} have in common")


def _candidates(joiners: list[Joiner]) -> set[str]:
    common = {name for name, _ in joiners[0].protocols}
    for joiner in joiners[1:]:
        common &= {name for name, _ in joiner.protocols}
    return common


def select_protocol(joiners: list[Joiner], leader: Joiner) -> str:
    """Kafka's vote: each member's most preferred common protocol; the most votes wins, ties broken by the
    leader's preference order."""
    candidates = _candidates(joiners)
    if not candidates:
        raise InconsistentGroupProtocol("the members have no assignor in common")
    votes = Counter(next(name for name, _ in j.protocols if name in candidates) for j in joiners)
    best = max(votes.values())
    return next(name for name, _ in leader.protocols if votes.get(name) == best)


__all__ = ["CONSUMER_PROTOCOL_TYPE", "ClassicGroup", "JoinOutcome", "Joiner", "Phase",
           "assignment_partitions", "encode_assignment", "encode_subscription", "select_protocol",
           "subscription_topics"]
