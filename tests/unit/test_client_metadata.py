"""Client pure parts: ClusterView (canned /v1/metadata answers), error mapping, backoff, ByteBudget.

Method: no network. ClusterView is fed dicts shaped like docs/api.md; time is passed in.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from raftmq.client.connection import ByteBudget, attempt_was_definite, backoff_s
from raftmq.client.metadata import ClusterView, parse_metadata
from raftmq.cluster import errors
from raftmq.cluster.errors import (
    ClientTimeout,
    ConnectionFailed,
    NotEnoughReplicas,
    NotLeader,
    OutcomeUnknown,
    ProducerClosed,
    RaftMQError,
    UnexpectedResponse,
    error_from_wire,
)

from tests.inprocess import wait_until

B1, B2, B3 = "http://127.0.0.1:9101", "http://127.0.0.1:9102", "http://127.0.0.1:9103"


def metadata(leader: int | None = 1, epoch: int = 4, topic_id: int = 7, partitions: int = 2) -> dict:
    return {
        "cluster_id": "raftmq-local", "broker_id": 1, "controller_id": 2,
        "brokers": [{"id": 1, "url": B1, "peer": "x"}, {"id": 2, "url": B2 + "/"}, {"id": 3, "url": B3}],
        "topics": [{"name": "orders", "topic_id": topic_id, "replication_factor": 3,
                    "config": {"min_insync_replicas": 2},
                    "partitions": [{"partition": p, "leader_id": leader, "leader_epoch": epoch,
                                    "replicas": [1, 2, 3], "isr": [1, 2, 3]} for p in range(partitions)]}],
    }


def test_update_builds_brokers_topics_and_leaders() -> None:
    view = ClusterView([B1 + "/"])
    assert view.is_stale(0.0)
    view.update(metadata(), now_s=10.0)
    assert view.brokers == {1: B1, 2: B2, 3: B3}  # trailing slash normalised
    assert view.partition_count("orders") == 2
    assert view.partition_count("nope") is None
    assert view.leader_url("orders", 1) == B1
    assert view.leader_url("orders", 5) is None
    assert view.controller_url() == B2
    assert view.broker_id_for_url(B3) == 3
    assert view.replica_urls("orders", 0) == [B1, B2, B3]
    assert not view.is_stale(10.0)


def test_max_age_and_mark_stale() -> None:
    view = ClusterView([B1], max_age_ms=1000)
    view.update(metadata(), now_s=10.0)
    assert not view.is_stale(10.9)
    assert view.is_stale(11.0)
    view.update(metadata(), now_s=20.0)
    view.mark_stale()
    assert view.is_stale(20.0)


def test_older_epoch_does_not_replace_leader() -> None:
    view = ClusterView([B1])
    view.update(metadata(leader=2, epoch=5), now_s=0.0)
    view.update(metadata(leader=1, epoch=4), now_s=1.0)  # a lagging broker's view
    assert view.leader_id("orders", 0) == 2
    view.update(metadata(leader=3, epoch=6), now_s=2.0)
    assert view.leader_id("orders", 0) == 3
    # A re-created topic (new topic_id) takes the new answer whatever the epochs.
    view.update(metadata(leader=1, epoch=1, topic_id=8), now_s=3.0)
    assert view.leader_id("orders", 0) == 1


def test_one_topic_merges_by_epoch_and_leaves_the_rest_alone() -> None:
    """What the producer's leader probe feeds the view: one topic as GET /v1/topics/{name} describes it."""
    view = ClusterView([B1])
    view.update(metadata(leader=1, epoch=4), now_s=0.0)
    brokers, version = dict(view.brokers), view.version
    lagging = metadata(leader=1, epoch=3)["topics"][0]
    view.merge_topic(lagging, source_url=B2)
    assert view.leader_id("orders", 0) == 1 and view.partition("orders", 0).leader_epoch == 4  # type: ignore[union-attr]
    view.merge_topic(metadata(leader=2, epoch=5)["topics"][0], source_url=B2)
    assert view.leader_url("orders", 0) == B2 and view.leader_url("orders", 1) == B2
    assert view.brokers == brokers and view.version > version
    with pytest.raises(UnexpectedResponse):
        view.merge_topic({"partitions": []}, source_url=B3)
    assert view.leader_url("orders", 0) == B2


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 20)), min_size=1, max_size=30))
def test_leader_follows_the_newest_epoch_seen(updates: list[tuple[int, int]]) -> None:
    # Whatever order answers arrive in, the view holds a leader of the highest epoch seen, and the
    # last answer among those of that epoch (an equal epoch may repeat, never go back).
    view = ClusterView([B1])
    for now, (leader, epoch) in enumerate(updates):
        view.update(metadata(leader=leader, epoch=epoch), now_s=float(now))
    top = max(epoch for _, epoch in updates)
    part = view.partition("orders", 0)
    assert part is not None and part.leader_epoch == top
    assert view.leader_id("orders", 0) == [leader for leader, epoch in updates if epoch == top][-1]


def test_topics_missing_from_answer_are_dropped() -> None:
    view = ClusterView([B1])
    view.update(metadata(), now_s=0.0)
    answer = metadata()
    answer["topics"] = []
    view.update(answer, now_s=1.0)
    assert view.partition_count("orders") is None


def test_not_leader_details_update_at_once() -> None:
    view = ClusterView([B1])
    view.update(metadata(leader=1, epoch=4), now_s=0.0)
    details = {"leader_id": 2, "leader_url": B2, "leader_epoch": 5}
    url = view.apply_not_leader("orders", 0, details, failed_url=B1)
    assert url == B2
    assert view.leader_id("orders", 0) == 2
    assert view.leader_id("orders", 1) == 1  # other partitions untouched
    assert view.is_stale(0.0)
    # Unknown broker in the details: learned from leader_url.
    url = view.apply_not_leader("orders", 1, {"leader_id": 9, "leader_url": "http://h:1", "leader_epoch": 6})
    assert url == "http://h:1" and view.broker_url(9) == "http://h:1"
    # No leader known: None, and the broker that said "not me" is no longer the leader.
    assert view.apply_not_leader("orders", 0, {"leader_id": None, "leader_epoch": 7}) is None
    assert view.leader_url("orders", 0) is None


def test_stale_not_leader_details_ignored_but_failed_leader_forgotten() -> None:
    view = ClusterView([B1])
    view.update(metadata(leader=1, epoch=9), now_s=0.0)
    assert view.apply_not_leader("orders", 0, {"leader_id": 3, "leader_url": B3, "leader_epoch": 2},
                                 failed_url=B1) is None
    assert view.leader_id("orders", 0) is None


def test_candidate_urls_prefer_last_answer_then_brokers_then_bootstrap() -> None:
    view = ClusterView(["http://boot:1", B2])
    assert view.candidate_urls() == ["http://boot:1", B2]
    view.update(metadata(), now_s=0.0, source_url=B3)
    assert view.candidate_urls() == [B3, B1, B2, "http://boot:1"]


@pytest.mark.parametrize("bad", [
    None, [], {"brokers": "x"}, {"brokers": [{"id": "1", "url": B1}], "topics": []},
    {"brokers": [], "topics": [{"name": "t", "partitions": [{"partition": 1, "replicas": []}]}]},
    {"brokers": [{"id": 1, "url": "ftp://x"}], "topics": []},
])
def test_malformed_metadata_is_unexpected_response(bad: object) -> None:
    view = ClusterView([B1])
    with pytest.raises(UnexpectedResponse):
        view.update(bad, now_s=0.0)
    assert view.version == 0


def test_parse_metadata_keeps_local_partition_fields() -> None:
    raw = metadata()
    raw["topics"][0]["partitions"][0].update(high_watermark=50, log_start_offset=3, role="leader")
    parsed = parse_metadata(raw)
    part = parsed.topics[0].partitions[0]
    assert (part.high_watermark, part.log_start_offset, part.role, part.isr) == (50, 3, "leader", (1, 2, 3))
    assert parsed.controller_id == 2 and parsed.topics[0].config["min_insync_replicas"] == 2


def test_bootstrap_validation() -> None:
    with pytest.raises(ValueError):
        ClusterView([])
    with pytest.raises(ValueError):
        ClusterView(["localhost:9101"])


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", errors.all_error_classes())
def test_error_from_wire_round_trips_every_code(cls: type[RaftMQError]) -> None:
    original = cls("boom", leader_id=2, leader_url=B2)
    rebuilt = error_from_wire({"error": original.to_wire()}, cls.http_status)
    assert type(rebuilt) is cls
    assert rebuilt.details == {"leader_id": 2, "leader_url": B2}
    assert (rebuilt.retriable, rebuilt.refresh_metadata, rebuilt.definite) == (
        cls.retriable, cls.refresh_metadata, cls.definite)


def test_error_from_wire_unknown_code_and_garbage() -> None:
    err = error_from_wire({"error": {"code": "FROM_THE_FUTURE", "message": "m"}}, 500)
    assert type(err) is RaftMQError and err.code == "FROM_THE_FUTURE"
    assert isinstance(error_from_wire("nope", 502), UnexpectedResponse)


def test_attempt_was_definite() -> None:
    assert attempt_was_definite(NotEnoughReplicas())
    assert attempt_was_definite(NotLeader())
    assert not attempt_was_definite(OutcomeUnknown())
    assert not attempt_was_definite(ClientTimeout())
    assert not attempt_was_definite(ConnectionFailed())
    assert attempt_was_definite(ConnectionFailed("refused", sent=False))


# --- backoff and the byte budget --------------------------------------------------------------------------


def test_backoff_grows_capped_with_jitter() -> None:
    rng = random.Random(7)
    values = [backoff_s(n, base_ms=100, max_ms=2000, rng=rng) for n in range(1, 12)]
    assert 0.05 <= values[0] <= 0.1
    assert 0.1 <= values[1] <= 0.2
    assert all(1.0 <= v <= 2.0 for v in values[6:])  # capped: within [max/2, max]


async def test_byte_budget_fifo_timeout_and_close() -> None:
    budget = ByteBudget(100)
    assert budget.try_acquire(60)
    assert not budget.try_acquire(60)
    first = asyncio.create_task(budget.acquire(50, 5.0))
    second = asyncio.create_task(budget.acquire(10, 5.0))
    await wait_until(lambda: budget.waiting == 2, what="two waiters")
    assert not budget.try_acquire(10)  # no barging past waiters
    budget.release(60)
    await asyncio.wait_for(asyncio.gather(first, second), 1.0)
    assert budget.used_bytes == 60
    with pytest.raises(TimeoutError):
        await budget.acquire(50, 0.01)
    assert budget.waiting == 0 and budget.used_bytes == 60
    waiter = asyncio.create_task(budget.acquire(90, 5.0))
    await wait_until(lambda: budget.waiting == 1, what="one waiter")
    budget.close(ProducerClosed("closed"))
    with pytest.raises(ProducerClosed):
        await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(ValueError):
        await ByteBudget(10).acquire(11, 1.0)


# --- the controller's fields (docs/api.md "Health and metadata") ------------------------------------------


def controller_metadata() -> dict:
    raw = metadata()
    raw["controller_url"] = B2 + "/"
    raw["brokers"] = [
        {"id": 1, "url": B1, "peer": "p1", "rack": "a", "state": "alive", "incarnation": 3,
         "metadata_voter": True, "replicas": 4, "leaders": 2, "heartbeat_age_s": 0.2},
        {"id": 2, "url": B2, "state": "fenced", "rack": None, "incarnation": 1, "metadata_voter": False,
         "replicas": 1, "leaders": 0, "heartbeat_age_s": 9},
        {"id": 3, "url": B3, "state": "draining"},
    ]
    part = raw["topics"][0]["partitions"][0]
    part.update({"target": [1, 3, 4], "partition_epoch": 5, "voters": [1, 2, 3]})
    raw["moves"] = [{"topic": "orders", "partition": 0, "replicas": [1, 2, 3], "target": [1, 3, 4],
                     "reason": "heal", "adding": 4, "removing": 2, "running_s": 2.5,
                     "progress": {"broker": 4, "match_index": 900, "leader_last_index": 1200}}]
    return raw


def test_new_broker_partition_and_move_fields_are_parsed() -> None:
    meta = parse_metadata(controller_metadata())
    b1, b2, b3 = meta.brokers
    assert (b1.state, b1.rack, b1.incarnation, b1.metadata_voter, b1.replicas, b1.leaders, b1.heartbeat_age_s) == \
        ("alive", "a", 3, True, 4, 2, 0.2)
    assert (b2.state, b2.rack, b2.metadata_voter, b2.heartbeat_age_s) == ("fenced", None, False, 9.0)
    assert (b3.state, b3.incarnation, b3.replicas) == ("draining", None, None)
    p0 = meta.topics[0].partitions[0]
    assert (p0.target, p0.partition_epoch, p0.voters) == ((1, 3, 4), 5, (1, 2, 3))
    assert meta.topics[0].partitions[1].target is None
    (move,) = meta.moves
    assert (move.topic, move.partition, move.replicas, move.target, move.reason) == \
        ("orders", 0, (1, 2, 3), (1, 3, 4), "heal")
    assert (move.adding, move.removing, move.running_s) == (4, 2, 2.5)
    assert move.progress is not None and move.progress.fraction == 0.75
    assert move.involves(4) and move.involves(2) and not move.involves(5)
    assert meta.controller_url == B2 and not meta.from_controller  # broker 1 answered, broker 2 controls
    assert meta.broker(2) is b2 and meta.topic("orders") is meta.topics[0]


def test_an_old_broker_without_the_fields_parses_with_defaults() -> None:
    meta = parse_metadata(metadata())
    broker = meta.brokers[0]
    assert (broker.state, broker.rack, broker.incarnation, broker.metadata_voter, broker.replicas,
            broker.heartbeat_age_s) == ("alive", None, None, None, None, None)
    part = meta.topics[0].partitions[0]
    assert (part.target, part.partition_epoch, part.voters) == (None, None, ())
    assert meta.moves == () and meta.controller_url is None


def test_malformed_controller_fields_do_not_break_routing() -> None:
    raw = controller_metadata()
    raw["brokers"][0].update({"state": 7, "incarnation": "x", "heartbeat_age_s": "soon"})
    raw["topics"][0]["partitions"][0].update({"target": "1,2", "voters": [1, "2"]})
    raw["moves"] = [{"topic": "orders"}, "junk", raw["moves"][0]]
    raw["controller_url"] = "ftp://nope"
    view = ClusterView([B1])
    meta = view.update(raw, now_s=0.0)
    assert view.leader_url("orders", 0) == B1  # leader lookups unaffected
    assert meta.brokers[0].state == "alive" and meta.brokers[0].incarnation is None
    assert meta.topics[0].partitions[0].target is None and meta.topics[0].partitions[0].voters == ()
    assert len(meta.moves) == 1 and meta.controller_url is None


def test_view_uses_the_named_controller_url_when_its_id_is_not_listed() -> None:
    raw = controller_metadata()
    raw["controller_id"] = 9
    raw["controller_url"] = "http://127.0.0.1:9109"
    view = ClusterView([B1])
    view.update(raw, now_s=0.0)
    assert view.controller_url() == "http://127.0.0.1:9109"
    view.update(controller_metadata(), now_s=1.0)
    assert view.controller_url() == B2
