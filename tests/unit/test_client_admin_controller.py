"""Admin calls of the controller API (docs/api.md: PATCH /v1/topics/{topic}, /v1/brokers/{id}/drain, the
controller's /v1/metadata) and the waits built on them.

Method: a scripted fake of the API (tests/unit/fake_controller.py) on loopback; drains and moves advance
once per controller poll (``on_metadata``), never by time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from raftmq.client import Admin, SyncAdmin
from raftmq.client.admin import drain_finished, hosted_partitions, moves_finished
from raftmq.client.metadata import parse_metadata
from raftmq.cluster.errors import ClientTimeout, NotEnoughBrokers, UnknownBroker

from tests.unit.fake_controller import FakeCluster, partition


def orders(cluster: FakeCluster) -> None:
    cluster.topics = [{"name": "orders", "topic_id": 7, "replication_factor": 3, "config": {},
                       "partitions": [partition(0, [1, 2, 3]), partition(1, [2, 3, 1]), partition(2, [1, 2, 4])]}]


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    with FakeCluster(brokers=4, controller_id=2) as cluster:
        orders(cluster)
        yield cluster


async def test_alter_topic_patches_through_the_controller(fake: FakeCluster) -> None:
    async with Admin([fake.urls[0]]) as admin:
        await admin.metadata()  # learn the controller (broker 2)
        info = await admin.alter_topic("orders", partitions=5, replication_factor=2)
        with pytest.raises(ValueError):
            await admin.alter_topic("orders")
    (call,) = fake.calls_to("PATCH", "/v1/topics/orders")
    assert (call.broker_id, call.body) == (2, {"partitions": 5, "replication_factor": 2})
    assert info.partition_count == 5 and info.replication_factor == 2


async def test_drain_and_cancel(fake: FakeCluster) -> None:
    async with Admin(fake.urls) as admin:
        broker = await admin.drain_broker(3)
        assert (broker.broker_id, broker.state) == (3, "draining")
        cancelled = await admin.cancel_drain(3)
        assert cancelled is not None and cancelled.state == "alive"
        with pytest.raises(UnknownBroker) as unknown:
            await admin.drain_broker(9)
        assert "cluster status" in unknown.value.hint
    assert [c.method for c in fake.calls if c.path == "/v1/brokers/3/drain"] == ["POST", "DELETE"]


async def test_a_refused_drain_keeps_the_servers_message_and_details(fake: FakeCluster) -> None:
    fake.fail("POST", "/v1/brokers/3/drain", "NOT_ENOUGH_BROKERS", 409, "3 replicas need 3 live brokers",
              replication_factor=3, brokers_left=[1, 2])
    async with Admin(fake.urls) as admin:
        with pytest.raises(NotEnoughBrokers) as refused:
            await admin.drain_broker(3)
    assert refused.value.message == "3 replicas need 3 live brokers"
    assert refused.value.details == {"replication_factor": 3, "brokers_left": [1, 2]}
    assert "add-broker" in refused.value.hint
    assert len(fake.calls_to("POST", "/drain")) == 1  # a definite refusal is not retried elsewhere


async def test_not_controller_is_followed_to_the_broker_it_names(fake: FakeCluster) -> None:
    # The controller changed between the client's metadata refresh and its request: broker 2 says so.
    fake.fail("POST", "/v1/brokers/3/drain", "NOT_CONTROLLER", 421, broker_id=2, controller_id=4,
              controller_url=fake.urls[3])
    async with Admin([fake.urls[0]]) as admin:
        await admin.drain_broker(3, timeout_s=5)
    assert [c.broker_id for c in fake.calls_to("POST", "/drain")] == [2, 4]


async def test_controller_metadata_asks_the_controller(fake: FakeCluster) -> None:
    fake.moves = [{"topic": "orders", "partition": 0, "replicas": [1, 2, 3], "target": [1, 2, 4],
                   "reason": "heal", "adding": 4, "removing": 3, "running_s": 4.0,
                   "progress": {"broker": 4, "match_index": 5, "leader_last_index": 10}}]
    async with Admin([fake.urls[0]]) as admin:
        meta = await admin.controller_metadata()
        assert meta.from_controller and meta.broker_id == 2
        assert meta.moves[0].progress is not None and meta.moves[0].progress.fraction == 0.5
        assert meta.brokers[0].heartbeat_age_s == 0.25
        again = await admin.controller_metadata()  # the view knows the controller now: one request
    assert again.from_controller
    assert [c.broker_id for c in fake.calls_to("GET", "/v1/metadata")] == [1, 2, 2]


async def test_controller_metadata_falls_back_to_any_broker(fake: FakeCluster) -> None:
    fake.controller_id = 4
    dead = "http://127.0.0.1:1"
    fake.urls[3] = dead  # the controller's advertised URL does not answer
    async with Admin([fake.urls[0]], request_timeout_ms=1000) as admin:
        meta = await admin.controller_metadata(timeout_s=3)
    assert not meta.from_controller and meta.broker_id == 1
    assert meta.moves == () and meta.brokers[0].heartbeat_age_s is None


async def test_wait_for_drain_reports_progress_until_the_broker_hosts_nothing(fake: FakeCluster) -> None:
    seen: list[int] = []
    async with Admin(fake.urls) as admin:
        await admin.drain_broker(3)
        fake.on_metadata = lambda cluster: cluster.step_drain(3, spare=4)
        final = await admin.wait_for_drain(3, timeout_s=10, poll_interval_s=0.001,
                                           on_progress=lambda m: seen.append(len(hosted_partitions(m, 3))))
    assert seen[0] == 2 and seen[-1] == 0 and seen == sorted(seen, reverse=True)
    assert drain_finished(final, 3) and final.broker(3).state == "draining"  # type: ignore[union-attr]
    assert all(3 not in p.replicas for p in final.topics[0].partitions)


async def test_wait_for_drain_times_out_with_the_state_named(fake: FakeCluster) -> None:
    fake.states[3] = "draining"
    async with Admin(fake.urls) as admin:
        with pytest.raises(ClientTimeout, match="drain of broker 3 not finished"):
            await admin.wait_for_drain(3, timeout_s=0.2, poll_interval_s=0.01)


async def test_wait_for_moves_of_a_topic(fake: FakeCluster) -> None:
    polls = 0

    def finish_after_two(cluster: FakeCluster) -> None:
        nonlocal polls
        polls += 1
        part = cluster.topics[0]["partitions"][0]
        if polls == 1:
            part["target"] = [1, 2]
            cluster.moves = [{"topic": "orders", "partition": 0, "replicas": [1, 2, 3], "target": [1, 2],
                              "reason": "replication_factor", "adding": None, "removing": 3}]
        elif polls == 3:
            part["replicas"], part["target"], cluster.moves = [1, 2], None, []
            for other in cluster.topics[0]["partitions"][1:]:
                other["replicas"] = other["replicas"][:2]

    fake.on_metadata = finish_after_two
    async with Admin(fake.urls) as admin:
        final = await admin.wait_for_moves("orders", timeout_s=10, replication_factor=2, poll_interval_s=0.001)
    assert polls == 3 and moves_finished(final, "orders", replication_factor=2)


def test_pure_predicates() -> None:
    with FakeCluster(brokers=4) as cluster:
        orders(cluster)
        cluster.states[4] = "removed"
        meta = parse_metadata(cluster.metadata(1))
        lagging = parse_metadata(cluster.metadata(2))  # not the controller: its "alive" may predate the drain
    assert hosted_partitions(meta, 4) == [("orders", 2)]
    assert drain_finished(meta, 4) and drain_finished(meta, 1) and drain_finished(meta, 9)  # removed/alive/gone
    assert not drain_finished(lagging, 1)
    assert not moves_finished(meta, "nope") and moves_finished(meta, "orders", partitions=3)
    assert not moves_finished(meta, "orders", partitions=4)
    assert not moves_finished(meta, "orders", replication_factor=2)


async def test_sync_wrappers_of_the_new_calls(fake: FakeCluster) -> None:
    urls = fake.urls

    def script() -> tuple[str, str | None, int]:
        with SyncAdmin(urls) as admin:
            drained = admin.drain_broker(3, timeout_s=5)
            cancelled = admin.cancel_drain(3, timeout_s=5)
            topic = admin.alter_topic("orders", partitions=4, timeout_s=5)
            assert admin.controller_metadata(timeout_s=5).from_controller
            assert admin.wait_for_moves("orders", timeout_s=5, partitions=4).topic("orders") is not None
            assert admin.wait_for_drain(1, timeout_s=5).broker(1) is not None
            return drained.state, cancelled.state if cancelled else None, topic.partition_count

    assert await asyncio.wait_for(asyncio.to_thread(script), 30) == ("draining", "alive", 4)
