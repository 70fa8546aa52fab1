"""The replicated state machine of one group-state partition (a partition of ``__consumer_offsets``): the
consumer groups hashed to it (``cluster/consumer_groups.py``), kept by the same Raft machinery as any
partition.

It *is* a partition (``PartitionStateMachine``): every group command that changed something is also stored
in the partition's log as one record (key: group id, value: the command as proposed), which gives three
things for free: replay safety (the last batch's Raft index says what is applied), a follower catch-up by
snapshot + batches, and a readable audit trail (``raftmq consume __consumer_offsets``). Clients cannot
produce to it (the service refuses; ``apply`` refuses anything but group commands too).

The groups themselves live in memory:

* snapshot = the partition's small snapshot + the whole ``GroupsState``;
* restart = that snapshot's groups, then the commands stored in the log after the snapshot's log end,
  re-applied in order with the time each carried (so the same decisions), then pysyncobj's replay of the
  journal entries above the last stored batch;
* the log is trimmed to what the previous snapshot does not cover (whole segments below its log end), so it
  does not grow forever; the topic has no time retention, which could otherwise delete commands a snapshot
  does not hold yet.

Threads: ``apply``/``snapshot``/``install`` run on the replication thread; the coordinator reads the groups
on the event loop under ``lock`` (held only around the pure state, never around disk I/O).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from raftmq.cluster import batch as batches
from raftmq.cluster import commands
from raftmq.cluster.consumer_groups import GroupOp, GroupsState
from raftmq.cluster.errors import InternalError, RaftMQError
from raftmq.node.log import LogConfig
from raftmq.node.partition import PartitionStateMachine

log = logging.getLogger(__name__)

_GROUP_OPS = frozenset(int(op) for op in GroupOp)
_READ_CHUNK_BYTES = 1 << 20


class GroupPartitionStateMachine(PartitionStateMachine):
    def __init__(self, *, topic: str, partition: int, topic_id: int, directory: Path, config: LogConfig,
                 durable: bool) -> None:
        super().__init__(topic=topic, partition=partition, topic_id=topic_id, directory=directory, config=config,
                         durable=durable)
        self.groups = GroupsState()
        self.lock = threading.Lock()
        self._covered_end: int | None = None  # log end the last durable snapshot covers
        self._pending_end: int | None = None  # log end of the snapshot being written

    # --- apply ---------------------------------------------------------------------------------------

    def apply(self, index: int, term: int, command: bytes) -> Any:
        if index <= self.applied_index:
            return None  # its effect is in the log already (rebuilt at restore)
        try:
            decoded = commands.decode(command)
            payload = msgpack.unpackb(decoded.payload, raw=False) if decoded.op in _GROUP_OPS else None
        except ValueError:
            self.applied_index = index
            return InternalError("entry is not a raftmq command")
        if not isinstance(payload, dict):
            self.applied_index = index
            return InternalError(f"the group-state partition takes group commands only, not operation {decoded.op}")
        with self.lock:
            result = self.groups.apply(decoded.op, decoded.time_ms, payload)
        if not isinstance(result, RaftMQError):
            try:
                stored: Any = self._append(index, term, _as_batch(payload, command, decoded.time_ms), decoded.time_ms)
            except RaftMQError as exc:  # the coordinator bounds commands well below a record's limit
                stored = exc
            if isinstance(stored, RaftMQError):
                log.error("%s-%d: could not store group command %d: %s", self.topic, self.partition, decoded.op,
                          stored)
        self.applied_index = index
        return result

    # --- snapshots -----------------------------------------------------------------------------------

    def _state(self) -> bytes:
        data = msgpack.unpackb(super()._state(), raw=False)
        with self.lock:
            data["groups"] = self.groups.to_bytes()
        return msgpack.packb(data, use_bin_type=True)

    def snapshot(self) -> bytes:
        state = super().snapshot()
        # The previous snapshot is on disk by now (pysyncobj writes one before it asks for the next): the
        # commands below its log end are no longer needed to rebuild the groups.
        if self._pending_end is not None:
            self._covered_end = self._pending_end
        if self._covered_end is not None:
            trimmed = self.log.delete_segments_before(self._covered_end)
            if trimmed:
                log.info("%s-%d: trimmed group-command segments %s (covered by a snapshot)", self.topic,
                         self.partition, trimmed)
        self._pending_end = self.log.log_end_offset
        return state

    def restore(self, state: bytes | None) -> None:
        super().restore(state)
        self._load_groups(state)

    def install(self, state: bytes, payload: BinaryIO) -> None:
        super().install(state, payload)
        self._load_groups(state)

    def _load_groups(self, state: bytes | None) -> None:
        groups = GroupsState()
        start = self.log.log_start_offset
        if state is not None:
            data = msgpack.unpackb(state, raw=False)
            if data.get("groups") is not None:
                groups = GroupsState.from_bytes(data["groups"])
            start = max(start, int(data["log_end_offset"]))
            self._covered_end = int(data["log_end_offset"])
        replayed = 0
        offset = start
        while offset < self.log.log_end_offset:
            chunk = self.log.read(offset, _READ_CHUNK_BYTES)
            for header, stored in batches.iter_stored(chunk):
                for record in batches.decode_records(stored, header):
                    if record.offset < offset or record.value is None:
                        continue
                    decoded = commands.decode(record.value)
                    groups.apply(decoded.op, decoded.time_ms, msgpack.unpackb(decoded.payload, raw=False))
                    replayed += 1
                offset = header.next_offset
        with self.lock:
            self.groups = groups
        log.info("%s-%d: %d groups loaded (%d commands replayed from offset %d)", self.topic, self.partition,
                 len(groups.groups), replayed, start)


def _as_batch(payload: dict[str, Any], command: bytes, time_ms: int) -> bytes:
    group_id = payload.get("group_id")
    key = group_id.encode() if isinstance(group_id, str) else None
    return batches.encode_batch([(key, command, (), time_ms)])


__all__ = ["GroupPartitionStateMachine"]
