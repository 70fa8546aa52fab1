"""The group coordinator on an in-process cluster (tests/inprocess.py): groups live in the Raft-replicated
``__consumer_offsets`` partitions, so killing the coordinator's broker moves the group and keeps its members
and committed offsets; requests for a group led elsewhere are redirected; sessions expire; the group state
survives a snapshot and a restart from the log.

Method: the brokers' service calls (what the HTTP and a future Kafka listener call), on the real replicated
state machines; the Raft clock is moved by hand while waiting on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from raftmq.cluster.batch import encode_batch
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC, Subscription, group_partition_for
from raftmq.cluster.errors import (
    CoordinatorNotAvailable,
    InvalidTopic,
    NotCoordinator,
    RaftMQError,
    StaleMemberEpoch,
    UnknownMemberId,
)
from raftmq.cluster.group_requests import GroupHeartbeat, HeartbeatAnswer, OffsetCommit
from raftmq.cluster.metadata import AlterTopicRequest, parse_create_topic
from raftmq.cluster.wire import Acks
from raftmq.node.group_partition import GroupPartitionStateMachine
from raftmq.node.operations import ProduceRequest

from tests.inprocess import InProcessCluster

pytestmark = pytest.mark.asyncio
GROUP = "billing"


def coordinator_of(cluster: InProcessCluster, group: str) -> int | None:
    for node in cluster.running():
        topic = node.broker.service.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
        if topic is None:
            continue
        handle = node.broker.replicas.local(topic, group_partition_for(group, topic.partitions))
        status = handle.group.status if handle is not None else None
        if status is not None and status.is_leader and status.quorum and status.caught_up:
            return node.broker_id
    return None


async def at_coordinator(cluster: InProcessCluster, call: Any, *, timeout_s: float = 30) -> Any:
    """Call ``call(service)`` on whichever running broker coordinates, following redirects as a client does,
    moving the Raft clock while no broker can answer (an election)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in cluster.running():
            try:
                return await call(node.broker.service)
            except (NotCoordinator, CoordinatorNotAvailable):
                continue
        if time.monotonic() > deadline:
            raise AssertionError(f"no coordinator answered within {timeout_s} s")
        cluster.advance(0.05)
        await asyncio.sleep(0.02)  # real time for the brokers' heartbeats and the controller's ticks


def join(member: str = "", instance: str | None = None) -> GroupHeartbeat:
    return GroupHeartbeat(GROUP, member, 0, instance_id=instance, subscription=Subscription(("orders",)),
                          session_timeout_ms=500)


async def beat(cluster: InProcessCluster, answer: HeartbeatAnswer, owned: Any = None) -> HeartbeatAnswer:
    request = GroupHeartbeat(GROUP, answer.result.member_id, answer.result.member_epoch, session_timeout_ms=500,
                             owned=tuple(owned) if owned is not None else None)
    return await at_coordinator(cluster, lambda s: s.group_heartbeat(request))


async def test_group_and_offsets_survive_the_coordinator_broker_s_death(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=6)
        a = await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        assert len(a.result.assignment) == 6
        b = await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        a = await beat(cluster, a)  # a learns what to give up
        a = await beat(cluster, a, a.result.assignment)  # ... and releases it
        b = await beat(cluster, b)
        assert len(a.result.assignment) == 3 and len(b.result.assignment) == 3
        offsets = tuple((t, p, 100 + p, f"meta-{p}") for t, p in a.result.assignment)
        committed = await at_coordinator(cluster, lambda s: s.commit_offsets(
            OffsetCommit(GROUP, a.result.member_id, a.result.member_epoch, offsets)))
        assert committed == 3

        # A broker that does not coordinate redirects to the one that does.
        coordinator = coordinator_of(cluster, GROUP)
        assert coordinator is not None
        other = next(n for n in cluster.running() if n.broker_id != coordinator)
        with pytest.raises(NotCoordinator) as redirect:
            await other.broker.service.fetch_offsets(GROUP, None)
        assert redirect.value.details["coordinator_url"] == cluster.nodes[coordinator].url

        await cluster.nodes[coordinator].shutdown()
        await cluster.pass_time_until(lambda: coordinator_of(cluster, GROUP) not in (None, coordinator),
                                      timeout_s=30, what="a new coordinator")
        fetched = await at_coordinator(cluster, lambda s: s.fetch_offsets(GROUP, None))
        assert [(o.topic, o.partition, o.offset, o.metadata) for o in fetched] == list(offsets)
        # The members survived too: b heartbeats on the new coordinator with its epoch and keeps its partitions.
        b2 = await beat(cluster, b)
        assert b2.result.assignment == b.result.assignment
        description = await at_coordinator(cluster, lambda s: s.describe_group(GROUP))
        assert description.coordinator_id != coordinator and len(description.members) == 2


async def test_sessions_expire_and_fenced_members_cannot_commit(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=4)
        a = await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        b = await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        a = await beat(cluster, a)
        a = await beat(cluster, a, a.result.assignment)
        lost = a.result.assignment
        # a falls silent; b keeps heartbeating until a's session (0.5 s) runs out and b owns everything.
        for _ in range(200):
            b = await beat(cluster, b)
            if len(b.result.assignment) == 4:
                break
            await asyncio.sleep(0.02)  # real time: the coordinator's session timers use the monotonic clock
        assert len(b.result.assignment) == 4
        stale = OffsetCommit(GROUP, a.result.member_id, a.result.member_epoch, tuple((t, p, 7, "") for t, p in lost))
        with pytest.raises(UnknownMemberId):
            await at_coordinator(cluster, lambda s: s.commit_offsets(stale))
        with pytest.raises(StaleMemberEpoch):
            await at_coordinator(cluster, lambda s: s.commit_offsets(
                OffsetCommit(GROUP, b.result.member_id, b.result.member_epoch - 5, (("orders", 0, 1, ""),))))
        assert await at_coordinator(cluster, lambda s: s.fetch_offsets(GROUP, None)) == ()


async def test_a_group_idle_past_its_retention_is_deleted_with_its_offsets(tmp_path: Path) -> None:
    """The coordinator's sweep (run here directly, with a retention the test controls) deletes a group with no
    members once its retention ran out, through the group's Raft entry, and keeps one that still has members."""
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=2)
        a = await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        await at_coordinator(cluster, lambda s: s.commit_offsets(
            OffsetCommit(GROUP, a.result.member_id, a.result.member_epoch, (("orders", 0, 7, ""),))))
        coordinator_id = coordinator_of(cluster, GROUP)
        assert coordinator_id is not None
        coordinator = cluster.nodes[coordinator_id].broker.groups
        assert coordinator is not None
        assert await coordinator.expire_idle_groups(int(time.time() * 1000), retention_ms=0) == []  # a member
        await at_coordinator(cluster, lambda s: s.group_heartbeat(
            GroupHeartbeat(GROUP, a.result.member_id, -1, session_timeout_ms=500)))
        assert await coordinator.expire_idle_groups(int(time.time() * 1000), retention_ms=3_600_000) == []
        assert len(await at_coordinator(cluster, lambda s: s.fetch_offsets(GROUP, None))) == 1
        assert await coordinator.expire_idle_groups(int(time.time() * 1000), retention_ms=0) == [GROUP]
        assert await at_coordinator(cluster, lambda s: s.fetch_offsets(GROUP, None)) == ()
        assert GROUP not in {group_id for group_id, _, _ in coordinator.list_groups().groups}


async def test_group_state_is_rebuilt_from_snapshot_and_log(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=2)
        a = await at_coordinator(cluster, lambda s: s.group_heartbeat(join(instance="host-a")))
        await at_coordinator(cluster, lambda s: s.commit_offsets(
            OffsetCommit(GROUP, a.result.member_id, a.result.member_epoch, (("orders", 0, 5, "x"),))))
        topic = cluster.service(1).metadata.topic(GROUP_STATE_TOPIC)
        partition = group_partition_for(GROUP, topic.partitions)

        def local_machines() -> list[Any]:
            replicas = [node.broker.replicas.local(topic, partition) for node in cluster.running()]
            return [h.state_machine for h in replicas if h is not None]

        # a replica opens its copy when its broker sees the topic: the slowest may not have yet
        await cluster.pass_time_until(lambda: len(local_machines()) == 3, timeout_s=10,
                                      what="every replica of the group's partition open")
        machines = local_machines()
        assert all(isinstance(m, GroupPartitionStateMachine) for m in machines)
        await cluster.pass_time_until(lambda: all(len(m.groups.committed(GROUP)) == 1 for m in machines),
                                      timeout_s=10, what="the first commit on every replica")
        cluster.network.compact(f"p/{topic.topic_id}/{partition}")  # every replica snapshots
        early = [m.snapshot() for m in machines]
        await at_coordinator(cluster, lambda s: s.commit_offsets(
            OffsetCommit(GROUP, a.result.member_id, a.result.member_epoch, (("orders", 1, 9, "y"),))))
        await cluster.pass_time_until(lambda: all(len(m.groups.committed(GROUP)) == 2 for m in machines),
                                      timeout_s=10, what="the second commit on every replica")
        for machine, snapshot in zip(machines, early, strict=True):
            assert isinstance(machine, GroupPartitionStateMachine)
            expected = machine.groups.groups[GROUP].to_wire()
            machine.restore(snapshot)  # what a restart does: the older snapshot + the commands logged after it
            assert machine.groups.groups[GROUP].to_wire() == expected
            assert machine.groups.committed(GROUP)[("orders", 1)].offset == 9


async def test_the_group_state_topic_is_internal(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        with pytest.raises(InvalidTopic):
            await cluster.service(1).create_topic(parse_create_topic({"name": GROUP_STATE_TOPIC}))
        await cluster.create_topic("orders", partitions=1)
        await at_coordinator(cluster, lambda s: s.group_heartbeat(join()))
        with pytest.raises(RaftMQError) as refused:
            await cluster.service(1).produce(ProduceRequest(GROUP_STATE_TOPIC, 0, encode_batch([(None, b"x", (), 1)]),
                                                            Acks.ALL, 1000))
        assert refused.value.code == "INVALID_TOPIC"
        with pytest.raises(InvalidTopic):
            await cluster.service(1).delete_topic(GROUP_STATE_TOPIC)
        with pytest.raises(InvalidTopic):
            await cluster.service(1).alter_topic(GROUP_STATE_TOPIC,
                                                 AlterTopicRequest(partitions=9, replication_factor=None))
