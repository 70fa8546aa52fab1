"""Membership changes in the in-memory engine (node/memory_groups.py), which the in-process cluster runs on.

Goal: the same semantics as node/replication.py over pysyncobj (node/groups.py ``change_membership``): leader
only, one change at a time (REASSIGNMENT_IN_PROGRESS), applied on append, an add committed by the new
configuration's majority, idempotent, a removed replica no longer counted nor replicated to, an added
replica catching up through the log or a snapshot, a leader that is asked to remove itself handing over.
Method: a list-appending state machine per replica, the deterministic MemoryNetwork, no clocks but its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from raftmq.cluster.errors import LeaderNotAvailable, NotLeader, ReassignmentInProgress
from raftmq.node.groups import GroupSpec, MembershipChange
from raftmq.node.memory_groups import MemoryEngine, MemoryGroup, MemoryNetwork

from tests.list_machine import ListMachine

GROUP = "g"


class World:
    def __init__(self, brokers: int) -> None:
        self.network = MemoryNetwork(seed=1)
        self.engines: dict[int, MemoryEngine] = {}
        self.groups: dict[int, MemoryGroup] = {}
        self.machines: dict[int, ListMachine] = {}
        for broker_id in range(1, brokers + 1):
            engine = self.engines[broker_id] = self.network.engine(broker_id)
            engine.start()

    async def open(self, broker_id: int, replica_ids: tuple[int, ...]) -> MemoryGroup:
        machine = self.machines[broker_id] = ListMachine(decode=False, strict=True)
        group = await self.engines[broker_id].open_group(GroupSpec(GROUP, Path("/unused"), replica_ids), machine)
        self.groups[broker_id] = group
        return group

    def leader(self) -> MemoryGroup:
        self.network.step()
        leaders = [g for b, g in self.groups.items() if g.status.is_leader and b in self.network.running]
        assert len(leaders) == 1, [g.status for g in self.groups.values()]
        return leaders[0]

    async def write(self, *payloads: bytes) -> None:
        await asyncio.gather(*[self.leader().submit(p) for p in payloads])


async def _three(brokers: int = 5) -> World:
    world = World(brokers)
    for broker_id in (1, 2, 3):
        await world.open(broker_id, (1, 2, 3))
    await world.write(b"a", b"b")
    return world


async def test_move_a_group_to_other_brokers_one_change_at_a_time() -> None:
    world = await _three()
    await world.open(4, (1, 2, 3, 4))
    assert world.groups[4].status.voters == (1, 2, 3, 4)  # what its spec says, until the log says more
    await world.leader().change_membership(MembershipChange(add=4))
    await world.write(b"c")
    await world.open(5, (1, 2, 3, 4, 5))
    await world.leader().change_membership(MembershipChange(add=5))
    for old in (1, 2):
        leader = world.leader()
        if leader.broker_id == old:
            with pytest.raises(NotLeader):
                await leader.change_membership(MembershipChange(remove=old))
            leader = world.leader()
            assert leader.broker_id != old, "the leader handed over before its own removal"
        await leader.change_membership(MembershipChange(remove=old))
        await world.write(b"after-%d" % old)
    for broker_id in (3, 4, 5):
        status = world.groups[broker_id].status
        assert status.voters == (3, 4, 5) and not status.membership_pending
        assert world.machines[broker_id].items == [b"a", b"b", b"c", b"after-1", b"after-2"]
    assert world.leader().replica_ids == [3, 4, 5]
    # The removed replicas get nothing more and are not counted: the group commits without them.
    world.network.partition({1, 2}, {3, 4, 5})
    await world.write(b"without-1-and-2")
    assert b"without-1-and-2" not in world.machines[1].items
    assert world.machines[5].items[-1] == b"without-1-and-2"


async def test_an_add_commits_only_with_the_new_majority_and_blocks_the_next_change() -> None:
    world = await _three()
    await world.engines[3].close_group(GROUP)  # 3 is down: {1, 2} is a majority of 3, not of 4
    leader = world.leader()
    pending = leader.change_membership(MembershipChange(add=4))  # 4 has not opened its replica yet
    world.network.step()
    assert not pending.done()
    assert leader.status.membership_pending and leader.status.voters == (1, 2, 3, 4)
    with pytest.raises(ReassignmentInProgress):
        await leader.change_membership(MembershipChange(add=5))
    await world.open(4, (1, 2, 3, 4))  # the new voter catches up: now 3 of 4 hold the entry
    await asyncio.wait_for(pending, 1)
    assert not world.leader().status.membership_pending
    assert world.machines[4].items == [b"a", b"b"]


async def test_changes_are_idempotent_and_leader_only() -> None:
    world = await _three()
    leader = world.leader()
    follower = next(g for g in world.groups.values() if g is not leader)
    with pytest.raises(NotLeader) as raised:
        await follower.change_membership(MembershipChange(add=4))
    assert raised.value.details["leader_id"] == leader.broker_id
    assert await leader.change_membership(MembershipChange(add=2)) is None  # already a voter
    assert await leader.change_membership(MembershipChange(remove=5)) is None  # never was one
    assert world.leader().status.voters == (1, 2, 3)
    world.network.isolate(follower.broker_id)
    with pytest.raises(LeaderNotAvailable):
        await follower.change_membership(MembershipChange(add=4))


async def test_remove_a_dead_voter_then_add_a_fresh_one_that_catches_up_by_snapshot() -> None:
    world = await _three()
    world.engines[3].stop()
    leader = world.leader()
    await leader.change_membership(MembershipChange(remove=3))
    await world.write(b"c")
    world.network.compact(GROUP)  # the new replica must get a snapshot: the log starts after it
    await world.open(4, (1, 2, 4))
    await world.leader().change_membership(MembershipChange(add=4))
    await world.write(b"d")
    assert world.machines[4].items == [b"a", b"b", b"c", b"d"]
    assert world.machines[4].installed == 1
    assert world.groups[4].status.voters == (1, 2, 4)


async def test_a_restarted_replica_keeps_the_voters_of_the_log_not_of_its_spec() -> None:
    world = await _three()
    await world.open(4, (1, 2, 3, 4))
    await world.leader().change_membership(MembershipChange(add=4))
    await world.leader().change_membership(MembershipChange(remove=3) if world.leader().broker_id != 3
                                           else MembershipChange(remove=1))
    voters = world.leader().status.voters
    world.network.compact(GROUP)
    restarted = next(b for b in voters if b != world.leader().broker_id)
    world.engines[restarted].stop()
    world.engines[restarted].start()
    group = await world.open(restarted, (1, 2, 3))  # a stale spec: the log decides
    await world.write(b"c")
    assert group.status.voters == voters
    assert world.machines[restarted].items == [b"a", b"b", b"c"]
