"""The replication-group protocol: what the broker needs from a Raft group, whoever implements it.

Two implementations: ``node/replication.py`` (pysyncobj, one replication thread, the peer transport of
``node/raft_transport.py``) in every real broker, and ``node/memory_groups.py`` (deterministic, in memory, on
the event loop) for the in-process cluster the tests use. The rest of the broker (replica manager, service,
controller, metadata) sees only the names below, so it never touches pysyncobj.

* ``ReplicationEngine``: one per broker; opens and closes the groups this broker is a replica of, runs
  housekeeping where the state machines run, and reports the peer links.
* ``ReplicationGroup``: one group on this broker: ``submit`` a command, read the published ``status``
  (role, leader, term, commit/applied index, in-sync replicas, quorum), hand leadership over.
* ``StateMachine``: what a group replicates (``node/partition.py``, ``node/metadata_sm.py``): deterministic
  ``apply`` of committed entries, small snapshots, and installation of a leader's snapshot.

No pysyncobj, sockets or threads here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from raftmq.node.stages import StageTrace


@dataclass(frozen=True)
class GroupStatus:
    """One group as its engine last saw it (published after each step; read by any thread)."""

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
    # timeout. Without it nothing can commit; the leader will step down when the timeout expires.
    quorum: bool = False
    # This replica has applied every entry that was committed when it started (replay is over).
    ready: bool = False
    # The group's voters as this replica knows them, a membership change it has appended included (Raft
    # applies a configuration entry when it is appended, not when it commits).
    voters: tuple[int, ...] = ()
    # A membership change is appended but not yet committed (a leader refuses another until it commits).
    membership_pending: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


@dataclass(frozen=True)
class AppendInfo:
    """acks=1 result: the entry is in the leader's own journal (fsynced under ``always``)."""

    raft_index: int
    leader_epoch: int


@dataclass(frozen=True)
class MembershipChange:
    """One single-server membership change of a group (Raft's one-at-a-time rule): add a voter or remove one."""

    add: int | None = None
    remove: int | None = None

    def __post_init__(self) -> None:
        if (self.add is None) == (self.remove is None):
            raise ValueError("a membership change adds one voter or removes one, never both or neither")


@dataclass(frozen=True)
class GroupSpec:
    """Which group to open on this broker and where its files live."""

    group_id: str
    directory: Path
    replica_ids: tuple[int, ...]
    # The replica that should lead when it is healthy (Kafka's preferred leader); None: no preference.
    preferred_replica: int | None = None


class StateMachine(Protocol):
    """A deterministic state machine applied on every replica of a group (on the engine's thread)."""

    def apply(self, index: int, term: int, command: bytes) -> Any:
        """Apply a committed entry. MUST ignore ``index <= applied_index`` (replay after restart)."""

    def restore(self, state: bytes | None) -> None:
        """At start, before any entry: the state bytes of the local snapshot (None: there is none)."""

    def snapshot(self) -> bytes:
        """State at the current applied index, made durable first (called at compaction)."""

    def open_snapshot_stream(self, state: bytes, peer_hint: dict[str, Any]) -> BinaryIO | None:
        """Extra bytes a follower needs besides ``state`` (records), or None. ``peer_hint`` is what that
        follower attached to its acknowledgements (see ``bind_annotations``)."""

    def install(self, state: bytes, payload: BinaryIO) -> None:
        """Replace/extend local state with a leader's snapshot and its payload (follower catch-up)."""

    def bind_annotations(self, annotations: dict[str, Any]) -> None:
        """A dict this replica attaches to its acknowledgements (e.g. its log end offset); keep it current."""

    def on_progress(self) -> Callable[[], None] | None:
        """Called after each step of the group; may return a callable to run on the event loop."""

    def close(self) -> None:
        """Release files (the group is being closed)."""


class ReplicationGroup(Protocol):
    """One Raft group on this broker."""

    group_id: str
    replica_ids: list[int]

    @property
    def status(self) -> GroupStatus: ...

    def submit(self, command: bytes, *, resolve_on_append: bool = False,
               trace: StageTrace | None = None) -> asyncio.Future[Any]:
        """Propose ``command`` (event loop thread). The future resolves with the state machine's apply result
        once the entry is committed and applied here (or, with ``resolve_on_append``, with an AppendInfo as
        soon as the entry is in this broker's own log), or fails with a RaftMQError: BufferFull or
        LeaderNotAvailable (definite: nothing appended), OutcomeUnknown (maybe committed). ``trace``: the
        engine stamps the points it sees (node/stages.py), or ignores it."""

    def forget_append_waiter(self, command: bytes) -> None:
        """The caller stopped waiting for ``command``'s append (a timeout)."""

    def transfer_leadership(self, to_broker: int) -> None:
        """Leader only: hand leadership to a caught-up replica (no-op if refused)."""

    def change_membership(self, change: MembershipChange) -> asyncio.Future[None]:
        """Leader only (event loop thread): add or remove one voter. The future resolves once the change is
        committed; it fails with NotLeader / LeaderNotAvailable (definite: nothing appended),
        REASSIGNMENT_IN_PROGRESS (another change is not committed yet: definite) or OutcomeUnknown. Adding a
        voter that is already one, or removing one that is not, resolves at once (idempotent)."""


class ReplicationEngine(Protocol):
    """The groups of one broker and the machinery they share (threads, peer links, timers)."""

    @property
    def failure(self) -> BaseException | None:
        """Set when the engine died: the broker must stop answering as if it were fine."""

    def start(self) -> None:
        """Start (binds the peer port: OSError when it cannot)."""

    def stop(self) -> None:
        """Close every group and stop. Blocking; idempotent."""

    async def open_group(self, spec: GroupSpec, state_machine: StateMachine) -> ReplicationGroup:
        """Open (or reopen after a restart) this broker's replica of a group."""

    async def close_group(self, group_id: str) -> None:
        """Close this broker's replica of a group (its files stay)."""

    def add_housekeeping(self, callback: Callable[[float], None]) -> None:
        """Run ``callback(now)`` about once a second where the state machines run (retention, checks)."""

    def is_peer_up(self, broker_id: int) -> bool:
        """Whether this broker has a working link to ``broker_id``."""

    def set_peer(self, broker_id: int, address: tuple[str, int] | None) -> None:
        """Learn (or forget, with None) where broker ``broker_id`` listens for peers: brokers added after this
        one started are known from the metadata's broker registry, not from the config."""

    def peer_links(self) -> list[dict[str, Any]]:
        """One row per peer link that is up (for metadata and status)."""


__all__ = ["AppendInfo", "GroupSpec", "MembershipChange", "GroupStatus", "ReplicationEngine", "ReplicationGroup",
           "StateMachine"]
