"""Share groups (queue mode) as a pure state machine (cluster/share_groups.py).

Goal: each record is locked by one member at a time, redelivered after its lock expires with a growing
delivery count, flagged for the dead-letter topic after max deliveries, and acknowledged at most once.
Method: examples for each rule, and hypothesis driving random acquires, acks and clock moves against a
model of who holds which lock until when.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.consumer_groups import GroupOp, GroupsState
from raftmq.cluster.share_groups import SharesState

G, T = "jobs", "tasks"


def acquire(state: SharesState, member: str, now: int, *, end: int = 10, count: int = 3, lock_ms: int = 100,
            max_deliveries: int = 3, start: int = 0) -> list[tuple[int, int, bool]]:
    result = state.acquire(now, {"group_id": G, "topic": T, "partition": 0, "member_id": member, "log_end": end,
                                 "log_start": start, "max_records": count, "lock_ms": lock_ms,
                                 "max_deliveries": max_deliveries})
    assert isinstance(result, dict)
    return [(o, n, d) for o, n, d in result["acquired"]]


def ack(state: SharesState, member: str, now: int, acks: list[tuple[int, str]]) -> dict[str, Any]:
    result = state.acknowledge(now, {"group_id": G, "topic": T, "partition": 0, "member_id": member,
                                     "acks": [list(a) for a in acks]})
    assert isinstance(result, dict)
    return result


def test_records_are_locked_redelivered_after_the_timeout_and_dead_lettered() -> None:
    state = SharesState()
    assert acquire(state, "a", 0) == [(0, 1, False), (1, 1, False), (2, 1, False)]
    assert acquire(state, "b", 50) == [(3, 1, False), (4, 1, False), (5, 1, False)]  # a's locks still hold
    assert ack(state, "a", 60, [(0, "accept"), (1, "reject")])["done"] == [0, 1]
    assert acquire(state, "b", 140, count=2) == [(2, 2, False), (6, 1, False)]  # a's lock on 2 expired
    refused = ack(state, "a", 160, [(2, "accept")])
    assert refused["done"] == [] and refused["refused"][0][0] == 2  # b holds it now
    assert acquire(state, "c", 300, count=1) == [(2, 3, False)]
    assert acquire(state, "c", 500, count=1) == [(2, 4, True)]  # delivered 3 times: park it
    result = ack(state, "c", 510, [(2, "accept")])
    assert result["done"] == [2] and result["start_offset"] == 3
    assert ack(state, "c", 520, [(2, "accept")])["refused"]  # never acknowledged twice


def test_release_gives_a_record_back_at_once_and_retention_moves_the_start() -> None:
    state = SharesState()
    acquire(state, "a", 0, count=2, lock_ms=10_000)
    assert ack(state, "a", 1, [(0, "release")])["done"] == [0]
    assert acquire(state, "b", 2, count=1, lock_ms=10_000) == [(0, 2, False)]
    assert acquire(state, "b", 3, count=5, start=7) == [(7, 1, False), (8, 1, False), (9, 1, False)]


def test_share_state_rides_in_the_group_state_and_its_snapshot() -> None:
    groups = GroupsState()
    result = groups.apply(GroupOp.SHARE_ACQUIRE, 0, {"group_id": G, "topic": T, "partition": 0, "member_id": "a",
                                                     "log_end": 3, "max_records": 2, "lock_ms": 100,
                                                     "max_deliveries": 5})
    assert result["acquired"] == [[0, 1, False], [1, 1, False]]
    copy = GroupsState.from_bytes(groups.to_bytes())
    assert copy.shares.to_wire() == groups.shares.to_wire()
    assert copy.shares.describe(G) == [{"topic": T, "partition": 0, "start_offset": 0, "end_offset": 3,
                                        "acquired": 2, "done_in_window": 0}]


STEPS = st.lists(st.tuples(st.sampled_from(["acquire", "accept", "release", "reject", "time"]),
                           st.sampled_from("abc"), st.integers(1, 4)), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_random_use_never_double_locks_or_double_acknowledges(steps: list[tuple[str, str, int]]) -> None:
    state = SharesState()
    now = 0
    locks: dict[int, tuple[str, int]] = {}  # the model: offset -> (holder, expiry)
    done: set[int] = set()
    deliveries: dict[int, int] = {}
    start = 0
    for action, member, n in steps:
        if action == "time":
            now += 40 * n
            continue
        if action == "acquire":
            for offset, count, _dead in acquire(state, member, now, end=12, count=n, lock_ms=100):
                holder = locks.get(offset)
                assert holder is None or holder[1] <= now, f"{offset} still locked by {holder}"
                assert offset not in done
                assert count == deliveries.get(offset, 0) + 1
                deliveries[offset] = count
                locks[offset] = (member, now + 100)
        else:
            mine = sorted(o for o, (holder, expiry) in locks.items() if holder == member)[:n]
            result = ack(state, member, now, [(o, action) for o in mine])
            for offset in result["done"]:
                owner, expiry = locks.pop(offset)
                assert owner == member and expiry > now and offset not in done
                if action != "release":
                    done.add(offset)
            for offset, _why in result["refused"]:
                assert locks[offset][1] <= now  # refused only because the lock had expired
                del locks[offset]
        share = state.partitions.get((G, T, 0))
        if share is not None:
            assert share.start_offset >= start and all(o in done for o in range(share.start_offset))
            start = share.start_offset
