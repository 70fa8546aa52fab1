"""Push consumers of consumer groups, the pure part: the subscription, the commit window and the frames.

A consumer-group push consumer opens one WebSocket to its group's coordinator (``GET
/v1/groups/{group}/push``, docs/api.md "Push consumers"). The broker's session is the group member: it joins
with the subscription, heartbeats, and streams the records of the partitions the group assigns it, each
partition in offset order from the group's committed offset (else the log start, or its end with
``reset=latest``). The consumer commits offsets instead of acknowledging records: a commit frame names, per
partition, the next offset to read (Kafka's convention), and covers every record below it. Back-pressure is
the share-group push consumer's: at most ``prefetch`` records sent and not covered by a commit, over all
partitions; a consumer that stops committing stops receiving, and the broker holds no record for it
(records are re-read from the log, never kept).

When the group takes a partition away (a rebalance), the session stops sending it, forgets what was sent and
not committed (the next owner starts at the committed offset: at least once, as in Kafka) and tells the
consumer in an assignment frame; commits for a partition no longer owned are ignored. Every commit frame is
answered, in order, once its offsets are stored (or refused), so a consumer can commit synchronously and
close knowing its last commit holds.

No I/O here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import validate_group_id
from raftmq.cluster.errors import InvalidRequest, RaftMQError
from raftmq.cluster.push import query_int, query_topics

Partition = tuple[str, int]


class OffsetReset(enum.StrEnum):
    """Where a partition without a committed offset starts."""

    EARLIEST = "earliest"  # the log start
    LATEST = "latest"      # the high watermark: only records produced from now on


@dataclass(frozen=True)
class GroupPushSubscription:
    group_id: str
    topics: tuple[str, ...]
    prefetch: int
    session_timeout_ms: int
    reset: OffsetReset


def parse_group_subscription(group_id: str, query: Mapping[str, str]) -> GroupPushSubscription:
    """The query string of ``GET /v1/groups/{group}/push``."""
    topics = query_topics(query, {"topics", "prefetch", "session_timeout_ms", "reset"})
    reset = query.get("reset", OffsetReset.EARLIEST.value)
    if reset not in set(OffsetReset):
        raise InvalidRequest("reset must be earliest or latest", field="reset")
    return GroupPushSubscription(
        validate_group_id(group_id), topics,
        query_int(query, "prefetch", limits.push_prefetch_default, 1, limits.push_prefetch_max),
        query_int(query, "session_timeout_ms", limits.group_session_timeout_ms_default,
                   limits.group_session_timeout_ms_min, limits.group_session_timeout_ms_max),
        OffsetReset(reset))


@dataclass
class CommitWindow:
    """Per owned partition: the next offset to send and the offsets sent but not committed yet (at most
    ``prefetch`` over all partitions)."""

    prefetch: int
    positions: dict[Partition, int] = field(default_factory=dict)  # next offset to send
    sent: dict[Partition, deque[int]] = field(default_factory=dict)  # in offset order

    @property
    def in_flight(self) -> int:
        return sum(len(offsets) for offsets in self.sent.values())

    @property
    def room(self) -> int:
        return self.prefetch - self.in_flight

    def own(self, partition: Partition, position: int) -> None:
        """Start sending ``partition`` at ``position`` (its committed offset, or where the reset says)."""
        self.positions[partition] = position
        self.sent[partition] = deque()

    def drop(self, partition: Partition) -> None:
        """The group took ``partition`` away: forget it (its uncommitted records go to the next owner)."""
        self.positions.pop(partition, None)
        self.sent.pop(partition, None)

    def deliver(self, partition: Partition, offset: int) -> None:
        if self.room <= 0:
            raise AssertionError("a delivery past the prefetch window")  # the sender checks room first
        if offset < self.positions[partition]:
            raise AssertionError("records of a partition are sent in offset order, each once")
        self.sent[partition].append(offset)
        self.positions[partition] = offset + 1

    def check_commit(self, partition: Partition, offset: int) -> bool:
        """Whether a commit of ``offset`` (the next offset to read) for ``partition`` is meaningful: the
        partition is owned and the offset is not past what was sent. A commit of a partition not owned (any
        more) is not an error: the consumer may not have seen the rebalance yet; it is ignored."""
        position = self.positions.get(partition)
        if position is None:
            return False
        if offset > position:
            raise InvalidRequest(f"commit of {partition[0]}-{partition[1]} at {offset}, past the records sent "
                                 f"(next is {position})", field="commit")
        return True

    def committed(self, partition: Partition, offset: int) -> int:
        """A commit of ``offset`` was stored: the records below it leave the window; how many did."""
        offsets = self.sent.get(partition)
        freed = 0
        while offsets and offsets[0] < offset:
            offsets.popleft()
            freed += 1
        return freed


def parse_commit_frame(data: bytes) -> list[tuple[Partition, int]]:
    """A consumer's frame: msgpack ``{"commit": [[topic, partition, next offset], ...]}``."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise InvalidRequest("a commit frame is a msgpack object") from None
    commits = body.get("commit") if isinstance(body, dict) else None
    if not isinstance(commits, list) or len(commits) > limits.push_topics_max * limits.partitions_per_topic_max:
        raise InvalidRequest("commit must be a list of [topic, partition, offset]", field="commit")
    parsed = []
    for entry in commits:
        if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str) \
                or type(entry[1]) is not int or type(entry[2]) is not int or entry[2] < 0:
            raise InvalidRequest("commit entries are [topic, partition, offset >= 0]", field="commit")
        parsed.append(((entry[0], entry[1]), entry[2]))
    return parsed


def commit_frame(commits: Iterable[tuple[Partition, int]]) -> bytes:
    frame: bytes = msgpack.packb({"commit": [[t, p, o] for (t, p), o in commits]}, use_bin_type=True)
    return frame


def commit_answer_frame(commits: Iterable[tuple[Partition, int]], error: RaftMQError | None) -> bytes:
    """The answer to one commit frame, in order: ``{"committed": [[topic, partition, offset], ...]}`` (the
    entries stored; entries for partitions not owned are left out), or with ``"error": {"code", "message"}``
    when nothing was stored (the records stay in the window; commit again, or the next owner gets them)."""
    body: dict[str, Any] = {"committed": [[t, p, o] for (t, p), o in commits] if error is None else []}
    if error is not None:
        body["error"] = error.to_wire()
    frame: bytes = msgpack.packb(body, use_bin_type=True)
    return frame


def assignment_frame(partitions: Iterable[Partition], member_epoch: int) -> bytes:
    """Sent whenever what the session owns changes (commits for partitions not listed are ignored)."""
    frame: bytes = msgpack.packb({"assignment": [[t, p] for t, p in sorted(partitions)],
                                  "member_epoch": member_epoch}, use_bin_type=True)
    return frame
