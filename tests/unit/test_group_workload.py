"""The consumer-group workload's checks (chaos/group_workload.py), on hand-made observations.

Goal: a commit seen moving backwards, a record below the final commit that nobody processed, and a record of
the final log nobody processed are each reported (unexpected: a bug at every ack level); duplicates are not."""

from __future__ import annotations

from raftmq.chaos.group_workload import GroupWorkload


def _workload() -> GroupWorkload:
    return GroupWorkload(["http://127.0.0.1:1"], "chaos", seed=1)


def test_everything_processed_and_commits_monotonic_is_clean() -> None:
    group = _workload()
    final = {(0, 0, "a"), (0, 1, "b"), (1, 0, "c")}
    for record in final:
        group.processed[record] += 1
    group.processed[(0, 0, "a")] += 1  # a duplicate after a crash: allowed at at-least-once
    group.committed = {0: 2, 1: 1}
    assert group.findings(final) == []


def test_each_violation_is_an_unexpected_finding() -> None:
    group = _workload()
    final = {(0, 0, "a"), (0, 1, "b"), (0, 2, "c"), (1, 0, "d")}
    group.processed[(0, 0, "a")] += 1
    group.processed[(0, 2, "c")] += 1
    group.committed = {0: 3}  # past (0, 1), which nobody processed
    group.moved_back.append("chaos/0 3 then 1")
    findings = {f["kind"]: f for f in group.findings(final)}
    assert set(findings) == {"commit_moved_back", "skipped_below_commit", "not_delivered"}
    assert not any(f["expected"] for f in findings.values())
    assert findings["skipped_below_commit"]["count"] == 1 and "0@1" in findings["skipped_below_commit"]["explanation"]
    assert findings["not_delivered"]["count"] == 2  # (0, 1) and (1, 0)


def test_a_processed_record_with_another_value_does_not_count() -> None:
    """Offsets alone would hide a log whose record at an offset changed after a member read it."""
    group = _workload()
    group.processed[(0, 0, "old")] += 1
    assert [f["kind"] for f in group.findings({(0, 0, "new")})] == ["not_delivered"]
