"""Raft groups over the multiplexed peer transport, in one process: three ReplicationLoops (three peer ports on
loopback, real sockets and pysyncobj), several groups sharing one connection per broker pair.

Goal: leaders are elected for every group, committed commands are applied on every replica in the same order,
a restarted replica replays its journal without applying anything twice, and a replica that missed a compaction
catches up through a snapshot. Method: a tiny list-appending state machine per group."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from raftmq.cluster import commands, limits
from raftmq.cluster.errors import OutcomeUnknown
from raftmq.deploy.local_cluster import find_free_ports
from raftmq.node.config import Durability, PeerAddress, RaftTimers
from raftmq.node.groups import GroupSpec
from raftmq.node.raft_transport import NetworkListener, PeerNetwork
from raftmq.node.replication import RaftGroup, ReplicationLoop
from raftmq.node.stages import APPENDED, APPLIED, COMMITTED, FSYNCED, SENT, SUBMITTED, StageTrace

from tests.conftest import wait_for_condition
from tests.list_machine import ListMachine

TIMERS = RaftTimers()


class Node:
    def __init__(self, broker_id: int, ports: dict[int, int], root: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.broker_id = broker_id
        self.ports = ports
        self.root = root
        self.loop = loop
        self.machines: dict[str, ListMachine] = {}
        self.replication: ReplicationLoop | None = None
        self.groups: dict[str, RaftGroup] = {}

    def start(self, group_ids: list[str]) -> None:
        peers = {b: PeerAddress("127.0.0.1", p) for b, p in self.ports.items() if b != self.broker_id}

        def factory(listener: NetworkListener) -> PeerNetwork:
            return PeerNetwork(self_id=self.broker_id, cluster_id="test",
                               listen=PeerAddress("127.0.0.1", self.ports[self.broker_id]), peers=peers,
                               listener=listener)

        self.replication = ReplicationLoop(self_id=self.broker_id, network_factory=factory,
                                           durability=Durability.ALWAYS, asyncio_loop=self.loop, timers=TIMERS)
        self.replication.start()
        for group_id in group_ids:
            machine = self.machines[group_id] = ListMachine()

            def make(group_id: str = group_id, machine: ListMachine = machine) -> RaftGroup:
                assert self.replication is not None
                spec = GroupSpec(group_id, self.root / f"n{self.broker_id}" / group_id, tuple(sorted(self.ports)))
                group = RaftGroup(spec, self_id=self.broker_id, state_machine=machine, loop=self.replication)
                self.replication.add_group(group)
                return group

            self.groups[group_id] = self.replication.call(make).result(timeout=10)

    def stop(self) -> None:
        if self.replication is not None:
            self.replication.stop()
            self.replication = None


def _submit(group: RaftGroup, payload: bytes, proposal_id: int) -> asyncio.Future[Any]:
    return group.submit(commands.encode(1, proposal_id, 0, payload))


async def _leader(nodes: dict[int, Node], group_id: str) -> Node:
    def find() -> Node | None:
        for node in nodes.values():
            if node.replication is not None and node.groups[group_id].status.is_leader:
                return node
        return None

    return await wait_for_condition(find, timeout_s=15, what=f"a leader of {group_id}")


class Trio:
    """Three Nodes in this process. ``restart`` replaces a stopped node with a fresh one (empty state machines,
    same data directory); the fixture stops whatever is running at the end."""

    def __init__(self, tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
        chosen = find_free_ports(3)
        self.ports = {1: chosen[0], 2: chosen[1], 3: chosen[2]}
        self.tmp_path = tmp_path
        self.loop = loop
        self.nodes = {b: Node(b, self.ports, tmp_path, loop) for b in self.ports}

    def start(self, group_ids: list[str]) -> None:
        for node in self.nodes.values():
            node.start(group_ids)

    def restart(self, broker_id: int, group_ids: list[str]) -> Node:
        self.nodes[broker_id].stop()
        node = self.nodes[broker_id] = Node(broker_id, self.ports, self.tmp_path, self.loop)
        node.start(group_ids)
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    cluster = Trio(tmp_path, asyncio.get_running_loop())
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_groups_share_links_and_replicate(trio: Trio) -> None:
    group_ids = [f"g{i}" for i in range(5)]
    nodes = trio.nodes
    trio.start(group_ids)
    for group_id in group_ids:
        leader = await _leader(nodes, group_id)
        results = await asyncio.wait_for(asyncio.gather(*[
            _submit(leader.groups[group_id], f"{group_id}-{i}".encode(), i) for i in range(50)]), 20)
        assert sorted(results) == list(range(1, 51))
    for group_id in group_ids:
        expected = [f"{group_id}-{i}".encode() for i in range(50)]
        await wait_for_condition(lambda g=group_id, e=expected: all(  # type: ignore[misc]
            n.machines[g].copy() == e for n in nodes.values()), timeout_s=10,
            what=f"{group_id} applied everywhere")
    # One connection per broker pair, whatever the number of groups.
    for node in nodes.values():
        assert node.replication is not None
        assert len(node.replication.network.up_peers()) == 2
        assert node.replication.network.stats["links_opened"] <= 4
    assert threading.active_count() < 40


async def test_restart_replays_without_double_apply(trio: Trio) -> None:
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    await asyncio.wait_for(asyncio.gather(*[_submit(leader.groups["g"], b"a%d" % i, i) for i in range(30)]), 20)
    follower = next(n for n in nodes.values() if n is not leader)
    await wait_for_condition(lambda: len(follower.machines["g"].copy()) == 30, timeout_s=10,
                             what="follower applied 30")
    follower.stop()
    await asyncio.wait_for(asyncio.gather(*[_submit(leader.groups["g"], b"b%d" % i, 100 + i)
                                            for i in range(30)]), 20)
    # The restarted follower has a fresh (empty) state machine: the journal is replayed through it.
    restarted = trio.restart(follower.broker_id, ["g"])
    expected = [b"a%d" % i for i in range(30)] + [b"b%d" % i for i in range(30)]
    await wait_for_condition(lambda: restarted.machines["g"].copy() == expected, timeout_s=15,
                             what="restarted follower caught up")
    assert restarted.machines["g"].applied_twice == 0


async def test_follower_catches_up_through_a_snapshot(trio: Trio) -> None:
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    follower = next(n for n in nodes.values() if n is not leader)
    follower.stop()
    await asyncio.wait_for(asyncio.gather(*[_submit(leader.groups["g"], b"c%d" % i, i) for i in range(40)]), 20)
    for node in nodes.values():
        if node is not follower:
            group = node.groups["g"]
            assert node.replication is not None
            node.replication.call(group.raft.forceLogCompaction).result(timeout=5)
            await wait_for_condition(lambda g=group: g.snapshotter.snapshots_taken > 0, timeout_s=10,  # type: ignore[misc]
                                     what="a snapshot on the leader side")
    await asyncio.wait_for(asyncio.gather(*[_submit(leader.groups["g"], b"d%d" % i, 100 + i)
                                            for i in range(5)]), 20)
    restarted = trio.restart(follower.broker_id, ["g"])
    expected = [b"c%d" % i for i in range(40)] + [b"d%d" % i for i in range(5)]
    await wait_for_condition(lambda: restarted.machines["g"].copy() == expected, timeout_s=20,
                             what="follower caught up through a snapshot")
    assert restarted.groups["g"].snapshotter.snapshots_installed >= 1


async def test_follower_far_behind_catches_up_from_the_journal(trio: Trio) -> None:
    """A follower hundreds of entries behind (no snapshot in between) is sent long ranges of journal entries."""
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    follower = next(n for n in nodes.values() if n is not leader)
    follower.stop()
    for i in range(300):  # one entry each: the follower will be 300 entries behind
        await asyncio.wait_for(_submit(leader.groups["g"], b"e%d" % i, i), 10)
    restarted = trio.restart(follower.broker_id, ["g"])
    expected = [b"e%d" % i for i in range(300)]
    await wait_for_condition(lambda: restarted.machines["g"].copy() == expected, timeout_s=20,
                             what="follower caught up from the journal")
    assert all(n.replication is not None and n.replication.failure is None for n in nodes.values())


def _track_fsyncs(group: RaftGroup) -> dict[str, int]:
    """Wrap the group's journal fsync: ``synced["index"]`` = the last index known to be on disk."""
    journal = group.journal
    original = journal.sync
    synced = {"index": 0}

    def sync() -> None:
        mark = journal.last_index or 0  # everything appended before the fdatasync starts is covered by it
        original()
        synced["index"] = max(synced["index"], mark)

    journal.sync = sync  # type: ignore[method-assign]
    return synced


async def test_an_entry_commits_only_once_a_majority_has_it_on_disk(trio: Trio) -> None:
    """The leader sends AppendEntries before its own fsync; it must still count itself (and every follower
    count) only once the entry is durable: whenever any replica applies an entry, a majority of the
    journals has fsynced it."""
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    synced = {b: _track_fsyncs(node.groups["g"]) for b, node in nodes.items()}
    first_tracked = max(node.groups["g"].journal.last_index or 0 for node in nodes.values()) + 1
    violations: list[tuple[int, int, list[int]]] = []

    def check(broker_id: int, index: int) -> None:
        if index < first_tracked:
            return
        on_disk = [b for b, mark in synced.items() if mark["index"] >= index]
        if 2 * len(on_disk) <= len(nodes):
            violations.append((broker_id, index, on_disk))

    for broker_id, node in nodes.items():
        node.machines["g"].before_apply = lambda index, b=broker_id: check(b, index)
    for i in range(100):  # one at a time: each entry's commit races its own fsyncs
        await asyncio.wait_for(_submit(leader.groups["g"], b"f%d" % i, 1000 + i), 10)
    await asyncio.wait_for(asyncio.gather(*[_submit(leader.groups["g"], b"g%d" % i, 2000 + i)
                                            for i in range(100)]), 20)
    await wait_for_condition(lambda: all(len(n.machines["g"].copy()) >= 200 for n in nodes.values()),
                             timeout_s=10, what="every replica applied the 200 entries")
    assert violations == []


async def test_a_traced_entry_passes_every_replication_stage_in_order(trio: Trio) -> None:
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    trace = StageTrace()
    trace.stamp(SUBMITTED)
    await asyncio.wait_for(leader.groups["g"].submit(commands.encode(1, 77, 0, b"traced"), trace=trace), 10)
    times = trace.times
    assert all(times[point] for point in (APPENDED, SENT, FSYNCED, COMMITTED, APPLIED)), times
    # AppendEntries leave before the leader's own fsync; the commit comes after both.
    assert times[SUBMITTED] <= times[APPENDED] <= times[SENT] <= times[FSYNCED] <= times[COMMITTED] \
        <= times[APPLIED]


async def test_an_idle_group_is_not_ticked_or_republished_every_sweep(trio: Trio) -> None:
    """Idle, a follower is ticked for the heartbeats it receives (about 1 / heartbeat period) and republishes
    nothing; a leader republishes only for the in-sync refresh."""
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    await asyncio.wait_for(_submit(leader.groups["g"], b"x", 1), 10)
    await wait_for_condition(lambda: all(n.groups["g"].status.applied_index == leader.groups["g"].status.applied_index
                                         for n in nodes.values()), timeout_s=10, what="every replica applied")
    before = {b: (n.groups["g"].ticks, n.groups["g"].publishes) for b, n in nodes.items()}
    window_s = 2.0
    await asyncio.sleep(window_s)  # an observation window (nothing is waited for)
    heartbeats = window_s / TIMERS.heartbeat_period_s
    for broker_id, node in nodes.items():
        ticks = node.groups["g"].ticks - before[broker_id][0]
        publishes = node.groups["g"].publishes - before[broker_id][1]
        if node is leader:
            # heartbeats plus the ticks their answers cause; a sweep every 20 ms would be 100
            assert ticks <= 3 * heartbeats + 5, ticks
            assert publishes <= window_s / 0.25 + 3, publishes
        else:
            assert ticks <= 1.5 * heartbeats + 5, ticks
            assert publishes <= 2, publishes


def _all_quiet(nodes: dict[int, Node], group_id: str) -> bool:
    return all(n.replication is not None and n.groups[group_id].quiescence.quiet for n in nodes.values())


async def _quiet_group(trio: Trio) -> Node:
    """Group "g" on the three nodes, one entry written, then quiet on every replica; returns its leader."""
    trio.start(["g"])
    leader = await _leader(trio.nodes, "g")
    await asyncio.wait_for(_submit(leader.groups["g"], b"x", 1), 10)
    await wait_for_condition(lambda: _all_quiet(trio.nodes, "g"), timeout_s=10,
                             what="the group quiet on every replica")
    return leader


async def test_an_idle_group_goes_quiet_and_stops_ticking(trio: Trio) -> None:
    """node/quiescence.py: once idle, every replica of a group goes quiet and is no longer ticked."""
    nodes = trio.nodes
    leader = await _quiet_group(trio)

    def links_version() -> tuple[int, ...]:
        return tuple(n.replication.network.links_version for n in nodes.values() if n.replication is not None)

    # An observation window (nothing is waited for) of 13 heartbeat periods without a tick. A link that the
    # peer timed out (a test process starved of CPU for the link timeout) wakes the group by design: then the
    # window is taken again, once the group is quiet again, at most three times.
    for _attempt in range(3):
        await wait_for_condition(lambda: _all_quiet(nodes, "g"), timeout_s=10, what="the group quiet")
        before, links = {b: n.groups["g"].ticks for b, n in nodes.items()}, links_version()
        await asyncio.sleep(1.0)
        if links_version() == links:
            break
    assert links_version() == links, "the peer links kept flapping"
    assert {b: n.groups["g"].ticks for b, n in nodes.items()} == before
    assert _all_quiet(nodes, "g")
    status = leader.groups["g"].status
    assert status.is_leader and status.quorum and len(status.in_sync) == 3  # the links vouch for the followers


async def test_a_write_to_a_quiet_group_commits_without_waiting_for_a_timer(trio: Trio) -> None:
    nodes = trio.nodes
    leader = await _quiet_group(trio)
    await wait_for_condition(lambda: leader.groups["g"].next_tick == math.inf, timeout_s=5,
                             what="no timer of the quiet group running")
    started = time.monotonic()
    await asyncio.wait_for(_submit(leader.groups["g"], b"y", 2), 10)
    # Woken by the command itself (a quiet group has no timer that could have woken it: next_tick is infinite),
    # and committed within the time of a few passes, not of the 1 s idle tick or an election.
    assert time.monotonic() - started < limits.replication_idle_tick_max_s
    assert not leader.groups["g"].quiescence.quiet
    await wait_for_condition(lambda: all(n.machines["g"].items[-1:] == [b"y"] for n in nodes.values()),
                             timeout_s=10, what="every replica applied the write")
    await wait_for_condition(lambda: _all_quiet(nodes, "g"), timeout_s=10, what="the group quiet again")


async def test_a_quiet_group_whose_leader_dies_elects_within_a_second(trio: Trio) -> None:
    nodes = trio.nodes
    leader = await _quiet_group(trio)
    started = time.monotonic()
    leader.stop()  # its sockets close: the followers' links go down at once
    survivors = {b: n for b, n in nodes.items() if n is not leader}
    new_leader = await _leader(survivors, "g")
    elapsed = time.monotonic() - started
    # The target is under a second; the bound leaves room for a loaded test machine.
    print(f"quiet group failover: {elapsed:.3f} s")
    assert elapsed < 1.5, elapsed
    await asyncio.wait_for(_submit(new_leader.groups["g"], b"z", 3), 10)


async def test_a_leader_that_loses_its_majority_fails_waiting_entries_at_once(trio: Trio) -> None:
    """An entry that cannot commit is answered OUTCOME_UNKNOWN when the leader loses its majority, not left to
    the client's request timeout."""
    nodes = trio.nodes
    trio.start(["g"])
    leader = await _leader(nodes, "g")
    await asyncio.wait_for(_submit(leader.groups["g"], b"x", 1), 10)
    for node in nodes.values():
        if node is not leader:
            node.stop()
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(_submit(leader.groups["g"], b"y", 2), 10)
    # the status refresh (0.25 s) or the step-down (leader fallback, 0.7 s), whichever sees it first
    assert time.monotonic() - started < TIMERS.leader_fallback_timeout_s + 1.0
