"""A replica whose disk refuses writes, and two liveness faults found by the slow-disk chaos scenario, on three
in-process ReplicationLoops (real sockets, real pysyncobj; tests/integration/test_replication.py's Trio).

Goal: a leader whose disk is full refuses writes with STORAGE_ERROR and stays up, hands its leadership to a
healthy replica, never stores or counts what it could not write, and rejoins once space returns; a follower
whose fsync fails never acknowledges what it did not sync and rejoins with those entries cut; a follower
whose tick is slow (a slow disk) never starts an election without a pre-vote; and a replica left at a newer
term than a working leader (its vote requests lost) is not stuck there.
Method: the journal module's os calls are wrapped for one replica's directory (ENOSPC on writes, EIO on
fsync), removed again for "space returns"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from raftmq.cluster.errors import OutcomeUnknown, StorageError
from raftmq.node.replication import RaftGroup

from tests.conftest import wait_for_condition
from tests.faulty_disk import FaultyDisk
from tests.integration.test_replication import Node, Trio, _leader, _submit


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[Trio]:
    cluster = Trio(tmp_path, asyncio.get_running_loop())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def faulty_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[RaftGroup], FaultyDisk]:
    return lambda group: FaultyDisk(group.journal.path.parent).install(monkeypatch)


def _copies(three: Trio) -> list[list[Any]]:
    return [node.machines["g"].copy() for node in three.nodes.values()]


async def _write(group: RaftGroup, count: int, first_id: int) -> None:
    await asyncio.wait_for(asyncio.gather(*[_submit(group, b"w%d" % i, first_id + i) for i in range(count)]), 30)


async def test_a_leader_whose_disk_is_full_refuses_writes_stays_up_and_recovers(
        three: Trio, faulty_disk: Callable[[RaftGroup], FaultyDisk]) -> None:
    nodes = three.nodes
    three.start(["g"])
    leader = await _leader(nodes, "g")
    await _write(leader.groups["g"], 10, 100)
    group = leader.groups["g"]
    disk = faulty_disk(group)
    last_before = group.journal.last_index
    disk.full = True
    # The write that meets the full disk: in flight when the replica leaves the group, so its outcome is unknown
    # (it may have been appended before); nothing after it is even tried.
    with pytest.raises((OutcomeUnknown, StorageError)):
        await asyncio.wait_for(_submit(group, b"refused", 1), 10)
    assert group.storage_fault is not None and disk.refused >= 1
    refusal = await asyncio.wait_for(asyncio.gather(_submit(group, b"again", 2), return_exceptions=True), 10)
    assert isinstance(refusal[0], StorageError) and refusal[0].definite and refusal[0].retriable, refusal
    assert not group.status.is_leader and group.status.leader_id is None
    # A healthy replica leads now (the old leader asked its most caught-up follower to campaign at once).
    started = time.monotonic()
    survivors = {b: n for b, n in nodes.items() if n is not leader}
    new_leader = await _leader(survivors, "g")
    print(f"leadership moved {time.monotonic() - started:.3f} s after the disk filled up")
    await _write(new_leader.groups["g"], 20, 200)
    assert group.journal.last_index == last_before  # nothing half-written or counted while the disk was full
    assert leader.replication is not None and leader.replication.failure is None  # the broker stays up
    disk.full = False  # space returns
    await wait_for_condition(lambda: group.storage_fault is None, timeout_s=20, what="the replica rejoining")
    await _write(new_leader.groups["g"], 5, 300)
    await wait_for_condition(lambda: len({len(c) for c in _copies(three)}) == 1 and len(_copies(three)[0]) >= 35,
                             timeout_s=30, what="the old leader caught up")
    copies = _copies(three)
    assert copies[0] == copies[1] == copies[2]
    assert b"again" not in copies[0]


async def test_a_follower_whose_fsync_fails_never_acknowledges_and_rejoins(
        three: Trio, faulty_disk: Callable[[RaftGroup], FaultyDisk]) -> None:
    nodes = three.nodes
    three.start(["g"])
    leader = await _leader(nodes, "g")
    await _write(leader.groups["g"], 5, 100)
    follower = next(n for n in nodes.values() if n is not leader)
    group = follower.groups["g"]
    # What the follower has on disk before its fsyncs start failing: everything it may ever have acknowledged.
    # (Its own count of synced entries can drop below this later without any harm: pysyncobj deletes and
    # re-appends the identical entries of an overlapping AppendEntries, and the re-append is unsynced.)
    last = leader.groups["g"].status.last_index
    await wait_for_condition(lambda: group.journal.last_index == last and not group.journal.unsynced, timeout_s=20,
                             what="the follower synced the first writes")
    synced_last = last
    disk = faulty_disk(group)
    disk.failing_fsync = True
    await _write(leader.groups["g"], 30, 200)  # commits with the leader and the other follower
    await wait_for_condition(lambda: group.storage_fault is not None, timeout_s=20, what="the follower fenced")
    await _write(leader.groups["g"], 10, 300)
    # The leader never heard an acknowledgement for an entry the follower could not fsync.
    assert leader.groups["g"].status.match_index.get(follower.broker_id, 0) <= synced_last
    disk.failing_fsync = False
    await wait_for_condition(lambda: group.storage_fault is None, timeout_s=20, what="the follower rejoining")
    await wait_for_condition(lambda: len({len(c) for c in _copies(three)}) == 1 and len(_copies(three)[0]) >= 45,
                             timeout_s=30, what="the follower caught up")
    copies = _copies(three)
    assert copies[0] == copies[1] == copies[2]


async def _keep_writing(group: RaftGroup, stop: asyncio.Event) -> int:
    written = 0
    while not stop.is_set():
        await asyncio.wait_for(_submit(group, b"k%d" % written, 10_000 + written), 10)
        written += 1
        await asyncio.sleep(0.02)  # a steady trickle: the group stays awake (no quiescence)
    return written


def _terms(nodes: dict[int, Node]) -> dict[int, tuple[int | None, int]]:
    return {b: (n.groups["g"].status.leader_id, n.groups["g"].status.term) for b, n in nodes.items()}


async def test_a_follower_with_a_slow_tick_does_not_campaign_without_a_prevote(three: Trio) -> None:
    """Seen on a slow disk: pysyncobj's one-second meta write (two fsyncs) runs inside the tick before its
    election check; the deadline passed meanwhile and the follower campaigned although pre-vote had not let
    it, deposing a healthy leader (or, with its vote requests lost, staying at a newer term for good)."""
    nodes = three.nodes
    three.start(["g"])
    leader = await _leader(nodes, "g")
    follower = next(n for n in nodes.values() if n is not leader)
    journal = follower.groups["g"].journal
    original = journal.onOneSecondTimer
    slow_calls = [0]

    def slow_meta_write() -> None:
        if slow_calls[0] < 3:
            slow_calls[0] += 1
            time.sleep(0.65)  # past the election timeout (0.3-0.6 s), inside the link timeout (0.8 s)
        original()

    before = _terms(nodes)
    journal.onOneSecondTimer = slow_meta_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    writer = asyncio.create_task(_keep_writing(leader.groups["g"], stop))
    await wait_for_condition(lambda: slow_calls[0] >= 3, timeout_s=10, what="three slow ticks")
    stop.set()
    assert await writer > 0
    # An election those ticks started would have begun inside them; one more entry applied everywhere is
    # passes enough on every replica for its statuses to show it.
    await _write(leader.groups["g"], 1, 900)
    await wait_for_condition(lambda: len({len(c) for c in _copies(three)}) == 1, timeout_s=10,
                             what="every replica applied the last entry")
    assert _terms(nodes) == before


async def test_a_replica_left_at_a_newer_term_with_no_leader_is_brought_back(three: Trio) -> None:
    """A candidate whose vote requests were lost (its links dropped) sits at a newer term than the working
    leader; pysyncobj drops the leader's older-term AppendEntries without an answer and pre-vote stops the
    candidate, so without an answer to the stale leader the group stays split for good."""
    nodes = three.nodes
    three.start(["g"])
    leader = await _leader(nodes, "g")
    follower = next(n for n in nodes.values() if n is not leader)
    group = follower.groups["g"]
    term = group.status.term

    def campaign_unheard() -> None:  # what pysyncobj does when it campaigns, minus the vote requests
        raft = group.raft
        group.quiescence.wake()
        raft._SyncObj__setCurrentTerm(term + 1, raft.selfNode.id)
        raft._SyncObj__setState(1)
        raft._SyncObj__raftLeader = None
        group.loop.mark_dirty(group.group_id)

    assert follower.replication is not None
    await asyncio.wrap_future(follower.replication.call(campaign_unheard))
    stop = asyncio.Event()
    writer = asyncio.create_task(_keep_writing(leader.groups["g"], stop))

    def agreed() -> bool:
        views = set(_terms(nodes).values())
        return len(views) == 1 and next(iter(views))[0] is not None and next(iter(views))[1] > term

    try:
        await wait_for_condition(agreed, timeout_s=10, what="one leader at the newer term, followed by all")
    finally:
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)
    new_leader = await _leader(nodes, "g")
    await _write(new_leader.groups["g"], 5, 500)
