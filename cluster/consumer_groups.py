"""Consumer groups: membership, incremental assignment and committed offsets, as a pure state machine.

``GroupsState`` is the state of one group-state partition (``__consumer_offsets``-like; see
``group_partition_for`` for which groups live where). It is replicated by Raft: ``apply(op, time_ms,
payload)`` runs on every replica with the time carried in the entry and returns a result or an error
*instance* (never raised), so every replica reaches the same state whatever the outcome. Nothing here does
I/O or reads a clock; session timers are the coordinator's (``node/``), which proposes ``EXPIRE_MEMBER``.

The protocol is KIP-848's (Kafka's "next generation" consumer rebalance protocol):

* a member heartbeats with its ``member_epoch``: 0 joins, -1 leaves, -2 leaves *statically* (an
  ``instance_id`` keeps its partitions until its session times out, so a restart is not a rebalance); any
  other value must be the member's current epoch, or its previous one (the answer that carried the new epoch
  may have been lost), else FENCED_MEMBER_EPOCH;
* the coordinator computes the group's *target* assignment itself (``cluster/group_assignor.py``) whenever the
  group epoch moves (a member joins or leaves, a subscription or a subscribed topic changes);
* members move to the target incrementally, never stop-the-world, each on its own heartbeat (so every change
  of what a member owns is answered to that member): a partition the member must give up goes to its
  ``revoking`` set and stays owned by it until the member's heartbeat no longer lists it in ``owned`` (it
  stopped fetching and committed); only then is it granted to its new owner, on that owner's next heartbeat.
  So **a partition is owned by at most one member at any time** (owned = ``assigned`` or ``revoking``), and
  a member keeps what it holds unless balance needs it. A member that leaves or expires owns nothing at once;
* a member's epoch grows by one whenever what it owns changes; offset commits carry it: a commit is accepted
  from the current or previous epoch, and only for partitions the member owns (its revoking ones included: a
  member commits its last offsets before releasing). A member that lost a partition cannot commit over the
  new owner: STALE_MEMBER_EPOCH, or UNKNOWN_MEMBER_ID once it is out of the group.

Kafka's classic protocol (JoinGroup/SyncGroup, the assignment computed by a client-side assignor on the
group's leader member; ``cluster/kafka_classic_group.py``) fits the same state: its generation is the group
epoch; a member that completes a join phase joins here with ``classic`` set (eager: it owns nothing, and the
group epoch moves); the leader's SyncGroup assignment is installed with ``SET_TARGET`` + ``install``, which
makes it owned at once instead of reconciled. Ownership and offset fencing stay the same.

Offsets are stored per (topic, partition) with the member's metadata string and the commit time. A group
with no members may take commits without a member id (a consumer that assigns partitions by hand, or an
operator resetting offsets), as Kafka allows.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    FencedMemberEpoch,
    GroupLimitReached,
    GroupMaxSizeReached,
    InternalError,
    InvalidGroupId,
    InvalidRequest,
    NonEmptyGroup,
    RaftMQError,
    StaleMemberEpoch,
    UnknownMemberId,
    invariant,
)
from raftmq.cluster.group_assignor import Partition, assign
from raftmq.cluster.share_groups import SharesState

GROUP_STATE_TOPIC = "__consumer_offsets"
JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2
NO_MEMBER_EPOCH = -1  # offset commits from outside the group (no member id)

_GROUP_ID = re.compile(r"[a-zA-Z0-9._-]+")
_GLOB = re.compile(r"[a-zA-Z0-9._*?-]+")


class GroupOp(enum.IntEnum):
    """Operations of a group-state partition (the ``op`` byte of cluster/commands.py's envelope)."""

    HEARTBEAT = 201      # join, heartbeat, leave; also subscription and topic changes
    EXPIRE_MEMBER = 202  # the coordinator's session or revocation timer fired
    COMMIT_OFFSETS = 203
    SET_TARGET = 204     # a client-side assignor's assignment (Kafka's classic protocol; not used by HTTP)
    DELETE_OFFSETS = 205  # an empty group's offsets (reset-offsets, delete)
    SHARE_ACQUIRE = 206   # share groups (cluster/share_groups.py): lock available records for a member
    SHARE_ACKNOWLEDGE = 207  # accept / release / reject locked records
    EXPIRE_GROUP = 208   # an empty group's retention ran out: the group and its committed offsets go


def group_partition_for(group_id: str, partition_count: int) -> int:
    """Which group-state partition holds ``group_id``: Kafka's rule, ``Utils.abs(groupId.hashCode()) %
    offsets.topic.num.partitions``, where ``hashCode`` is Java's String hash (``s[0]*31^(n-1) + ... +
    s[n-1]`` over UTF-16 code units, wrapping at 32 bits) and ``Utils.abs`` is ``x & 0x7fffffff`` (not
    ``Math.abs``: that is negative for ``Integer.MIN_VALUE``). The same group id lands on the same partition
    number as in Kafka with the same partition count."""
    invariant(partition_count > 0, "the group-state topic has partitions")
    value = 0
    encoded = group_id.encode("utf-16-be")
    for index in range(0, len(encoded), 2):
        value = (value * 31 + int.from_bytes(encoded[index:index + 2], "big")) & 0xFFFFFFFF
    return (value & 0x7FFFFFFF) % partition_count


def validate_group_id(group_id: Any) -> str:
    if not isinstance(group_id, str) or not group_id:
        raise InvalidGroupId("group id must be a non-empty string")
    if len(group_id) > limits.group_id_chars_max or not _GROUP_ID.fullmatch(group_id):
        raise InvalidGroupId(f"group ids use only [a-zA-Z0-9._-], at most {limits.group_id_chars_max} characters",
                             group_id=group_id[:64])
    return group_id


def validate_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > limits.topic_name_chars_max \
            or not _GLOB.fullmatch(pattern):
        raise InvalidRequest("a subscription pattern is a glob over topic names: [a-zA-Z0-9._-] plus * and ?",
                             field="pattern")
    return pattern


def glob_matches(pattern: str, topic: str) -> bool:
    """``*`` is any run of characters, ``?`` one character; internal topics (``__``) never match a glob."""
    if topic.startswith("__"):
        return False
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, topic) is not None


@dataclass(frozen=True)
class Subscription:
    """Topic names and/or one glob; a member is eligible for every partition of every topic it matches."""

    topics: tuple[str, ...] = ()
    pattern: str | None = None

    def matches(self, topic: str) -> bool:
        return topic in self.topics or (self.pattern is not None and glob_matches(self.pattern, topic))

    def to_wire(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "pattern": self.pattern}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Subscription:
        return cls(tuple(sorted(data.get("topics") or ())), data.get("pattern"))


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    subscription: Subscription
    session_timeout_ms: int
    rebalance_timeout_ms: int
    member_epoch: int = 1
    previous_epoch: int = 0
    assigned: set[Partition] = field(default_factory=set)  # owned, and in the target
    revoking: set[Partition] = field(default_factory=set)  # still owned, must be released
    revoking_since_ms: int | None = None
    joined_ms: int = 0
    left_static: bool = False  # left with epoch -2: keeps its partitions until its session expires
    commit_sequence: int = -1  # the highest commit sequence applied (commits overtaken on the way are ignored)

    @property
    def owned(self) -> set[Partition]:
        return self.assigned | self.revoking

    def state(self, target: frozenset[Partition]) -> str:
        if self.left_static:
            return "left_static"
        if self.revoking:
            return "revoking"
        return "stable" if self.assigned == target else "waiting"  # waiting: for others to release

    def to_wire(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "instance_id": self.instance_id, "client_id": self.client_id,
                "subscription": self.subscription.to_wire(), "session_timeout_ms": self.session_timeout_ms,
                "rebalance_timeout_ms": self.rebalance_timeout_ms, "member_epoch": self.member_epoch,
                "previous_epoch": self.previous_epoch, "assigned": _pairs(self.assigned),
                "revoking": _pairs(self.revoking), "revoking_since_ms": self.revoking_since_ms,
                "joined_ms": self.joined_ms, "left_static": self.left_static,
                "commit_sequence": self.commit_sequence}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Member:
        return cls(d["member_id"], d["instance_id"], d["client_id"], Subscription.from_wire(d["subscription"]),
                   d["session_timeout_ms"], d["rebalance_timeout_ms"], d["member_epoch"], d["previous_epoch"],
                   _partitions(d["assigned"]), _partitions(d["revoking"]), d["revoking_since_ms"], d["joined_ms"],
                   d["left_static"], d.get("commit_sequence", -1))


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_time_ms: int
    member_epoch: int


@dataclass
class Group:
    group_id: str
    group_epoch: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    target: dict[str, frozenset[Partition]] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)  # subscribed topics -> partition count, as last seen
    offsets: dict[Partition, CommittedOffset] = field(default_factory=dict)
    created_ms: int = 0
    target_epoch: int = -1  # the group epoch the target was computed (or installed) for
    empty_since_ms: int | None = None  # when its last member left (None: it has members, or never had any)

    def idle_since_ms(self) -> int:
        """What the offsets' retention counts from while the group has no members: the later of its last
        member leaving and its last commit (a group that only commits, e.g. offsets set by an operator or a
        consumer without group management, is kept as long as it commits)."""
        last_commit = max((c.commit_time_ms for c in self.offsets.values()), default=self.created_ms)
        return max(self.empty_since_ms if self.empty_since_ms is not None else self.created_ms, last_commit)

    def owner_of(self, partition: Partition) -> str | None:
        for member in self.members.values():
            if partition in member.assigned or partition in member.revoking:
                return member.member_id
        return None

    def state(self) -> str:
        if not self.members:
            return "empty"
        stable = all(m.state(self.target.get(m.member_id, frozenset())) == "stable" for m in self.members.values())
        return "stable" if stable else "reconciling"

    def to_wire(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "group_epoch": self.group_epoch, "created_ms": self.created_ms,
                "members": [m.to_wire() for m in self.members.values()],
                "target": {member: _pairs(parts) for member, parts in self.target.items()},
                "topics": dict(self.topics),
                "offsets": [[t, p, c.offset, c.metadata, c.commit_time_ms, c.member_epoch]
                            for (t, p), c in sorted(self.offsets.items())],
                "target_epoch": self.target_epoch, "empty_since_ms": self.empty_since_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Group:
        members = {m["member_id"]: Member.from_wire(m) for m in d["members"]}
        return cls(d["group_id"], d["group_epoch"], members,
                   {member: frozenset(_partitions(parts)) for member, parts in d["target"].items()},
                   dict(d["topics"]),
                   {(t, p): CommittedOffset(o, meta, when, epoch) for t, p, o, meta, when, epoch in d["offsets"]},
                   d["created_ms"], d["target_epoch"], d.get("empty_since_ms"))  # absent in older snapshots


@dataclass(frozen=True)
class HeartbeatResult:
    """What a member learns from a heartbeat: who it is, its epoch, and the partitions it owns now (anything
    it holds that is not in ``assignment`` it must stop consuming, commit and drop)."""

    group_id: str
    member_id: str
    member_epoch: int
    assignment: tuple[Partition, ...]
    group_epoch: int
    # The member is not at its target yet (revoking, or waiting for partitions others still hold): it should
    # heartbeat soon, because its next heartbeats move it on.
    reconciling: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "member_id": self.member_id, "member_epoch": self.member_epoch,
                "assignment": _pairs(self.assignment), "group_epoch": self.group_epoch,
                "reconciling": self.reconciling}


def _too_many_groups(count: int) -> GroupLimitReached:
    return GroupLimitReached(f"this group-state partition holds {count} groups, the most it may", groups=count,
                             groups_max=limits.group_state_groups_max)


def _pairs(partitions: Iterable[Partition]) -> list[list[Any]]:
    return [[t, p] for t, p in sorted(partitions)]


def _partitions(pairs: Iterable[Any]) -> set[Partition]:
    return {(str(t), int(p)) for t, p in pairs}


class GroupsState:
    """Every group of one group-state partition."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.shares = SharesState()  # share groups (queue mode) hashed to this partition

    # --- apply (every replica, in log order) ----------------------------------------------------

    def apply(self, op: int, time_ms: int, payload: Mapping[str, Any]) -> Any:
        try:
            if op == GroupOp.HEARTBEAT:
                return self._heartbeat(time_ms, payload)
            if op == GroupOp.EXPIRE_MEMBER:
                return self._expire(time_ms, payload)
            if op == GroupOp.COMMIT_OFFSETS:
                return self._commit(time_ms, payload)
            if op == GroupOp.SET_TARGET:
                return self._set_target(time_ms, payload)
            if op == GroupOp.DELETE_OFFSETS:
                return self._delete_offsets(payload)
            if op == GroupOp.SHARE_ACQUIRE:
                return self.shares.acquire(time_ms, payload)
            if op == GroupOp.SHARE_ACKNOWLEDGE:
                return self.shares.acknowledge(time_ms, payload)
            if op == GroupOp.EXPIRE_GROUP:
                return self._expire_group(time_ms, payload)
        except (KeyError, TypeError, ValueError) as exc:
            # Payloads are validated before they are proposed; this guards against a foreign entry.
            return InternalError(f"malformed group command {op}: {exc!r}")
        return InternalError(f"unknown group operation {op}")

    def _heartbeat(self, time_ms: int, p: Mapping[str, Any]) -> HeartbeatResult | RaftMQError:
        group_id, member_id, epoch = p["group_id"], p["member_id"], int(p["member_epoch"])
        group = self.groups.get(group_id)
        if epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(group, group_id, member_id, epoch, time_ms)
        if epoch == JOIN_EPOCH:
            if group is None:
                if len(self.groups) >= limits.group_state_groups_max:
                    return _too_many_groups(len(self.groups))
                group = self.groups[group_id] = Group(group_id, created_ms=time_ms)
            member_or_error = self._join(group, time_ms, p)
            if isinstance(member_or_error, RaftMQError):
                self._forget_if_unused(group)
                return member_or_error
            member = member_or_error
            if p.get("classic"):
                return self._classic_join(group, member)
            before = (frozenset(member.assigned), frozenset(member.revoking))
        else:
            member_or_error = self._current_member(group, group_id, member_id, epoch)
            if isinstance(member_or_error, RaftMQError):
                return member_or_error
            member = member_or_error
            invariant(group is not None, "a member belongs to a group")
            assert group is not None
            before = (frozenset(member.assigned), frozenset(member.revoking))
            if "subscription" in p and p["subscription"] is not None:
                subscription = Subscription.from_wire(p["subscription"])
                if subscription != member.subscription:
                    member.subscription = subscription
                    group.group_epoch += 1
            if p.get("owned") is not None:
                released = member.revoking - _partitions(p["owned"])
                member.revoking -= released
        self._observe_topics(group, p.get("topics") or {})
        self._ensure_target(group)
        self._reconcile(group, member, time_ms, before)
        return self._answer(group, member)

    def _classic_join(self, group: Group, member: Member) -> HeartbeatResult:
        """A member of Kafka's classic protocol completed a join phase: eager, so it owns nothing until the
        leader's assignment is installed (``SET_TARGET`` with ``install``), and every join phase is a new
        generation (the group epoch), even when the members and subscriptions are the same as before."""
        if member.owned:
            member.previous_epoch = member.member_epoch
            member.member_epoch += 1
        member.assigned.clear()
        member.revoking.clear()
        member.revoking_since_ms = None
        group.group_epoch += 1
        return self._answer(group, member)

    def _join(self, group: Group, time_ms: int, p: Mapping[str, Any]) -> Member | RaftMQError:
        member_id, instance_id = p["member_id"], p.get("instance_id")
        subscription = Subscription.from_wire(p["subscription"])
        kept: Member | None = None
        if instance_id is not None:
            # A static member restarted: the new member id takes over the old one's partitions, and the old
            # id is out of the group (a zombie of the old process is fenced: UNKNOWN_MEMBER_ID).
            kept = next((m for m in group.members.values() if m.instance_id == instance_id), None)
        if kept is None:
            kept = group.members.get(member_id)
            if kept is not None:
                # The same member joined again (it lost its state, or a lost answer made it retry): it owns
                # nothing now, so what it had is released.
                kept.assigned.clear()
                kept.revoking.clear()
        if kept is None and len(group.members) >= limits.group_members_max:
            return GroupMaxSizeReached(f"group {group.group_id} has {len(group.members)} members, the most it may "
                                       "have", group_id=group.group_id, members_max=limits.group_members_max)
        member = Member(member_id, instance_id, str(p.get("client_id") or ""), subscription,
                        int(p["session_timeout_ms"]), int(p["rebalance_timeout_ms"]), joined_ms=time_ms)
        if kept is not None:
            del group.members[kept.member_id]
            member.assigned, member.revoking = kept.assigned, kept.revoking
            member.revoking_since_ms = kept.revoking_since_ms
            member.member_epoch = kept.member_epoch + 1
            member.previous_epoch = kept.member_epoch
            member.joined_ms = kept.joined_ms
            if kept.member_id in group.target:
                group.target[member_id] = group.target.pop(kept.member_id)
        if kept is None or kept.subscription != subscription:
            group.group_epoch += 1
        group.members[member_id] = member
        return member

    def _leave(self, group: Group | None, group_id: str, member_id: str, epoch: int,
               time_ms: int) -> HeartbeatResult | RaftMQError:
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            return UnknownMemberId(f"member {member_id} is not in group {group_id}", group_id=group_id,
                                   member_id=member_id)
        if epoch == STATIC_LEAVE_EPOCH and member.instance_id is not None:
            member.left_static = True  # the session timer removes it if the instance does not come back
            return HeartbeatResult(group_id, member_id, STATIC_LEAVE_EPOCH, (), group.group_epoch)
        self._remove(group, member_id, time_ms)
        return HeartbeatResult(group_id, member_id, LEAVE_EPOCH, (), group.group_epoch)

    def _current_member(self, group: Group | None, group_id: str, member_id: str, epoch: int) -> Member | RaftMQError:
        member = group.members.get(member_id) if group is not None else None
        if member is None:
            return UnknownMemberId(f"member {member_id} is not in group {group_id} (its session expired, or it "
                                   "left); it must join again with epoch 0", group_id=group_id, member_id=member_id)
        if epoch not in (member.member_epoch, member.previous_epoch) or member.left_static:
            return FencedMemberEpoch(f"member {member_id} of group {group_id} sent epoch {epoch}, its epoch is "
                                     f"{member.member_epoch}; it must drop its partitions and join again",
                                     group_id=group_id, member_id=member_id, member_epoch=epoch,
                                     current_epoch=member.member_epoch)
        return member

    def _expire(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        group = self.groups.get(p["group_id"])
        member = group.members.get(p["member_id"]) if group is not None else None
        if group is None or member is None:
            return UnknownMemberId("no such member", group_id=p["group_id"], member_id=p["member_id"])
        if int(p.get("member_epoch", member.member_epoch)) != member.member_epoch:
            # The coordinator decided on an older view (the member heartbeated or changed since): keep it.
            return StaleMemberEpoch("the member changed since the expiry was decided", group_id=group.group_id,
                                    member_id=member.member_id, member_epoch=member.member_epoch)
        self._remove(group, member.member_id, time_ms)
        return {"expired": member.member_id, "reason": p.get("reason", "session")}

    def _remove(self, group: Group, member_id: str, time_ms: int) -> None:
        del group.members[member_id]
        group.target.pop(member_id, None)
        group.group_epoch += 1
        if not group.members:
            group.empty_since_ms = time_ms  # the offsets' retention starts counting
        self._ensure_target(group)  # the others pick up what it owned on their next heartbeats
        self._forget_if_unused(group)

    def _forget_if_unused(self, group: Group) -> None:
        if not group.members and not group.offsets:
            del self.groups[group.group_id]

    def _observe_topics(self, group: Group, topics: Mapping[str, int]) -> None:
        """The coordinator's view of the topics (name -> partition count) rides on the command, so every
        replica resolves subscriptions against the same topics."""
        seen = {name: int(count) for name, count in topics.items()
                if any(m.subscription.matches(name) for m in group.members.values())}
        if seen != group.topics:
            group.topics = seen
            group.group_epoch += 1

    # --- reconciliation ---------------------------------------------------------------------------

    def _ensure_target(self, group: Group) -> None:
        if group.target.keys() != group.members.keys() or group.target_epoch != group.group_epoch:
            self._compute_target(group)

    def _reconcile(self, group: Group, member: Member, time_ms: int,
                   before: tuple[frozenset[Partition], frozenset[Partition]]) -> None:
        """Move ``member`` towards its target, on its own heartbeat (as KIP-848 does: every change of what a
        member owns is answered to that member, so it sees each epoch): what it must give up becomes
        ``revoking``; it gets only target partitions no other member owns. ``before``: what it owned when
        the command started; if that changed, its epoch grows by one."""
        target = group.target.get(member.member_id, frozenset())
        lost = member.assigned - target
        member.assigned -= lost
        member.revoking |= lost
        given_back = member.revoking & target  # revoked, then back in the target before it was released
        member.revoking -= given_back
        member.assigned |= given_back
        others = {p for m in group.members.values() if m is not member for p in m.owned}
        member.assigned |= (target - member.assigned) - others
        invariant(not member.owned & others, f"group {group.group_id}: a partition is owned by two members")
        if member.revoking and member.revoking_since_ms is None:
            member.revoking_since_ms = time_ms
        elif not member.revoking:
            member.revoking_since_ms = None
        if before != (frozenset(member.assigned), frozenset(member.revoking)):
            member.previous_epoch = member.member_epoch
            member.member_epoch += 1

    def _would_reconcile(self, group: Group, member: Member) -> bool:
        """Whether ``_reconcile`` would change ``member`` (the target being current)."""
        target = group.target.get(member.member_id, frozenset())
        if member.assigned - target or member.revoking & target:
            return True
        others = {p for m in group.members.values() if m is not member for p in m.owned}
        return bool((target - member.assigned) - others)

    def _compute_target(self, group: Group) -> None:
        eligible = {member_id: frozenset((topic, partition) for topic, count in group.topics.items()
                                         if member.subscription.matches(topic) for partition in range(count))
                    for member_id, member in group.members.items()}
        group.target = assign(eligible, group.target)
        group.target_epoch = group.group_epoch

    def _set_target(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        group = self.groups.get(p["group_id"])
        if group is None or int(p["group_epoch"]) != group.group_epoch:
            return StaleMemberEpoch("the group moved on since this assignment was computed",
                                    group_id=p["group_id"])
        target = {member: frozenset(_partitions(parts)) for member, parts in p["target"].items()
                  if member in group.members}
        seen: set[Partition] = set()
        for parts in target.values():
            if seen & parts:
                return InvalidRequest("an assignment gives a partition to two members", group_id=group.group_id)
            seen |= parts
        group.target = {member: target.get(member, frozenset()) for member in group.members}
        group.target_epoch = group.group_epoch
        if p.get("install"):
            # Kafka's classic protocol: every member gave up its partitions when it rejoined, so the new
            # assignment is owned at once (no revocation step); each member whose partitions change moves to
            # a new epoch, which its offset commits then carry.
            for member in group.members.values():
                wanted = set(group.target[member.member_id])
                if wanted != member.owned:
                    member.previous_epoch = member.member_epoch
                    member.member_epoch += 1
                member.assigned, member.revoking, member.revoking_since_ms = wanted, set(), None
        return {"group_epoch": group.group_epoch}

    def _answer(self, group: Group, member: Member) -> HeartbeatResult:
        target = group.target.get(member.member_id, frozenset())
        return HeartbeatResult(group.group_id, member.member_id, member.member_epoch, tuple(sorted(member.assigned)),
                               group.group_epoch, member.state(target) != "stable")

    # --- offsets ----------------------------------------------------------------------------------

    def _commit(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        group_id, member_id, epoch = p["group_id"], p.get("member_id") or "", int(p["member_epoch"])
        offsets = [(str(t), int(part), int(o), str(meta)) for t, part, o, meta in p["offsets"]]
        group = self.groups.get(group_id)
        refusal = self.check_commit(group_id, member_id, epoch, [(t, part) for t, part, _, _ in offsets])
        if refusal is not None:
            return refusal
        sequence = p.get("sequence")
        member = group.members.get(member_id) if group is not None and member_id else None
        if member is not None and sequence is not None:
            if int(sequence) <= member.commit_sequence:
                # A later commit of this member was applied first (the network reordered them): moving the
                # offsets back to this older position would re-deliver what the member already handled.
                return {"committed": 0, "superseded": True}
            member.commit_sequence = int(sequence)
        if group is None:
            if len(self.groups) >= limits.group_state_groups_max:
                return _too_many_groups(len(self.groups))
            group = self.groups[group_id] = Group(group_id, created_ms=time_ms)
        new = sum(1 for t, part, _, _ in offsets if (t, part) not in group.offsets)
        if len(group.offsets) + new > limits.group_offsets_max:
            return GroupLimitReached(f"group {group_id} has {len(group.offsets)} committed offsets; "
                                     f"{limits.group_offsets_max} is the most a group may have", group_id=group_id)
        for topic, partition, offset, metadata in offsets:
            group.offsets[(topic, partition)] = CommittedOffset(offset, metadata, time_ms, epoch)
        return {"committed": len(offsets)}

    def check_commit(self, group_id: str, member_id: str, epoch: int,
                     partitions: Iterable[Partition]) -> RaftMQError | None:
        """Why a commit must be refused, or None. The coordinator asks before proposing (to answer at once),
        and ``apply`` asks again: only the applied order decides."""
        group = self.groups.get(group_id)
        if not member_id:
            if group is not None and group.members:
                return UnknownMemberId(f"group {group_id} has members: a commit must come from one of them "
                                       "(with its member id and epoch)", group_id=group_id, member_id="")
            return None
        member = group.members.get(member_id) if group is not None else None
        if member is None:
            return UnknownMemberId(f"member {member_id} is not in group {group_id}: nothing was committed; join "
                                   "again", group_id=group_id, member_id=member_id)
        if epoch not in (member.member_epoch, member.previous_epoch):
            return StaleMemberEpoch(f"member {member_id} committed with epoch {epoch}, its epoch is "
                                    f"{member.member_epoch}: heartbeat for the current assignment, then commit",
                                    group_id=group_id, member_id=member_id, member_epoch=epoch,
                                    current_epoch=member.member_epoch)
        owned = member.owned
        for topic, partition in partitions:
            if (topic, partition) not in owned:
                return StaleMemberEpoch(f"{topic}-{partition} is not owned by member {member_id} (epoch "
                                        f"{member.member_epoch}): nothing was committed", group_id=group_id,
                                        member_id=member_id, topic=topic, partition=partition,
                                        current_epoch=member.member_epoch)
        return None

    def _delete_offsets(self, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        group = self.groups.get(p["group_id"])
        if group is None:
            return {"deleted": 0}
        if group.members:
            return NonEmptyGroup(f"group {group.group_id} has {len(group.members)} members: stop them before "
                                 "changing its offsets", group_id=group.group_id)
        wanted = _partitions(p["partitions"]) if p.get("partitions") is not None else set(group.offsets)
        deleted = [tp for tp in wanted if group.offsets.pop(tp, None) is not None]
        self._forget_if_unused(group)
        return {"deleted": len(deleted)}

    def _expire_group(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any]:
        """Drop a group that has had no members and no commit for ``retention_ms`` (Kafka's
        offsets.retention.minutes): its offsets would only ever be read by a consumer that returns after
        that long. The coordinator decides from its view; this re-checks it in log order, so a member that
        joined or a commit that landed in between keeps the group."""
        group = self.groups.get(p["group_id"])
        retention_ms = int(p["retention_ms"])
        if group is None or group.members or group.idle_since_ms() + retention_ms > time_ms:
            return {"expired": None}
        del self.groups[group.group_id]
        return {"expired": group.group_id, "offsets": len(group.offsets)}

    def expired_groups(self, now_ms: int, retention_ms: int) -> list[str]:
        """Groups with no members whose retention ran out by ``now_ms`` (the coordinator proposes their expiry)."""
        return [g.group_id for g in self.groups.values()
                if not g.members and g.idle_since_ms() + retention_ms <= now_ms]

    # --- reads (the coordinator, between entries) -------------------------------------------------

    def peek_heartbeat(self, payload: Mapping[str, Any]) -> HeartbeatResult | RaftMQError | None:
        """The answer to a heartbeat that would change nothing, without a Raft entry (most heartbeats are
        just 'still here'); None when it must be proposed."""
        epoch = int(payload["member_epoch"])
        if epoch <= JOIN_EPOCH:
            return None
        group = self.groups.get(payload["group_id"])
        member = self._current_member(group, payload["group_id"], payload["member_id"], epoch)
        if isinstance(member, RaftMQError):
            return member
        assert group is not None
        subscription = payload.get("subscription")
        if subscription is not None and Subscription.from_wire(subscription) != member.subscription:
            return None
        owned = payload.get("owned")
        if owned is not None and member.revoking - _partitions(owned):
            return None
        seen = {name: int(count) for name, count in (payload.get("topics") or {}).items()
                if any(m.subscription.matches(name) for m in group.members.values())}
        if seen != group.topics or group.target_epoch != group.group_epoch \
                or group.target.keys() != group.members.keys() or self._would_reconcile(group, member):
            return None
        return self._answer(group, member)

    def committed(self, group_id: str) -> dict[Partition, CommittedOffset]:
        group = self.groups.get(group_id)
        return dict(group.offsets) if group is not None else {}

    # --- snapshots ----------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        data: bytes = msgpack.packb({"v": 1, "groups": [g.to_wire() for g in self.groups.values()],
                                     "shares": self.shares.to_wire()}, use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupsState:
        decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
        state = cls()
        for wire in decoded["groups"]:
            group = Group.from_wire(wire)
            state.groups[group.group_id] = group
        state.shares = SharesState.from_wire(decoded.get("shares") or [])
        return state


__all__ = ["GROUP_STATE_TOPIC", "JOIN_EPOCH", "LEAVE_EPOCH", "NO_MEMBER_EPOCH", "STATIC_LEAVE_EPOCH", "Partition",
           "CommittedOffset", "Group", "GroupOp", "GroupsState", "HeartbeatResult", "Member", "Subscription",
           "glob_matches", "group_partition_for", "validate_group_id", "validate_pattern"]
