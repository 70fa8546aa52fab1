"""Consumer-group requests as protocol-neutral values, and their validation from a decoded body.

The HTTP listener parses a body with ``parse_group_heartbeat`` / ``parse_offset_commit`` /
``parse_partition_list``; a Kafka listener would build the same values from ConsumerGroupHeartbeat,
OffsetCommit and OffsetFetch. Everything a request can get wrong is a coded error here, before anything is
proposed; the state machine (``cluster/consumer_groups.py``) re-checks only what depends on its state.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import (
    JOIN_EPOCH,
    STATIC_LEAVE_EPOCH,
    HeartbeatResult,
    Partition,
    Subscription,
    validate_group_id,
    validate_pattern,
)
from raftmq.cluster.errors import InvalidRequest
from raftmq.cluster.metadata import validate_topic_name
from raftmq.cluster.share_groups import validate_acks, validate_acquire

_MEMBER_ID_CHARS_MAX = 255


@dataclass(frozen=True)
class GroupHeartbeat:
    """KIP-848's ConsumerGroupHeartbeat. ``member_id`` "" on a join lets the coordinator pick one."""

    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    client_id: str = ""
    subscription: Subscription | None = None  # required when joining; None afterwards means unchanged
    owned: tuple[Partition, ...] | None = None  # what the member still owns (None: not reported)
    session_timeout_ms: int = limits.group_session_timeout_ms_default
    rebalance_timeout_ms: int = limits.group_rebalance_timeout_ms_default

    def payload(self, member_id: str, topics: Mapping[str, int]) -> dict[str, Any]:
        """The HEARTBEAT command's payload: the request plus the topics the coordinator sees now."""
        return {"group_id": self.group_id, "member_id": member_id, "member_epoch": self.member_epoch,
                "instance_id": self.instance_id, "client_id": self.client_id,
                "subscription": self.subscription.to_wire() if self.subscription is not None else None,
                "owned": [list(p) for p in self.owned] if self.owned is not None else None,
                "topics": dict(topics), "session_timeout_ms": self.session_timeout_ms,
                "rebalance_timeout_ms": self.rebalance_timeout_ms}


@dataclass(frozen=True)
class HeartbeatAnswer:
    result: HeartbeatResult
    heartbeat_interval_ms: int
    coordinator_id: int

    def to_wire(self) -> dict[str, Any]:
        return {**self.result.to_wire(), "heartbeat_interval_ms": self.heartbeat_interval_ms,
                "coordinator_id": self.coordinator_id}


@dataclass(frozen=True)
class OffsetCommit:
    group_id: str
    member_id: str  # "" from outside the group (allowed only while it has no members)
    member_epoch: int
    offsets: tuple[tuple[str, int, int, str], ...]  # topic, partition, offset, metadata
    # The member's commit counter (grows with every commit it sends): a commit overtaken on the way by a later
    # one of the same member is ignored instead of moving the offsets back. None: no ordering asked for.
    sequence: int | None = None

    def payload(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "member_id": self.member_id, "member_epoch": self.member_epoch,
                "offsets": [list(o) for o in self.offsets], "sequence": self.sequence}


@dataclass(frozen=True)
class CommittedOffsetView:
    topic: str
    partition: int
    offset: int
    metadata: str
    commit_time_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "metadata": self.metadata,
                "commit_time_ms": self.commit_time_ms}


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: str  # empty | stable | reconciling
    group_epoch: int
    coordinator_id: int
    coordinator_partition: int
    members: tuple[dict[str, Any], ...]  # each member with its target
    offsets: tuple[CommittedOffsetView, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "state": self.state, "group_epoch": self.group_epoch,
                "coordinator_id": self.coordinator_id, "coordinator_partition": self.coordinator_partition,
                "members": [dict(m) for m in self.members], "offsets": [o.to_wire() for o in self.offsets]}


@dataclass(frozen=True)
class GroupListing:
    """The groups of the group-state partitions this broker leads (a client merges every broker's)."""

    groups: tuple[tuple[str, str, int], ...]  # group id, state, members
    partitions: tuple[int, ...]
    partition_count: int

    def to_wire(self) -> dict[str, Any]:
        return {"groups": [{"group_id": g, "state": s, "members": n} for g, s, n in self.groups],
                "partitions": list(self.partitions), "partition_count": self.partition_count}


@dataclass(frozen=True)
class ShareAcquire:
    """Lock up to ``max_records`` available records of one partition for ``member_id`` (queue mode)."""

    group_id: str
    member_id: str
    topic: str
    partition: int
    log_end: int  # the high watermark the consumer saw: records below it exist
    log_start: int  # the log start it saw: records below it are gone (retention)
    max_records: int
    lock_ms: int
    max_deliveries: int

    def payload(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "member_id": self.member_id, "topic": self.topic,
                "partition": self.partition, "log_end": self.log_end, "log_start": self.log_start,
                "max_records": self.max_records, "lock_ms": self.lock_ms, "max_deliveries": self.max_deliveries}


@dataclass(frozen=True)
class ShareAcknowledge:
    group_id: str
    member_id: str
    topic: str
    partition: int
    acks: tuple[tuple[int, str], ...]  # offset, accept | release | reject

    def payload(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "member_id": self.member_id, "topic": self.topic,
                "partition": self.partition, "acks": [list(a) for a in self.acks]}


@dataclass(frozen=True)
class ShareAcquired:
    acquired: tuple[tuple[int, int, bool], ...]  # offset, delivery count, dead letter
    start_offset: int

    def to_wire(self) -> dict[str, Any]:
        return {"acquired": [list(a) for a in self.acquired], "start_offset": self.start_offset}


@dataclass(frozen=True)
class ShareAcknowledged:
    done: tuple[int, ...]
    refused: tuple[tuple[int, str], ...]  # offset, why
    start_offset: int

    def to_wire(self) -> dict[str, Any]:
        return {"done": list(self.done), "refused": [list(r) for r in self.refused], "start_offset": self.start_offset}


def _share_target(group_id: str, body: Mapping[str, Any]) -> tuple[str, str, str]:
    member_id = _optional_text(body, "member_id", _MEMBER_ID_CHARS_MAX)
    if member_id is None:
        raise InvalidRequest("member_id is required (any id unique to the consumer)", field="member_id")
    return validate_group_id(group_id), member_id, validate_topic_name(body.get("topic"))


def parse_share_acquire(group_id: str, body: Mapping[str, Any]) -> ShareAcquire:
    unknown = sorted(set(body) - {"member_id", "topic", "partition", "log_end", "log_start", "max_records",
                                  "lock_ms", "max_deliveries"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    group, member_id, topic = _share_target(group_id, body)
    numbers = validate_acquire(body)
    return ShareAcquire(group, member_id, topic, numbers["partition"], numbers["log_end"], numbers["log_start"],
                        numbers["max_records"], numbers["lock_ms"], numbers["max_deliveries"])


def parse_share_acknowledge(group_id: str, body: Mapping[str, Any]) -> ShareAcknowledge:
    unknown = sorted(set(body) - {"member_id", "topic", "partition", "acks"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    group, member_id, topic = _share_target(group_id, body)
    partition = _int(body, "partition", None, 0, limits.partitions_per_topic_max - 1)
    return ShareAcknowledge(group, member_id, topic, partition,
                            tuple((int(o), str(k)) for o, k in validate_acks(body.get("acks"))))


def _int(body: Mapping[str, Any], key: str, default: int | None, minimum: int, maximum: int) -> int:
    value = body.get(key, default)
    if type(value) is not int or not minimum <= value <= maximum:
        raise InvalidRequest(f"{key} must be an integer between {minimum} and {maximum}", field=key)
    return value


def _optional_text(body: Mapping[str, Any], key: str, chars_max: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > chars_max:
        raise InvalidRequest(f"{key} must be a non-empty string of at most {chars_max} characters", field=key)
    return value


def parse_partition_list(raw: Any, field: str) -> tuple[Partition, ...]:
    """[[topic, partition], ...] -> sorted unique pairs."""
    if not isinstance(raw, list) or len(raw) > limits.group_commit_offsets_max:
        raise InvalidRequest(f"{field} must be a list of [topic, partition] pairs "
                             f"(at most {limits.group_commit_offsets_max})", field=field)
    pairs = set()
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2 or type(item[1]) is not int or item[1] < 0:
            raise InvalidRequest(f"{field}: each entry is [topic, partition]", field=field)
        pairs.add((validate_topic_name(item[0]), item[1]))
    return tuple(sorted(pairs))


def parse_subscription(raw: Any) -> Subscription:
    if not isinstance(raw, Mapping):
        raise InvalidRequest("subscription must be an object {topics, pattern}", field="subscription")
    topics = raw.get("topics") or []
    if not isinstance(topics, list) or len(topics) > limits.group_subscription_topics_max:
        raise InvalidRequest(f"subscription.topics must be a list of at most {limits.group_subscription_topics_max} "
                             "topic names", field="subscription")
    names = tuple(sorted({validate_topic_name(t) for t in topics}))
    pattern = validate_pattern(raw["pattern"]) if raw.get("pattern") is not None else None
    if not names and pattern is None:
        raise InvalidRequest("a subscription names topics or gives a pattern", field="subscription")
    return Subscription(names, pattern)


def parse_group_heartbeat(group_id: str, body: Mapping[str, Any]) -> GroupHeartbeat:
    unknown = sorted(set(body) - {"member_id", "member_epoch", "instance_id", "client_id", "subscription", "owned",
                                  "session_timeout_ms", "rebalance_timeout_ms"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    epoch = _int(body, "member_epoch", None, STATIC_LEAVE_EPOCH, 2**31 - 1)
    member_id = _optional_text(body, "member_id", _MEMBER_ID_CHARS_MAX) or ""
    if epoch != JOIN_EPOCH and not member_id:
        raise InvalidRequest("member_id is required unless joining (member_epoch 0)", field="member_id")
    subscription = parse_subscription(body["subscription"]) if body.get("subscription") is not None else None
    if epoch == JOIN_EPOCH and subscription is None:
        raise InvalidRequest("joining (member_epoch 0) needs a subscription", field="subscription")
    owned = parse_partition_list(body["owned"], "owned") if body.get("owned") is not None else None
    return GroupHeartbeat(
        validate_group_id(group_id), member_id, epoch,
        instance_id=_optional_text(body, "instance_id", _MEMBER_ID_CHARS_MAX),
        client_id=_optional_text(body, "client_id", _MEMBER_ID_CHARS_MAX) or "",
        subscription=subscription, owned=owned,
        session_timeout_ms=_int(body, "session_timeout_ms", limits.group_session_timeout_ms_default,
                                limits.group_session_timeout_ms_min, limits.group_session_timeout_ms_max),
        rebalance_timeout_ms=_int(body, "rebalance_timeout_ms", limits.group_rebalance_timeout_ms_default,
                                  limits.group_session_timeout_ms_min, limits.group_rebalance_timeout_ms_max))


def parse_offset_commit(group_id: str, body: Mapping[str, Any]) -> OffsetCommit:
    unknown = sorted(set(body) - {"member_id", "member_epoch", "offsets", "sequence"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    member_id = _optional_text(body, "member_id", _MEMBER_ID_CHARS_MAX) or ""
    epoch = _int(body, "member_epoch", -1, -1, 2**31 - 1)
    sequence = _int(body, "sequence", None, 0, 2**63 - 1) if body.get("sequence") is not None else None
    raw = body.get("offsets")
    if not isinstance(raw, list) or not raw or len(raw) > limits.group_commit_offsets_max:
        raise InvalidRequest(f"offsets must be a non-empty list of at most {limits.group_commit_offsets_max} "
                             "{topic, partition, offset, metadata} objects", field="offsets")
    offsets: dict[Partition, tuple[str, int, int, str]] = {}
    for item in raw:
        if not isinstance(item, Mapping):
            raise InvalidRequest("each offset is an object {topic, partition, offset, metadata}", field="offsets")
        topic = validate_topic_name(item.get("topic"))
        partition = _int(item, "partition", None, 0, limits.partitions_per_topic_max - 1)
        offset = _int(item, "offset", None, 0, 2**63 - 1)
        metadata = item.get("metadata") or ""
        if not isinstance(metadata, str) or len(metadata) > limits.offset_metadata_chars_max:
            raise InvalidRequest(f"metadata must be a string of at most {limits.offset_metadata_chars_max} "
                                 "characters", field="metadata")
        offsets[(topic, partition)] = (topic, partition, offset, metadata)
    return OffsetCommit(validate_group_id(group_id), member_id, epoch, tuple(offsets[k] for k in sorted(offsets)),
                        sequence)


__all__ = ["CommittedOffsetView", "GroupDescription", "GroupHeartbeat", "GroupListing", "HeartbeatAnswer",
           "OffsetCommit", "ShareAcknowledge", "ShareAcknowledged", "ShareAcquire", "ShareAcquired",
           "parse_group_heartbeat", "parse_offset_commit", "parse_partition_list", "parse_share_acknowledge",
           "parse_share_acquire", "parse_subscription"]
