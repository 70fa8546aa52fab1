"""Raft groups (pysyncobj 0.3.17) behind one door: the replication thread, group commit, snapshots.

Everything that touches pysyncobj lives here and in ``raft_transport.py``. The rest of the broker sees a
``RaftGroup`` with ``submit(command) -> asyncio.Future`` and a published ``GroupStatus``.

Threads: ONE replication thread per broker ticks every group (``autoTick=False``), drives the shared
``PeerNetwork`` and fsyncs journals; the asyncio thread (HTTP) only enqueues commands (pysyncobj's command
queue is thread-safe) and reads published statuses. Results cross back to asyncio in one
``call_soon_threadsafe`` per pass. Thread count does not grow with partitions (a small fixed fsync pool
aside).

A pass of the replication loop:
  1. poll the peer sockets (messages are handled as they are read, on this thread);
  2. run queued calls (create/destroy groups), collect woken groups;
  3. tick every group that has news, and every group whose last tick is older than the sweep interval;
  4. group commit: fdatasync every journal written in this pass (in parallel), then release the
     acknowledgements held back until then (``always`` policy) — so a follower acknowledges an append,
     and a leader counts itself for the commit index (computed at the next tick), only once the entry is
     on disk;
  5. flush the peer links, hand results and progress notifications to asyncio.

Contact points with pysyncobj internals, all here: ``createJournal`` (to supply ``DurableJournal``), the
module ``pickle`` reference (commands are our own envelope, and nothing is unpickled from the network with
globals), ``PIPE_NOTIFIER_ENABLED`` (no pipe per group), the ``_SyncObj__serializer`` attribute (snapshots
that reference segments instead of dumping state), ``_poller`` (a no-op: the loop polls), and read-only
peeks at ``_SyncObj__raftMatchIndex`` / ``_SyncObj__lastResponseTime`` for the in-sync replica set.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import enum
import io
import logging
import os
import pickle
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgpack
import pysyncobj.syncobj as _syncobj_module
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.monotonic import monotonic as raft_clock  # pysyncobj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic
from raftmq.cluster import commands, limits
from raftmq.cluster.errors import (
    BufferFull,
    InternalError,
    LeaderNotAvailable,
    OutcomeUnknown,
    RaftMQError,
    invariant,
)
from raftmq.node.fsutil import write_file_atomically
from raftmq.node.journal import DurableJournal
from raftmq.node.prevote import PreVote
from raftmq.node.raft_transport import BrokerNode, GroupTransport, NetworkListener, PeerNetwork

log = logging.getLogger(__name__)

# --- the narrow contact with pysyncobj's module globals ------------------------------------------

_syncobj_module.PIPE_NOTIFIER_ENABLED = False  # the replication loop wakes itself; no pipe per group
_PREBUILT_JOURNALS: dict[str, DurableJournal] = {}


def _create_journal(journal_file: str | None) -> Any:
    journal = _PREBUILT_JOURNALS.pop(journal_file or "", None)
    invariant(journal is not None, f"no prebuilt journal registered for {journal_file!r}")
    return journal


_syncobj_module.createJournal = _create_journal


class _NoGlobalsUnpickler(pickle.Unpickler):
    """pysyncobj unpickles a few internal commands (code version); never allow code to be named."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")


class _CommandCodec:
    """Stands in for the ``pysyncobj.pickle`` module inside ``pysyncobj.syncobj``.

    A raftmq command (``cluster.commands`` envelope) decodes to a call of the single replicated method
    (method id 0, ``_RaftObject._apply``) with the raw command as its argument.
    """

    @staticmethod
    def loads(data: bytes) -> Any:
        if data[:4] == commands.MAGIC:
            return (0, (data,))
        return _NoGlobalsUnpickler(io.BytesIO(bytes(data))).load()

    @staticmethod
    def dumps(obj: Any, protocol: int | None = None) -> bytes:
        return pickle.dumps(obj, 2)

    @staticmethod
    def to_bytes(data: Any) -> bytes:
        return data if isinstance(data, bytes) else str(data).encode("utf-8")


_syncobj_module.pickle = _CommandCodec  # type: ignore[assignment]
_COMMAND_TYPE_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR


class _NullPoller:
    """pysyncobj ends every tick in ``self._poller.poll(timeout)``; the replication loop polls instead."""

    def subscribe(self, descr: Any, callback: Any, event_mask: int) -> None:
        raise AssertionError("nothing may subscribe to a group's poller")

    def unsubscribe(self, descr: Any) -> None:
        return None

    def poll(self, timeout: float) -> None:
        return None


# --- policy and status --------------------------------------------------------------------------


class Durability(enum.Enum):
    """When journals (and segments) reach the disk. See README "Durability"."""

    ALWAYS = "always"      # fsync (group commit) before a replica acknowledges an append
    INTERVAL = "interval"  # fsync every flush_interval_ms; acks do not wait
    NEVER = "never"        # page cache only: survives a process kill, not a power loss


@dataclass(frozen=True)
class RaftTimers:
    election_timeout_min_s: float = limits.raft_election_timeout_min_s
    election_timeout_max_s: float = limits.raft_election_timeout_max_s
    heartbeat_period_s: float = limits.raft_heartbeat_period_s
    connection_timeout_s: float = limits.raft_connection_timeout_s
    leader_fallback_timeout_s: float = limits.raft_leader_fallback_timeout_s

    def validate(self) -> list[str]:
        """pysyncobj checks these with `assert` (gone under python -O); check them in plain sentences."""
        problems = []
        if not self.election_timeout_min_s > 3 * self.heartbeat_period_s:
            problems.append("election_timeout_min_ms must be more than 3 x heartbeat_ms")
        if not self.election_timeout_max_s > self.election_timeout_min_s:
            problems.append("election_timeout_max_ms must be more than election_timeout_min_ms")
        if not self.connection_timeout_s >= self.election_timeout_max_s:
            problems.append("connection_timeout_ms must be at least election_timeout_max_ms")
        if not self.leader_fallback_timeout_s > self.heartbeat_period_s:
            problems.append("leader_fallback_timeout_ms must be more than heartbeat_ms")
        return problems


@dataclass(frozen=True)
class GroupStatus:
    """One group as the replication thread last saw it (published each pass; read by any thread)."""

    group_id: str
    role: str = "follower"  # follower | candidate | leader
    leader_id: int | None = None
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    last_index: int = 0
    in_sync: tuple[int, ...] = ()  # leader only: itself + followers that answered recently
    match_index: dict[int, int] = field(default_factory=dict)  # leader only
    connected: tuple[int, ...] = ()
    journal_bytes: int = 0
    # Leader only: it has applied everything up to its own term's first entry, so its applied state
    # (e.g. a partition's high watermark) is at least what any earlier leader acknowledged.
    caught_up: bool = False
    # Leader only: a majority (itself included) is connected and answered within the leader fallback
    # timeout. Without it nothing can commit; pysyncobj will step down when the timeout expires.
    quorum: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


@dataclass(frozen=True)
class AppendInfo:
    """acks=1 result: the entry is in the leader's own journal (fsynced under ``always``)."""

    raft_index: int
    leader_epoch: int


def error_for_fail_reason(reason: int) -> RaftMQError:
    """Map pysyncobj's FAIL_REASON to our errors. Only a definite non-append is definite."""
    if reason == FAIL_REASON.QUEUE_FULL:
        return BufferFull("the partition's Raft command queue is full; nothing was appended")
    if reason == FAIL_REASON.MISSING_LEADER:
        return LeaderNotAvailable("no Raft leader; nothing was appended")
    if reason in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME,
                  FAIL_REASON.DISCARDED):
        # DISCARDED means the slot went to another entry; it is logically definite, but we report it as
        # unknown: claiming "not stored" wrongly is the one mistake a broker must never make.
        return OutcomeUnknown(f"leadership changed before the entry committed (pysyncobj reason {reason})")
    return InternalError(f"unexpected pysyncobj fail reason {reason}")


# --- what a group replicates --------------------------------------------------------------------


class StateMachine(Protocol):
    """A deterministic state machine applied on every replica of a group (replication thread only)."""

    def apply(self, index: int, term: int, command: bytes) -> Any:
        """Apply a committed entry. MUST ignore ``index <= applied_index`` (replay after restart)."""

    def restore(self, state: bytes | None) -> None:
        """At start, before ticking: the state bytes of the local snapshot (None: there is none)."""

    def snapshot(self) -> bytes:
        """State at the current applied index, made durable first (called at compaction)."""

    def open_snapshot_stream(self, state: bytes, peer_hint: dict[str, Any]) -> BinaryIO | None:
        """Extra bytes a follower needs besides ``state`` (records), or None."""

    def install(self, state: bytes, payload: BinaryIO) -> None:
        """Replace/extend local state with a leader's snapshot and its payload (follower catch-up)."""

    def on_progress(self) -> Callable[[], None] | None:
        """Called on the replication thread after each tick; may return a callable for the asyncio thread."""

    def close(self) -> None:
        """Release files (the group is being closed)."""


# --- snapshots ----------------------------------------------------------------------------------

_SNAPSHOT_MAGIC = b"RMQSNAP1"
_U32 = struct.Struct(">I")
SNAPSHOT_FILE = "raft.snapshot"
JOURNAL_FILE = "raft.journal"
# Bytes queued on a peer link above which snapshot chunks wait (flow control instead of cutting the link).
_SNAPSHOT_INFLIGHT_BYTES = 4 * limits.MIB


def encode_snapshot(last: tuple[bytes, int, int], prev: tuple[bytes, int, int], state: bytes) -> bytes:
    header = msgpack.packb({"last": list(last), "prev": list(prev), "state": state}, use_bin_type=True)
    return _SNAPSHOT_MAGIC + _U32.pack(len(header)) + header + _U32.pack(zlib.crc32(header))


def read_snapshot(stream: BinaryIO) -> tuple[tuple[bytes, int, int], tuple[bytes, int, int], bytes]:
    """Parse a snapshot header from ``stream``, leaving it at the payload. Raises ValueError if corrupt."""
    head = stream.read(len(_SNAPSHOT_MAGIC) + 4)
    if len(head) < len(_SNAPSHOT_MAGIC) + 4 or head[:len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
        raise ValueError("not a raftmq snapshot")
    (length,) = _U32.unpack_from(head, len(_SNAPSHOT_MAGIC))
    header = stream.read(length)
    crc = stream.read(4)
    if len(header) != length or len(crc) != 4 or _U32.unpack(crc)[0] != zlib.crc32(header):
        raise ValueError("snapshot header is truncated or fails its CRC")
    data = msgpack.unpackb(header, raw=False, use_list=False)
    last = (bytes(data["last"][0]), int(data["last"][1]), int(data["last"][2]))
    prev = (bytes(data["prev"][0]), int(data["prev"][1]), int(data["prev"][2]))
    return last, prev, bytes(data["state"])


class _Transmission:
    """One snapshot being streamed to one follower: header bytes, then the state machine's payload."""

    def __init__(self, header: bytes, payload: BinaryIO | None) -> None:
        self.header = memoryview(header)
        self.payload = payload
        self.sent = 0

    def read(self, size: int) -> bytes:
        if self.header:
            chunk = bytes(self.header[:size])
            self.header = self.header[len(chunk):]
            return chunk
        if self.payload is None:
            return b""
        return self.payload.read(size)

    def close(self) -> None:
        if self.payload is not None:
            self.payload.close()
            self.payload = None


class GroupSnapshotter:
    """Replaces pysyncobj's ``Serializer`` for one group (same method names; pysyncobj calls them).

    A snapshot file holds pysyncobj's two bookkeeping entries and the state machine's small state (for a
    partition: applied index, offsets, producer table), never the records: they are already in the
    segments, made durable before the snapshot is written. A follower that needs the snapshot receives the
    file followed by the records it lacks (``open_snapshot_stream``), and writes the compact file back.
    """

    def __init__(self, directory: Path, state_machine: StateMachine, transport: GroupTransport,
                 network: PeerNetwork, *, durable: bool) -> None:
        self.path = directory / SNAPSHOT_FILE
        self.incoming_path = directory / (SNAPSHOT_FILE + ".incoming")
        self.state_machine = state_machine
        self.transport = transport
        self.network = network
        self.durable = durable
        self._result: int | None = None
        self._result_id: int | None = None
        self._transmissions: dict[Any, _Transmission] = {}
        self._incoming: BinaryIO | None = None
        self._incoming_ready = False
        self.snapshots_taken = 0
        self.snapshots_installed = 0

    # pysyncobj: taking a snapshot (compaction) ----------------------------------------------------

    def checkSerializing(self) -> tuple[int, int | None]:  # noqa: N802
        if self._result is None:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        result, result_id = self._result, self._result_id
        self._result = None
        return result, result_id

    def serialize(self, data: Any, id: int) -> None:  # noqa: A002 - pysyncobj's name
        _state, last, prev, _cluster = data
        self._result_id = id
        try:
            state = self.state_machine.snapshot()
            write_file_atomically(self.path, encode_snapshot(tuple(last), tuple(prev), state), durable=self.durable)
        except Exception:  # noqa: BLE001 - pysyncobj expects FAILED, and the journal must then stay whole
            log.exception("snapshot of %s failed", self.path.parent)
            self._result = SERIALIZER_STATE.FAILED
            return
        self.snapshots_taken += 1
        self._result = SERIALIZER_STATE.SUCCESS
        # Like pysyncobj: transmissions of the previous snapshot restart with the new one.
        for transmission in self._transmissions.values():
            transmission.close()
        self._transmissions.clear()

    def deserialize(self) -> tuple[None, tuple[bytes, int, int], tuple[bytes, int, int], None]:
        if self._incoming_ready:
            self._incoming_ready = False
            with open(self.incoming_path, "rb") as stream:
                last, prev, state = read_snapshot(stream)
                self.state_machine.install(state, stream)
            write_file_atomically(self.path, encode_snapshot(last, prev, state), durable=self.durable)
            self.incoming_path.unlink(missing_ok=True)
            self.snapshots_installed += 1
            log.info("%s: installed a snapshot from the leader up to Raft index %d", self.path.parent, last[1])
            return None, last, prev, None
        with open(self.path, "rb") as stream:
            last, prev, _state = read_snapshot(stream)
        return None, last, prev, None

    # pysyncobj: sending a snapshot to a follower ---------------------------------------------------

    def getTransmissionData(self, node: Any) -> tuple[bytes, bool, bool] | None:  # noqa: N802
        if self.network.queued_bytes(node.broker_id) > _SNAPSHOT_INFLIGHT_BYTES:
            return None  # flow control: pysyncobj sends a heartbeat instead and asks again next tick
        transmission = self._transmissions.get(node)
        if transmission is None:
            try:
                header = self.path.read_bytes()
                _last, _prev, state = read_snapshot(io.BytesIO(header))
                hint = self.transport.peer_annotations.get(node.broker_id, {})
                payload = self.state_machine.open_snapshot_stream(state, hint)
            except (OSError, ValueError):
                log.exception("cannot open snapshot of %s for broker %s", self.path.parent, node.broker_id)
                return None
            transmission = self._transmissions[node] = _Transmission(header, payload)
        is_first = transmission.sent == 0
        data = transmission.read(limits.snapshot_chunk_bytes)
        transmission.sent += len(data)
        is_last = len(data) == 0
        if is_last:
            transmission.close()
            del self._transmissions[node]
        return data, is_first, is_last

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802
        if data is None or data is False:
            return False
        chunk, is_first, is_last = data
        if is_first:
            if self._incoming is not None:
                self._incoming.close()
            self._incoming = open(self.incoming_path, "wb")  # noqa: SIM115 - closed on the last chunk
        elif self._incoming is None:
            return False  # a chunk from a stream whose start we did not see: wait for a fresh one
        self._incoming.write(chunk)
        if not is_last:
            return False
        self._incoming.flush()
        if self.durable:
            os.fsync(self._incoming.fileno())
        self._incoming.close()
        self._incoming = None
        self._incoming_ready = True
        return True

    def cancelTransmisstion(self, node: Any) -> None:  # noqa: N802 - pysyncobj's spelling
        transmission = self._transmissions.pop(node, None)
        if transmission is not None:
            transmission.close()

    def close(self) -> None:
        for transmission in self._transmissions.values():
            transmission.close()
        self._transmissions.clear()
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None


# --- a Raft group -------------------------------------------------------------------------------


class _RaftObject(SyncObj):
    """The pysyncobj object of one group: one replicated method, the rest is in the state machine."""

    def __init__(self, state_machine: StateMachine, journal: DurableJournal, self_node: BrokerNode,
                 other_nodes: list[BrokerNode], conf: SyncObjConf, transport_factory: Any) -> None:
        # Set before SyncObj.__init__: such attributes are never part of pysyncobj's own state dump.
        self._state_machine = state_machine
        self._journal = journal
        super().__init__(self_node, other_nodes, conf, transportClass=transport_factory)

    @replicated
    def _apply(self, command: bytes) -> Any:
        index = self.raftLastApplied + 1
        term = self._journal.term_at(index)
        invariant(term is not None, f"applying index {index} that is not in the journal")
        return self._state_machine.apply(index, term, command)  # type: ignore[arg-type]


def _unused_serializer(*_args: Any) -> Any:  # pragma: no cover - GroupSnapshotter replaces the Serializer
    raise AssertionError("pysyncobj's Serializer was not replaced")


class RaftGroup:
    """One Raft group on this broker: pysyncobj object, journal, transport, snapshotter, state machine.

    Built and destroyed on the replication thread (``ReplicationLoop.call``). ``submit`` may be called from
    the asyncio thread.
    """

    def __init__(self, *, group_id: str, directory: Path, self_id: int, replica_ids: list[int],
                 state_machine: StateMachine, loop: ReplicationLoop, timers: RaftTimers,
                 preferred_replica: int | None = None) -> None:
        invariant(self_id in replica_ids, f"broker {self_id} is not a replica of {group_id}")
        self.group_id = group_id
        self.timers = timers
        self.preferred_replica = preferred_replica
        self.directory = directory
        self.self_id = self_id
        self.replica_ids = sorted(replica_ids)
        self.state_machine = state_machine
        self.loop = loop
        directory.mkdir(parents=True, exist_ok=True)
        durable = loop.durability is not Durability.NEVER

        snapshot_path = directory / SNAPSHOT_FILE
        snapshot_entries = None
        state: bytes | None = None
        if snapshot_path.exists():
            with open(snapshot_path, "rb") as stream:
                try:
                    last, prev, state = read_snapshot(stream)
                except ValueError as exc:
                    raise OSError(f"{snapshot_path}: {exc}. The replica cannot start; move its directory away "
                                  "and it will be rebuilt from the other replicas.") from exc
            snapshot_entries = (prev, last)
        (directory / (SNAPSHOT_FILE + ".incoming")).unlink(missing_ok=True)
        state_machine.restore(state)

        journal_path = directory / JOURNAL_FILE
        self.journal = DurableJournal(journal_path, durable=durable, snapshot_entries=snapshot_entries)
        self.journal.on_append = self._on_journal_append
        self.append_waiters: dict[int, asyncio.Future[Any]] = {}

        self_node = BrokerNode(self_id)
        other_nodes = [BrokerNode(b) for b in self.replica_ids if b != self_id]
        # The preferred replica draws its election timeout from the lower third of the range, the others
        # from the rest: when it is alive and up to date it usually wins, so leaders spread as assigned.
        # The worst case for everyone else is unchanged.
        election_min_s, election_max_s = timers.election_timeout_min_s, timers.election_timeout_max_s
        if preferred_replica is not None:
            split_s = election_min_s + (election_max_s - election_min_s) / 3
            if preferred_replica == self_id:
                election_max_s = split_s
            else:
                election_min_s = split_s
        conf = SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=limits.raft_append_entries_bytes_max,
            appendEntriesPeriod=timers.heartbeat_period_s,
            raftMinTimeout=election_min_s,
            raftMaxTimeout=election_max_s,
            connectionTimeout=timers.connection_timeout_s,
            leaderFallbackTimeout=timers.leader_fallback_timeout_s,
            commandsQueueSize=limits.raft_command_queue_max,
            commandsWaitLeader=False,
            journalFile=str(journal_path),
            fullDumpFile=str(snapshot_path),
            serializer=_unused_serializer,
            deserializer=_unused_serializer,
            useFork=False,
            logCompactionMinEntries=limits.raft_compaction_entries,
            logCompactionMinTime=limits.raft_compaction_interval_s,
            logCompactionSplit=False,
            logCompactionBatchSize=limits.snapshot_chunk_bytes,
            dynamicMembershipChange=False,
        )
        self.transport: GroupTransport | None = None

        def transport_factory(sync_obj: Any, self_node: Any, other_nodes: Any) -> GroupTransport:
            self.transport = GroupTransport(sync_obj, self_node, other_nodes, network=loop.network,
                                            group_id=group_id)
            return self.transport

        _PREBUILT_JOURNALS[str(journal_path)] = self.journal
        try:
            self.raft = _RaftObject(state_machine, self.journal, self_node, other_nodes, conf, transport_factory)
        finally:
            _PREBUILT_JOURNALS.pop(str(journal_path), None)
        invariant(set(self.raft._methodToID) == {"_apply_v0"}, "the group must have exactly one replicated method")
        invariant(self.transport is not None, "pysyncobj did not build the transport")
        transport = self.transport
        transport.hold_acks = loop.durability is Durability.ALWAYS
        transport.has_unsynced_writes = lambda: self.journal.unsynced
        self.snapshotter = GroupSnapshotter(directory, state_machine, transport, loop.network, durable=durable)
        self.raft._SyncObj__serializer = self.snapshotter  # type: ignore[attr-defined]
        self.raft._poller = _NullPoller()
        self.prevote = PreVote(raft=self.raft, transport=transport, self_id=self_id, replica_ids=self.replica_ids,
                               election_timeout_min_s=election_min_s, election_timeout_max_s=election_max_s)
        transport.prevote = self.prevote
        self.last_tick = 0.0
        self.leader_since: float | None = None  # monotonic time this replica last became leader
        self._last_transfer_attempt = 0.0
        self.status = GroupStatus(group_id=group_id)
        self.closed = False

    # called on the asyncio thread --------------------------------------------------------------

    def submit(self, command: bytes, *, resolve_on_append: bool = False) -> asyncio.Future[Any]:
        """Propose ``command``. The future resolves with the state machine's apply result once the entry is
        committed and applied here (or, with ``resolve_on_append``, with an AppendInfo as soon as the
        entry is in this broker's own journal), or fails with a RaftMQError (see error_for_fail_reason)."""
        future: asyncio.Future[Any] = self.loop.asyncio_loop.create_future()
        if resolve_on_append:
            proposal_id = commands.proposal_id_of(command)
            invariant(proposal_id is not None, "submit needs an encoded command")
            self.append_waiters[proposal_id] = future  # type: ignore[index]
        callback = partial(self._on_result, future)
        self.raft._applyCommand(command, callback, _COMMAND_TYPE_REGULAR)
        self.loop.wake_group(self.group_id)
        return future

    def forget_append_waiter(self, command: bytes) -> None:
        proposal_id = commands.proposal_id_of(command)
        if proposal_id is not None:
            self.append_waiters.pop(proposal_id, None)

    # called on the replication thread ----------------------------------------------------------

    def _on_result(self, future: asyncio.Future[Any], result: Any, reason: int) -> None:
        if reason == FAIL_REASON.SUCCESS:
            self.loop.complete(future, result, None)
        else:
            self.loop.complete(future, None, error_for_fail_reason(reason))

    def _on_journal_append(self, command: bytes, index: int, term: int) -> None:
        if self.append_waiters:
            proposal_id = commands.proposal_id_of(command, 1)  # byte 0 is pysyncobj's command type
            if proposal_id is not None:
                future = self.append_waiters.pop(proposal_id, None)
                if future is not None:
                    self.loop.complete(future, AppendInfo(index, term), None, after_sync=True)

    def tick(self, now: float) -> None:
        self.last_tick = now
        self.prevote.gate()
        self.raft.doTick(0.0)

    def publish_status(self, now: float) -> None:
        raft = self.raft
        role = _ROLES.get(raft._SyncObj__raftState, "follower")  # type: ignore[attr-defined]
        if role == "leader" and self.leader_since is None:
            self.leader_since = now
        elif role != "leader":
            self.leader_since = None
        leader = raft._getLeader()
        connected = tuple(sorted(b for b in self.replica_ids if b != self.self_id and self.loop.network.is_up(b)))
        in_sync: tuple[int, ...] = ()
        match_index: dict[int, int] = {}
        quorum = False
        if role == "leader":
            responses = raft._SyncObj__lastResponseTime  # type: ignore[attr-defined]
            matches = raft._SyncObj__raftMatchIndex  # type: ignore[attr-defined]
            raft_now = raft_clock()  # pysyncobj stamps responses with its own clock
            deadline = raft_now - limits.replica_lag_time_max_s
            match_index = {node.broker_id: int(index) for node, index in matches.items()}
            in_sync = tuple(sorted([self.self_id] + [
                node.broker_id for node, seen in responses.items()
                if seen > deadline and node.broker_id in connected]))
            fallback_deadline = raft_now - self.timers.leader_fallback_timeout_s
            answering = sum(1 for node, seen in responses.items()
                            if seen > fallback_deadline and node.broker_id in connected)
            quorum = 2 * (answering + 1) > len(self.replica_ids)
        last_index = self.journal.last_index or 0
        noop_index = raft._SyncObj__noopIDx  # type: ignore[attr-defined]
        caught_up = role == "leader" and noop_index is not None and raft.raftLastApplied >= noop_index
        self.status = GroupStatus(
            group_id=self.group_id, role=role, leader_id=leader.broker_id if leader is not None else None,
            term=raft.raftCurrentTerm, commit_index=raft.raftCommitIndex, applied_index=raft.raftLastApplied,
            last_index=last_index, in_sync=in_sync, match_index=match_index, connected=connected,
            journal_bytes=self.journal.size_bytes, caught_up=caught_up, quorum=quorum)

    def maybe_transfer_to_preferred(self, now: float, *, stable_s: float = 5.0, retry_s: float = 10.0) -> bool:
        """Leader balance (Kafka's preferred leader election): the first replica in the assignment should
        lead. A leader that is not it hands leadership over once it has led for ``stable_s`` and the
        preferred replica is connected and fully caught up (pysyncobj's transferLeadership checks the
        latter itself and refuses otherwise; we retry every ``retry_s``)."""
        preferred = self.preferred_replica
        status = self.status
        if (preferred is None or preferred == self.self_id or not status.is_leader or self.leader_since is None
                or now - self.leader_since < stable_s or now - self._last_transfer_attempt < retry_s
                or preferred not in status.connected or status.match_index.get(preferred) != status.last_index):
            return False
        self._last_transfer_attempt = now
        self.raft.transferLeadership(BrokerNode(preferred))
        log.info("%s: handing leadership to preferred replica %d", self.group_id, preferred)
        return True

    def maybe_force_compaction(self) -> None:
        if self.journal.size_bytes > limits.raft_compaction_bytes:
            self.raft.forceLogCompaction()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.snapshotter.close()
        self.raft.destroy()  # autoTick=False: destroys transport and journal at once
        self.state_machine.close()


# --- the replication loop -----------------------------------------------------------------------

_SWEEP_INTERVAL_S = 0.02
_TICK_INTERVAL_S = 0.04
_HOUSEKEEPING_INTERVAL_S = 1.0


class ReplicationLoop(NetworkListener):
    """The broker's replication thread. See the module docstring for one pass."""

    def __init__(self, *, network_factory: Callable[[NetworkListener], PeerNetwork], durability: Durability,
                 asyncio_loop: asyncio.AbstractEventLoop, flush_interval_s: float = 0.1,
                 fsync_threads: int = 4) -> None:
        self.network = network_factory(self)
        self.durability = durability
        self.asyncio_loop = asyncio_loop
        self.flush_interval_s = flush_interval_s
        self.groups: dict[str, RaftGroup] = {}
        self._wake_queue: deque[str] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._completions: list[tuple[asyncio.Future[Any] | None, Any, RaftMQError | None]] = []
        self._after_sync: list[tuple[asyncio.Future[Any] | None, Any, RaftMQError | None]] = []
        self._completions_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(max_workers=fsync_threads,
                                                                 thread_name_prefix="raftmq-fsync")
        self._next_flush = 0.0
        self._housekeeping: list[Callable[[float], None]] = []
        self._next_housekeeping = 0.0
        self.pass_count = 0
        self.fsync_count = 0
        self.failure: BaseException | None = None
        self.published_links: list[dict[str, Any]] = []  # peer links as of the last housekeeping

    # lifecycle (asyncio thread) ------------------------------------------------------------------

    def start(self) -> None:
        self.network.start()
        self._thread = threading.Thread(target=self._run, name="raftmq-replication", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        def shutdown() -> None:
            for group in list(self.groups.values()):
                group.close()
            self.groups.clear()

        if self._thread is not None and self._thread.is_alive():
            try:
                self.call(shutdown).result(timeout=timeout_s)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("replication thread did not close its groups within %.0f s", timeout_s)
            self._stop.set()
            self.network.wake()
            self._thread.join(timeout=timeout_s)
        self._fsync_pool.shutdown(wait=True)
        self.network.stop()

    def add_housekeeping(self, callback: Callable[[float], None]) -> None:
        """Run ``callback(now)`` on the replication thread about once a second (retention, checks)."""
        self._housekeeping.append(callback)

    # cross-thread entry points -------------------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the replication thread (group creation must happen there)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._stop.is_set():
            future.set_exception(RuntimeError("replication loop stopped"))
            return future
        self._calls.append((fn, future))
        self.network.wake()
        return future

    def wake_group(self, group_id: str) -> None:
        self._wake_queue.append(group_id)
        self.network.wake()

    def complete(self, future: asyncio.Future[Any] | None, result: Any, error: RaftMQError | None, *,
                 after_sync: bool = False) -> None:
        """Resolve ``future`` on the asyncio thread at the end of this pass (after the fsync when
        ``after_sync``). Any thread."""
        with self._completions_lock:
            (self._after_sync if after_sync else self._completions).append((future, result, error))

    # NetworkListener (replication thread) --------------------------------------------------------

    def on_peer_up(self, peer_id: int) -> None:
        for group in self.groups.values():
            if group.transport is not None:
                group.transport.peer_up(peer_id)
            self._dirty.add(group.group_id)

    def on_peer_down(self, peer_id: int) -> None:
        for group in self.groups.values():
            if group.transport is not None:
                group.transport.peer_down(peer_id)
            self._dirty.add(group.group_id)

    def on_raft_message(self, peer_id: int, group_id: str, message: dict[str, Any]) -> None:
        group = self.groups.get(group_id)
        if group is None or group.transport is None:
            return  # not created here yet (or deleted): the sender retries
        group.transport.deliver(peer_id, message)
        self._dirty.add(group_id)

    # group management (replication thread) -------------------------------------------------------

    def add_group(self, group: RaftGroup) -> None:
        invariant(group.group_id not in self.groups, f"group {group.group_id} exists")
        self.groups[group.group_id] = group
        # pysyncobj attached its callbacks after building the transport: tell it which links are up now.
        for peer_id in self.network.up_peers():
            if group.transport is not None:
                group.transport.peer_up(peer_id)
        self._dirty.add(group.group_id)

    def remove_group(self, group_id: str) -> RaftGroup | None:
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.close()
        self._dirty.discard(group_id)
        return group

    # the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_forever()
        except BaseException as exc:  # noqa: BLE001 - recorded for health checks, then the process exits
            self.failure = exc
            log.critical("replication thread crashed", exc_info=True)
            self.asyncio_loop.call_soon_threadsafe(self._report_crash, exc)

    @staticmethod
    def _report_crash(exc: BaseException) -> None:
        log.critical("stopping: the replication thread failed: %r", exc)
        os._exit(70)  # a broker whose replication is dead must not keep answering as if it were fine

    def _loop_forever(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            busy = bool(self._wake_queue or self._calls or self._dirty)
            timeout = 0.0 if busy else max(0.0, min(next_sweep, self._next_housekeeping) - now)
            if self.durability is Durability.INTERVAL:
                timeout = min(timeout, max(0.0, self._next_flush - now))
            self.network.poll(timeout)
            while self._calls:
                fn, future = self._calls.popleft()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        future.set_exception(exc)
            while self._wake_queue:
                self._dirty.add(self._wake_queue.popleft())
            self.network.maintain()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_INTERVAL_S
                for group in self.groups.values():
                    if now - group.last_tick >= _TICK_INTERVAL_S:
                        self._dirty.add(group.group_id)
            ticked = []
            for group_id in self._dirty:
                group = self.groups.get(group_id)
                if group is not None:
                    group.tick(now)
                    ticked.append(group)
            self._dirty.clear()
            self._group_commit(ticked, now)
            self.network.flush()
            progress = []
            for group in ticked:
                group.publish_status(now)
                notify = group.state_machine.on_progress()
                if notify is not None:
                    progress.append(notify)
            self._deliver(progress)
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + _HOUSEKEEPING_INTERVAL_S
                self.published_links = self.network.link_stats()
                for group in self.groups.values():
                    group.maybe_force_compaction()
                for callback in self._housekeeping:
                    try:
                        callback(now)
                    except Exception:  # noqa: BLE001 - housekeeping must not stop replication
                        log.exception("housekeeping callback failed")
            self.pass_count += 1

    def _group_commit(self, ticked: list[RaftGroup], now: float) -> None:
        if self.durability is Durability.INTERVAL:
            if now < self._next_flush:
                return
            self._next_flush = now + self.flush_interval_s
            ticked = list(self.groups.values())
        unsynced = [group for group in ticked if group.journal.unsynced]
        if self.durability is Durability.NEVER:
            for group in unsynced:
                group.journal.sync()  # clears the flag; no fsync
            return
        if len(unsynced) == 1:
            unsynced[0].journal.sync()
        elif unsynced:
            list(self._fsync_pool.map(lambda group: group.journal.sync(), unsynced))
        self.fsync_count += len(unsynced)
        for group in unsynced:
            if group.transport is not None:
                group.transport.release_held()

    def _deliver(self, progress: list[Callable[[], None]]) -> None:
        with self._completions_lock:
            batch = self._completions + self._after_sync
            self._completions = []
            self._after_sync = []
        if batch or progress:
            try:
                self.asyncio_loop.call_soon_threadsafe(_resolve_batch, batch, progress)
            except RuntimeError:
                pass  # the event loop is closed: we are shutting down


def _resolve_batch(batch: list[tuple[asyncio.Future[Any] | None, Any, RaftMQError | None]],
                   progress: list[Callable[[], None]]) -> None:
    for future, result, error in batch:
        if future is None or future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    for notify in progress:
        try:
            notify()
        except Exception:  # noqa: BLE001 - one bad listener must not block the others
            log.exception("progress notification failed")


__all__ = [
    "AppendInfo",
    "Durability",
    "GroupStatus",
    "RaftGroup",
    "RaftTimers",
    "ReplicationLoop",
    "StateMachine",
    "error_for_fail_reason",
]
