"""The broker's rules, on the real Broker and service in one process (tests/inprocess.py): who takes writes,
what each ack level answers, CheckQuorum, min in-sync replicas, the in-flight budget, producer dedup,
long-poll fetch, the controller's forwarding, and a lagging replica caught up by snapshot install.

Method: three (or five) brokers on in-memory replication groups with a manual clock; faults are link cuts
and clock moves of the MemoryNetwork, so every test is deterministic and runs in well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    BufferFull,
    InvalidAcks,
    LeaderNotAvailable,
    NotEnoughReplicas,
    NotLeader,
    OffsetOutOfRange,
    TopicAlreadyExists,
    UnknownProducerId,
    UnknownTopicOrPartition,
)
from raftmq.cluster.metadata import parse_create_topic
from raftmq.cluster.wire import Acks
from raftmq.node.operations import FetchRequest, OffsetRequest, ProduceRequest
from raftmq.node.replicas import partition_group_id

from tests.inprocess import InProcessCluster, wait_until


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(tmp_path, brokers=3) as brokers:
        await brokers.create_topic("t", 3)
        yield brokers


def batch(*values: bytes, producer_id: int = -1, base_sequence: int = -1) -> bytes:
    return batches.encode_batch([(None, v, (), 1_000 + i) for i, v in enumerate(values)],
                                producer_id=producer_id, base_sequence=base_sequence)


def produce(topic: str, partition: int, data: bytes, acks: Acks = Acks.ALL, timeout_ms: int = 2000) -> ProduceRequest:
    return ProduceRequest(topic, partition, data, acks, timeout_ms)


async def test_only_the_leader_takes_writes_and_names_itself(cluster: InProcessCluster) -> None:
    leader = cluster.leader("t", 0)
    assert leader.group.status.leader_id == 1  # the preferred replica
    with pytest.raises(NotLeader) as refused:
        await cluster.service(2).produce(produce("t", 0, batch(b"x")))
    assert refused.value.details["leader_id"] == 1 and refused.value.details["leader_url"] == cluster.urls[0]
    with pytest.raises(NotLeader):
        await cluster.service(2).fetch(FetchRequest("t", 0, 0, 1024, 0))
    with pytest.raises(UnknownTopicOrPartition):
        await cluster.service(1).produce(produce("t", 3, batch(b"x")))


async def test_each_ack_level_answers_what_it_promises(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    all_ = await service.produce(produce("t", 0, batch(b"a", b"b")))
    assert (all_.base_offset, all_.record_count, all_.duplicate) == (0, 2, False) and all_.raft_index
    one = await service.produce(produce("t", 0, batch(b"c"), Acks.LEADER))
    assert one.base_offset is None and one.raft_index is not None
    zero = await service.produce(produce("t", 0, batch(b"d"), Acks.NONE))
    assert zero.base_offset is None and zero.raft_index is None
    await wait_until(lambda: cluster.stored("t", 0)[-1:] == [(3, None, b"d")], what="acks=0 record applied")
    for broker_id in (1, 2, 3):  # every replica applied the same records
        fetched = await cluster.service(broker_id).fetch(FetchRequest("t", 0, 0, 1 << 20, 0, any_replica=True))
        assert fetched.high_watermark == 4
    with pytest.raises(OffsetOutOfRange):
        await service.fetch(FetchRequest("t", 0, 5, 1024, 0))


async def test_idempotent_batches_need_acks_all_and_an_allocated_id(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    identity = await service.init_producer(None)
    with pytest.raises(InvalidAcks):
        await service.produce(produce("t", 0, batch(b"x", producer_id=identity.producer_id, base_sequence=0),
                                      Acks.LEADER))
    with pytest.raises(UnknownProducerId):
        await service.produce(produce("t", 0, batch(b"x", producer_id=10_000, base_sequence=0), timeout_ms=100))


async def test_a_retried_batch_is_stored_once_and_answers_its_offset(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    pid = (await service.init_producer(None)).producer_id
    first = batch(b"x", b"y", producer_id=pid, base_sequence=0)
    stored = await service.produce(produce("t", 0, first))
    again = await service.produce(produce("t", 0, first))
    assert (again.base_offset, again.duplicate) == (stored.base_offset, True)
    assert [value for _, _, value in cluster.stored("t", 0)] == [b"x", b"y"]


async def test_check_quorum_cut_off_leader_refuses_then_the_majority_elects(cluster: InProcessCluster) -> None:
    service1 = cluster.service(1)
    await service1.produce(produce("t", 0, batch(b"before")))
    cluster.partition({1}, {2, 3})
    with pytest.raises(LeaderNotAvailable):  # definite: nothing appended, whatever the ack level
        await service1.produce(produce("t", 0, batch(b"lost?"), Acks.NONE))
    assert cluster.service(1).describe_topic("t").partitions[0].leader_id is None  # it stops advertising
    cluster.advance(limits.raft_leader_fallback_timeout_s + limits.raft_election_timeout_min_s)
    new_leader = cluster.leader("t", 0)
    assert new_leader.group.status.leader_id in (2, 3)
    result = await cluster.service(new_leader.group.status.leader_id).produce(produce("t", 0, batch(b"after")))
    assert result.base_offset == 1
    cluster.heal()
    await wait_until(lambda: all(h.state_machine.log.log_end_offset == 2 for h in cluster.handles("t", 0)),
                     what="the old leader to catch up")
    assert [value for _, _, value in cluster.stored("t", 0)] == [b"before", b"after"]


async def test_min_insync_replicas_fails_fast_when_too_few_are_in_sync(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("strict", 1, config={"min_insync_replicas": 3})
        service = cluster.service(1)
        await service.produce(produce("strict", 0, batch(b"all three")))
        cluster.partition({3}, {1, 2})
        cluster.advance(limits.replica_lag_time_max_s + 0.1)
        with pytest.raises(NotEnoughReplicas):  # definite: nothing appended
            await service.produce(produce("strict", 0, batch(b"x")))
        one = await service.produce(produce("strict", 0, batch(b"leader only"), Acks.LEADER))
        assert one.raft_index is not None  # acks=1 does not need the in-sync set


async def test_the_in_flight_budget_refuses_with_buffer_full(cluster: InProcessCluster,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "raft_uncommitted_entries_max", 2)
    service = cluster.service(1)
    results = await asyncio.gather(*(service.produce(produce("t", 0, batch(b"%d" % i))) for i in range(5)),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results].count("BufferFull") == 3
    assert all(isinstance(r, BufferFull) or r.base_offset is not None for r in results)  # type: ignore[union-attr]
    assert len(cluster.stored("t", 0)) == 2


async def test_long_poll_fetch_returns_when_records_arrive(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    waiting = asyncio.ensure_future(service.fetch(FetchRequest("t", 0, 0, 1 << 20, 5_000)))
    await asyncio.sleep(0)  # let the fetch start waiting: what follows must wake it
    assert not waiting.done()
    await service.produce(produce("t", 0, batch(b"late")))
    fetched = await asyncio.wait_for(waiting, 2)
    assert fetched.high_watermark == 1 and fetched.batches


async def test_offsets_by_time_and_bounds(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    await service.produce(produce("t", 0, batch(b"a", b"b")))
    assert (await service.list_offset(OffsetRequest("t", 0, "earliest"))).offset == 0
    assert (await service.list_offset(OffsetRequest("t", 0, "latest"))).offset == 2
    assert (await service.list_offset(OffsetRequest("t", 0, 1_001))).offset == 0  # the batch holding it
    assert (await service.list_offset(OffsetRequest("t", 0, 5_000))).offset is None


async def test_any_broker_creates_topics_through_the_controller(cluster: InProcessCluster) -> None:
    assert cluster.service(3).metadata.controller_id == 1
    described = await cluster.service(3).create_topic(parse_create_topic({"name": "via-3", "partitions": 2}))
    assert described.name == "via-3" and [p.replicas for p in described.partitions] == [(1, 2, 3), (2, 3, 1)]
    assert all("via-3" in cluster.service(b).metadata.view for b in (1, 2, 3))
    with pytest.raises(TopicAlreadyExists):
        await cluster.service(2).create_topic(parse_create_topic({"name": "via-3"}))


async def test_a_lagging_replica_catches_up_by_snapshot_install(cluster: InProcessCluster) -> None:
    service = cluster.service(1)
    await service.produce(produce("t", 0, batch(b"a", b"b")))
    cluster.partition({3}, {1, 2})
    for i in range(3):
        await service.produce(produce("t", 0, batch(b"c%d" % i)))
    topic = service.metadata.topic("t")
    cluster.network.compact(partition_group_id(topic, 0))  # broker 3 is now behind the log's start
    installs = cluster.network.snapshots_installed
    cluster.heal()
    await wait_until(lambda: all(h.state_machine.log.log_end_offset == 5 for h in cluster.handles("t", 0)),
                     what="every replica to hold the five records")
    assert cluster.network.snapshots_installed == installs + 1  # broker 3 got the snapshot and the records after
    logs = [h.state_machine.log.read(0, 1 << 20) for h in cluster.handles("t", 0)]
    assert logs[0] == logs[1] == logs[2]  # byte-identical, stamps included
