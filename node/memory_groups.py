"""Replication groups in memory: a deterministic stand-in for Raft, for brokers that run in one process.

``MemoryNetwork`` is the world several in-process brokers share: which brokers run, which links are cut,
a manual clock and a seed. Each broker gets a ``MemoryEngine`` (``node.groups.ReplicationEngine``) from it;
each group lives once in the network as a ``_Core`` (one log, one commit index, one term) with a
``MemoryGroup`` (``node.groups.ReplicationGroup``) per replica. Everything runs on the event loop in
``step()``, which the network schedules after every change, so a test sees the same history for the
same seed and the same calls, without threads, sockets or sleeps.

The model keeps the Raft rules the broker relies on, not Raft's message-level machinery:

* a leader exists only where it can reach a majority of running replicas; an election happens at once
  when a group has never had a leader, else once the old leader has been gone for the minimum election
  timeout on the clock (``advance``). The winner has the longest log among a connected majority (so it
  holds every committed entry), preferring the preferred replica, then the lowest id. Entries it lacks
  are discarded; their proposers get OUTCOME_UNKNOWN. Each new leader appends a no-op of its term.
* a follower connected to the leader has every entry of the leader's log; an entry commits once a
  majority holds it and it is of the leader's term (or precedes such an entry); replicas apply what they
  hold up to the commit index, in order. A leader that cannot reach a majority keeps its role for
  ``leader_fallback_timeout_s`` with ``quorum`` False (CheckQuorum), then steps down.
* ``compact(group_id)`` takes a snapshot on every running replica and drops the entries below the
  leader's; a follower that is behind it later gets the leader's snapshot and payload through
  ``StateMachine.install`` (the follower's annotations tell the leader where its log ends).
* ``resolve_on_append`` resolves as soon as the entry is in the leader's log; a follower's ``submit`` is
  forwarded to a connected leader and resolves when it has applied the entry there, as pysyncobj does.
* membership (``change_membership``), as ``node/replication.py`` does it over pysyncobj: the leader appends
  a configuration entry, which takes effect at once (on append: the new voters count for commits and
  elections, an added voter starts to receive the log, a removed one stops); one change at a time (the
  next is refused until this one commits); the leader does not remove itself (it hands leadership to a
  caught-up voter and answers NOT_LEADER). A removed replica, like pysyncobj's, usually never receives the
  entry that removed it; it neither votes nor campaigns any more. A replica of a broker that is not a voter
  opens empty and catches up like any follower once it is added.

Replica state that the real engine keeps on disk (the journal prefix a replica holds, its snapshot) is
kept in the network, so a broker stopped and started again with the same data directory sees it again.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import LeaderNotAvailable, NotLeader, OutcomeUnknown, RaftMQError, ReassignmentInProgress
from raftmq.node.config import RaftTimers
from raftmq.node.groups import AppendInfo, GroupSpec, GroupStatus, MembershipChange, StateMachine
from raftmq.node.stages import StageTrace

log = logging.getLogger(__name__)

_NO_OP = b""  # a leader's first entry of its term (never given to a state machine)


class ManualClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class _Entry:
    term: int
    command: bytes
    change: MembershipChange | None = None  # a configuration entry (never given to a state machine)


@dataclass
class _Waiter:
    broker_id: int  # the replica that must apply the entry before the future resolves
    term: int
    future: asyncio.Future[Any]


@dataclass
class _Snapshot:
    index: int
    term: int
    state: bytes
    voters: tuple[int, ...] = ()  # the group's voters at ``index``


@dataclass
class _Replica:
    """One replica of a group: what it holds (``match``: the length of its log prefix) and has applied."""

    broker_id: int
    match: int = 0
    applied: int = 0
    snapshot: _Snapshot | None = None  # its own durable snapshot (survives a restart)
    group: MemoryGroup | None = None  # None while its broker is stopped
    last_contact_s: float = 0.0  # when it last heard from (or was) the leader
    initial_voters: tuple[int, ...] = ()  # what its broker believed when it first opened it (GroupSpec)


@dataclass
class _Core:
    """A group's one true history, as far as the running replicas can know it."""

    group_id: str
    replica_ids: tuple[int, ...]  # the voters: the configuration at the end of the leader's log
    preferred: int | None
    replicas: dict[int, _Replica]
    entries: list[_Entry] = field(default_factory=list)  # entries after ``base``
    base: _Snapshot = field(default_factory=lambda: _Snapshot(0, 0, b""))
    configs: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (index, voters) after ``base``
    term: int = 0
    leader: int | None = None
    commit: int = 0
    noop_index: int = 0
    leaderless_since_s: float | None = None  # None: never had a leader
    quorum_lost_since_s: float | None = None
    waiters: dict[int, list[_Waiter]] = field(default_factory=dict)

    @property
    def last_index(self) -> int:
        return self.base.index + len(self.entries)

    def term_at(self, index: int) -> int:
        return self.base.term if index == self.base.index else self.entries[index - self.base.index - 1].term

    def majority(self) -> int:
        return len(self.replica_ids) // 2 + 1

    def config_at(self, index: int) -> tuple[int, ...]:
        """The voters after the entry at ``index`` (Raft: the newest configuration entry up to it)."""
        for at, voters in reversed(self.configs):
            if at <= index:
                return voters
        return self.base.voters

    def last_config_index(self) -> int:
        return self.configs[-1][0] if self.configs else 0

    def append_config(self, change: MembershipChange) -> int:
        """The leader appends a configuration entry; it takes effect at once (on append)."""
        voters = set(self.replica_ids)
        if change.add is not None:
            voters.add(change.add)
            self.replicas.setdefault(change.add, _Replica(change.add))
        else:
            voters.discard(change.remove)
        self.entries.append(_Entry(self.term, _NO_OP, change))
        index = self.last_index
        self.replica_ids = tuple(sorted(voters))
        self.configs.append((index, self.replica_ids))
        return index

    def truncate(self, keep: int) -> None:
        """Drop the entries after ``keep`` (a new leader lacks them); their configurations go with them."""
        del self.entries[keep - self.base.index:]
        self.configs = [(at, voters) for at, voters in self.configs if at <= keep]
        self.replica_ids = self.config_at(self.last_index)

    def rebase(self, snapshot: _Snapshot) -> None:
        """The log now starts after ``snapshot`` (compaction)."""
        self.entries = self.entries[snapshot.index - self.base.index:]
        self.configs = [(at, voters) for at, voters in self.configs if at > snapshot.index]
        self.base = snapshot

    def voters_of(self, replica: _Replica) -> tuple[int, ...]:
        """The voters as ``replica``'s own log says (what pysyncobj's replica would report)."""
        if replica.match == 0 or replica.match < self.base.index:
            return replica.initial_voters or self.base.voters  # nothing replicated to it yet
        return self.config_at(replica.match)


class MemoryNetwork:
    """Brokers in one process and the links between them; steps every group deterministically."""

    def __init__(self, *, timers: RaftTimers | None = None, clock: ManualClock | None = None, seed: int = 0) -> None:
        self.timers = timers or RaftTimers()
        self.clock = clock or ManualClock()
        self.rng = random.Random(seed)
        self.cores: dict[str, _Core] = {}
        self.running: set[int] = set()
        self.cut: set[frozenset[int]] = set()
        self._scheduled = False
        self._housekeeping: dict[int, list[Callable[[float], None]]] = {}
        self.steps = 0
        self.snapshots_installed = 0

    # --- the world ------------------------------------------------------------------------------

    def engine(self, broker_id: int) -> MemoryEngine:
        return MemoryEngine(self, broker_id)

    def connected(self, a: int, b: int) -> bool:
        return a == b or (a in self.running and b in self.running and frozenset((a, b)) not in self.cut)

    def partition(self, *sides: set[int] | list[int]) -> None:
        """Cut every link between brokers on different sides (brokers on no side keep their links)."""
        groups = [set(side) for side in sides]
        for i, left in enumerate(groups):
            for right in groups[i + 1:]:
                self.cut.update(frozenset((a, b)) for a in left for b in right)
        self.step()  # a cut link is seen at once (like a closed connection): statuses change now

    def isolate(self, broker_id: int) -> None:
        others = {b for core in self.cores.values() for b in core.replica_ids} - {broker_id}
        self.partition({broker_id}, others)

    def heal(self) -> None:
        self.cut.clear()
        self.step()

    def advance(self, seconds: float) -> None:
        """Move the clock and step (elections, CheckQuorum and housekeeping see the new time)."""
        self.clock.advance(seconds)
        for callbacks in list(self._housekeeping.values()):
            for callback in list(callbacks):
                callback(self.clock())
        self.step()

    def transfer(self, group_id: str, broker_id: int) -> None:
        """Make ``broker_id`` the leader of ``group_id`` now (a leadership transfer; it must be connected to
        a majority and hold the leader's whole log, which a connected follower always does here)."""
        core = self.cores[group_id]
        self.step()
        if core.leader == broker_id:
            return
        target = core.replicas[broker_id]
        _check(broker_id in core.replica_ids and target.group is not None and self._reaches_majority(core, broker_id)
               and target.match == core.last_index and target.applied >= core.base.index,
               f"broker {broker_id} cannot lead {group_id} now (not running, cut off, or behind)")
        self._elect(core, broker_id)
        self.step()

    def compact(self, group_id: str) -> None:
        """Every running replica snapshots; the log keeps only what follows the leader's snapshot."""
        core = self.cores[group_id]
        self.step()
        for replica in core.replicas.values():
            if replica.group is not None and replica.applied > 0:
                replica.snapshot = _Snapshot(replica.applied, core.term_at(replica.applied),
                                             replica.group.state_machine.snapshot(), core.config_at(replica.applied))
        leader = core.replicas.get(core.leader) if core.leader is not None else None
        if leader is not None and leader.snapshot is not None and leader.snapshot.index > core.base.index:
            core.rebase(leader.snapshot)
        self.schedule()

    # --- stepping -------------------------------------------------------------------------------

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_step)

    def _scheduled_step(self) -> None:
        self._scheduled = False
        self.step()

    def step(self) -> None:
        self.steps += 1
        now = self.clock()
        for core in list(self.cores.values()):
            self._step_leadership(core, now)
            if core.leader is not None:
                self._replicate(core, now)
                self._advance_commit(core)
            self._apply(core)
            self._publish(core, now)

    def _running_replica(self, core: _Core, broker_id: int) -> bool:
        replica = core.replicas.get(broker_id)
        return replica is not None and replica.group is not None and broker_id in self.running

    def _reaches_majority(self, core: _Core, broker_id: int) -> bool:
        reachable = [b for b in core.replica_ids if self._running_replica(core, b) and self.connected(broker_id, b)]
        return len(reachable) >= core.majority()

    def _step_leadership(self, core: _Core, now: float) -> None:
        if core.leader is not None:
            if not self._running_replica(core, core.leader):
                self._lose_leader(core, now)
            elif self._reaches_majority(core, core.leader):
                core.quorum_lost_since_s = None
            else:
                if core.quorum_lost_since_s is None:
                    core.quorum_lost_since_s = now
                lost_for_s = now - core.quorum_lost_since_s
                if lost_for_s >= self.timers.election_timeout_min_s:
                    # The majority's election timer has fired: it elects one of its own, deposing the cut-off
                    # leader (which had refused writes since the cut: quorum False).
                    candidate = self._candidate(core, exclude=core.leader)
                    if candidate is not None:
                        self._elect(core, candidate)
                        return
                if lost_for_s >= self.timers.leader_fallback_timeout_s:
                    self._lose_leader(core, core.quorum_lost_since_s)  # CheckQuorum: it steps down
        if core.leaderless_since_s is None and core.preferred in self.running \
                and not self._running_replica(core, core.preferred):
            return  # the first election waits for a running preferred replica to open (its timeout is shortest)
        if core.leader is None and (core.leaderless_since_s is None
                                    or now - core.leaderless_since_s >= self.timers.election_timeout_min_s):
            candidate = self._candidate(core)
            if candidate is not None:
                self._elect(core, candidate)

    def _lose_leader(self, core: _Core, now: float) -> None:
        core.leader = None
        core.quorum_lost_since_s = None
        core.leaderless_since_s = now

    def _candidate(self, core: _Core, exclude: int | None = None) -> int | None:
        """The replica that wins an election now: it reaches a majority, and among the replicas of that
        majority its log is the longest (ties: the preferred replica, then the lowest id)."""
        best: tuple[int, int, int] | None = None
        winner = None
        for broker_id in core.replica_ids:
            if broker_id == exclude or not self._running_replica(core, broker_id) \
                    or not self._reaches_majority(core, broker_id) \
                    or core.replicas[broker_id].applied < core.base.index:  # it needs a snapshot first
                continue
            voters = [b for b in core.replica_ids if self._running_replica(core, b) and self.connected(broker_id, b)]
            mine = core.replicas[broker_id].match
            if sum(1 for b in voters if core.replicas[b].match <= mine) < core.majority():
                continue  # a majority would not vote for a shorter log
            key = (mine, 1 if broker_id == core.preferred else 0, -broker_id)
            if best is None or key > best:
                best, winner = key, broker_id
        return winner

    def _elect(self, core: _Core, broker_id: int) -> None:
        """``broker_id`` becomes leader in a new term: what it lacks is gone, its first entry is a no-op."""
        keep = core.replicas[broker_id].match
        for index in range(keep + 1, core.last_index + 1):
            self._fail_waiters(core, index, OutcomeUnknown("leadership changed before the entry committed"))
        core.truncate(keep)
        for replica in core.replicas.values():
            replica.match = min(replica.match, keep)
        core.term += 1
        core.leader = broker_id
        core.leaderless_since_s = None
        core.quorum_lost_since_s = None
        core.entries.append(_Entry(core.term, _NO_OP))
        core.noop_index = core.last_index
        core.replicas[broker_id].match = core.last_index
        log.debug("%s: broker %d leads term %d", core.group_id, broker_id, core.term)

    def _replicate(self, core: _Core, now: float) -> None:
        leader = core.replicas[core.leader]  # type: ignore[index]
        leader.last_contact_s = now
        for broker_id in core.replica_ids:  # the leader sends to the voters of its configuration only
            replica = core.replicas[broker_id]
            if replica is leader or not self._running_replica(core, broker_id) \
                    or not self.connected(leader.broker_id, broker_id):
                continue
            replica.last_contact_s = now
            if replica.applied < core.base.index:
                self._install_snapshot(core, leader, replica)
            replica.match = core.last_index

    def _install_snapshot(self, core: _Core, leader: _Replica, follower: _Replica) -> None:
        assert leader.group is not None and follower.group is not None
        hint = dict(follower.group.annotations)
        payload = leader.group.state_machine.open_snapshot_stream(core.base.state, hint)
        follower.group.state_machine.install(core.base.state, payload or io.BytesIO(b""))
        if payload is not None:
            payload.close()
        follower.snapshot = core.base
        follower.match = follower.applied = core.base.index
        self.snapshots_installed += 1

    def _advance_commit(self, core: _Core) -> None:
        for index in range(core.last_index, core.commit, -1):
            holding = sum(1 for b in core.replica_ids
                          if core.replicas.get(b) is not None and core.replicas[b].match >= index)
            if holding >= core.majority() and core.term_at(index) == core.term:
                core.commit = index
                return

    def _apply(self, core: _Core) -> None:
        for replica in core.replicas.values():
            group = replica.group
            if group is None:
                continue
            known_commit = core.commit if self._knows_commit(core, replica.broker_id) else replica.applied
            upto = min(known_commit, replica.match) if replica.applied >= core.base.index else replica.applied
            while replica.applied < upto:
                index = replica.applied + 1
                entry = core.entries[index - core.base.index - 1]
                result = None if entry.command == _NO_OP else group.state_machine.apply(index, entry.term,
                                                                                         entry.command)
                replica.applied = index
                self._resolve_waiters(core, index, replica.broker_id, entry.term, result)
            notify = group.state_machine.on_progress()
            if notify is not None:
                notify()

    def _knows_commit(self, core: _Core, broker_id: int) -> bool:
        return core.leader is not None and self.connected(core.leader, broker_id)

    def _resolve_waiters(self, core: _Core, index: int, broker_id: int, term: int, result: Any) -> None:
        waiters = core.waiters.get(index)
        if not waiters:
            return
        for waiter in [w for w in waiters if w.broker_id == broker_id]:
            waiters.remove(waiter)
            if waiter.future.done():
                continue
            if waiter.term != term:
                waiter.future.set_exception(OutcomeUnknown("the entry's slot went to another leader's entry"))
            else:
                waiter.future.set_result(result)
        if not waiters:
            del core.waiters[index]

    def _fail_waiters(self, core: _Core, index: int, error: Exception) -> None:
        for waiter in core.waiters.pop(index, []):
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _publish(self, core: _Core, now: float) -> None:
        for replica in core.replicas.values():
            if replica.group is not None:
                replica.group.status = self._status_of(core, replica, now)

    def _status_of(self, core: _Core, replica: _Replica, now: float) -> GroupStatus:
        me = replica.broker_id
        leads = core.leader == me
        connected = tuple(b for b in core.replica_ids if b != me and self._running_replica(core, b)
                          and self.connected(me, b))
        in_sync: tuple[int, ...] = ()
        match_index: dict[int, int] = {}
        quorum = False
        if leads:
            lag_s = limits.replica_lag_time_max_s
            in_sync = tuple(sorted([me] + [b for b in connected if now - core.replicas[b].last_contact_s < lag_s]))
            match_index = {b: r.match for b, r in core.replicas.items() if b != me}
            quorum = core.quorum_lost_since_s is None
        knows = self._knows_commit(core, me)
        commit_seen = min(core.commit, replica.match) if knows else replica.applied
        pending = any(commit_seen < at <= replica.match for at, _voters in core.configs)
        return GroupStatus(
            group_id=core.group_id, role="leader" if leads else "follower",
            leader_id=core.leader if knows else None, term=core.term, commit_index=min(core.commit, replica.match)
            if knows else replica.applied, applied_index=replica.applied, last_index=replica.match,
            in_sync=in_sync, match_index=match_index, connected=connected, caught_up=leads
            and replica.applied >= core.noop_index, quorum=quorum, ready=replica.applied >= (
                min(core.commit, replica.match) if knows else replica.applied),
            voters=core.voters_of(replica), membership_pending=pending)

    # --- membership -----------------------------------------------------------------------------

    def membership_refusal(self, core: _Core, broker_id: int) -> RaftMQError | None:
        """Why ``broker_id`` cannot start a membership change of ``core`` now (None: it can)."""
        if core.leader != broker_id:
            if core.leader is None or not self.connected(broker_id, core.leader):
                return LeaderNotAvailable(f"{core.group_id} has no leader right now; nothing was appended")
            return NotLeader(f"broker {broker_id} is not the leader of {core.group_id}", leader_id=core.leader)
        if core.replicas[broker_id].applied < core.noop_index:
            return LeaderNotAvailable(f"the new leader of {core.group_id} has not committed its first entry yet")
        if core.last_config_index() > core.commit:
            return ReassignmentInProgress(f"{core.group_id}: the previous membership change is not committed yet")
        return None

    def hand_over(self, core: _Core, leader_id: int) -> None:
        """The leader asked to remove itself: leadership goes to a caught-up voter if there is one."""
        for broker_id in core.replica_ids:
            replica = core.replicas[broker_id]
            if broker_id != leader_id and self._running_replica(core, broker_id) \
                    and self.connected(leader_id, broker_id) and replica.match == core.last_index \
                    and replica.applied >= core.base.index:
                self._elect(core, broker_id)
                self.schedule()
                return


class MemoryGroup:
    """One replica of an in-memory group (``node.groups.ReplicationGroup``)."""

    def __init__(self, network: MemoryNetwork, core: _Core, broker_id: int, state_machine: StateMachine) -> None:
        self.network = network
        self.core = core
        self.group_id = core.group_id
        self.broker_id = broker_id
        self.state_machine = state_machine
        self.annotations: dict[str, Any] = {}
        self.status = GroupStatus(group_id=core.group_id)
        self._append_waiters: dict[bytes, asyncio.Future[Any]] = {}

    def submit(self, command: bytes, *, resolve_on_append: bool = False,
               trace: StageTrace | None = None) -> asyncio.Future[Any]:  # noqa: ARG002 - no stages in memory
        network, core = self.network, self.core
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        network.step()
        if core.leader is None or not network.connected(self.broker_id, core.leader):
            future.set_exception(LeaderNotAvailable("no Raft leader; nothing was appended"))
            return future
        core.entries.append(_Entry(core.term, command))
        index = core.last_index
        core.replicas[core.leader].match = index
        if resolve_on_append and core.leader == self.broker_id:
            future.set_result(AppendInfo(index, core.term))
        else:
            core.waiters.setdefault(index, []).append(_Waiter(self.broker_id, core.term, future))
        network.schedule()
        return future

    @property
    def replica_ids(self) -> list[int]:
        """The voters as this replica's log says (like ``RaftGroup.replica_ids``)."""
        return list(self.core.voters_of(self.core.replicas[self.broker_id]))

    def forget_append_waiter(self, command: bytes) -> None:
        return None  # appends resolve at once here

    def transfer_leadership(self, to_broker: int) -> None:
        self.network.transfer(self.group_id, to_broker)

    def change_membership(self, change: MembershipChange) -> asyncio.Future[None]:
        """See ``node.groups.ReplicationGroup.change_membership``."""
        network, core = self.network, self.core
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        network.step()
        refusal = network.membership_refusal(core, self.broker_id)
        if refusal is not None:
            future.set_exception(refusal)
            return future
        if change.add in core.replica_ids or (change.remove is not None and change.remove not in core.replica_ids):
            future.set_result(None)  # already so: idempotent
            return future
        if change.remove == self.broker_id:
            network.hand_over(core, self.broker_id)
            future.set_exception(NotLeader(
                f"broker {self.broker_id} leads {self.group_id} and is the voter to remove: leadership is being "
                "handed over; nothing was appended, retry at the new leader"))
            return future
        index = core.append_config(change)
        core.replicas[self.broker_id].match = index
        core.waiters.setdefault(index, []).append(_Waiter(self.broker_id, core.term, future))
        network.schedule()
        return future


class MemoryEngine:
    """One broker's groups in a MemoryNetwork (``node.groups.ReplicationEngine``)."""

    def __init__(self, network: MemoryNetwork, broker_id: int) -> None:
        self.network = network
        self.broker_id = broker_id
        self.groups: dict[str, MemoryGroup] = {}
        self.failure: BaseException | None = None

    def start(self) -> None:
        self.network.running.add(self.broker_id)
        self.network._housekeeping[self.broker_id] = []

    def stop(self) -> None:
        for group_id in list(self.groups):
            self._close(group_id)
        self.network.running.discard(self.broker_id)
        self.network._housekeeping.pop(self.broker_id, None)
        try:
            self.network.schedule()
        except RuntimeError:
            pass  # no running event loop: nothing left to step

    async def open_group(self, spec: GroupSpec, state_machine: StateMachine) -> MemoryGroup:
        core = self.network.cores.get(spec.group_id)
        voters = tuple(sorted(spec.replica_ids))
        if core is None:
            core = _Core(spec.group_id, voters, spec.preferred_replica,
                         {b: _Replica(b, initial_voters=voters) for b in spec.replica_ids},
                         base=_Snapshot(0, 0, b"", voters))
            self.network.cores[spec.group_id] = core
        replica = core.replicas.get(self.broker_id)
        if replica is None or (self.broker_id not in core.replica_ids and replica.group is None):
            # Not a voter (a replica about to be added, or one removed before): it starts empty, as a new
            # replica directory does, and catches up once it is added.
            replica = core.replicas[self.broker_id] = _Replica(self.broker_id, initial_voters=voters)
        group = MemoryGroup(self.network, core, self.broker_id, state_machine)
        state_machine.bind_annotations(group.annotations)
        state_machine.restore(replica.snapshot.state if replica.snapshot is not None else None)
        replica.applied = replica.snapshot.index if replica.snapshot is not None else 0  # replay from there
        replica.group = group
        self.groups[spec.group_id] = group
        self.network.step()
        return group

    async def close_group(self, group_id: str) -> None:
        self._close(group_id)
        self.network.schedule()

    def _close(self, group_id: str) -> None:
        group = self.groups.pop(group_id, None)
        if group is None:
            return
        group.core.replicas[self.broker_id].group = None
        group.state_machine.close()

    def add_housekeeping(self, callback: Callable[[float], None]) -> None:
        self.network._housekeeping.setdefault(self.broker_id, []).append(callback)

    def is_peer_up(self, broker_id: int) -> bool:
        return self.network.connected(self.broker_id, broker_id) and broker_id in self.network.running

    def set_peer(self, broker_id: int, address: tuple[str, int] | None) -> None:
        return None  # every broker of the network reaches every other: there are no addresses

    def peer_links(self) -> list[dict[str, Any]]:
        return [{"peer_id": b, "dialer": b < self.broker_id, "remote": f"memory:{b}"}
                for b in sorted(self.network.running) if b != self.broker_id and self.is_peer_up(b)]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


__all__ = ["ManualClock", "MemoryEngine", "MemoryGroup", "MemoryNetwork"]
