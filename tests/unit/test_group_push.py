"""Push consumers of consumer groups (cluster/group_push.py, node/group_push.py, client GroupPushConsumer):
the commit window and frames as pure code, then on an in-process cluster: records of each partition in offset
order under the prefetch window, commits (not acks) making room and surviving a reconnect, two members
splitting the partitions, and a consumer that stops committing stopping the stream.

Method: real WebSockets against real brokers; every wait is on a receive or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from raftmq.client.push_consumer import GroupPushConsumer, PushRecord
from raftmq.cluster.errors import InvalidRequest, LeaderNotAvailable, UnknownTopicOrPartition
from raftmq.cluster.group_push import (
    CommitWindow,
    OffsetReset,
    commit_frame,
    parse_commit_frame,
    parse_group_subscription,
)

from raftmq.cli import cli
from tests.inprocess import InProcessCluster, wait_until
from tests.unit.test_push_consumers import receive_all


def test_the_commit_window() -> None:
    window = CommitWindow(3)
    window.own(("t", 0), 10)
    window.own(("t", 1), 0)
    for offset in (10, 11):
        window.deliver(("t", 0), offset)
    window.deliver(("t", 1), 0)
    assert window.room == 0 and window.positions == {("t", 0): 12, ("t", 1): 1}
    with pytest.raises(AssertionError):
        window.deliver(("t", 1), 1)
    assert window.check_commit(("t", 0), 11) and window.committed(("t", 0), 11) == 1 and window.room == 1
    with pytest.raises(InvalidRequest):
        window.check_commit(("t", 0), 13)  # past what was sent
    assert not window.check_commit(("t", 9), 1)  # not owned: ignored
    window.drop(("t", 0))
    assert window.room == 2 and ("t", 0) not in window.positions
    with pytest.raises(AssertionError):
        window.deliver(("t", 1), 0)  # each offset once, in order


def test_frames_and_subscription() -> None:
    assert parse_commit_frame(commit_frame([(("t", 0), 5)])) == [(("t", 0), 5)]
    for bad in (b"\xc1", msgpack.packb({"commit": [["t", 0, -1]]}), msgpack.packb({"commit": [["t", "0", 1]]}),
                msgpack.packb({"acks": []})):
        with pytest.raises(InvalidRequest):
            parse_commit_frame(bad)
    subscription = parse_group_subscription("g", {"topics": "b,a", "prefetch": "4", "reset": "latest"})
    assert (subscription.topics, subscription.prefetch, subscription.reset) == (("a", "b"), 4, OffsetReset.LATEST)
    for query in ({"topics": ""}, {"topics": "a", "reset": "middle"}, {"topics": "a", "prefetch": "0"},
                  {"topics": "a", "lock_ms": "5"}):
        with pytest.raises(InvalidRequest):
            parse_group_subscription("g", query)


def in_order(records: list[PushRecord]) -> bool:
    by_partition: dict[int, list[int]] = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record.offset)
    return all(offsets == sorted(set(offsets)) for offsets in by_partition.values())


async def committed(cluster: InProcessCluster, group_id: str) -> dict[tuple[str, int], int]:
    views = await cluster.service(1).fetch_offsets(group_id, None)
    return {(v.topic, v.partition): v.offset for v in views}


@pytest.mark.asyncio
async def test_ordered_stream_under_the_window_with_commits_that_survive_a_reconnect(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("events", partitions=2)
        for partition in (0, 1):
            await cluster.append_records("events", partition, [b"p%d-%d" % (partition, i) for i in range(6)])
        async with GroupPushConsumer(cluster.urls, "billing", topics=["events"], prefetch=4) as consumer:
            first = await receive_all(consumer, 4)
            assert consumer.assignment == {("events", 0), ("events", 1)}
            # Nothing is committed: the window is full and nothing more comes.
            assert await consumer.receive(0.5) is None
            assert cluster.service(1).push.records_held == 0  # the broker keeps no record for the session
            await consumer.commit(*first)  # commits free the window (one commit covers a partition's prefix)
            rest = await receive_all(consumer, 4)
            assert in_order(first + rest)
            await consumer.commit(*rest)
            await wait_until(lambda: cluster.service(1).push.active == 1, what="one session")
        expected = {("events", p): sum(1 for r in first + rest if r.partition == p) for p in (0, 1)}
        assert await committed(cluster, "billing") == expected
        await wait_until(lambda: cluster.service(1).push.active == 0, what="the session to end")
        # Reconnecting starts at the committed offsets: the 4 records never sent come next, nothing else.
        async with GroupPushConsumer(cluster.urls, "billing", topics=["events"], prefetch=10) as consumer:
            again = await receive_all(consumer, 4)
            assert sorted((r.partition, r.offset) for r in again) == \
                sorted({(p, o) for p in (0, 1) for o in range(6)} - {(r.partition, r.offset) for r in first + rest})
            assert in_order(again)
            assert await consumer.receive(0.3) is None


@pytest.mark.asyncio
async def test_uncommitted_records_are_sent_again_to_the_next_member(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs")
        await cluster.append_records("jobs", 0, [b"j%d" % i for i in range(5)])
        async with GroupPushConsumer(cluster.urls, "workers", topics=["jobs"], prefetch=5) as consumer:
            got = await receive_all(consumer, 5)
            assert await consumer.commit(got[1]) == [("jobs", 0, 2)]  # 0 and 1 done; 2-4 handled, not committed
        await wait_until(lambda: cluster.service(1).push.active == 0, what="the member to leave")
        assert await committed(cluster, "workers") == {("jobs", 0): 2}
        async with GroupPushConsumer(cluster.urls, "workers", topics=["jobs"], prefetch=5) as consumer:
            assert [r.offset for r in await receive_all(consumer, 3)] == [2, 3, 4]  # at least once


@pytest.mark.asyncio
async def test_two_members_split_the_partitions(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("orders", partitions=4)
        for partition in range(4):
            await cluster.append_records("orders", partition, [b"o%d" % partition])
        # A short session: heartbeats (and so the rebalance's steps) come every ~0.3 s.
        first = GroupPushConsumer(cluster.urls, "shipping", topics=["orders"], prefetch=10, session_timeout_ms=1_000)
        second = GroupPushConsumer(cluster.urls, "shipping", topics=["orders"], prefetch=10, session_timeout_ms=1_000)
        async with first, second:
            seen: dict[int, set[str]] = defaultdict(set)

            async def drain(consumer: GroupPushConsumer, name: str) -> None:
                while (record := await consumer.receive(0.2)) is not None:
                    seen[record.partition].add(name)
                    await consumer.commit(record)

            async def balanced() -> bool:
                await asyncio.gather(drain(first, "first"), drain(second, "second"))
                return len(first.assignment) == len(second.assignment) == 2 and len(seen) == 4

            for _ in range(60):
                if await balanced():
                    break
            assert len(first.assignment) == len(second.assignment) == 2
            assert first.assignment.isdisjoint(second.assignment)
            assert await committed(cluster, "shipping") == {("orders", p): 1 for p in range(4)}


@pytest.mark.asyncio
async def test_refusals_are_coded_before_the_upgrade(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        with pytest.raises(UnknownTopicOrPartition):
            async with GroupPushConsumer(cluster.urls, "g", topics=["missing"]):
                pass
        with pytest.raises(InvalidRequest):
            async with GroupPushConsumer(cluster.urls, "g", topics=["a"], reset="middle"):
                pass


@pytest.mark.asyncio
async def test_consume_push_ordered_prints_in_order_and_commits(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs")
        await cluster.append_records("jobs", 0, [b"j%d" % i for i in range(5)])
        args = ["consume", "jobs", "--group", "cli", "--push", "--ordered", "--prefetch", "2", "--max", "3",
                "-b", cluster.urls[0]]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["0 0 - j0", "0 1 - j1", "0 2 - j2"]
        assert await committed(cluster, "cli") == {("jobs", 0): 3}
        bad = await asyncio.to_thread(CliRunner().invoke, cli, ["consume", "jobs", "--ordered", "-b", cluster.urls[0]])
        assert bad.exit_code == 2 and "--ordered needs --push" in bad.output


@pytest.mark.asyncio
async def test_a_partition_whose_start_cannot_be_read_yet_is_started_later(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The watermarks of an assigned partition cannot be read at first (its leader is being elected): the
    session keeps the partition (the group sees it owned) and starts it on a later pass."""
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("jobs")
        await cluster.append_records("jobs", 0, [b"a", b"b"])
        reader = cluster.service(1).reader
        real = reader.watermarks
        failures = iter(range(3))

        async def flaky(topic: str, partition: int) -> tuple[int, int]:
            if next(failures, None) is not None:
                raise LeaderNotAvailable("electing")
            return await real(topic, partition)

        monkeypatch.setattr(reader, "watermarks", flaky)
        async with GroupPushConsumer(cluster.urls, "late", topics=["jobs"], prefetch=5) as consumer:
            assert [r.value for r in await receive_all(consumer, 2)] == [b"a", b"b"]
            assert consumer.assignment == {("jobs", 0)}
        assert next(failures, None) is None  # the failures did happen
