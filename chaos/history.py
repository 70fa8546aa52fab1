"""What a chaos run records: the history the checker judges.

Four kinds of data, all plain frozen values:

* ``SendOp``: one produce call as the workload saw it, with Jepsen's three outcomes. ``ok`` = definitely
  stored, ``fail`` = definitely not stored (a definite error, ``RaftMQError.definite``), ``unknown`` =
  indeterminate (timeout, dropped connection, NOT_LEADER after send): Jepsen's ``info``. Never record an
  indeterminate send as ``fail``: the checker treats a failed send that shows up as a bug.
* ``ReadRecord``: one record of the final drain, read from each partition's leader after healing.
* ``PollOp``: one consumer poll during the run (optional; only informational checks use it).
* ``ReplicaLog``: one broker's own copy of one partition, read directly after healing (for divergence).

Every send's ``value`` must be unique across the run: the checker finds a record's origin by its value.
Times are monotonic milliseconds since the run started, supplied by the workload.

Pure: no I/O, no clock, no randomness. ``to_json``/``from_json`` take and return plain dicts; ``dumps``/
``loads`` take and return strings, so the workload decides where the bytes go.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, get_args

Outcome = Literal["ok", "fail", "unknown"]
Acks = Literal["0", "1", "all"]

OUTCOMES: Final[tuple[str, ...]] = get_args(Outcome)
ACKS_LEVELS: Final[tuple[str, ...]] = get_args(Acks)
# Bumped when a field changes meaning; from_json refuses other formats rather than misread them.
HISTORY_FORMAT: Final = "raftmq-history/1"

# (offset, key, value) as read from a log.
LogRecord = tuple[int, str | None, str | None]


@dataclass(frozen=True)
class SendOp:
    op_id: int
    process: int  # producer worker id
    idempotent: bool
    acks: Acks
    topic: str
    key: str
    value: str  # unique per attempt across the run
    start_ms: float  # monotonic ms since run start
    end_ms: float
    outcome: Outcome
    partition: int | None = None
    offset: int | None = None  # from the ack (acks=all), else None
    leader_id: int | None = None  # broker that acknowledged
    leader_epoch: int | None = None  # Raft term of the entry that acknowledged
    error: str | None = None  # error code for fail/unknown

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"send {self.op_id}: outcome {self.outcome!r} is not one of {OUTCOMES}")
        if self.acks not in ACKS_LEVELS:
            raise ValueError(f"send {self.op_id}: acks {self.acks!r} is not one of {ACKS_LEVELS}")
        if self.end_ms < self.start_ms:
            raise ValueError(f"send {self.op_id}: end_ms {self.end_ms} is before start_ms {self.start_ms}")


@dataclass(frozen=True)
class ReadRecord:
    """One record read back during the final drain (from partition leaders)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None


@dataclass(frozen=True)
class PollOp:
    """A consumer poll during the run; records are (offset, key, value) in the order returned."""

    process: int
    topic: str
    partition: int
    start_ms: float
    end_ms: float
    records: tuple[LogRecord, ...]


@dataclass(frozen=True)
class ReplicaLog:
    """One broker's own copy of one partition, read directly after healing."""

    broker_id: int
    topic: str
    partition: int
    log_start_offset: int
    records: tuple[LogRecord, ...]


def _records_from_json(rows: list[Any]) -> tuple[LogRecord, ...]:
    return tuple((int(offset), key, value) for offset, key, value in rows)


@dataclass
class History:
    sends: list[SendOp] = field(default_factory=list)
    reads: list[ReadRecord] = field(default_factory=list)
    polls: list[PollOp] = field(default_factory=list)
    replicas: list[ReplicaLog] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain dict of lists, str, int, float, bool and None (tuples become lists)."""
        return {
            "format": HISTORY_FORMAT,
            "sends": [asdict(op) for op in self.sends],
            "reads": [asdict(record) for record in self.reads],
            "polls": [{**asdict(poll), "records": [list(r) for r in poll.records]} for poll in self.polls],
            "replicas": [{**asdict(log), "records": [list(r) for r in log.records]} for log in self.replicas],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> History:
        if d.get("format") != HISTORY_FORMAT:
            raise ValueError(f"history format {d.get('format')!r} is not {HISTORY_FORMAT!r}")
        return cls(
            sends=[SendOp(**op) for op in d["sends"]],
            reads=[ReadRecord(**record) for record in d["reads"]],
            polls=[PollOp(**{**poll, "records": _records_from_json(poll["records"])}) for poll in d["polls"]],
            replicas=[
                ReplicaLog(**{**log, "records": _records_from_json(log["records"])}) for log in d["replicas"]
            ],
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> History:
        return cls.from_json(json.loads(text))


class HistoryBuilder:
    """Appends ops as the workload completes them; hands out op ids in completion order.

    Not thread-safe and not meant to be: the workload runs on one event loop.
    """

    def __init__(self) -> None:
        self._history = History()
        self._op_id_next = 0

    def record_send(
        self,
        *,
        process: int,
        idempotent: bool,
        acks: Acks,
        topic: str,
        key: str,
        value: str,
        start_ms: float,
        end_ms: float,
        outcome: Outcome,
        partition: int | None = None,
        offset: int | None = None,
        leader_id: int | None = None,
        leader_epoch: int | None = None,
        error: str | None = None,
    ) -> SendOp:
        op = SendOp(
            op_id=self._op_id_next,
            process=process,
            idempotent=idempotent,
            acks=acks,
            topic=topic,
            key=key,
            value=value,
            start_ms=start_ms,
            end_ms=end_ms,
            outcome=outcome,
            partition=partition,
            offset=offset,
            leader_id=leader_id,
            leader_epoch=leader_epoch,
            error=error,
        )
        self._op_id_next += 1
        self._history.sends.append(op)
        return op

    def record_read(
        self, topic: str, partition: int, offset: int, key: str | None, value: str | None
    ) -> None:
        self._history.reads.append(ReadRecord(topic, partition, offset, key, value))

    def record_poll(
        self,
        process: int,
        topic: str,
        partition: int,
        start_ms: float,
        end_ms: float,
        records: list[LogRecord],
    ) -> None:
        self._history.polls.append(PollOp(process, topic, partition, start_ms, end_ms, tuple(records)))

    def record_replica(
        self, broker_id: int, topic: str, partition: int, log_start_offset: int, records: list[LogRecord]
    ) -> None:
        self._history.replicas.append(
            ReplicaLog(broker_id, topic, partition, log_start_offset, tuple(records))
        )

    def build(self) -> History:
        """A copy: the builder may keep recording without changing what was handed out."""
        h = self._history
        return History(list(h.sends), list(h.reads), list(h.polls), list(h.replicas))
