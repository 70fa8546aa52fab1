"""Judges one chaos run's history: counts, examples, findings labelled expected or bug, and a verdict.

Method (Jepsen's total-queue and Kafka checkers, adapted to a log with a final drain):

* Every send's value is unique, so a drained record is traced back to the send that wrote it by value.
* ``lost`` = ``ok`` sends never read; ``recovered`` = ``unknown`` sends read; ``failed_but_present`` =
  ``fail`` sends read; ``unexpected`` = values read that no send attempted; ``duplicated`` = attempted
  values read at more than one offset.
* ``reordered``: for sends a, b on one topic+key+partition, a ``ok`` and a.end_ms < b.start_ms, both read,
  b's first offset below a's: a real-time order violation (counted once per b).
* ``offset_gaps``: offsets missing between the smallest and largest offset drained from a partition.
* ``acked_offset_mismatch``: an ``ok`` send whose ack named an offset that does not hold its value now.
* ``divergence``: offsets held by 2+ replicas of a partition with different (key, value); a replica that
  merely ends earlier is ``replica_lag``, reported apart.
* ``inconsistent_reads``: the drain itself returned two records for one offset; ``misplaced``: a value
  read under another topic, key or partition than its send named. Both always bugs (not in the brief,
  cheap to check, and otherwise they would hide inside other counts).
* Polls (optional): ``poll_skips`` / ``nonmonotonic_polls`` per (process, topic, partition): informational.

Verdict rules (which finding is a bug, i.e. ``expected=False`` → FAIL):

* Always bugs: unexpected, failed_but_present, offset_gaps, divergence, inconsistent_reads, misplaced.
* acks=all: lost and acked_offset_mismatch are bugs while a majority of replicas stayed alive (with their
  logs). With ``majority_alive=False`` the run broke the precondition of Raft's promise (a majority that
  stored the entry survives), so loss and moved records are *expected* (labelled as such); everything else
  keeps its label: losing a majority can lose data but never invents, splits or reorders it.
  Idempotent duplicates are bugs (at any ``majority_alive``). ``loss_allowed`` (a sentence) does the same
  for a run that cut the power of brokers whose fsync policy is not "always" (``interval``, ``never``): an
  acknowledgement there does not mean "on disk", so what the cut takes is outside the promise; the sentence
  says why, and the losses are counted and shown as expected.
* acks=1 / 0: lost and acked_offset_mismatch are expected (the ack precedes replication; failover
  truncates). Idempotent duplicates are expected (Kafka only promises idempotence with acks=all).
* reordered: a bug for acks=all and acks=1 (offsets follow Raft log order, and an acks=1 ack means the
  entry is already in the leader's log, so a later-started send cannot land before it without a bug);
  expected for acks=0, whose ``ok`` only means "handed to the broker".
* Always expected (informational): duplicates from non-idempotent producers, unknown, recovered,
  replica_lag, poll_skips, nonmonotonic_polls.

Example lists are capped at ``limits.examples_max`` (chaos/limits.py); counts are exact. Malformed histories
(a send at another acks level than the run's, two sends with one value or op id, two logs of one replica)
raise ValueError.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from raftmq.chaos import limits
from raftmq.chaos.history import ACKS_LEVELS, History, ReadRecord, SendOp

# The old name of limits.examples_max (tests import it from here).
EXAMPLES_MAX: Final = limits.examples_max

Verdict = Literal["PASS", "FAIL"]
# Where a lost record's slot stands in the drained log.
Fate = Literal["overwritten", "truncated", "hole", "before_start", "empty_log", "no_offset", "no_partition"]

_TopicPartition = tuple[str, int]
_KeyValue = tuple[str | None, str | None]


@dataclass(frozen=True)
class Finding:
    kind: str
    count: int
    expected: bool  # False = a bug: the verdict is FAIL
    explanation: str


@dataclass(frozen=True)
class LostRecord:
    """An acknowledged send missing from the drain, and what now sits where it was acked."""

    op_id: int
    process: int
    topic: str
    partition: int | None
    key: str
    value: str
    acked_offset: int | None
    leader_id: int | None
    leader_epoch: int | None
    end_ms: float
    fate: Fate
    drained_start_offset: int | None  # drained log of the partition as [start, end); None when empty
    drained_end_offset: int | None
    key_now: str | None = None  # the record at acked_offset now (fate "overwritten")
    value_now: str | None = None
    replaced_by_op_id: int | None = None  # the send that wrote value_now, if any
    replaced_by_leader_id: int | None = None
    replaced_by_leader_epoch: int | None = None
    on_replicas: tuple[int, ...] = ()  # brokers whose own copy still holds the value

    def describe(self) -> str:
        """One sentence for the report's "where each lost record went"."""
        where = f"{self.topic}/{self.partition}"
        acked = "acked" + (f" by broker {self.leader_id}" if self.leader_id is not None else "")
        acked += f" in term {self.leader_epoch}" if self.leader_epoch is not None else ""
        head = (
            f"{where} key={self.key!r} value={self.value!r} (op {self.op_id}, process {self.process}) {acked}"
        )
        if self.acked_offset is not None:
            head += f" at offset {self.acked_offset}"
        if self.fate == "overwritten":
            by = ""
            if self.replaced_by_op_id is not None:
                by = (
                    f" (op {self.replaced_by_op_id}, acked by broker {self.replaced_by_leader_id}"
                    f" in term {self.replaced_by_leader_epoch})"
                )
            tail = (
                f"offset {self.acked_offset} now holds {self.value_now!r}{by}: the acked entry was replaced"
            )
        elif self.fate == "truncated":
            tail = f"the drained log ends at {self.drained_end_offset}: the tail holding it was truncated"
        elif self.fate == "hole":
            tail = f"offset {self.acked_offset} is a hole in the drained log"
        elif self.fate == "before_start":
            tail = f"the drained log starts at {self.drained_start_offset}: removed from the log's start"
        elif self.fate == "empty_log":
            tail = f"nothing was drained from {where}"
        elif self.fate == "no_offset":
            tail = "the ack carried no offset, so its slot cannot be located"
        else:
            tail = "the ack carried no partition"
        replicas = f"; still on brokers {list(self.on_replicas)}" if self.on_replicas else ""
        return f"{head}; {tail}{replicas}"


@dataclass(frozen=True)
class Duplicate:
    op_id: int
    idempotent: bool
    value: str
    locations: tuple[tuple[str, int, int], ...]  # (topic, partition, offset)


@dataclass(frozen=True)
class Reorder:
    """b started after a was acknowledged, yet b's first offset is below a's."""

    topic: str
    partition: int
    key: str
    earlier_op_id: int  # a
    earlier_offset: int
    later_op_id: int  # b
    later_offset: int


@dataclass(frozen=True)
class OffsetGap:
    topic: str
    partition: int
    start_offset: int  # missing offsets are [start_offset, end_offset)
    end_offset: int


@dataclass(frozen=True)
class OffsetMismatch:
    op_id: int
    topic: str
    partition: int | None
    value: str
    acked_offset: int
    read_offsets: tuple[int, ...]
    value_now: str | None  # what the acked offset holds now (None: nothing drained there)


@dataclass(frozen=True)
class DivergentOffset:
    topic: str
    partition: int
    offset: int
    copies: tuple[tuple[int, str | None, str | None], ...]  # (broker_id, key, value)


@dataclass(frozen=True)
class ReplicaLag:
    topic: str
    partition: int
    broker_id: int
    end_offset: int
    end_offset_max: int  # the furthest replica of the partition


@dataclass(frozen=True)
class InconsistentRead:
    topic: str
    partition: int
    offset: int
    records: tuple[_KeyValue, ...]


@dataclass(frozen=True)
class PollAnomaly:
    kind: Literal["skip", "nonmonotonic"]
    process: int
    topic: str
    partition: int
    offset_previous: int
    offset: int
    within_poll: bool  # Jepsen's int-poll-skip / int-nonmonotonic-poll


@dataclass(frozen=True)
class CheckResult:
    acks: str
    majority_alive: bool
    verdict: Verdict
    findings: tuple[Finding, ...]
    attempted: int
    acked: int
    failed: int
    unknown: int
    lost: int
    unexpected: int
    duplicated: int  # == duplicated_idempotent + duplicated_non_idempotent
    duplicated_idempotent: int
    duplicated_non_idempotent: int
    recovered: int
    failed_but_present: int
    reordered: int
    offset_gaps: int  # missing offsets, summed over partitions
    acked_offset_mismatch: int
    divergence: int  # divergent (partition, offset) pairs
    replica_lag: int  # lagging replicas
    inconsistent_reads: int
    misplaced: int
    poll_skips: int
    nonmonotonic_polls: int
    lost_records: tuple[LostRecord, ...] = ()
    unexpected_records: tuple[ReadRecord, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    recovered_sends: tuple[SendOp, ...] = ()
    failed_but_present_sends: tuple[SendOp, ...] = ()
    reorders: tuple[Reorder, ...] = ()
    gaps: tuple[OffsetGap, ...] = ()
    offset_mismatches: tuple[OffsetMismatch, ...] = ()
    divergent_offsets: tuple[DivergentOffset, ...] = ()
    lagging_replicas: tuple[ReplicaLag, ...] = ()
    inconsistent_read_offsets: tuple[InconsistentRead, ...] = ()
    misplaced_reads: tuple[ReadRecord, ...] = ()
    poll_anomalies: tuple[PollAnomaly, ...] = ()
    loss_allowed: str | None = None  # why acknowledged loss is expected at acks=all too (see check())

    @property
    def bugs(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.expected)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (tuples become lists), ready for json.dumps."""
        encoded: dict[str, Any] = _lists(asdict(self))
        return encoded

    def summary_row(self) -> dict[str, Any]:
        """One cell row of the acks × scenario matrix."""
        return {
            "attempted": self.attempted,
            "acked": self.acked,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unknown": self.unknown,
            "recovered": self.recovered,
            "reordered": self.reordered,
            "divergence": self.divergence,
            "verdict": self.verdict,
        }


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_lists(v) for v in obj]
    return obj


@dataclass
class _Examples:
    """A capped example list with an exact count beside it."""

    count: int = 0
    items: list[Any] = field(default_factory=list)

    def add(self, item: Any, weight: int = 1) -> None:
        self.count += weight
        if len(self.items) < limits.examples_max:
            self.items.append(item)


def check(history: History, *, acks: str, majority_alive: bool = True,
          loss_allowed: str | None = None) -> CheckResult:
    """Judge a run whose sends all used ``acks``; ``majority_alive`` = a majority of every partition's
    replicas kept its log throughout (False for e.g. majority power loss or disk wipes); ``loss_allowed``: a
    sentence saying why acknowledged writes may be lost at every ack level in this run (a power cut of
    brokers that do not fsync before acknowledging), or None."""
    if acks not in ACKS_LEVELS:
        raise ValueError(f"acks {acks!r} is not one of {ACKS_LEVELS}")
    send_by_value = _index_sends(history.sends, acks)
    drained, inconsistent = _drain(history.reads)
    locations, unexpected = _locate(drained, send_by_value)
    evidence = _Evidence(
        send_by_value=send_by_value,
        drained=drained,
        locations=locations,
        bounds={tp: (min(log), max(log) + 1) for tp, log in drained.items() if log},
        replica_values=_replica_values(history),
    )
    tally = _Tally(unexpected=unexpected, inconsistent=inconsistent)
    placed = _trace_sends(history.sends, evidence, tally)
    tally.reorders = _reorders(placed)
    tally.gaps = _gaps(drained)
    tally.divergent, tally.lagging = _replicas(history)
    tally.polls = _polls(history)
    return _result(history, tally, acks, majority_alive, loss_allowed)


@dataclass(frozen=True)
class _Evidence:
    """The drain, indexed for tracing each send to where its value ended up."""

    send_by_value: dict[str, SendOp]
    drained: dict[_TopicPartition, dict[int, _KeyValue]]  # offset -> record per partition
    # value -> [(topic, partition, offset, key)], in (topic, partition, offset) order.
    locations: dict[str, list[tuple[str, int, int, str | None]]]
    bounds: dict[_TopicPartition, tuple[int, int]]  # drained [start, end) per non-empty partition
    replica_values: dict[_TopicPartition, dict[str, list[int]]]


@dataclass
class _Tally:
    """Every example list of one check (exact counts beside capped examples), filled in by ``check``."""

    unexpected: _Examples
    inconsistent: list[InconsistentRead]
    lost: _Examples = field(default_factory=_Examples)
    recovered: _Examples = field(default_factory=_Examples)
    failed_present: _Examples = field(default_factory=_Examples)
    dup_idem: _Examples = field(default_factory=_Examples)
    dup_plain: _Examples = field(default_factory=_Examples)
    mismatches: _Examples = field(default_factory=_Examples)
    misplaced: _Examples = field(default_factory=_Examples)
    reorders: _Examples = field(default_factory=_Examples)
    gaps: _Examples = field(default_factory=_Examples)
    divergent: _Examples = field(default_factory=_Examples)
    lagging: _Examples = field(default_factory=_Examples)
    polls: list[PollAnomaly] = field(default_factory=list)


def _locate(
    drained: dict[_TopicPartition, dict[int, _KeyValue]], send_by_value: dict[str, SendOp]
) -> tuple[dict[str, list[tuple[str, int, int, str | None]]], _Examples]:
    """Where each attempted value was drained (value -> [(topic, partition, offset, key)] in (topic,
    partition, offset) order), and the drained records no send attempted (each unknown value once)."""
    locations: dict[str, list[tuple[str, int, int, str | None]]] = defaultdict(list)
    unexpected = _Examples()
    unexpected_values: set[str] = set()
    for tp in sorted(drained):
        for offset in sorted(drained[tp]):
            key, value = drained[tp][offset]
            if value is not None and value in send_by_value:
                locations[value].append((tp[0], tp[1], offset, key))
            elif value is None or value not in unexpected_values:
                if value is not None:
                    unexpected_values.add(value)
                unexpected.add(ReadRecord(tp[0], tp[1], offset, key, value))
    return locations, unexpected


def _trace_sends(
    sends: list[SendOp], evidence: _Evidence, tally: _Tally
) -> dict[tuple[str, str, int], list[tuple[SendOp, int]]]:
    """Trace every send to its drained copies; returns (topic, key, partition) -> [(op, first offset)] for
    the reorder sweep."""
    placed: dict[tuple[str, str, int], list[tuple[SendOp, int]]] = defaultdict(list)
    for op in sends:
        locs = evidence.locations.get(op.value, [])
        if not locs:
            if op.outcome == "ok":
                tally.lost.add(
                    _explain_lost(op, evidence.drained, evidence.bounds, evidence.send_by_value,
                                  evidence.replica_values)
                )
            continue
        home, home_offsets = _trace_found_send(op, locs, evidence, tally)
        if home_offsets:
            placed[(op.topic, op.key, home)].append((op, home_offsets[0]))
    return placed


def _trace_found_send(
    op: SendOp, locs: list[tuple[str, int, int, str | None]], evidence: _Evidence, tally: _Tally
) -> tuple[int, tuple[int, ...]]:
    """A send whose value was drained: recovered, failed-but-present, misplaced, duplicated or moved.
    Returns its home partition and the offsets holding it there."""
    if op.outcome == "unknown":
        tally.recovered.add(op)
    elif op.outcome == "fail":
        tally.failed_present.add(op)
    home = op.partition if op.partition is not None else locs[0][1]
    wrong = [
        ReadRecord(t, p, o, k, op.value)
        for t, p, o, k in locs
        if t != op.topic or k != op.key or p != home
    ]
    if wrong:
        tally.misplaced.add(wrong[0])
    if len(locs) > 1:
        dup = Duplicate(op.op_id, op.idempotent, op.value, tuple((t, p, o) for t, p, o, _ in locs))
        (tally.dup_idem if op.idempotent else tally.dup_plain).add(dup)
    home_offsets = tuple(o for t, p, o, _ in locs if t == op.topic and p == home)
    if op.outcome == "ok" and op.offset is not None and op.offset not in home_offsets:
        now = evidence.drained.get((op.topic, home), {}).get(op.offset)
        tally.mismatches.add(
            OffsetMismatch(
                op.op_id,
                op.topic,
                op.partition,
                op.value,
                op.offset,
                home_offsets,
                now[1] if now else None,
            )
        )
    return home, home_offsets


def _counts(history: History, tally: _Tally) -> dict[str, int]:
    """Every finding's count, in the order findings are listed."""
    return {
        "lost": tally.lost.count,
        "acked_offset_mismatch": tally.mismatches.count,
        "unexpected": tally.unexpected.count,
        "failed_but_present": tally.failed_present.count,
        "offset_gaps": tally.gaps.count,
        "divergence": tally.divergent.count,
        "inconsistent_reads": len(tally.inconsistent),
        "misplaced": tally.misplaced.count,
        "duplicated_idempotent": tally.dup_idem.count,
        "duplicated_non_idempotent": tally.dup_plain.count,
        "reordered": tally.reorders.count,
        "unknown": sum(op.outcome == "unknown" for op in history.sends),
        "recovered": tally.recovered.count,
        "replica_lag": tally.lagging.count,
        "poll_skips": sum(a.kind == "skip" for a in tally.polls),
        "nonmonotonic_polls": sum(a.kind == "nonmonotonic" for a in tally.polls),
    }


def _result(history: History, tally: _Tally, acks: str, majority_alive: bool,
            loss_allowed: str | None) -> CheckResult:
    counts = _counts(history, tally)
    findings = _findings(counts, acks, majority_alive, loss_allowed)
    return CheckResult(
        loss_allowed=loss_allowed,
        acks=acks,
        majority_alive=majority_alive,
        verdict="PASS" if all(f.expected for f in findings) else "FAIL",
        findings=findings,
        attempted=len(history.sends),
        acked=sum(op.outcome == "ok" for op in history.sends),
        failed=sum(op.outcome == "fail" for op in history.sends),
        unknown=counts["unknown"],
        lost=tally.lost.count,
        unexpected=tally.unexpected.count,
        duplicated=tally.dup_idem.count + tally.dup_plain.count,
        duplicated_idempotent=tally.dup_idem.count,
        duplicated_non_idempotent=tally.dup_plain.count,
        recovered=tally.recovered.count,
        failed_but_present=tally.failed_present.count,
        reordered=tally.reorders.count,
        offset_gaps=tally.gaps.count,
        acked_offset_mismatch=tally.mismatches.count,
        divergence=tally.divergent.count,
        replica_lag=tally.lagging.count,
        inconsistent_reads=len(tally.inconsistent),
        misplaced=tally.misplaced.count,
        poll_skips=counts["poll_skips"],
        nonmonotonic_polls=counts["nonmonotonic_polls"],
        lost_records=tuple(tally.lost.items),
        unexpected_records=tuple(tally.unexpected.items),
        duplicates=tuple((tally.dup_idem.items + tally.dup_plain.items)[: limits.examples_max]),
        recovered_sends=tuple(tally.recovered.items),
        failed_but_present_sends=tuple(tally.failed_present.items),
        reorders=tuple(tally.reorders.items),
        gaps=tuple(tally.gaps.items),
        offset_mismatches=tuple(tally.mismatches.items),
        divergent_offsets=tuple(tally.divergent.items),
        lagging_replicas=tuple(tally.lagging.items),
        inconsistent_read_offsets=tuple(tally.inconsistent[: limits.examples_max]),
        misplaced_reads=tuple(tally.misplaced.items),
        poll_anomalies=tuple(tally.polls[: limits.examples_max]),
    )


def _index_sends(sends: list[SendOp], acks: str) -> dict[str, SendOp]:
    send_by_value: dict[str, SendOp] = {}
    op_ids: set[int] = set()
    for op in sends:
        if op.acks != acks:
            raise ValueError(f"send {op.op_id} used acks={op.acks!r} in a run checked as acks={acks!r}")
        if op.value in send_by_value:
            raise ValueError(f"sends {send_by_value[op.value].op_id} and {op.op_id} share value {op.value!r}")
        if op.op_id in op_ids:
            raise ValueError(f"two sends have op_id {op.op_id}")
        send_by_value[op.value] = op
        op_ids.add(op.op_id)
    return send_by_value


def _drain(
    reads: list[ReadRecord],
) -> tuple[dict[_TopicPartition, dict[int, _KeyValue]], list[InconsistentRead]]:
    """Offset -> record per partition; an offset read twice identically counts once, differently is reported
    (the first record read is kept for the other checks)."""
    drained: dict[_TopicPartition, dict[int, _KeyValue]] = defaultdict(dict)
    conflicts: dict[tuple[str, int, int], list[_KeyValue]] = {}
    for r in reads:
        log = drained[(r.topic, r.partition)]
        record = (r.key, r.value)
        first = log.setdefault(r.offset, record)
        if first != record:
            seen = conflicts.setdefault((r.topic, r.partition, r.offset), [first])
            if record not in seen:
                seen.append(record)
    inconsistent = [InconsistentRead(t, p, o, tuple(recs)) for (t, p, o), recs in sorted(conflicts.items())]
    return drained, inconsistent


def _replica_values(history: History) -> dict[_TopicPartition, dict[str, list[int]]]:
    """(topic, partition) -> value -> brokers holding it in their own copy."""
    held: dict[_TopicPartition, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for log in sorted(history.replicas, key=lambda r: r.broker_id):
        for _, _, value in log.records:
            if value is not None and log.broker_id not in held[(log.topic, log.partition)][value]:
                held[(log.topic, log.partition)][value].append(log.broker_id)
    return held


def _explain_lost(
    op: SendOp,
    drained: dict[_TopicPartition, dict[int, _KeyValue]],
    bounds: dict[_TopicPartition, tuple[int, int]],
    send_by_value: dict[str, SendOp],
    replica_values: dict[_TopicPartition, dict[str, list[int]]],
) -> LostRecord:
    if op.partition is None:
        partitions = [tp for tp in replica_values if tp[0] == op.topic]
        on_replicas = sorted({b for tp in partitions for b in replica_values[tp].get(op.value, [])})
        return _lost(op, "no_partition", None, on_replicas)
    tp = (op.topic, op.partition)
    on_replicas = replica_values[tp].get(op.value, []) if tp in replica_values else []
    span = bounds.get(tp)
    if op.offset is None:
        return _lost(op, "no_offset", span, on_replicas)
    if span is None:
        return _lost(op, "empty_log", span, on_replicas)
    now = drained[tp].get(op.offset)
    if now is not None:
        key_now, value_now = now
        by = send_by_value.get(value_now) if value_now is not None else None
        return _lost(
            op,
            "overwritten",
            span,
            on_replicas,
            key_now=key_now,
            value_now=value_now,
            replaced_by_op_id=by.op_id if by else None,
            replaced_by_leader_id=by.leader_id if by else None,
            replaced_by_leader_epoch=by.leader_epoch if by else None,
        )
    start, end = span
    fate: Fate = "truncated" if op.offset >= end else "before_start" if op.offset < start else "hole"
    return _lost(op, fate, span, on_replicas)


def _lost(
    op: SendOp, fate: Fate, span: tuple[int, int] | None, on_replicas: list[int], **now: Any
) -> LostRecord:
    return LostRecord(
        op_id=op.op_id,
        process=op.process,
        topic=op.topic,
        partition=op.partition,
        key=op.key,
        value=op.value,
        acked_offset=op.offset,
        leader_id=op.leader_id,
        leader_epoch=op.leader_epoch,
        end_ms=op.end_ms,
        fate=fate,
        drained_start_offset=span[0] if span else None,
        drained_end_offset=span[1] if span else None,
        on_replicas=tuple(on_replicas),
        **now,
    )


def _reorders(placed: dict[tuple[str, str, int], list[tuple[SendOp, int]]]) -> _Examples:
    """Sweep per (topic, key, partition): b (by start) against every ok a that ended before b started,
    keeping the a with the highest first offset as the witness. O(n log n)."""
    found = _Examples()
    for (topic, key, partition), ops in sorted(placed.items()):
        earlier = sorted(((op, o) for op, o in ops if op.outcome == "ok"), key=lambda x: x[0].end_ms)
        witness: tuple[SendOp, int] | None = None
        i = 0
        for b, b_offset in sorted(ops, key=lambda x: x[0].start_ms):
            while i < len(earlier) and earlier[i][0].end_ms < b.start_ms:
                if witness is None or earlier[i][1] > witness[1]:
                    witness = earlier[i]
                i += 1
            if witness is not None and witness[1] > b_offset:
                found.add(Reorder(topic, partition, key, witness[0].op_id, witness[1], b.op_id, b_offset))
    return found


def _gaps(drained: dict[_TopicPartition, dict[int, _KeyValue]]) -> _Examples:
    found = _Examples()
    for (topic, partition), log in sorted(drained.items()):
        offsets = sorted(log)
        for lo, hi in zip(offsets, offsets[1:], strict=False):
            if hi > lo + 1:
                found.add(OffsetGap(topic, partition, lo + 1, hi), weight=hi - lo - 1)
    return found


def _replicas(history: History) -> tuple[_Examples, _Examples]:
    by_tp: dict[_TopicPartition, dict[int, dict[int, _KeyValue]]] = defaultdict(dict)
    ends: dict[_TopicPartition, dict[int, int]] = defaultdict(dict)
    for log in history.replicas:
        tp = (log.topic, log.partition)
        if log.broker_id in by_tp[tp]:
            raise ValueError(f"two logs of broker {log.broker_id} for {log.topic}/{log.partition}")
        by_tp[tp][log.broker_id] = {o: (k, v) for o, k, v in log.records}
        ends[tp][log.broker_id] = max((o + 1 for o, _, _ in log.records), default=log.log_start_offset)
    divergent, lagging = _Examples(), _Examples()
    for tp, copies in sorted(by_tp.items()):
        offsets = sorted({o for log in copies.values() for o in log})
        for offset in offsets:
            held = [(b, *copies[b][offset]) for b in sorted(copies) if offset in copies[b]]
            if len({(k, v) for _, k, v in held}) > 1:
                divergent.add(DivergentOffset(tp[0], tp[1], offset, tuple(held)))
        end_max = max(ends[tp].values())
        for broker_id, end in sorted(ends[tp].items()):
            if end < end_max:
                lagging.add(ReplicaLag(tp[0], tp[1], broker_id, end, end_max))
    return divergent, lagging


def _polls(history: History) -> list[PollAnomaly]:
    """Each consumer's offsets per partition should advance by exactly one, within and across polls."""
    streams: dict[tuple[int, str, int], list[Any]] = defaultdict(list)
    for poll in history.polls:
        streams[(poll.process, poll.topic, poll.partition)].append(poll)
    found: list[PollAnomaly] = []
    for (process, topic, partition), polls in sorted(streams.items()):
        previous: int | None = None
        for poll in sorted(polls, key=lambda p: (p.start_ms, p.end_ms)):
            for i, (offset, _, _) in enumerate(poll.records):
                if previous is not None and offset != previous + 1:
                    kind: Literal["skip", "nonmonotonic"] = "skip" if offset > previous else "nonmonotonic"
                    found.append(PollAnomaly(kind, process, topic, partition, previous, offset, i > 0))
                previous = offset
    return found


_ALWAYS_BUG: Final = {
    "unexpected": "values read that no send attempted: the broker invented or corrupted records",
    "failed_but_present": "sends answered with a definite failure are in the log: the error was not definite",
    "offset_gaps": "offsets missing inside the drained range: logs must be contiguous",
    "divergence": "replicas hold different records at the same offset: split brain or a bad truncation",
    "inconsistent_reads": "the drain returned different records for one offset",
    "misplaced": "values read under another topic, key or partition than their send named",
}
_INFO: Final = {
    "duplicated_non_idempotent": "non-idempotent producers retry after unknown outcomes: at-least-once",
    "unknown": "sends with an indeterminate outcome (timeout, dropped connection, NOT_LEADER after send)",
    "recovered": "unknown sends that turned out stored",
    "replica_lag": "replicas ending earlier than the furthest one: lag, not divergence",
    "poll_skips": "consumers jumped over offsets (rebalances and seeks can cause it)",
    "nonmonotonic_polls": "consumers went backwards (restarts and seeks can cause it)",
}


def _findings(counts: dict[str, int], acks: str, majority_alive: bool,
              loss_allowed: str | None = None) -> tuple[Finding, ...]:
    """Labels each nonzero count expected or bug under the rules in the module docstring."""
    labels: dict[str, tuple[bool, str]] = {k: (False, why) for k, why in _ALWAYS_BUG.items()}
    labels |= {k: (True, why) for k, why in _INFO.items()}
    if loss_allowed is not None:
        loss = (True, loss_allowed)
        moved = (True, f"{loss_allowed}; acked slots may be rewritten")
    elif acks == "all" and majority_alive:
        loss = (False, "acknowledged acks=all writes missing although a majority of replicas survived")
        moved = (False, "acks=all records no longer at the offset their ack named: the slot was overwritten")
    elif acks == "all":
        loss = (True, "majority lost (majority_alive=False): outside what acks=all promises")
        moved = (True, "majority lost (majority_alive=False): acked slots may be rewritten")
    else:
        loss = (True, f"acks={acks} answers before replication: leader failover truncates acked records")
        moved = (True, f"acks={acks} offsets are provisional until commit")
    labels["lost"] = loss
    labels["acked_offset_mismatch"] = moved
    labels["duplicated_idempotent"] = (
        (False, "an idempotent producer's retry was stored twice")
        if acks == "all"
        else (True, f"idempotence is only promised with acks=all, not acks={acks}")
    )
    labels["reordered"] = (
        (True, "acks=0 'ok' only means handed to the broker: no real-time order is promised")
        if acks == "0"
        else (False, "a send that started after another was acked landed at a lower offset of the same key")
    )
    findings = [Finding(kind, counts[kind], *labels[kind]) for kind in counts if counts[kind] > 0]
    return tuple(sorted(findings, key=lambda f: f.expected))
