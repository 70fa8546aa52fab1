"""A Raft leader whose disk fills up, on the fault file system (a real FUSE mount refusing writes with ENOSPC).

Goal: the leader's replication thread stays up; the write that meets the full disk is not acknowledged and the
next ones are refused with STORAGE_ERROR (definite: nothing appended); a healthy replica takes the lead and
commits without it; once space returns the old leader rejoins and catches up to the same log.
Method: three in-process ReplicationLoops (tests/integration/test_replication.py's Trio) whose data
directories are all on one mount; an ENOSPC rule for write, create and mkdir on the leader's directory only,
cleared for "space returns". Skipped, with the reason, where FUSE cannot be mounted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.faultfs.process import FaultFsMount
from raftmq.cluster.errors import OutcomeUnknown, StorageError

from tests.conftest import wait_for_condition
from tests.integration.test_replication import Trio, _leader, _submit

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"fault file system unavailable: {_REASON}")


@pytest.fixture
async def mounted_trio(tmp_path: Path) -> AsyncIterator[tuple[Trio, FaultFsMount]]:
    with FaultFsMount(tmp_path / "data", seed=5) as mount:
        cluster = Trio(mount.mountpoint, asyncio.get_running_loop())
        try:
            yield cluster, mount
        finally:
            cluster.stop()


async def test_a_leader_whose_disk_is_full_refuses_writes_stays_up_and_recovers(
        mounted_trio: tuple[Trio, FaultFsMount]) -> None:
    trio, mount = mounted_trio
    trio.start(["g"])
    leader = await _leader(trio.nodes, "g")
    group = leader.groups["g"]
    await asyncio.wait_for(asyncio.gather(*[_submit(group, b"a%d" % i, 100 + i) for i in range(10)]), 10)
    last_before = group.journal.last_index
    rule = mount.add_rule(ops=["write", "create", "mkdir"], pattern=f"/n{leader.broker_id}/*", errno="ENOSPC")
    with pytest.raises((OutcomeUnknown, StorageError)):
        await asyncio.wait_for(_submit(group, b"meets the full disk", 1), 10)
    with pytest.raises(StorageError) as refused:
        await asyncio.wait_for(_submit(group, b"refused", 2), 1)
    assert refused.value.code == "STORAGE_ERROR" and refused.value.definite and refused.value.retriable
    assert "retry there" in refused.value.message
    assert group.storage_fault is not None and "No space left on device" in group.storage_fault.message
    new_leader = await _leader({b: n for b, n in trio.nodes.items() if n is not leader}, "g")
    await asyncio.wait_for(asyncio.gather(*[_submit(new_leader.groups["g"], b"b%d" % i, 200 + i)
                                            for i in range(10)]), 10)
    assert group.journal.last_index == last_before
    assert leader.replication is not None and leader.replication.failure is None
    mount.clear_rules(rule)  # space returns
    await wait_for_condition(lambda: group.storage_fault is None, timeout_s=5, what="the old leader rejoining")
    await asyncio.wait_for(_submit(new_leader.groups["g"], b"c", 300), 10)

    def copies() -> list[list[bytes]]:
        return [node.machines["g"].copy() for node in trio.nodes.values()]

    await wait_for_condition(lambda: len({len(c) for c in copies()}) == 1 and len(copies()[0]) >= 21,
                             timeout_s=10, what="the old leader caught up")
    first, second, third = copies()
    assert first == second == third and b"refused" not in first
