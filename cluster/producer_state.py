"""Idempotent-producer bookkeeping of one partition: the decision "append, duplicate, or reject".

Part of the replicated state machine, so it must be deterministic: it changes only through ``record``
(called for every batch appended, in log order) and depends on no clock except the append times carried
in the log. That is what lets a replica rebuild it after a restart from its snapshot plus a scan of the
batches that follow, and get exactly the table the other replicas have.

Per producer it remembers the last ``producer_batches_remembered`` batches (Kafka keeps 5): a retry of any
of them is answered with the original offset instead of being stored twice. Producers are forgotten in
least-recently-active order past ``producers_per_partition_max``, and when idle (by append time) for longer
than ``producer_idle_ms_max``; a forgotten producer that continues mid-sequence gets UNKNOWN_PRODUCER_ID
and starts a new session.

Exchange publishes (cluster/publish.py) make their per-destination appends idempotent with ids from a
reserved range (``PUBLISH_PRODUCER_ID_MIN`` and up, never allocated by the metadata group): each idempotent
publish is a one-batch "producer" whose id is derived from the publish, sequence 0. They are remembered in
their own least-recently-active table of ``publish_producers_per_partition_max`` entries, so a stream of
publishes never pushes a real producer's state out.

No I/O here.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from typing import Any, Final, NamedTuple

from raftmq.cluster import limits

# Producer ids at or above this are derived from exchange publishes (63-bit ids whose top bit is set); the
# metadata group allocates ids counting up from 1, which stays far below it.
PUBLISH_PRODUCER_ID_MIN: Final = 1 << 62


def is_publish_producer_id(producer_id: int) -> bool:
    return producer_id >= PUBLISH_PRODUCER_ID_MIN


class Verdict(enum.Enum):
    APPEND = "append"
    DUPLICATE = "duplicate"          # a retry of a remembered batch: answer with its original offset
    DUPLICATE_OLD = "duplicate_old"  # older than the remembered window: stored before, offset unknown
    OUT_OF_ORDER = "out_of_order"    # leaves a gap (or overlaps a batch inconsistently)
    UNKNOWN_PRODUCER = "unknown_producer"


class Decision(NamedTuple):
    verdict: Verdict
    base_offset: int | None = None    # for DUPLICATE
    expected_sequence: int | None = None


class BatchMark(NamedTuple):
    first_sequence: int
    last_sequence: int
    base_offset: int


class _Producer:
    __slots__ = ("batches", "last_append_time_ms")

    def __init__(self) -> None:
        self.batches: deque[BatchMark] = deque(maxlen=limits.producer_batches_remembered)
        self.last_append_time_ms = 0


class ProducerTable:
    def __init__(self, *, producers_max: int = limits.producers_per_partition_max,
                 idle_ms_max: int = limits.producer_idle_ms_max,
                 publishes_max: int = limits.publish_producers_per_partition_max) -> None:
        self.producers_max = producers_max
        self.publishes_max = publishes_max
        self.idle_ms_max = idle_ms_max
        # Least recently active first: real producers, and the ids derived from exchange publishes.
        self._producers: OrderedDict[int, _Producer] = OrderedDict()
        self._publishes: OrderedDict[int, _Producer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._producers) + len(self._publishes)

    def _table(self, producer_id: int) -> OrderedDict[int, _Producer]:
        return self._publishes if is_publish_producer_id(producer_id) else self._producers

    def check(self, producer_id: int, base_sequence: int, record_count: int) -> Decision:
        """What to do with a batch from an idempotent producer (producer_id >= 0)."""
        producer = self._table(producer_id).get(producer_id)
        last_sequence = base_sequence + record_count - 1
        if producer is None or not producer.batches:
            if base_sequence == 0:
                return Decision(Verdict.APPEND)
            return Decision(Verdict.UNKNOWN_PRODUCER, expected_sequence=0)
        for mark in producer.batches:
            if mark.first_sequence == base_sequence and mark.last_sequence == last_sequence:
                return Decision(Verdict.DUPLICATE, base_offset=mark.base_offset)
        expected = producer.batches[-1].last_sequence + 1
        if base_sequence == expected:
            return Decision(Verdict.APPEND)
        if base_sequence < producer.batches[0].first_sequence:
            return Decision(Verdict.DUPLICATE_OLD, expected_sequence=expected)
        return Decision(Verdict.OUT_OF_ORDER, expected_sequence=expected)

    def record(self, producer_id: int, base_sequence: int, record_count: int, base_offset: int,
               append_time_ms: int) -> None:
        """A batch of this producer was appended at ``base_offset`` (log order, every replica alike)."""
        table = self._table(producer_id)
        producer = table.pop(producer_id, None) or _Producer()
        producer.batches.append(BatchMark(base_sequence, base_sequence + record_count - 1, base_offset))
        producer.last_append_time_ms = max(producer.last_append_time_ms, append_time_ms)
        table[producer_id] = producer  # most recently active last
        self._expire(self._producers, self.producers_max, append_time_ms)
        self._expire(self._publishes, self.publishes_max, append_time_ms)

    def _expire(self, table: OrderedDict[int, _Producer], count_max: int, now_ms: int) -> None:
        while len(table) > count_max:
            table.popitem(last=False)
        horizon = now_ms - self.idle_ms_max
        while table:
            oldest_id = next(iter(table))
            if table[oldest_id].last_append_time_ms >= horizon:
                break
            del table[oldest_id]

    def to_state(self) -> list[Any]:
        """Plain data (msgpack-able), in activity order (real producers, then publishes: ``from_state`` sorts
        them back into their tables by id)."""
        return [[producer_id, producer.last_append_time_ms, [list(mark) for mark in producer.batches]]
                for table in (self._producers, self._publishes) for producer_id, producer in table.items()]

    @classmethod
    def from_state(cls, state: list[Any], **kwargs: Any) -> ProducerTable:
        table = cls(**kwargs)
        for producer_id, last_append_time_ms, marks in state:
            producer = _Producer()
            producer.last_append_time_ms = int(last_append_time_ms)
            for first_sequence, last_sequence, base_offset in marks:
                producer.batches.append(BatchMark(int(first_sequence), int(last_sequence), int(base_offset)))
            table._table(int(producer_id))[int(producer_id)] = producer
        return table
