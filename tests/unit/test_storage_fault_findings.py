"""The disk scenarios' report of replicas that left their Raft group on a storage fault (chaos/runner.py).

Goal: counted per broker from the brokers' logs, with how many came back; nothing to say when no replica left;
a missing log is skipped, not an error."""

from __future__ import annotations

from pathlib import Path

from raftmq.chaos.runner import storage_fault_findings


def test_replicas_out_and_back_are_counted_per_broker(tmp_path: Path) -> None:
    (tmp_path / "n1.log").write_text(
        "2026-12-06 07:36:04,025 n1 ERROR raftmq.node.replication: p/6/0: out of the group on broker 1 until its "
        "disk takes writes again: cannot append to the Raft journal ...\n"
        "2026-12-06 07:36:06,101 n1 WARNING raftmq.node.replication: p/6/0: the disk takes writes again; broker 1 "
        "rejoins the group as a follower (0 unsynced journal entries cut)\n")
    (tmp_path / "n2.log").write_text("2026-12-06 07:36:04,025 n2 INFO raftmq.node: nothing to see\n")
    findings = storage_fault_findings({1: tmp_path / "n1.log", 2: tmp_path / "n2.log", 3: tmp_path / "missing.log"})
    assert len(findings) == 1
    finding = findings[0]
    assert finding["kind"] == "replicas_out_on_storage_fault" and finding["expected"] and finding["count"] == 1
    assert "broker 1: 1 out, 1 back" in finding["explanation"] and "broker 2" not in finding["explanation"]


def test_nothing_to_report_without_a_storage_fault(tmp_path: Path) -> None:
    (tmp_path / "n1.log").write_text("2026-12-06 07:36:04,025 n1 INFO raftmq.node: started\n")
    assert storage_fault_findings({1: tmp_path / "n1.log"}) == []
