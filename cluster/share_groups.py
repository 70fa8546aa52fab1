"""Share groups (queue mode): many consumers read the same partitions, each record is delivered to one of
them at a time under a lock, and acknowledged, released or rejected one by one. A pure state machine.

It is what RabbitMQ quorum queues and SQS give, and Kafka's share groups (KIP-932) on a log: records stay in
the partition; per (group, topic, partition) the coordinator keeps a *window* of record states starting at
``start_offset`` (every offset below it is done):

* available (never delivered, or released, or its lock expired): the next ``ACQUIRE`` may hand it out;
* acquired by a member until ``expires_ms`` (the visibility timeout, chosen per acquire): nobody else gets it;
* acknowledged (accepted) or archived (rejected, or parked in the dead-letter topic): done, never delivered
  again. Only the member holding an unexpired lock can acknowledge, so **no record is acknowledged twice**.

Every delivery counts (``delivery_count``); a record already delivered ``max_deliveries`` times is handed out
once more flagged ``dead_letter``: the consumer parks it in ``<topic>.DLT`` and accepts it (if it dies
first, the lock expires and another consumer does it). Lock expiry is decided with each entry's own time,
so every replica agrees. Acquisition never goes beyond the window (``limits.share_window_records_max``
records past ``start_offset``): a record that stays unacknowledged holds the window, as a stuck message
does in a queue, and ``max_deliveries`` bounds how long.

Records are not read here: a consumer tells ``ACQUIRE`` the log end it saw, gets offsets, and fetches them.
No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import GroupLimitReached, InvalidRequest, RaftMQError, invariant


class RecordState(enum.IntEnum):
    AVAILABLE = 0
    ACQUIRED = 1
    ACKNOWLEDGED = 2
    ARCHIVED = 3


class AckKind(enum.StrEnum):
    ACCEPT = "accept"    # processed: done
    RELEASE = "release"  # give it back now (available again, its delivery counted)
    REJECT = "reject"    # unprocessable: archived, never delivered again


@dataclass
class InFlight:
    state: RecordState
    delivery_count: int
    member_id: str = ""
    expires_ms: int = 0


@dataclass
class SharePartition:
    start_offset: int = 0
    end_offset: int = 0  # the highest log end a consumer reported
    records: dict[int, InFlight] = field(default_factory=dict)  # offsets >= start_offset not plainly available

    def expire(self, now_ms: int) -> None:
        for record in self.records.values():
            if record.state is RecordState.ACQUIRED and record.expires_ms <= now_ms:
                record.state = RecordState.AVAILABLE
                record.member_id = ""

    def advance(self) -> None:
        """Move ``start_offset`` over the done prefix (and forget it: the window stays bounded)."""
        while (record := self.records.get(self.start_offset)) is not None \
                and record.state in (RecordState.ACKNOWLEDGED, RecordState.ARCHIVED):
            del self.records[self.start_offset]
            self.start_offset += 1

    def to_wire(self) -> list[Any]:
        records = [[offset, int(r.state), r.delivery_count, r.member_id, r.expires_ms]
                   for offset, r in sorted(self.records.items())]
        return [self.start_offset, self.end_offset, records]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SharePartition:
        start, end, records = data
        return cls(start, end, {o: InFlight(RecordState(s), n, m, e) for o, s, n, m, e in records})


@dataclass(frozen=True)
class Acquired:
    offset: int
    delivery_count: int
    dead_letter: bool  # delivered max_deliveries times already: park it, then accept it


class SharesState:
    """Every share partition of the share groups on one group-state partition: (group, topic, partition)."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, str, int], SharePartition] = {}

    def acquire(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        key = (str(p["group_id"]), str(p["topic"]), int(p["partition"]))
        share = self.partitions.get(key)
        if share is None:
            if len(self.partitions) >= limits.group_state_groups_max:
                return GroupLimitReached(f"this group-state partition holds {len(self.partitions)} share partitions, "
                                         "the most it may")
            share = self.partitions[key] = SharePartition()
        log_end, start_at = int(p["log_end"]), int(p.get("log_start", 0))
        share.end_offset = max(share.end_offset, log_end)
        if start_at > share.start_offset:  # retention deleted records nobody acknowledged: they are gone
            for offset in [o for o in share.records if o < start_at]:
                del share.records[offset]
            share.start_offset = start_at
        share.expire(time_ms)
        limit = min(share.end_offset, share.start_offset + limits.share_window_records_max)
        taken: list[Acquired] = []
        offset = share.start_offset
        while offset < limit and len(taken) < int(p["max_records"]):
            record = share.records.get(offset)
            if record is None:
                record = share.records[offset] = InFlight(RecordState.AVAILABLE, 0)
            if record.state is RecordState.AVAILABLE:
                record.state = RecordState.ACQUIRED
                record.delivery_count += 1
                record.member_id = str(p["member_id"])
                record.expires_ms = time_ms + int(p["lock_ms"])
                taken.append(Acquired(offset, record.delivery_count,
                                      record.delivery_count > int(p["max_deliveries"])))
            offset += 1
        return {"acquired": [[a.offset, a.delivery_count, a.dead_letter] for a in taken],
                "start_offset": share.start_offset}

    def acknowledge(self, time_ms: int, p: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        share = self.partitions.get((str(p["group_id"]), str(p["topic"]), int(p["partition"])))
        member_id = str(p["member_id"])
        done: list[int] = []
        refused: list[list[Any]] = []
        if share is not None:
            share.expire(time_ms)
        for offset, kind in p["acks"]:
            record = share.records.get(int(offset)) if share is not None else None
            if record is None or record.state is not RecordState.ACQUIRED or record.member_id != member_id:
                refused.append([offset, "not locked by this member (its lock expired, or it was never acquired)"])
                continue
            record.member_id = ""
            record.state = {AckKind.ACCEPT: RecordState.ACKNOWLEDGED, AckKind.RELEASE: RecordState.AVAILABLE,
                            AckKind.REJECT: RecordState.ARCHIVED}[AckKind(kind)]
            done.append(int(offset))
        if share is not None:
            share.advance()
        return {"done": done, "refused": refused, "start_offset": share.start_offset if share is not None else 0}

    def describe(self, group_id: str) -> list[dict[str, Any]]:
        rows = []
        for (group, topic, partition), share in sorted(self.partitions.items()):
            if group != group_id:
                continue
            states = [r.state for r in share.records.values()]
            rows.append({"topic": topic, "partition": partition, "start_offset": share.start_offset,
                         "end_offset": share.end_offset, "acquired": states.count(RecordState.ACQUIRED),
                         "done_in_window": states.count(RecordState.ACKNOWLEDGED) + states.count(RecordState.ARCHIVED)})
        return rows

    def locked_by(self, group_id: str, topic: str, partition: int, member_id: str, offsets: Iterable[int]
                  ) -> dict[int, int]:
        """The delivery counts of those of ``offsets`` that ``member_id`` holds locked (as of the last applied
        entry: a lock may expire before the member's next acknowledgement applies)."""
        share = self.partitions.get((group_id, topic, partition))
        if share is None:
            return {}
        held = {}
        for offset in offsets:
            record = share.records.get(offset)
            if record is not None and record.state is RecordState.ACQUIRED and record.member_id == member_id:
                held[offset] = record.delivery_count
        return held

    def to_wire(self) -> list[Any]:
        return [[g, t, p, share.to_wire()] for (g, t, p), share in sorted(self.partitions.items())]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SharesState:
        state = cls()
        for group, topic, partition, share in data:
            state.partitions[(group, topic, partition)] = SharePartition.from_wire(share)
        return state


def validate_acquire(body: Mapping[str, Any]) -> dict[str, int]:
    """The numeric fields of an acquire request, range-checked (the caller checks group, member, topic)."""
    bounds = {"partition": (0, limits.partitions_per_topic_max - 1), "log_end": (0, 2**63 - 1),
              "log_start": (0, 2**63 - 1), "max_records": (1, limits.share_acquire_records_max),
              "lock_ms": (limits.share_lock_ms_min, limits.share_lock_ms_max), "max_deliveries": (1, 1_000)}
    values = {}
    for name, (low, high) in bounds.items():
        value = body.get(name, 0 if name == "log_start" else None)
        if type(value) is not int or not low <= value <= high:
            raise InvalidRequest(f"{name} must be an integer between {low} and {high}", field=name)
        values[name] = value
    return values


def validate_acks(raw: Any) -> list[list[Any]]:
    if not isinstance(raw, list) or not raw or len(raw) > limits.share_acquire_records_max:
        raise InvalidRequest(f"acks must be a non-empty list of at most {limits.share_acquire_records_max} "
                             "[offset, accept|release|reject] pairs", field="acks")
    acks = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2 or type(item[0]) is not int or item[0] < 0 \
                or item[1] not in tuple(AckKind):
            raise InvalidRequest("each ack is [offset, accept|release|reject]", field="acks")
        acks.append([item[0], str(item[1])])
    invariant(len(acks) <= limits.share_acquire_records_max, "acks bounded")
    return acks


__all__ = ["AckKind", "Acquired", "InFlight", "RecordState", "SharePartition", "SharesState", "validate_acks",
           "validate_acquire"]
