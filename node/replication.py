"""Raft groups (pysyncobj 0.3.17) behind one door: the replication thread, group commit, snapshots.

Everything that touches pysyncobj lives here and in ``raft_transport.py``. ``ReplicationLoop`` implements
``node.groups.ReplicationEngine`` and ``RaftGroup`` implements ``node.groups.ReplicationGroup``; the rest of
the broker sees only those protocols (``submit(command) -> asyncio.Future``, a published ``GroupStatus``).

Threads: ONE replication thread per broker ticks every group (``autoTick=False``), drives the shared
``PeerNetwork`` and fsyncs journals; the asyncio thread (HTTP) only enqueues commands (pysyncobj's command
queue is thread-safe) and reads published statuses. Results cross back to asyncio in one
``call_soon_threadsafe`` per pass. Thread count does not grow with partitions (a small fixed fsync pool
aside).

A pass of the replication loop:
  1. poll the peer sockets (messages are handled as they are read, on this thread);
  2. run queued calls (create/destroy groups), collect woken groups;
  3. tick every group that has news, and every group one of whose pysyncobj timers is due;
  4. flush the peer links: the leaders' AppendEntries leave now, so the followers' round trip overlaps
     the leader's own fsync; publish changed statuses, then hand applied results to asyncio (they are
     committed on a majority already; a caller that sees its result sees its commit in the status);
  5. group commit: fdatasync every journal written in this pass (in parallel), then release the
     acknowledgements held back until then (``always`` policy) and flush them at once — so a follower
     acknowledges an append, and a leader counts itself for the commit index (computed only in doTick, at
     the next tick, after the next poll reads the acknowledgements), only once the entry is on disk;
  6. hand acks=1 results and progress notifications to asyncio.

Contact points with pysyncobj internals, all here: ``createJournal`` (to supply ``DurableJournal``), the
module ``pickle`` reference (commands are our own envelope, and nothing is unpickled from the network with
globals), ``PIPE_NOTIFIER_ENABLED`` (no pipe per group) — these three set by ``install_pysyncobj_hooks()``
when the first loop is built, never at import; the ``_SyncObj__serializer`` attribute (snapshots that
reference segments instead of dumping state), ``_poller`` (a no-op: the loop polls), the election deadline,
role, term and last entry pre-vote reads and moves (``_RaftView``), and read-only peeks at
``_SyncObj__raftMatchIndex`` / ``_SyncObj__lastResponseTime`` for the in-sync replica set. Membership
changes add two: ``_SyncObj__doApplyCommand`` is overridden (a change is applied on append only) and
``_SyncObj__changeClusterIDx`` is set (pysyncobj's one-change-at-a-time check, which it never arms).
Pre-vote reads the election deadline through a property that replaces ``_SyncObj__raftElectionDeadline``
(``_RaftObject``). Storage faults (``RaftGroup.fence_storage``) read ``_SyncObj__connectedNodes`` and the
match indexes to pick the follower to hand leadership to, and step a returning replica down with
``_SyncObj__setState`` and ``_SyncObj__generateRaftTimeout``.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import heapq
import io
import itertools
import logging
import math
import os
import pickle
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

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
    NotLeader,
    OutcomeUnknown,
    RaftMQError,
    ReassignmentInProgress,
    StorageError,
    invariant,
)
from raftmq.node import peer_protocol
from raftmq.node.config import Durability, PeerAddress, RaftTimers
from raftmq.node.fsutil import write_file_atomically
from raftmq.node.groups import AppendInfo, GroupSpec, GroupStatus, MembershipChange, StateMachine
from raftmq.node.journal import DurableJournal
from raftmq.node.prevote import PreVote
from raftmq.node.quiescence import Quiescence
from raftmq.node.raft_transport import BrokerNode, GroupTransport, NetworkListener, PeerNetwork
from raftmq.node.stages import APPENDED, APPLIED, COMMITTED, FSYNCED, SENT, StageTrace, stamp_all

log = logging.getLogger(__name__)

# --- the narrow contact with pysyncobj's module globals ------------------------------------------
#
# pysyncobj offers no per-instance hook for three things raftmq must replace: the journal (it calls the
# module-level createJournal(file) inside SyncObj.__init__), the command codec (the module-level pickle
# reference) and the per-group wake-up pipe. install_pysyncobj_hooks() sets them, once, when the first
# ReplicationLoop is built: importing this module changes nothing.

_hooks_lock = threading.Lock()
_hooks_installed = False
# The journal of the group being built on this thread: createJournal hands it to pysyncobj.
_building = threading.local()


def _create_journal(journal_file: str | None) -> Any:
    journal = getattr(_building, "journal", None)
    _building.journal = None
    invariant(journal is not None and journal.path == Path(journal_file or ""),
              f"no journal prepared for {journal_file!r}")
    return journal


def install_pysyncobj_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _syncobj_module.PIPE_NOTIFIER_ENABLED = False  # the replication loop wakes itself; no pipe per group
        _syncobj_module.createJournal = _create_journal
        _syncobj_module.pickle = _CommandCodec
        _hooks_installed = True


class _NoGlobalsUnpickler(pickle.Unpickler):
    """pysyncobj unpickles a few internal commands (code version); never allow code to be named."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")


class _CommandCodec:
    """Stands in for the ``pysyncobj.pickle`` module inside ``pysyncobj.syncobj``.

    A raftmq command (``cluster.commands`` envelope) decodes to a call of the single replicated method
    (method id 0, ``_RaftObject._apply``) with the raw command as its argument. A membership change, which
    pysyncobj writes as a pickle of ``[kind, node id, Node]`` (``SyncObj.addNodeToCluster``), is written as
    raftmq's envelope instead (``peer_protocol.encode_membership``) and read back as the same list with a
    ``BrokerNode``: no node object is ever pickled into the log or read from the network.
    """

    @staticmethod
    def loads(data: bytes) -> Any:
        if data[:4] == commands.MAGIC:
            return (0, (data,))
        if data[:4] == peer_protocol.MEMBERSHIP_MAGIC:
            kind, broker_id = peer_protocol.decode_membership(data)
            return [kind, str(broker_id), BrokerNode(broker_id)]
        return _NoGlobalsUnpickler(io.BytesIO(bytes(data))).load()

    @staticmethod
    def dumps(obj: Any, protocol: int | None = None) -> bytes:
        if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[2], BrokerNode):
            return peer_protocol.encode_membership(obj[0], obj[2].broker_id)
        return pickle.dumps(obj, 2)

    @staticmethod
    def to_bytes(data: Any) -> bytes:
        return data if isinstance(data, bytes) else str(data).encode("utf-8")


_COMMAND_TYPE_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR
_TRACES_PENDING_MAX = 4096  # stage traces a group keeps for entries not appended / not applied yet
# How every membership change entry starts: pysyncobj's _COMMAND_TYPE.MEMBERSHIP, then our envelope.
_CONFIG_PREFIX = bytes([peer_protocol.COMMAND_MEMBERSHIP]) + peer_protocol.MEMBERSHIP_MAGIC


class _NullPoller:
    """pysyncobj ends every tick in ``self._poller.poll(timeout)``; the replication loop polls instead."""

    def subscribe(self, descr: Any, callback: Any, event_mask: int) -> None:
        raise AssertionError("nothing may subscribe to a group's poller")

    def unsubscribe(self, descr: Any) -> None:
        return None

    def poll(self, timeout: float) -> None:
        return None


# --- results ------------------------------------------------------------------------------------

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


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


# --- snapshots ----------------------------------------------------------------------------------

_SNAPSHOT_MAGIC = b"RMQSNAP1"
_U32 = struct.Struct(">I")
SNAPSHOT_FILE = "raft.snapshot"
JOURNAL_FILE = "raft.journal"


class SnapshotHeader(NamedTuple):
    last: tuple[bytes, int, int]  # pysyncobj's last entry covered by the snapshot
    prev: tuple[bytes, int, int]  # and the one before it
    state: bytes  # the state machine's
    voters: tuple[int, ...] | None  # the group's voters at ``last`` (None: a snapshot written before they were)


def encode_snapshot(last: tuple[bytes, int, int], prev: tuple[bytes, int, int], state: bytes,
                    voters: tuple[int, ...]) -> bytes:
    header = msgpack.packb({"last": list(last), "prev": list(prev), "state": state, "voters": list(voters)},
                           use_bin_type=True)
    return _SNAPSHOT_MAGIC + _U32.pack(len(header)) + header + _U32.pack(zlib.crc32(header))


def read_snapshot(stream: BinaryIO) -> SnapshotHeader:
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
    voters = tuple(int(v) for v in data["voters"]) if "voters" in data else None
    return SnapshotHeader(last, prev, bytes(data["state"]), voters)


# --- membership ---------------------------------------------------------------------------------


class GroupMembership:
    """The voters of one group as its log says: a base (the voters at the local snapshot's last index, or
    the group's initial voters at index 0), then every membership change entry the journal holds after it,
    in order. Raft applies a configuration entry when it is appended and reverts it when it is truncated;
    the journal's ``config_entries`` follows both, so this is always the configuration of the local log.

    pysyncobj keeps its own copy (``otherNodes``), which it changes on append and truncation too, but on a
    restart it starts from what it is given and then resets it from the snapshot; ``RaftGroup`` gives it
    ``voters_at()`` in both places, so the two agree."""

    def __init__(self, journal: DurableJournal, base_voters: tuple[int, ...], base_index: int) -> None:
        self.journal = journal
        self.base_voters = frozenset(base_voters)
        self.base_index = base_index

    def _changes(self, upto: int | None) -> list[tuple[int, bytes]]:
        return [(index, command) for index, command in self.journal.config_entries.items()
                if index > self.base_index and (upto is None or index <= upto)]

    def voters_at(self, index: int | None = None) -> frozenset[int]:
        """The voters after the entry at ``index`` (None: after the last entry of the log)."""
        voters = set(self.base_voters)
        for _index, command in self._changes(index):
            kind, broker_id = peer_protocol.decode_membership(command[1:])
            if kind == peer_protocol.MEMBERSHIP_ADD:
                voters.add(broker_id)
            else:
                voters.discard(broker_id)
        return frozenset(voters)

    def last_change_index(self) -> int:
        """Index of the newest membership change in the log after the base (0: none)."""
        changes = self._changes(None)
        return changes[-1][0] if changes else 0

    def rebase(self, voters: frozenset[int], index: int) -> None:
        """A snapshot now covers the log up to ``index``: changes at or below it are in ``voters``."""
        self.base_voters = voters
        self.base_index = index


def _nodes(broker_ids: frozenset[int]) -> list[BrokerNode]:
    return [BrokerNode(b) for b in sorted(broker_ids)]


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
                 network: PeerNetwork, membership: GroupMembership, *, durable: bool) -> None:
        self.path = directory / SNAPSHOT_FILE
        self.membership = membership
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
        # pysyncobj's cluster set (the 4th item) is its configuration at the log's END, uncommitted changes
        # included; the snapshot must hold the voters at its own last entry.
        _state, last, prev, _cluster = data
        self._result_id = id
        voters = self.membership.voters_at(last[1])
        try:
            state = self.state_machine.snapshot()
            write_file_atomically(self.path, encode_snapshot(tuple(last), tuple(prev), state, tuple(sorted(voters))),
                                  durable=self.durable)
        except Exception:  # noqa: BLE001 - pysyncobj expects FAILED, and the journal must then stay whole
            log.exception("snapshot of %s failed", self.path.parent)
            self._result = SERIALIZER_STATE.FAILED
            return
        self.membership.rebase(voters, last[1])
        self.snapshots_taken += 1
        self._result = SERIALIZER_STATE.SUCCESS
        # Like pysyncobj: transmissions of the previous snapshot restart with the new one.
        for transmission in self._transmissions.values():
            transmission.close()
        self._transmissions.clear()

    def deserialize(self) -> tuple[None, tuple[bytes, int, int], tuple[bytes, int, int], list[BrokerNode]]:
        """The 4th item is the configuration pysyncobj adopts (``SyncObj.__loadDumpFile``)."""
        if self._incoming_ready:
            return self._install_incoming()
        with open(self.path, "rb") as stream:
            header = read_snapshot(stream)
        # At a restart pysyncobj loads the local snapshot and would take its configuration, dropping the
        # changes in the journal after it; hand it the log's configuration instead. Only if it is about to
        # replace a journal that does not start with the snapshot's entries does the snapshot's own count.
        journal = self.membership.journal
        keeps_journal = len(journal) >= 2 and journal[0] == header.prev and journal[1] == header.last
        voters = self.membership.voters_at() if keeps_journal else self.membership.base_voters
        return None, header.last, header.prev, _nodes(voters)

    def _install_incoming(self) -> tuple[None, tuple[bytes, int, int], tuple[bytes, int, int], list[BrokerNode]]:
        self._incoming_ready = False
        with open(self.incoming_path, "rb") as stream:
            header = read_snapshot(stream)
            self.state_machine.install(header.state, stream)
        last = header.last
        voters = frozenset(header.voters) if header.voters is not None else self.membership.voters_at()
        write_file_atomically(self.path, encode_snapshot(last, header.prev, header.state, tuple(sorted(voters))),
                              durable=self.durable)
        self.incoming_path.unlink(missing_ok=True)
        self.membership.rebase(voters, last[1])  # pysyncobj clears the journal next: the snapshot is the base
        self.snapshots_installed += 1
        log.info("%s: installed a snapshot from the leader up to Raft index %d", self.path.parent, last[1])
        return None, last, header.prev, _nodes(voters)

    # pysyncobj: sending a snapshot to a follower ---------------------------------------------------

    def getTransmissionData(self, node: Any) -> tuple[bytes, bool, bool] | None:  # noqa: N802
        if self.network.queued_bytes(node.broker_id) > limits.snapshot_inflight_bytes_max:
            return None  # flow control: pysyncobj sends a heartbeat instead and asks again next tick
        transmission = self._transmissions.get(node)
        if transmission is None:
            try:
                header = self.path.read_bytes()
                state = read_snapshot(io.BytesIO(header)).state
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
                 other_nodes: list[BrokerNode], conf: SyncObjConf, transport_factory: Any,
                 traces: dict[int, StageTrace]) -> None:
        # Set before SyncObj.__init__: such attributes are never part of pysyncobj's own state dump.
        self._state_machine = state_machine
        self._journal = journal
        self._traces = traces  # Raft index -> stage trace of a traced request appended here (RaftGroup)
        self.election_deadline = 0.0  # pysyncobj's __raftElectionDeadline, as it wrote it (raft clock)
        self.election_allowed = False  # may pysyncobj's election check in this tick see it (RaftGroup._tick)
        super().__init__(self_node, other_nodes, conf, transportClass=transport_factory)

    # pysyncobj reads its election deadline in exactly one place, the election check of _onTick, and that
    # check comes after work that can take long (the one-second meta write, with its fsyncs). Pre-vote decides
    # on the deadline before the tick (PreVote.gate); had the deadline passed during that work, pysyncobj
    # would campaign without a pre-vote, raise its term, and on a slow disk (where this happened) end up at a
    # higher term than a healthy leader it can never depose. So the check sees the deadline only in a tick
    # that pre-vote let through; otherwise the election waits for the next tick and its pre-vote round.
    @property
    def _SyncObj__raftElectionDeadline(self) -> float:  # noqa: N802 - pysyncobj's (mangled) name
        return self.election_deadline if self.election_allowed else math.inf

    @_SyncObj__raftElectionDeadline.setter
    def _SyncObj__raftElectionDeadline(self, value: float) -> None:  # noqa: N802
        self.election_deadline = float(value)

    @replicated
    def _apply(self, command: bytes) -> Any:
        index = self.raftLastApplied + 1
        if self._traces:
            trace = self._traces.pop(index, None)
            if trace is not None:
                trace.stamp(COMMITTED)  # pysyncobj applies in the tick that moved the commit index
        term = self._journal.term_at(index)
        invariant(term is not None, f"applying index {index} that is not in the journal")
        return self._state_machine.apply(index, term, command)  # type: ignore[arg-type]

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802 - overrides pysyncobj's private method
        # pysyncobj applies a membership change again when the entry COMMITS ("required only after node
        # restarts"). That is wrong whenever a later change is already appended (a follower that receives
        # a remove and a re-add of one broker in one batch would drop it at the remove's commit), and not
        # needed here: the group hands pysyncobj the log's configuration at open (GroupMembership).
        if command[:1] == _CONFIG_PREFIX[:1]:
            return None
        return SyncObj._SyncObj__doApplyCommand(self, command)


class _RaftView:
    """pysyncobj's private Raft fields, as node/prevote.py's RaftView and node/quiescence.py's QuiesceView name
    them (read here, nowhere else)."""

    def __init__(self, raft: _RaftObject) -> None:
        self._raft = raft

    @property
    def election_deadline(self) -> float:
        return self._raft.election_deadline

    @election_deadline.setter
    def election_deadline(self, value: float) -> None:
        self._raft.election_deadline = value

    def role(self) -> int:
        return int(self._raft._SyncObj__raftState)

    def current_term(self) -> int:
        return int(self._raft.raftCurrentTerm)

    def last_log(self) -> tuple[int, int]:
        last = self._raft._SyncObj__raftLog[-1]
        return int(last[1]), int(last[2])

    def transfer_in_progress(self) -> bool:
        return bool(self._raft._SyncObj__transferInProgress)

    def leader_id(self) -> int | None:
        leader = self._raft._getLeader()
        return leader.broker_id if leader is not None else None

    def commit_index(self) -> int:
        return int(self._raft.raftCommitIndex)

    def refresh_followers(self, connected: list[int]) -> None:
        """A leader waking from quiescence: the links vouched for these followers while it was quiet, so its
        CheckQuorum (leader fallback) counts them as heard from now; and it heartbeats at its next tick."""
        raft = self._raft
        now = raft_clock()
        responses = raft._SyncObj__lastResponseTime
        for node in list(responses):
            if node.broker_id in connected:
                responses[node] = now
        raft._SyncObj__newAppendEntriesTime = 0.0

    def idle_leader(self) -> bool:
        """A leader with nothing to do: everything committed and applied, no command queued, and every
        follower's log matching its own (so no AppendEntries or snapshot is owed)."""
        raft = self._raft
        if raft._SyncObj__raftState != 2:
            return False
        last = int(raft._SyncObj__raftLog[-1][1])
        noop = raft._SyncObj__noopIDx
        if noop is None or raft.raftLastApplied < noop or raft.raftCommitIndex != last \
                or raft.raftLastApplied != last or len(raft._SyncObj__commandsQueue._FastQueue__queue):
            return False
        return all(index == last for index in raft._SyncObj__raftMatchIndex.values()) \
            and all(index == last + 1 for index in raft._SyncObj__raftNextIndex.values())

    def commands_queued(self) -> bool:
        return bool(len(self._raft._SyncObj__commandsQueue._FastQueue__queue))

    def step_down(self) -> None:
        """Become a follower with no known leader and a fresh election timeout, as pysyncobj's own leader
        fallback does: a replica coming back from a storage fault must not resume leading a log it may have
        cut, nor campaign the moment it returns."""
        raft = self._raft
        raft._SyncObj__setState(0)
        raft._SyncObj__raftLeader = None
        raft.election_deadline = raft_clock() + raft._SyncObj__generateRaftTimeout()

    def most_caught_up_follower(self) -> int | None:
        """A leader's connected follower with the highest match index (None: none connected)."""
        raft = self._raft
        connected = raft._SyncObj__connectedNodes
        candidates = [(int(index), node.broker_id) for node, index in raft._SyncObj__raftMatchIndex.items()
                      if node in connected]
        return max(candidates)[1] if candidates else None


def _unused_serializer(*_args: Any) -> Any:  # pragma: no cover - GroupSnapshotter replaces the Serializer
    raise AssertionError("pysyncobj's Serializer was not replaced")


def _election_window(timers: RaftTimers, self_id: int, preferred_replica: int | None) -> tuple[float, float]:
    """The preferred replica draws its election timeout from the lower third of the range, the others from
    the rest: when it is alive and up to date it usually wins, so leaders spread as assigned. The worst
    case for everyone else is unchanged."""
    election_min_s, election_max_s = timers.election_timeout_min_s, timers.election_timeout_max_s
    if preferred_replica is not None:
        split_s = election_min_s + (election_max_s - election_min_s) / 3
        if preferred_replica == self_id:
            election_max_s = split_s
        else:
            election_min_s = split_s
    return election_min_s, election_max_s


def _syncobj_conf(timers: RaftTimers, election: tuple[float, float], directory: Path) -> SyncObjConf:
    """Every pysyncobj setting, written out."""
    return SyncObjConf(
        autoTick=False,
        appendEntriesUseBatch=False,
        appendEntriesBatchSizeBytes=limits.raft_append_entries_bytes_max,
        appendEntriesPeriod=timers.heartbeat_period_s,
        raftMinTimeout=election[0],
        raftMaxTimeout=election[1],
        connectionTimeout=timers.connection_timeout_s,
        leaderFallbackTimeout=timers.leader_fallback_timeout_s,
        commandsQueueSize=limits.raft_command_queue_max,
        commandsWaitLeader=False,
        journalFile=str(directory / JOURNAL_FILE),
        fullDumpFile=str(directory / SNAPSHOT_FILE),
        serializer=_unused_serializer,
        deserializer=_unused_serializer,
        useFork=False,
        logCompactionMinEntries=limits.raft_compaction_entries,
        logCompactionMinTime=limits.raft_compaction_interval_s,
        logCompactionSplit=False,
        logCompactionBatchSize=limits.snapshot_chunk_bytes,
        dynamicMembershipChange=True,  # single-server changes; entries carry broker ids, never dial addresses
    )


def _restore_local_snapshot(directory: Path, state_machine: StateMachine) -> SnapshotHeader | None:
    """Give the state machine its snapshot's state; returns the snapshot's header (or None)."""
    snapshot_path = directory / SNAPSHOT_FILE
    header = None
    if snapshot_path.exists():
        with open(snapshot_path, "rb") as stream:
            try:
                header = read_snapshot(stream)
            except ValueError as exc:
                raise OSError(f"{snapshot_path}: {exc}. The replica cannot start; move its directory away "
                              "and it will be rebuilt from the other replicas.") from exc
    (directory / (SNAPSHOT_FILE + ".incoming")).unlink(missing_ok=True)
    state_machine.restore(header.state if header is not None else None)
    return header


def _open_journal(spec: GroupSpec, header: SnapshotHeader | None, *, durable: bool
                  ) -> tuple[DurableJournal, GroupMembership]:
    """The group's journal and the voters its log describes. ``spec.replica_ids`` (the broker's metadata)
    counts only for a group opened for the first time: after that the snapshot and the journal say."""
    journal = DurableJournal(spec.directory / JOURNAL_FILE, durable=durable, config_prefix=_CONFIG_PREFIX,
                             snapshot_entries=(header.prev, header.last) if header is not None else None)
    initial = journal.initial_voters
    if initial is None:
        initial = tuple(sorted(spec.replica_ids))
        journal.set_initial_voters(initial)
    if header is not None and header.voters is not None:
        return journal, GroupMembership(journal, header.voters, header.last[1])
    return journal, GroupMembership(journal, initial, 0)


class RaftGroup:
    """One Raft group on this broker (``node.groups.ReplicationGroup``): pysyncobj object, journal, transport,
    snapshotter, state machine.

    Built and destroyed on the replication thread (``ReplicationLoop.call``). ``submit``,
    ``transfer_leadership`` and ``change_membership`` may be called from the asyncio thread.

    Membership (``change_membership``): pysyncobj's single-server changes, applied on append, one at a time
    (pysyncobj's own one-at-a-time check is never armed by pysyncobj: ``_on_journal_append`` arms it). The
    voters are ``GroupMembership``'s; ``replica_ids`` follows them. A replica that is not a voter in its own
    log does not campaign (``PreVote.set_voters``), and the voters ignore everything from a non-voter but
    AppendEntries (``GroupTransport.deliver``), so a removed replica cannot disturb the group.
    """

    def __init__(self, spec: GroupSpec, *, self_id: int, state_machine: StateMachine,
                 loop: ReplicationLoop) -> None:
        invariant(self_id in spec.replica_ids, f"broker {self_id} is not a replica of {spec.group_id}")
        self.group_id = spec.group_id
        self.timers = loop.timers
        self.preferred_replica = spec.preferred_replica
        self.directory = spec.directory
        self.self_id = self_id
        self.state_machine = state_machine
        self.loop = loop
        spec.directory.mkdir(parents=True, exist_ok=True)
        durable = loop.durability is not Durability.NEVER
        header = _restore_local_snapshot(spec.directory, state_machine)
        self.journal, self.membership = _open_journal(spec, header, durable=durable)
        self.voters = self.membership.voters_at()
        self.replica_ids = sorted(self.voters)
        self._membership_requested = False  # a change is queued in pysyncobj and not in the log yet
        self.journal.on_append = self._on_journal_append
        self.append_waiters: dict[int, asyncio.Future[Any]] = {}
        # Submitted and not resolved yet (either thread adds or removes, under the lock): a leader that loses
        # its majority or its leadership fails them at once (_fail_waiting) instead of leaving its clients to
        # their request timeouts while another broker is already leading.
        self._waiting: set[asyncio.Future[Any]] = set()
        self._waiting_lock = threading.Lock()
        # Stage traces (node/stages.py): by proposal id until the entry is appended, then by Raft index until
        # it is applied. Bounded: a trace whose entry never gets there is dropped (_bound_traces).
        self._traced: dict[int, StageTrace] = {}
        self._traces_by_index: dict[int, StageTrace] = {}
        election = _election_window(self.timers, self_id, spec.preferred_replica)
        self.raft, transport = self._build_raft(_syncobj_conf(self.timers, election, spec.directory))
        self.transport = transport
        transport.hold_acks = loop.durability is Durability.ALWAYS
        transport.has_unsynced_writes = lambda: self.journal.unsynced
        state_machine.bind_annotations(transport.local_annotations)
        self.snapshotter = GroupSnapshotter(spec.directory, state_machine, transport, loop.network, self.membership,
                                            durable=durable)
        self.raft._SyncObj__serializer = self.snapshotter
        self.raft._poller = _NullPoller()
        self.prevote = PreVote(raft=_RaftView(self.raft), send=transport.send_control, clock=raft_clock,
                               self_id=self_id, replica_ids=self.replica_ids, election_timeout_min_s=election[0],
                               election_timeout_max_s=election[1])
        self.prevote.set_voters(self.replica_ids)
        transport.prevote = self.prevote
        self.raft_view = _RaftView(self.raft)
        self.quiescence = Quiescence(raft=self.raft_view, send=transport.send_control, link_up=loop.network.is_up,
                                     clock=raft_clock, self_id=self_id, replica_ids=self.replica_ids,
                                     idle_after_s=limits.raft_quiesce_after_s,
                                     wake_window_s=limits.raft_quiesce_wake_window_s, election_timeout_s=election)
        transport.quiescence = self.quiescence
        self.last_tick = 0.0
        self.next_tick = 0.0  # loop clock: when pysyncobj's next timer is due (_next_timer_s)
        self.queued_tick = math.inf  # the time of this group's live entry in the loop's timer heap
        self._published_key: tuple[Any, ...] | None = None
        self._published_at = 0.0
        self.ticks = 0  # counters: what an idle group costs (tests, debugging)
        self.publishes = 0
        self.leader_since: float | None = None  # monotonic time this replica last became leader
        self._last_transfer_attempt = 0.0
        self.status = GroupStatus(group_id=self.group_id)
        # Set while this replica's disk refuses writes (see fence_storage): the group is not ticked, hears
        # nothing and is answered nothing, and submits are refused, until recover_storage succeeds.
        self.storage_fault: StorageError | None = None
        self._told_stale_leader: tuple[int, int] | None = None
        self.closed = False

    def _build_raft(self, conf: SyncObjConf) -> tuple[_RaftObject, GroupTransport]:
        built: list[GroupTransport] = []

        def transport_factory(sync_obj: Any, self_node: Any, other_nodes: Any) -> GroupTransport:
            built.append(GroupTransport(sync_obj, self_node, other_nodes, network=self.loop.network,
                                        group_id=self.group_id))
            return built[-1]

        self_node = BrokerNode(self.self_id)
        other_nodes = [BrokerNode(b) for b in self.replica_ids if b != self.self_id]  # the log's voters
        _building.journal = self.journal
        try:
            raft = _RaftObject(self.state_machine, self.journal, self_node, other_nodes, conf, transport_factory,
                               self._traces_by_index)
        finally:
            _building.journal = None
        invariant(set(raft._methodToID) == {"_apply_v0"}, "the group must have exactly one replicated method")
        invariant(len(built) == 1, "pysyncobj did not build the transport")
        return raft, built[0]

    # called on the asyncio thread --------------------------------------------------------------

    def submit(self, command: bytes, *, resolve_on_append: bool = False,
               trace: StageTrace | None = None) -> asyncio.Future[Any]:
        """See ``node.groups.ReplicationGroup.submit``; errors per ``error_for_fail_reason``."""
        future: asyncio.Future[Any] = self.loop.asyncio_loop.create_future()
        fault = self.storage_fault
        if fault is not None:
            future.set_exception(StorageError(
                f"broker {self.self_id} cannot write {self.group_id} to its disk ({fault.message}); nothing was "
                "appended. Its leadership is handed to another replica: refresh the metadata and retry there",
                path=fault.details.get("path")))
            return future
        if resolve_on_append:
            proposal_id = commands.proposal_id_of(command)
            invariant(proposal_id is not None, "submit needs an encoded command")
            self.append_waiters[proposal_id] = future  # type: ignore[index]
        if trace is not None:
            self._bound_traces()
            proposal_id = commands.proposal_id_of(command)
            if proposal_id is not None:
                self._traced[proposal_id] = trace
        callback = partial(self._on_result, future, trace)
        with self._waiting_lock:
            self._waiting.add(future)
        future.add_done_callback(self._forget_waiting)
        self.raft._applyCommand(command, callback, _COMMAND_TYPE_REGULAR)
        self.loop.wake_group(self.group_id)
        return future

    def _forget_waiting(self, future: asyncio.Future[Any]) -> None:
        with self._waiting_lock:
            self._waiting.discard(future)

    def _fail_waiting(self, why: str) -> None:
        """Replication thread: this replica stopped leading, or can no longer reach a majority. What it was
        waiting to commit may still commit (under a new leader, or when the links return), so it is
        OUTCOME_UNKNOWN, not a refusal; a later SUCCESS for the same future is ignored (it is done)."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, set()
        for future in waiting:
            self.loop.complete(future, None, OutcomeUnknown(
                f"broker {self.self_id} {why} before the entry committed; it may or may not be stored: retry "
                "(at the new leader: an idempotent producer's retry is not duplicated)"))

    def _bound_traces(self) -> None:
        # Traces of entries that were never appended (lost leadership) or never applied here (truncated)
        # would stay forever; they are only measurements, so past the bound they are dropped wholesale.
        if len(self._traced) >= _TRACES_PENDING_MAX:
            self._traced.clear()
        if len(self._traces_by_index) >= _TRACES_PENDING_MAX:
            self._traces_by_index.clear()

    def forget_append_waiter(self, command: bytes) -> None:
        proposal_id = commands.proposal_id_of(command)
        if proposal_id is not None:
            self.append_waiters.pop(proposal_id, None)

    def transfer_leadership(self, to_broker: int) -> None:
        self.loop.call(lambda: self._transfer(to_broker))

    def _transfer(self, to_broker: int) -> None:
        self._wake()  # the transfer needs heartbeats (to catch the target up) and then the target's election
        self.raft.transferLeadership(BrokerNode(to_broker))

    def _wake(self) -> None:
        """Leave quiescence for work that arrived by a call, not a message or a command (those wake it in
        ``tick``), and make sure the group is ticked in this pass."""
        self.quiescence.wake()
        self.loop.mark_dirty(self.group_id)

    def change_membership(self, change: MembershipChange) -> asyncio.Future[None]:
        """See ``node.groups.ReplicationGroup.change_membership``. Decided on the replication thread, where the
        role, the log and pysyncobj's command queue cannot change underneath the decision."""
        future: asyncio.Future[None] = self.loop.asyncio_loop.create_future()

        def start() -> None:
            try:
                self._start_membership_change(change, future)
            except Exception as exc:  # noqa: BLE001 - the caller must hear about it, not the loop
                log.exception("%s: membership change %s failed", self.group_id, change)
                self.loop.complete(future, None, InternalError(f"membership change failed: {exc!r}"))

        queued = self.loop.call(start)
        if queued.done() and queued.exception() is not None:  # the loop has stopped
            future.set_exception(LeaderNotAvailable(f"broker {self.self_id} is shutting down; nothing was appended"))
        self.loop.wake_group(self.group_id)
        return future

    # called on the replication thread ----------------------------------------------------------

    def _membership_refusal(self) -> RaftMQError | None:
        """Why this replica cannot start a membership change now (None: it can)."""
        raft = self.raft
        if self.closed:
            return LeaderNotAvailable(f"{self.group_id} is closed on broker {self.self_id}; nothing was appended")
        if self.storage_fault is not None:
            return StorageError(f"broker {self.self_id} cannot write {self.group_id} to its disk; nothing was "
                                "appended: retry at the partition's new leader", path=str(self.directory))
        if not raft._isLeader():
            leader = raft._getLeader()
            if leader is None:
                return LeaderNotAvailable(f"{self.group_id} has no leader right now; nothing was appended")
            return NotLeader(f"broker {self.self_id} is not the leader of {self.group_id}",
                             leader_id=leader.broker_id)
        noop_index = raft._SyncObj__noopIDx
        if noop_index is None or raft.raftLastApplied < noop_index:
            return LeaderNotAvailable(f"the new leader of {self.group_id} has not committed its first entry yet; "
                                      "nothing was appended")
        if self._membership_pending():
            return ReassignmentInProgress(f"{self.group_id}: the previous membership change is not committed yet")
        return None

    def _membership_pending(self) -> bool:
        return self._membership_requested or self.membership.last_change_index() > self.raft.raftCommitIndex

    def _start_membership_change(self, change: MembershipChange, future: asyncio.Future[None]) -> None:
        refusal = self._membership_refusal()
        if refusal is not None:
            self.loop.complete(future, None, refusal)
            return
        voters = self.membership.voters_at()
        if change.add in voters or (change.remove is not None and change.remove not in voters):
            self.loop.complete(future, None, None)  # already so: idempotent
            return
        if change.remove == self.self_id:
            # pysyncobj refuses to remove the leader itself; hand leadership to the most caught-up voter and
            # let the caller retry there (the controller transfers leadership first in the normal case).
            self._wake()
            self.raft.transferLeadership(None)
            self.loop.complete(future, None, NotLeader(
                f"broker {self.self_id} leads {self.group_id} and is the voter to remove: leadership is being "
                "handed over; nothing was appended, retry at the new leader"))
            return
        self._membership_requested = True
        self._wake()
        callback = partial(self._on_membership_result, future)
        if change.add is not None:
            self.raft.addNodeToCluster(BrokerNode(change.add), callback=callback)
        else:
            self.raft.removeNodeFromCluster(BrokerNode(change.remove), callback=callback)  # type: ignore[arg-type]
        log.info("%s: proposing membership change %s (voters now %s)", self.group_id, change, sorted(voters))

    def _on_membership_result(self, future: asyncio.Future[None], _result: Any, reason: int) -> None:
        # SUCCESS comes when the entry is applied here, i.e. committed (pysyncobj's commandsWaitingCommit).
        self._membership_requested = False
        if reason == FAIL_REASON.SUCCESS:
            self.loop.complete(future, None, None)
        elif reason == FAIL_REASON.REQUEST_DENIED:
            # pysyncobj's __changeCluster refused to append: another change is uncommitted, or a leader that
            # took over meanwhile has not applied its no-op yet, or the change is no change there.
            self.loop.complete(future, None, ReassignmentInProgress(
                f"{self.group_id}: the leader refused the membership change (another one is not committed yet); "
                "nothing was appended") if self._membership_pending() else LeaderNotAvailable(
                f"{self.group_id}: the leader is not ready for a membership change; nothing was appended"))
        else:
            self.loop.complete(future, None, error_for_fail_reason(reason))

    def _refresh_voters(self) -> None:
        voters = self.membership.voters_at()
        if voters != self.voters:
            log.info("%s: voters %s -> %s", self.group_id, sorted(self.voters), sorted(voters))
            self.voters = voters
            self.replica_ids = sorted(voters)
            self.prevote.set_voters(self.replica_ids)
            self.quiescence.set_voters(self.replica_ids)

    def _on_result(self, future: asyncio.Future[Any], trace: StageTrace | None, result: Any, reason: int) -> None:
        if reason == FAIL_REASON.SUCCESS:
            if trace is not None:
                trace.stamp(APPLIED)
            self.loop.complete(future, result, None)
        else:
            self.loop.complete(future, None, error_for_fail_reason(reason))

    def _on_journal_append(self, command: bytes, index: int, term: int) -> None:
        if command[:len(_CONFIG_PREFIX)] == _CONFIG_PREFIX:
            self._membership_requested = False  # it is in the log now: the log says it is pending
            # pysyncobj checks this index before it appends another change (SyncObj.__changeCluster) but never
            # sets it; armed here, a second change waits until this one is applied, whoever proposes it.
            raft = getattr(self, "raft", None)
            if raft is not None:
                raft._SyncObj__changeClusterIDx = index
        if self._traced:
            self._note_traced_append(command, index)
        if self.append_waiters:
            proposal_id = commands.proposal_id_of(command, 1)  # byte 0 is pysyncobj's command type
            if proposal_id is not None:
                future = self.append_waiters.pop(proposal_id, None)
                if future is not None:
                    self.loop.complete(future, AppendInfo(index, term), None, after_sync=True)

    def _note_traced_append(self, command: bytes, index: int) -> None:
        proposal_id = commands.proposal_id_of(command, 1)  # byte 0 is pysyncobj's command type
        trace = self._traced.pop(proposal_id, None) if proposal_id is not None else None
        if trace is not None:
            trace.stamp(APPENDED)
            self._traces_by_index[index] = trace
            self.loop.pass_traces.append(trace)  # the loop stamps SENT and FSYNCED at the end of this pass

    def tick(self, now: float) -> None:
        if self.storage_fault is not None:
            self.next_tick = math.inf  # recover_storage brings it back
            return
        try:
            self._tick(now)
        except (StorageError, OSError) as exc:
            self.fence_storage(exc, now)

    def answer_stale_leader(self, peer_id: int, message: dict[str, Any]) -> None:
        """AppendEntries from a leader of an older term, to a replica that knows no leader at its own newer
        term. pysyncobj drops it without a word, so that leader never learns that its term is over and keeps
        leading the others, while this replica (a candidate whose vote requests were lost with a link, or a
        follower that voted for one) can never win: pre-vote stops it, because the others still hear their
        leader. Raft answers a stale AppendEntries with the newer term, which makes the leader step down (etcd
        does so under pre-vote for exactly this case); pysyncobj's leader only steps down for a newer term in
        a vote request, so the answer is this replica's vote request at its term, with its own last entry: the
        leader adopts the term and becomes a follower (and votes only if this log is as up to date as its
        own), and the next pre-vote round elects a leader everyone follows."""
        if message.get("type") != "append_entries" or self.raft_view.role() == 2 \
                or self.raft._getLeader() is not None or peer_id not in self.voters:
            return
        term = message.get("term")
        current = self.raft.raftCurrentTerm
        if not isinstance(term, int) or term >= current:
            return
        index, last_term = self.raft_view.last_log()
        if self._told_stale_leader != (peer_id, term):  # it answers every heartbeat; log it once
            self._told_stale_leader = (peer_id, term)
            log.info("%s: broker %d leads at term %d, this replica is at term %d with no leader: telling it",
                     self.group_id, peer_id, term, current)
        self.transport.send_control(peer_id, {"type": "request_vote", "term": current, "last_log_index": index,
                                              "last_log_term": last_term})

    def fence_storage(self, exc: BaseException, now: float) -> None:
        """This replica's disk refused a write or an fsync (its journal, its term and vote, or the state
        machine's log). Raft must never count or acknowledge as stored an entry that is not, and the failed
        write may have left the entries since the last good fsync anywhere between written and lost. So until
        ``recover_storage`` finds the disk writable again, the replica is out of its group: it is not ticked
        (a leader never counts itself for a commit again, never heartbeats), Raft messages to it are dropped
        (a follower never acknowledges), acknowledgements held for the fsync are dropped, submits are refused
        with STORAGE_ERROR (nothing appended), what it was waiting for is OUTCOME_UNKNOWN, and its status says
        it leads nothing. To the others it looks like a crashed replica, which Raft is built for. A leader
        first asks its most caught-up follower to campaign now (Raft's TimeoutNow): that also wakes quiet
        followers, whose election timers do not run while the link to this broker is up."""
        if self.storage_fault is not None:
            return
        self.storage_fault = exc if isinstance(exc, StorageError) else StorageError(
            f"{self.group_id}: {exc}", path=str(self.directory))
        log.error("%s: out of the group on broker %d until its disk takes writes again: %s", self.group_id,
                  self.self_id, self.storage_fault.message)
        self.transport.drop_held()
        if self.raft_view.role() == 2:
            target = self.raft_view.most_caught_up_follower()
            if target is not None:
                self.transport.send_control(target, {"type": "timeout_now", "term": self.raft.raftCurrentTerm})
        self._fail_waiting(f"could not write {self.group_id} to its disk")
        self.next_tick = math.inf
        self.publish_status(now)

    def recover_storage(self, now: float) -> bool:
        """Replication thread, about once a second while ``storage_fault`` is set: if the disk takes a write
        and an fsync again, make the journal trustworthy (``DurableJournal.recover``) and rejoin the group. A
        replica that was leading or campaigning comes back as a follower with no leader and a fresh election
        timeout (its log may have been cut, and the others have most likely elected a leader meanwhile); a
        follower comes back as it was, and its leader's next AppendEntries catches it up."""
        if self.storage_fault is None:
            return False
        try:
            cut = self.journal.recover(keep_through_index=self.raft.raftCommitIndex)
        except (StorageError, OSError) as exc:
            log.debug("%s: disk still refuses writes: %s", self.group_id, exc)
            return False
        if self.raft_view.role() != 0:
            self.raft_view.step_down()
            self.quiescence.wake()
        self.storage_fault = None
        self.transport.drop_held()
        self.loop.mark_dirty(self.group_id)
        log.warning("%s: the disk takes writes again; broker %d rejoins the group as a follower (%d unsynced "
                    "journal entries cut)", self.group_id, self.self_id, cut)
        self.publish_status(now)
        return True

    def _tick(self, now: float) -> None:
        self.last_tick = now
        self.ticks += 1
        self._refresh_voters()  # messages handled since the last tick may have appended or cut changes
        quiescence = self.quiescence
        if quiescence.quiet and (self.raft_view.commands_queued() or self._membership_requested):
            quiescence.wake()
        if quiescence.quiet:
            # Nothing to do and no timer to run (node/quiescence.py): a quiet leader must not even run
            # pysyncobj's CheckQuorum, which would find no recent answers and step down.
            quiescence.before_tick()
            self.next_tick = math.inf
            return
        raft = self.raft
        before_gate = raft_clock()
        self.prevote.gate()
        # Due before the gate looked, and still due after it: pre-vote let it through (won, or a transfer).
        raft.election_allowed = raft.election_deadline < before_gate
        try:
            raft.doTick(0.0)
        finally:
            raft.election_allowed = False
        self._refresh_voters()
        quiescence.after_tick(self.raft_view.idle_leader() and not self._membership_requested
                              and not self.journal.unsynced)
        self.next_tick = math.inf if quiescence.quiet \
            else now + min(self._next_timer_s(), limits.replication_idle_tick_max_s)

    def _next_timer_s(self) -> float:
        """Seconds until a timer in pysyncobj's _onTick can fire. A leader: its next AppendEntries
        (heartbeat, ``__newAppendEntriesTime``) or the moment too few followers have answered within the
        leader fallback timeout and it steps down. A follower or candidate: its election deadline (which
        pre-vote's ``gate`` may have moved; a pre-vote reply arrives as a message and marks the group dirty).
        Everything else in a tick (commit, apply, draining commands) follows a message or a submit, which
        mark the group dirty themselves. pysyncobj's timers are on its own clock (``raft_clock``)."""
        raft = self.raft
        clock = raft_clock()
        if raft._SyncObj__raftState == 2:  # leader
            due = raft._SyncObj__newAppendEntriesTime
            fallback = self._fallback_due()
            if fallback is not None:
                due = min(due, fallback)
        else:
            due = raft.election_deadline
        return max(0.0, due - clock)

    def _fallback_due(self) -> float | None:
        """When pysyncobj's leader fallback check would first find too few answering followers (raft clock):
        it needs len(voters) // 2 followers answered within ``leaderFallbackTimeout``, so the answer that
        matters is the (len(voters) // 2)-th most recent."""
        responses = sorted(self.raft._SyncObj__lastResponseTime.values(), reverse=True)
        needed = (len(responses) + 1) // 2
        if needed == 0 or needed > len(responses):
            return None
        return float(responses[needed - 1]) + self.timers.leader_fallback_timeout_s

    def _status_key(self) -> tuple[Any, ...]:
        """Everything ``publish_status`` reads that can change without time passing. Cheap: no sorting, no
        allocation beyond the tuple."""
        raft = self.raft
        leader = raft._getLeader()
        matches = tuple(raft._SyncObj__raftMatchIndex.values()) if raft._SyncObj__raftState == 2 else ()
        return (raft._SyncObj__raftState, leader.broker_id if leader is not None else None, raft.raftCurrentTerm,
                raft.raftCommitIndex, raft.raftLastApplied, self.journal.last_index, self.journal.size_bytes,
                raft._SyncObj__noopIDx, raft.isReady(), len(self.replica_ids), self.voters,
                self._membership_requested, self.loop.network.links_version, matches, self.quiescence.quiet,
                self.storage_fault is not None)

    def publish_status(self, now: float) -> None:
        """Publish a new ``GroupStatus`` when something in it changed (an idle group then costs one tuple per
        tick, not a status). A leader's in-sync set and quorum also age with time (answers older than
        ``replica_lag_time_max_s`` / the fallback timeout), so a leader republishes at least every
        ``replication_status_refresh_s`` as well."""
        key = self._status_key()
        # A quiet leader's view does not age: the links vouch for its followers (_leader_view).
        fresh = key[0] != 2 or self.quiescence.quiet or now - self._published_at < limits.replication_status_refresh_s
        if key == self._published_key and fresh:
            return
        self._build_status(now)
        self.publishes += 1
        self._published_key = self._status_key()  # building may clear _membership_requested
        self._published_at = now

    def _build_status(self, now: float) -> None:
        raft = self.raft
        role = _ROLES.get(raft._SyncObj__raftState, "follower")
        leader = raft._getLeader()
        if self.storage_fault is not None:
            role, leader = "follower", None  # out of the group (fence_storage): it leads and follows no one
        if role == "leader" and self.leader_since is None:
            self.leader_since = now
        elif role != "leader":
            self.leader_since = None
        if role != "leader":
            self._membership_requested = False  # pysyncobj forwarded or failed it; the log decides from now on
        connected = tuple(sorted(b for b in self.replica_ids if b != self.self_id and self.loop.network.is_up(b)))
        in_sync: tuple[int, ...] = ()
        match_index: dict[int, int] = {}
        quorum = False
        if role == "leader":
            in_sync, match_index, quorum = self._leader_view(connected)
        noop_index = raft._SyncObj__noopIDx
        caught_up = role == "leader" and noop_index is not None and raft.raftLastApplied >= noop_index
        if self.status.is_leader and (role != "leader" or not quorum):
            self._fail_waiting(f"lost the leadership of {self.group_id}" if role != "leader"
                               else f"cannot reach a majority of {self.group_id}'s replicas")
        self.status = GroupStatus(
            group_id=self.group_id, role=role, leader_id=leader.broker_id if leader is not None else None,
            term=raft.raftCurrentTerm, commit_index=raft.raftCommitIndex, applied_index=raft.raftLastApplied,
            last_index=self.journal.last_index or 0, in_sync=in_sync, match_index=match_index, connected=connected,
            journal_bytes=self.journal.size_bytes, caught_up=caught_up, quorum=quorum, ready=raft.isReady(),
            voters=tuple(self.replica_ids), membership_pending=self._membership_pending())

    def _leader_view(self, connected: tuple[int, ...]) -> tuple[tuple[int, ...], dict[int, int], bool]:
        """In-sync replicas, match indexes and quorum, from pysyncobj's leader bookkeeping."""
        responses = self.raft._SyncObj__lastResponseTime
        matches = self.raft._SyncObj__raftMatchIndex
        raft_now = raft_clock()  # pysyncobj stamps responses with its own clock
        if self.quiescence.quiet:  # no heartbeats while quiet: a connected follower's link vouches for it
            responses = {node: raft_now for node in responses}
        deadline = raft_now - limits.replica_lag_time_max_s
        match_index = {node.broker_id: int(index) for node, index in matches.items()}
        in_sync = tuple(sorted([self.self_id] + [node.broker_id for node, seen in responses.items()
                                                 if seen > deadline and node.broker_id in connected]))
        fallback_deadline = raft_now - self.timers.leader_fallback_timeout_s
        answering = sum(1 for node, seen in responses.items()
                        if seen > fallback_deadline and node.broker_id in connected)
        return in_sync, match_index, 2 * (answering + 1) > len(self.replica_ids)

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
        self._transfer(preferred)
        log.info("%s: handing leadership to preferred replica %d", self.group_id, preferred)
        return True

    def maybe_force_compaction(self) -> None:
        if self.journal.size_bytes > limits.raft_compaction_bytes:
            self.raft.forceLogCompaction()
            if self.quiescence.quiet:
                self._wake()  # pysyncobj compacts inside a tick, and a quiet group is not ticked

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.snapshotter.close()
        try:
            self.raft.destroy()  # autoTick=False: destroys transport and journal at once (a last fsync)
        except (StorageError, OSError):
            log.exception("%s: closing the journal failed; what it did not sync is not acknowledged", self.group_id)
        self.state_machine.close()


# --- the replication loop -----------------------------------------------------------------------

class ReplicationLoop(NetworkListener):
    """The broker's replication thread: ``node.groups.ReplicationEngine`` over pysyncobj. See the module
    docstring for one pass."""

    def __init__(self, *, self_id: int, network_factory: Callable[[NetworkListener], PeerNetwork],
                 durability: Durability, asyncio_loop: asyncio.AbstractEventLoop, timers: RaftTimers | None = None,
                 flush_interval_s: float = 0.1, leader_rebalance: bool = False,
                 fsync_threads: int = limits.fsync_threads) -> None:
        install_pysyncobj_hooks()
        self.self_id = self_id
        self.timers = timers or RaftTimers()
        self.leader_rebalance = leader_rebalance
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
        # Groups to tick, in the order they became dirty (a dict as an ordered set): a pass ticks them first in,
        # first out, for at most replication_tick_budget_s, and the rest wait for the next pass.
        self._dirty: dict[str, None] = {}
        # Groups' next timer (RaftGroup.next_tick) as a heap of (due, seq, group id): the sweep looks only at
        # the due ones, so idle and quiet groups cost nothing per sweep. At most one live entry per group
        # (RaftGroup.queued_tick); entries it superseded are dropped when they surface.
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(max_workers=fsync_threads,
                                                                 thread_name_prefix="raftmq-fsync")
        self._next_flush = 0.0
        self._housekeeping: list[Callable[[float], None]] = []
        self._next_housekeeping = 0.0
        self.pass_count = 0
        self.fsync_count = 0
        self.pass_traces: list[StageTrace] = []  # traced entries appended in this pass (node/stages.py)
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

    # node.groups.ReplicationEngine (asyncio thread) ------------------------------------------------

    async def open_group(self, spec: GroupSpec, state_machine: StateMachine) -> RaftGroup:
        def make_group() -> RaftGroup:
            group = RaftGroup(spec, self_id=self.self_id, state_machine=state_machine, loop=self)
            state_machine.on_progress()
            self.add_group(group)
            return group

        return await asyncio.wrap_future(self.call(make_group))

    async def close_group(self, group_id: str) -> None:
        await asyncio.wrap_future(self.call(lambda: self.remove_group(group_id)))

    def is_peer_up(self, broker_id: int) -> bool:
        return self.network.is_up(broker_id)

    def set_peer(self, broker_id: int, address: tuple[str, int] | None) -> None:
        """``node.groups.ReplicationEngine.set_peer``: PeerNetwork is single-threaded, so on the replication
        thread (asynchronously; takes effect at the next pass)."""
        peer = None if address is None else PeerAddress(address[0], int(address[1]))
        self.call(lambda: self.network.set_peer(broker_id, peer))

    def peer_links(self) -> list[dict[str, Any]]:
        return self.published_links

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

    def mark_dirty(self, group_id: str) -> None:
        """Replication thread only: tick this group in the current pass."""
        self._dirty[group_id] = None

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
            self._dirty[group.group_id] = None

    def on_peer_down(self, peer_id: int) -> None:
        for group in self.groups.values():
            if group.transport is not None:
                group.transport.peer_down(peer_id)
            group.quiescence.link_down(peer_id)
            self._dirty[group.group_id] = None

    def on_raft_message(self, peer_id: int, group_id: str, message: dict[str, Any]) -> None:
        group = self.groups.get(group_id)
        if group is None or group.transport is None or group.storage_fault is not None:
            return  # not created here yet (or deleted, or out of the group on a storage fault): the sender retries
        group.answer_stale_leader(peer_id, message)
        try:
            group.transport.deliver(peer_id, message)  # a follower appends here
        except (StorageError, OSError) as exc:
            group.fence_storage(exc, time.monotonic())
        self._dirty[group_id] = None

    # group management (replication thread) -------------------------------------------------------

    def add_group(self, group: RaftGroup) -> None:
        invariant(group.group_id not in self.groups, f"group {group.group_id} exists")
        self.groups[group.group_id] = group
        # pysyncobj attached its callbacks after building the transport: tell it which links are up now.
        for peer_id in self.network.up_peers():
            if group.transport is not None:
                group.transport.peer_up(peer_id)
        self._dirty[group.group_id] = None

    def remove_group(self, group_id: str) -> RaftGroup | None:
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.close()
        self._dirty.pop(group_id, None)
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
            # Link timers right after reading: a link's silence is judged on what this pass has read, never
            # on time this thread spent elsewhere.
            self.network.maintain()
            self._run_calls()
            while self._wake_queue:
                self._dirty[self._wake_queue.popleft()] = None
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + limits.replication_sweep_interval_s
                self._mark_due(now)
            ticked = self._tick_dirty(now)
            # The AppendEntries of this pass leave BEFORE the leader's own fsync: the followers' round trip
            # overlaps it (Raft lets a leader persist in parallel with replication). The leader still counts
            # itself only once its entry is durable: pysyncobj computes the commit index only inside doTick
            # (its _onTick, "count = 1" for itself), follower acknowledgements are read only by the next
            # poll, and this pass's fsync (_group_commit, on this thread) finishes before that poll.
            self.network.flush()
            stamp_all(self.pass_traces, SENT)
            # Statuses first: whoever sees a result resolved also sees its commit in the published status.
            for group in ticked:
                group.publish_status(now)
            self._deliver_completions()  # applied results are committed on a majority: no need to wait
            self._group_commit(ticked, now)
            stamp_all(self.pass_traces, FSYNCED)
            self.pass_traces = []
            self.network.flush()  # follower acknowledgements released by _group_commit leave at once
            self._deliver(self._progress(ticked))
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + limits.housekeeping_interval_s
                self.published_links = self.network.link_stats()
                for group in self.groups.values():
                    if group.storage_fault is not None:
                        group.recover_storage(now)
                        continue
                    group.maybe_force_compaction()
                    if self.leader_rebalance:
                        group.maybe_transfer_to_preferred(now)
                for callback in self._housekeeping:
                    try:
                        callback(now)
                    except Exception:  # noqa: BLE001 - housekeeping must not stop replication
                        log.exception("housekeeping callback failed")
            self.pass_count += 1

    def _run_calls(self) -> None:
        """Calls from other threads (opening a group replays its journal: milliseconds each), for at most
        ``replication_calls_budget_s`` per pass: a burst of topic creations must not hold back polling, pings
        and the other groups' ticks (the peers would time the links out)."""
        deadline = time.monotonic() + limits.replication_calls_budget_s
        while self._calls and time.monotonic() < deadline:
            fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

    def _mark_due(self, now: float) -> None:
        """Groups whose pysyncobj timers (heartbeat, election, leader fallback) are due get a tick; the
        others have nothing to do until a message, a command or a link change marks them dirty."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, group_id = heapq.heappop(timers)
            group = self.groups.get(group_id)
            if group is None or due != group.queued_tick:
                continue  # removed, or superseded by an earlier entry
            group.queued_tick = math.inf
            if now >= group.next_tick:
                self._dirty[group_id] = None
            else:
                self._schedule(group)  # its timer moved later since this entry was queued

    def _schedule(self, group: RaftGroup) -> None:
        due = group.next_tick
        if due < group.queued_tick:
            group.queued_tick = due
            heapq.heappush(self._timers, (due, next(self._timer_seq), group.group_id))

    def _tick_dirty(self, now: float) -> list[RaftGroup]:
        """Tick dirty groups, oldest first, for at most ``replication_tick_budget_s``: thousands of groups woken
        at once (a link that came back, a mass election) must not hold back polling and pings, or the peers
        time the links out and wake everything again."""
        ticked = []
        dirty = self._dirty
        deadline = time.monotonic() + limits.replication_tick_budget_s
        while dirty:
            group_id = next(iter(dirty))
            del dirty[group_id]
            group = self.groups.get(group_id)
            if group is not None:
                group.tick(now)
                self._schedule(group)
                ticked.append(group)
                if len(ticked) % 64 == 0 and time.monotonic() >= deadline:
                    break
        return ticked

    @staticmethod
    def _progress(ticked: list[RaftGroup]) -> list[Callable[[], None]]:
        progress = []
        for group in ticked:
            notify = group.state_machine.on_progress()
            if notify is not None:
                progress.append(notify)
        return progress

    def _group_commit(self, ticked: list[RaftGroup], now: float) -> None:
        if self.durability is Durability.INTERVAL:
            if now < self._next_flush:
                return
            self._next_flush = now + self.flush_interval_s
            ticked = list(self.groups.values())
        unsynced = [group for group in ticked if group.journal.unsynced and group.storage_fault is None]
        if self.durability is Durability.NEVER:
            for group in unsynced:
                group.journal.sync()  # clears the flag; no fsync
            return
        if len(unsynced) == 1:
            failures = [_sync_journal(unsynced[0])]
        else:
            failures = list(self._fsync_pool.map(_sync_journal, unsynced))
        self.fsync_count += len(unsynced)
        for group, failure in zip(unsynced, failures, strict=True):
            if failure is not None:
                group.fence_storage(failure, now)  # its held acknowledgements are dropped, never sent
            elif group.transport is not None:
                group.transport.release_held()

    def _deliver_completions(self) -> None:
        """Hand results that need no fsync of this pass to asyncio now (a committed entry is already on a
        majority's disks); acks=1 results (``after_sync``) wait for ``_deliver``."""
        with self._completions_lock:
            batch, self._completions = self._completions, []
        if batch:
            try:
                self.asyncio_loop.call_soon_threadsafe(_resolve_batch, batch, [])
            except RuntimeError:
                pass  # the event loop is closed: we are shutting down

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


def _sync_journal(group: RaftGroup) -> BaseException | None:
    """fdatasync one group's journal (on the fsync pool); the disk's refusal is returned, not raised, so one
    failing journal does not hide the others' results."""
    try:
        group.journal.sync()
    except (StorageError, OSError) as exc:
        return exc
    return None


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


__all__ = ["RaftGroup", "ReplicationLoop", "error_for_fail_reason", "install_pysyncobj_hooks"]
