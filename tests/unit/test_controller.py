"""The controller on an in-process cluster (tests/inprocess.py): placement on a subset of brokers, a broker
killed for good healed back to full replication, drains, and topic changes, each under an acks=all load
whose every acknowledged record is read back from every final replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raftmq.cluster.batch import decode_records, encode_batch, iter_stored
from raftmq.cluster.errors import RaftMQError
from raftmq.cluster.metadata import AlterTopicRequest, BrokerState
from raftmq.cluster.wire import Acks
from raftmq.node.operations import ProduceRequest

from tests.inprocess import InProcessCluster

pytestmark = pytest.mark.asyncio


class Load:
    """An acks=all producer over every partition; remembers what was acknowledged."""

    def __init__(self, cluster: InProcessCluster, topic: str, partitions: int) -> None:
        self.cluster, self.topic, self.partitions = cluster, topic, partitions
        self.acked: dict[int, set[bytes]] = {p: set() for p in range(partitions)}
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for partition in range(self.partitions):
                value = f"v{self.sent}".encode()
                self.sent += 1
                for node in self.cluster.running():
                    try:
                        await node.broker.service.produce(ProduceRequest(
                            self.topic, partition, encode_batch([(None, value, (), 1)]), Acks.ALL, 2000))
                    except RaftMQError:
                        continue
                    self.acked[partition].add(value)
                    break
            await asyncio.sleep(0.01)  # a steady trickle, not a flood


@contextlib.asynccontextmanager
async def producing(cluster: InProcessCluster, topic: str, partitions: int) -> AsyncIterator[Load]:
    load = Load(cluster, topic, partitions)
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    try:
        yield load
    finally:
        stop.set()  # the Raft clock must keep moving for the last produce to finish
        await cluster.pass_time_until(task.done, timeout_s=20, what="the producer to stop")
        await task


def settled(cluster: InProcessCluster, topic: str, replication_factor: int, *, without: int | None = None) -> bool:
    """Every partition back to RF replicas (none on ``without``), no move running, every replica open."""
    node = cluster.running()[0]
    meta = node.broker.service.metadata.view.get(topic)
    if meta is None:
        return False
    for partition, replicas in enumerate(meta.replicas):
        if len(replicas) != replication_factor or meta.targets[partition] is not None or without in replicas:
            return False
        open_on = {n.broker_id for n in cluster.running() if (topic, partition) in n.broker.replicas.partitions}
        if open_on != set(replicas):
            return False
    return True


def values_on_every_replica(cluster: InProcessCluster, topic: str, partition: int) -> list[set[bytes]]:
    out = []
    for handle in cluster.handles(topic, partition):
        log = handle.state_machine.log
        data = log.read(log.log_start_offset, 1 << 30) if log.log_end_offset > log.log_start_offset else b""
        out.append({r.value for h, chunk in iter_stored(data) for r in decode_records(chunk, h) if r.value})
    return out


async def test_placement_heal_and_drain_on_five_brokers(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=5) as cluster:
        await cluster.create_topic("orders", partitions=5)
        topic = cluster.service(1).metadata.topic("orders")
        assert all(len(r) == 3 for r in topic.replicas)
        for partition, replicas in enumerate(topic.replicas):  # a broker holds only what it hosts
            assert {h.state_machine.log.directory.parent.parent.name for h in cluster.handles("orders", partition)} \
                == {f"n{b}" for b in replicas}
        victim = topic.replicas[0][1]
        async with producing(cluster, "orders", 5) as load:
            await cluster.pass_time_until(lambda: load.sent > 50, timeout_s=20, what="records before the kill")
            await cluster.nodes[victim].shutdown()
            await cluster.pass_time_until(lambda: settled(cluster, "orders", 3, without=victim), timeout_s=60,
                                          what=f"healing away from broker {victim}")
            state = cluster.running()[0].broker.service.metadata.brokers[victim].state
            assert state in (BrokerState.FENCED, BrokerState.REMOVED)
            drained = next(b for b in cluster.service(cluster.running()[0].broker_id).metadata.brokers
                           if b != victim and cluster.running()[0].broker_id != b)
            controller = next(n for n in cluster.running() if n.broker.controller.active)
            await controller.broker.service.set_draining(drained, True)
            await cluster.pass_time_until(lambda: settled(cluster, "orders", 3, without=drained), timeout_s=60,
                                          what=f"draining broker {drained}")
            sent_before_end = load.sent
            await cluster.pass_time_until(lambda: load.sent > sent_before_end + 20, timeout_s=20,
                                          what="records after the moves")
        for partition in range(5):
            for stored in values_on_every_replica(cluster, "orders", partition):
                assert load.acked[partition] <= stored  # every acknowledged record on every final replica


async def test_alter_topic_raises_partitions_and_replication_factor(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=4) as cluster:
        await cluster.create_topic("t", partitions=2)
        await cluster.pass_time_until(lambda: any(n.broker.controller.active for n in cluster.running()),
                                      timeout_s=10, what="a controller")
        controller = next(n for n in cluster.running() if n.broker.controller.active)
        await controller.broker.service.alter_topic("t", AlterTopicRequest(partitions=4, replication_factor=2))
        await cluster.pass_time_until(lambda: settled(cluster, "t", 2), timeout_s=60, what="the new layout")
        assert cluster.service(1).metadata.topic("t").partitions == 4


async def test_an_added_broker_gets_replicas_while_producing(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=6)
        async with producing(cluster, "orders", 6) as load:
            await cluster.pass_time_until(lambda: load.sent > 30, timeout_s=20, what="records before the add")
            added = await cluster.add_broker()

            def balanced() -> bool:
                topic = cluster.service(1).metadata.topic("orders")
                counts = [sum(1 for r in topic.replicas if b in r) for b in (1, 2, 3, added.broker_id)]
                return max(counts) - min(counts) <= 1 and settled(cluster, "orders", 3)

            await cluster.pass_time_until(balanced, timeout_s=90, what="replicas moved onto the new broker")
            assert added.broker.service.metadata.brokers[added.broker_id].state is BrokerState.ALIVE
        for partition in range(6):
            for stored in values_on_every_replica(cluster, "orders", partition):
                assert load.acked[partition] <= stored


async def test_killing_the_controller_while_topics_are_created(tmp_path: Path) -> None:
    """Every create either made its topic or failed with a definite error (outcome-unknown errors aside)."""
    from raftmq.cluster.metadata import parse_create_topic

    async with InProcessCluster(tmp_path, brokers=5) as cluster:
        await cluster.pass_time_until(lambda: any(n.broker.controller.active for n in cluster.running()),
                                      timeout_s=10, what="a controller")
        controller = next(n for n in cluster.running() if n.broker.controller.active)
        asker = next(n for n in cluster.running() if n is not controller and n.broker.metadata.voter)
        outcomes: dict[str, BaseException | None] = {}

        async def create(name: str) -> None:
            try:
                await asker.broker.service.create_topic(parse_create_topic({"name": name, "partitions": 1}))
                outcomes[name] = None
            except RaftMQError as exc:
                outcomes[name] = exc

        tasks = [asyncio.create_task(create(f"t{i}")) for i in range(12)]
        await cluster.pass_time_until(lambda: len(outcomes) >= 3, timeout_s=20, what="the first creates")
        await controller.shutdown()
        await cluster.pass_time_until(lambda: all(t.done() for t in tasks), timeout_s=60, what="every create")
        await cluster.pass_time_until(lambda: asker.broker.metadata.controller_id not in (None, controller.broker_id),
                                      timeout_s=20, what="a new controller")
        view = asker.broker.metadata.view
        for name, error in outcomes.items():
            if error is None:
                assert name in view, name
            elif error.definite:
                assert name not in view, (name, error)
        assert sum(1 for e in outcomes.values() if e is None) >= 3


async def test_registration_refuses_stale_incarnations_foreign_clusters_and_impossible_drains(tmp_path: Path) -> None:
    from raftmq.cluster.errors import ClusterIdMismatch, NotEnoughBrokers, StaleBrokerIncarnation, UnknownBroker

    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("t", partitions=1)
        controller = next(n for n in cluster.running() if n.broker.controller.active)
        body = controller.broker.session.body()
        with pytest.raises(ClusterIdMismatch):
            await controller.broker.controller.heartbeat({**body, "cluster_id": "someone-else"})
        with pytest.raises(StaleBrokerIncarnation):
            await controller.broker.controller.heartbeat({**body, "incarnation": body["incarnation"] - 1})
        with pytest.raises(NotEnoughBrokers):  # RF 3 on 3 brokers: its replicas would have nowhere to go
            await controller.broker.service.set_draining(2, True)
        with pytest.raises(UnknownBroker):
            await controller.broker.service.set_draining(9, True)
        assert cluster.service(1).metadata.brokers[2].state is BrokerState.ALIVE
