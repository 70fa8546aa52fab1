"""The replicated state machine of one partition replica: committed Raft entries -> the partition log.

Runs on the replication thread (apply, snapshot, install) except for the read-only accessors used by
fetch, which go through the thread-safe ``PartitionLog``.

Replay safety: every stored batch carries the Raft index of the entry that produced it, so after a restart
the replica knows the last index already in its log (``applied_index``) and ``apply`` skips entries at or
below it while pysyncobj replays its journal: each committed record ends up in the log exactly once.
Entries that store nothing (a rejected duplicate) are simply re-decided on replay, with the same answer,
because the producer table is rebuilt from the same batches.

Snapshots are small: applied index, offsets and the producer table. The records stay in the segments,
which are fsynced before the snapshot is written (the snapshot lets pysyncobj drop journal entries, so the
segments must hold them durably first). A follower that needs a snapshot gets it followed by the batches
it lacks, from the log end offset it reported (``rmq_leo`` on its acknowledgements).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from raftmq.cluster import batch as batches
from raftmq.cluster import commands
from raftmq.cluster.errors import (
    CorruptBatch,
    DuplicateSequence,
    InternalError,
    OutOfOrderSequence,
    RaftMQError,
    UnknownProducerId,
    invariant,
)
from raftmq.cluster.producer_state import ProducerTable, Verdict
from raftmq.node.log import LogConfig, PartitionLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    record_count: int
    leader_epoch: int
    raft_index: int
    log_append_time_ms: int
    duplicate: bool = False


class PartitionStateMachine:
    """Implements ``node.groups.StateMachine`` for one partition replica."""

    def __init__(self, *, topic: str, partition: int, topic_id: int, directory: Path, config: LogConfig,
                 durable: bool) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_id = topic_id
        self.directory = directory
        self.durable = durable
        self.log = PartitionLog.open(directory, config)
        report = self.log.recovery_report
        if report.truncated_bytes:
            log.warning("%s-%d: recovery cut %d bytes at offset %s: %s", topic, partition, report.truncated_bytes,
                        report.truncated_at_offset, report.reason)
        self.producers = ProducerTable()
        self.applied_index = 0
        self.snapshot_index = 0
        self._announced_end = -1
        self._data_event: asyncio.Event | None = None
        self.transport_annotations: dict[str, Any] | None = None  # bind_annotations: rmq_leo lives here

    # --- start ------------------------------------------------------------------------------------

    def restore(self, state: bytes | None) -> None:
        snapshot_end = self.log.log_start_offset
        if state is not None:
            data = msgpack.unpackb(state, raw=False)
            self.snapshot_index = int(data["applied_index"])
            snapshot_end = int(data["log_end_offset"])
            self.producers = ProducerTable.from_state(data["producers"])
            if self.log.log_end_offset < snapshot_end:
                # Only possible if segments lost data the snapshot vouched for (power loss with durability
                # `never`, or files removed by hand). The journal no longer holds those entries.
                raise OSError(
                    f"{self.directory}: the log ends at offset {self.log.log_end_offset} but its snapshot covers "
                    f"up to {snapshot_end}. Records were lost on this replica; move the directory away and it "
                    "will be rebuilt from the other replicas.")
        else:
            self.producers = ProducerTable()
        self._rebuild_producers_from(snapshot_end)
        last = self.log.last_batch
        self.applied_index = max(self.snapshot_index, last.raft_index if last is not None else 0)
        self._publish_leo()

    def _rebuild_producers_from(self, offset: int) -> None:
        if offset >= self.log.log_end_offset:
            return
        for header in self.log.iter_headers(max(offset, self.log.log_start_offset)):
            if header.base_offset < offset:
                continue
            if header.producer_id != batches.NO_PRODUCER_ID:
                self.producers.record(header.producer_id, header.base_sequence, header.record_count,
                                      header.base_offset, header.append_time_ms)

    # --- apply --------------------------------------------------------------------------------------

    def apply(self, index: int, term: int, command: bytes) -> Any:
        if index <= self.applied_index:
            return None  # replay of an entry already in the log
        try:
            decoded = commands.decode(command)
        except ValueError:
            self.applied_index = index
            return InternalError("entry is not a raftmq command")
        if decoded.op != commands.PartitionOp.APPEND:
            self.applied_index = index
            return InternalError(f"unknown partition operation {decoded.op}")
        result = self._append(index, term, bytes(decoded.payload), decoded.time_ms)
        self.applied_index = index
        return result

    def _append(self, index: int, term: int, batch: bytes, time_ms: int) -> AppendResult | RaftMQError:
        try:
            header = batches.parse_batch_header(batch)
        except CorruptBatch as exc:
            return exc  # the leader validated it; this only guards against a foreign entry
        if header.producer_id != batches.NO_PRODUCER_ID:
            decision = self.producers.check(header.producer_id, header.base_sequence, header.record_count)
            if decision.verdict is Verdict.DUPLICATE:
                invariant(decision.base_offset is not None, "a duplicate knows its offset")
                return AppendResult(decision.base_offset, header.record_count, term, index, time_ms,  # type: ignore[arg-type]
                                    duplicate=True)
            if decision.verdict is Verdict.DUPLICATE_OLD:
                return DuplicateSequence(
                    "this batch was stored before, but is older than the duplicate window; its offset is gone",
                    producer_id=header.producer_id, base_sequence=header.base_sequence)
            if decision.verdict is Verdict.OUT_OF_ORDER:
                return OutOfOrderSequence(
                    f"expected sequence {decision.expected_sequence}, got {header.base_sequence}",
                    producer_id=header.producer_id, base_sequence=header.base_sequence,
                    expected_sequence=decision.expected_sequence)
            if decision.verdict is Verdict.UNKNOWN_PRODUCER:
                return UnknownProducerId(
                    f"no state for producer {header.producer_id} on this partition and its sequence is not 0",
                    producer_id=header.producer_id, base_sequence=header.base_sequence)
        base_offset = self.log.log_end_offset
        stored = batches.stamp(batch, base_offset=base_offset, leader_epoch=term, raft_index=index,
                               append_time_ms=time_ms)
        self.log.append(stored)
        if header.producer_id != batches.NO_PRODUCER_ID:
            self.producers.record(header.producer_id, header.base_sequence, header.record_count, base_offset, time_ms)
        return AppendResult(base_offset, header.record_count, term, index, time_ms)

    def bind_annotations(self, annotations: dict[str, Any]) -> None:
        """This replica's acknowledgements carry its log end offset (``rmq_leo``): a leader that must send
        it a snapshot starts the records where this log ends."""
        self.transport_annotations = annotations
        self._publish_leo()

    # --- snapshots ----------------------------------------------------------------------------------

    def _state(self) -> bytes:
        return msgpack.packb({"v": 1, "applied_index": self.applied_index,
                              "log_end_offset": self.log.log_end_offset,
                              "log_start_offset": self.log.log_start_offset,
                              "producers": self.producers.to_state()}, use_bin_type=True)

    def snapshot(self) -> bytes:
        # The snapshot lets pysyncobj delete journal entries: the records they carried must be on disk first.
        if self.durable:
            self.log.flush()
        self.snapshot_index = self.applied_index
        return self._state()

    def open_snapshot_stream(self, state: bytes, peer_hint: dict[str, Any]) -> BinaryIO | None:
        data = msgpack.unpackb(state, raw=False)
        end = int(data["log_end_offset"])
        start = self.log.log_start_offset
        follower_end = peer_hint.get("rmq_leo")
        if isinstance(follower_end, int):
            start = max(start, min(follower_end, end))
        if start >= end:
            return None
        return self.log.open_stream(start, end)  # type: ignore[return-value]

    def install(self, state: bytes, payload: BinaryIO) -> None:
        data = msgpack.unpackb(state, raw=False)
        snapshot_end = int(data["log_end_offset"])
        snapshot_start = int(data["log_start_offset"])
        first = True
        appended = 0
        while True:
            prefix = payload.read(batches.STORED_LENGTH_BYTES)
            if not prefix:
                break
            size = batches.batch_length_at(prefix)
            invariant(size is not None and size >= batches.STORED_HEADER_BYTES,
                      "snapshot stream: bad batch prefix")
            rest = payload.read(size - batches.STORED_LENGTH_BYTES)  # type: ignore[operator]
            stored = prefix + rest
            header = batches.verify_stored(stored)  # raises CorruptBatch: the install fails, Raft retries
            if first:
                first = False
                if header.base_offset > self.log.log_end_offset:
                    log.info("%s-%d: log ends at %d, leader's records start at %d: starting over",
                             self.topic, self.partition, self.log.log_end_offset, header.base_offset)
                    self.log.reset(header.base_offset)
            if header.next_offset <= self.log.log_end_offset:
                continue  # already here (the applied log is a prefix of the leader's)
            invariant(header.base_offset == self.log.log_end_offset,
                      f"snapshot batch at {header.base_offset} does not continue the log at {self.log.log_end_offset}")
            self.log.append(stored)
            appended += 1
        if first and self.log.log_end_offset < snapshot_start:
            self.log.reset(snapshot_start)  # the leader's whole log was deleted by retention
        invariant(self.log.log_end_offset >= snapshot_end,
                  f"snapshot stream ended at {self.log.log_end_offset}, before the snapshot's end {snapshot_end}")
        if self.durable:
            self.log.flush()
        self.producers = ProducerTable.from_state(data["producers"])
        self._rebuild_producers_from(snapshot_end)
        last = self.log.last_batch
        self.snapshot_index = int(data["applied_index"])
        self.applied_index = max(self.snapshot_index, self.applied_index, last.raft_index if last else 0)
        self._publish_leo()
        log.info("%s-%d: installed snapshot at index %d (%d batches received, log end %d)", self.topic,
                 self.partition, self.snapshot_index, appended, self.log.log_end_offset)

    # --- progress -----------------------------------------------------------------------------------

    def _publish_leo(self) -> None:
        if self.transport_annotations is not None:
            self.transport_annotations["rmq_leo"] = self.log.log_end_offset

    def on_progress(self) -> Callable[[], None] | None:
        end = self.log.log_end_offset
        if end == self._announced_end:
            return None
        self._announced_end = end
        self._publish_leo()
        return self._wake_fetchers

    # asyncio thread: long-poll fetches wait on the current event; a new one replaces it on progress.
    def data_event(self) -> asyncio.Event:
        if self._data_event is None:
            self._data_event = asyncio.Event()
        return self._data_event

    def _wake_fetchers(self) -> None:
        event = self._data_event
        self._data_event = None
        if event is not None:
            event.set()

    def close(self) -> None:
        self.log.close()
