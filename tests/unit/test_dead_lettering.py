"""Dead-letter exchanges named by a topic, a share group or a push subscription (cluster/dead_lettering.py,
node/dead_lettering.py): the pure rules, then on an in-process cluster a pulling share consumer's rejects and
over-limit records and a push consumer's rejects reaching the exchange the most specific source names.

Method: pure functions and the metadata state machine directly; the cluster cases use the real clients and
read the dead-letter topic's log; every wait is on a condition or a receive with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.push_consumer import PushConsumer
from raftmq.client.share_consumer import ShareConsumer, ShareRecord
from raftmq.cluster import limits
from raftmq.cluster.batch import Record, decode_records, iter_stored
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.dead_lettering import (
    DeadLetterTarget,
    DeathReason,
    GroupDeadLetters,
    choose_target,
    dead_letter_item,
    death_of,
    is_cycle,
    parse_death,
    parse_group_dead_letter,
)
from raftmq.cluster.errors import InvalidConfig, InvalidExchange, InvalidRequest, RaftMQError
from raftmq.cluster.metadata import MetadataState, TopicConfig, parse_topic_config
from raftmq.cluster.share_groups import SharesState

from raftmq.cli import cli
from tests.inprocess import InProcessCluster, wait_until


def record(offset: int = 3, timestamp_ms: int = 1_000, headers: tuple[tuple[str, bytes | None], ...] = ()) -> Record:
    return Record(offset, timestamp_ms, b"k", b"v", headers)


def test_the_most_specific_source_names_the_exchange() -> None:
    subscription, group, topic = DeadLetterTarget("s"), DeadLetterTarget("g", "gk"), DeadLetterTarget("t")
    assert choose_target(subscription, group, topic) == subscription
    assert choose_target(None, group, topic) == group
    assert choose_target(None, None, topic) == topic
    assert choose_target(None, None, None) is None
    routed = record(headers=(("x-routing-key", b"order.created"),))
    assert DeadLetterTarget("t").routing_key_for(routed) == "order.created"
    assert DeadLetterTarget("t", "dead").routing_key_for(routed) == "dead"


def test_what_dies_and_how_it_is_published() -> None:
    fresh, old = record(timestamp_ms=9_500), record(timestamp_ms=1_000)
    assert death_of(old, over_limit=False, ttl_ms=5_000, now_ms=10_000, park_over_limit=False) is DeathReason.EXPIRED
    assert death_of(fresh, over_limit=False, ttl_ms=5_000, now_ms=10_000, park_over_limit=True) is None
    assert death_of(old, over_limit=False, ttl_ms=-1, now_ms=10_000, park_over_limit=True) is None  # no TTL
    over = death_of(fresh, over_limit=True, ttl_ms=-1, now_ms=10_000, park_over_limit=True)
    assert over is DeathReason.DELIVERY_LIMIT
    assert death_of(fresh, over_limit=True, ttl_ms=-1, now_ms=10_000, park_over_limit=False) is None
    twice = record(headers=(("a", b"1"), ("x-death-reason", b"rejected"), ("x-death-count", b"1")))
    key, value, headers, timestamp_ms = dead_letter_item(twice, DeathReason.EXPIRED, count=2, topic="t", partition=1,
                                                         time_ms=7)
    assert (key, value, timestamp_ms) == (b"k", b"v", 7)  # stamped with the time of death
    assert headers[0] == ("a", b"1")
    assert parse_death(headers) == {"reason": "expired", "count": "2", "topic": "t", "partition": "1",
                                    "offset": "3", "time-ms": "7", "original-timestamp-ms": "1000",
                                    "path": "t"}  # the earlier death's headers replaced


def test_dead_letter_cycles_without_a_rejection_end() -> None:
    """A record that expires in t, is dead-lettered to u, expires there and is routed back to t would loop
    forever: its second automatic death in t archives it. A rejection resets the path (a consumer decided)."""
    def died(rec: Record, reason: DeathReason, topic: str) -> Record:
        _key, _value, headers, timestamp_ms = dead_letter_item(rec, reason, count=0, topic=topic, partition=0,
                                                               time_ms=rec.timestamp_ms + 10)
        return Record(rec.offset + 1, timestamp_ms, rec.key, rec.value, tuple(headers))

    once = died(record(), DeathReason.EXPIRED, "t")
    assert not is_cycle(once, "u", DeathReason.EXPIRED)
    twice = died(once, DeathReason.EXPIRED, "u")
    assert parse_death(twice.headers)["path"] == "t,u"
    assert parse_death(twice.headers)["original-timestamp-ms"] == "1000"  # the first death's, kept
    assert is_cycle(twice, "t", DeathReason.EXPIRED) and is_cycle(twice, "t", DeathReason.DELIVERY_LIMIT)
    assert not is_cycle(twice, "t", DeathReason.REJECTED)
    rejected = died(twice, DeathReason.REJECTED, "t")
    assert parse_death(rejected.headers)["path"] == "" and not is_cycle(rejected, "t", DeathReason.EXPIRED)
    chain = record()
    for hop in range(limits.dead_letter_path_topics_max):
        chain = died(chain, DeathReason.DELIVERY_LIMIT, f"hop-{hop}")
    assert is_cycle(chain, "elsewhere", DeathReason.DELIVERY_LIMIT)


def test_topic_and_group_dead_letter_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_topic_config({"dead_letter_exchange": "dlx", "message_ttl_ms": 500}, 3)
    assert config.dead_letter == DeadLetterTarget("dlx") and config.message_ttl_ms == 500
    assert TopicConfig.from_wire(config.to_wire()) == config
    assert parse_topic_config({}, 3).dead_letter is None
    for bad in ({"dead_letter_exchange": "no spaces"}, {"dead_letter_routing_key": "k"},
                {"dead_letter_exchange": 5}, {"message_ttl_ms": 0}):
        with pytest.raises(InvalidConfig):
            parse_topic_config(bad, 3)
    payload = parse_group_dead_letter("workers", {"dead_letter_exchange": "dlx", "dead_letter_routing_key": "dead"})
    state = MetadataState()
    assert state.apply(1, MetadataOp.SET_GROUP_DEAD_LETTER, 0, payload)["dead_letter_exchange"] == "dlx"
    restored = MetadataState.from_bytes(state.to_bytes())
    assert restored.group_dead_letters.targets == {"workers": DeadLetterTarget("dlx", "dead")}
    cleared = parse_group_dead_letter("workers", {"dead_letter_exchange": None})
    assert state.apply(2, MetadataOp.SET_GROUP_DEAD_LETTER, 0, cleared)["dead_letter_exchange"] is None
    assert state.group_dead_letters.targets == {} and state.group_dead_letters.version == 2
    with pytest.raises(InvalidExchange):
        parse_group_dead_letter("workers", {"dead_letter_exchange": ""})
    with pytest.raises(InvalidRequest):
        parse_group_dead_letter("workers", {"exchange": "dlx"})
    monkeypatch.setattr(limits, "group_dead_letters_max", 2)
    table = GroupDeadLetters()
    for group in ("a", "b", "a"):
        assert not isinstance(table.set(parse_group_dead_letter(group, {"dead_letter_exchange": "x"})), RaftMQError)
    assert isinstance(table.set(parse_group_dead_letter("c", {"dead_letter_exchange": "x"})), InvalidRequest)
    assert sorted(table.targets) == ["a", "b"]


def dead_letters(cluster: InProcessCluster, topic: str) -> list[tuple[bytes | None, dict[str, str]]]:
    log = cluster.leader(topic, 0).state_machine.log
    return [(r.value, parse_death(r.headers)) for h, chunk in iter_stored(log.read(log.log_start_offset, 1 << 20))
            for r in decode_records(chunk, h)]


async def poll_until(consumer: ShareConsumer, count: int) -> list[ShareRecord]:
    got: list[ShareRecord] = []

    async def more() -> bool:
        got.extend(await consumer.poll(timeout_ms=200))
        return len(got) >= count

    for _ in range(50):
        if await more():
            return got
    raise AssertionError(f"only {len(got)} of {count} records were delivered")


@pytest.mark.asyncio
async def test_a_pulling_share_group_dead_letters_to_its_groups_exchange_else_its_topics(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("to-topic-dlx")
        await cluster.create_topic("to-group-dlx")
        await cluster.create_topic("payments", config={"dead_letter_exchange": "topic-dlx"})
        async with Admin(cluster.urls) as admin:
            for exchange, topic in (("topic-dlx", "to-topic-dlx"), ("group-dlx", "to-group-dlx")):
                await admin.create_exchange(exchange, "fanout")
                await admin.bind(exchange, topic)
            answer = await admin.set_share_group_dead_letter("billing", "group-dlx")
            assert answer == {"group_id": "billing", "dead_letter_exchange": "group-dlx",
                              "dead_letter_routing_key": ""}
            assert (await admin.share_group_dead_letter("other"))["dead_letter_exchange"] is None
        await cluster.append_records("payments", 0, [b"bad", b"flaky", b"good"])

        # The group names an exchange: its rejects and over-limit records go there, not to the topic's.
        async with ShareConsumer(cluster.urls, "billing", topics=["payments"], max_deliveries=1) as consumer:
            for item in await poll_until(consumer, 3):
                {b"bad": consumer.reject, b"flaky": consumer.release, b"good": consumer.acknowledge}[
                    item.record.value](item)
            await consumer.flush()
            await consumer.poll(timeout_ms=200)  # flaky again: over the limit, dead-lettered by the broker
            await wait_until(lambda: len(dead_letters(cluster, "to-group-dlx")) == 2, what="two dead letters")
        letters = dict(dead_letters(cluster, "to-group-dlx"))
        assert letters[b"bad"]["reason"] == DeathReason.REJECTED and letters[b"bad"]["count"] == "1"
        assert letters[b"flaky"]["reason"] == DeathReason.DELIVERY_LIMIT and letters[b"flaky"]["count"] == "1"
        assert dead_letters(cluster, "to-topic-dlx") == []

        # Another group names none: the topic's exchange takes its rejects.
        async with ShareConsumer(cluster.urls, "audit", topics=["payments"]) as consumer:
            for item in await poll_until(consumer, 3):
                consumer.reject(item)
            await consumer.flush()
        assert [(v, d["reason"]) for v, d in dead_letters(cluster, "to-topic-dlx")] == \
            [(b"bad", "rejected"), (b"flaky", "rejected"), (b"good", "rejected")]


@pytest.mark.asyncio
async def test_a_push_subscriptions_exchange_wins_over_the_topics(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs", config={"dead_letter_exchange": "topic-dlx",
                                                   "dead_letter_routing_key": "jobs.dead"})
        await cluster.create_topic("topic-dead")
        await cluster.create_topic("own-dead")
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("topic-dlx", "direct")
            await admin.bind("topic-dlx", "topic-dead", key="jobs.dead")
            await admin.create_exchange("own-dlx", "fanout")
            await admin.bind("own-dlx", "own-dead")
        await cluster.append_records("jobs", 0, [b"a", b"b"])
        async with PushConsumer(cluster.urls, "plain", topics=["jobs"], prefetch=2) as consumer:
            for _ in range(2):
                got = await consumer.receive(5.0)
                assert got is not None
                await consumer.nack(got, requeue=False)
            await wait_until(lambda: len(dead_letters(cluster, "topic-dead")) == 2, what="the topic's dead letters")
        async with PushConsumer(cluster.urls, "own", topics=["jobs"], prefetch=2,
                                dead_letter_exchange="own-dlx") as consumer:
            got = await consumer.receive(5.0)
            assert got is not None
            await consumer.nack(got, requeue=False)
            await wait_until(lambda: len(dead_letters(cluster, "own-dead")) == 1, what="the subscription's letter")
        assert len(dead_letters(cluster, "topic-dead")) == 2


@pytest.mark.asyncio
async def test_the_cli_names_dead_letter_exchanges(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        async def run(*args: str) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, "-b", cluster.urls[0]],
                                             env={"COLUMNS": "200"})
            assert result.exit_code == 0, result.output
            return result.stdout

        await run("topic", "create", "quotes", "--message-ttl-ms", "60000", "--dead-letter-exchange", "stale")
        assert cluster.service(1).metadata.topic("quotes").config.dead_letter == DeadLetterTarget("stale")
        described = await run("topic", "describe", "quotes")
        assert "message_ttl_ms" in described and "stale" in described
        assert "no dead-letter exchange" in await run("group", "dead-letter", "pricing")
        assert "exchange dlx, routing key dead" in await run("group", "dead-letter", "pricing", "--exchange", "dlx",
                                                             "--routing-key", "dead")
        assert "exchange dlx" in await run("group", "dead-letter", "pricing")
        assert "no dead-letter exchange" in await run("group", "dead-letter", "pricing", "--clear")


@pytest.mark.asyncio
async def test_expired_records_are_never_delivered_to_a_share_group_but_offset_reads_return_them(
        tmp_path: Path) -> None:
    """A topic with a message TTL: a pulling share consumer gets only the fresh record; the expired ones go to
    the topic's dead-letter exchange (reason expired, delivery count 0). Reads by offset return all three."""
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("quotes", config={"message_ttl_ms": 60_000, "dead_letter_exchange": "stale"})
        await cluster.create_topic("stale-quotes")
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("stale", "fanout")
            await admin.bind("stale", "stale-quotes")
        await cluster.append_records("quotes", 0, [b"old-1", b"old-2"], timestamp_ms=1_000)  # long expired
        await cluster.append_records("quotes", 0, [b"fresh"], timestamp_ms=int(time.time() * 1000))
        async with ShareConsumer(cluster.urls, "pricing", topics=["quotes"]) as consumer:
            delivered = await poll_until(consumer, 1)
            assert [item.record.value for item in delivered] == [b"fresh"]
            consumer.acknowledge(delivered[0])
            assert await consumer.poll(timeout_ms=200) == []
        assert [(v, d["reason"], d["count"]) for v, d in dead_letters(cluster, "stale-quotes")] == \
            [(b"old-1", "expired", "0"), (b"old-2", "expired", "0")]
        async with Consumer(cluster.urls) as reader:
            assert [r.value for r in await reader.read_records("quotes", 0, 0)] == [b"old-1", b"old-2", b"fresh"]


@pytest.mark.asyncio
async def test_a_dead_letter_cycle_through_the_same_topic_ends(tmp_path: Path) -> None:
    """The topic's dead-letter exchange routes back into the topic and every record expires at once: the
    expired record is dead-lettered once (back into the topic, stamped anew) and archived when it expires
    again, instead of filling the log."""
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("quotes", config={"message_ttl_ms": 1, "dead_letter_exchange": "again"})
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("again", "fanout")
            await admin.bind("again", "quotes")
        await cluster.append_records("quotes", 0, [b"old"], timestamp_ms=1_000)
        async with ShareConsumer(cluster.urls, "pricing", topics=["quotes"]) as consumer:
            async def settled() -> bool:
                assert await consumer.poll(timeout_ms=100) == []
                rows = await cluster.service(1).describe_share_group("pricing")
                return rows[0]["start_offset"] == 2

            for _ in range(50):
                if await settled():
                    break
            assert await settled()
        assert [(v, d.get("path")) for v, d in dead_letters(cluster, "quotes")] == [(b"old", None), (b"old", "quotes")]


def test_only_records_a_member_holds_are_dead_lettered_for_its_rejects() -> None:
    shares = SharesState()
    acquire = {"group_id": "g", "topic": "t", "partition": 0, "log_end": 3, "log_start": 0, "max_records": 2,
               "lock_ms": 1_000, "max_deliveries": 5}
    shares.acquire(0, {**acquire, "member_id": "a"})
    shares.acquire(0, {**acquire, "member_id": "b", "max_records": 1})
    assert shares.locked_by("g", "t", 0, "a", [0, 1, 2, 7]) == {0: 1, 1: 1}
    assert shares.locked_by("g", "t", 0, "b", [0, 1, 2]) == {2: 1}
    assert shares.locked_by("g", "other", 0, "a", [0]) == {}
