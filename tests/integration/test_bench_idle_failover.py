"""``raftmq bench idle`` and ``raftmq bench failover`` end to end, small: each starts its own 3-broker cluster
(raftmq/cli/bench_cluster.py), measures, stops it, and writes a JSON report. Windows are short so that each
test stays around 15 s; the pytest timeout bounds a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raftmq.cli import cli

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(90)
def test_bench_idle_reports_every_broker(tmp_path: Path) -> None:
    report = tmp_path / "idle.json"
    result = CliRunner().invoke(cli, ["bench", "idle", "--partitions", "3", "--seconds", "2",
                                      "--baseline-seconds", "1", "--settle-seconds", "0", "--timeout", "30",
                                      "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "bench idle: 3 partitions" in result.stdout
    data = json.loads(report.read_text())
    assert data["tool"] == "raftmq bench idle" and data["settings"]["partitions"] == 3
    assert sorted(data["brokers"]) == ["1", "2", "3"]
    for row in data["brokers"].values():
        assert row["hosted_partitions"] == 3  # RF 3 on 3 brokers
        assert row["cpu_percent"] >= 0 and row["rss_bytes"] > 0 and row["threads"] >= 1 and row["fds"] > 0
        assert row["empty"]["rss_bytes"] > 0
        assert row["bytes_per_idle_partition"] is not None
    assert sum(row["led_partitions"] for row in data["brokers"].values()) == 3
    assert data["timings"]["all_leaders_s"] >= data["timings"]["create_topics_s"] > 0


@pytest.mark.timeout(120)
def test_bench_failover_times_every_partition_of_the_killed_leader(tmp_path: Path) -> None:
    report = tmp_path / "failover.json"
    result = CliRunner().invoke(cli, ["bench", "failover", "--partitions", "3", "--records-per-s", "300",
                                      "--seconds", "7", "--warmup-seconds", "1.5", "--balance-timeout", "0",
                                      "--timeout", "30", "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    summary = data["summary"]
    assert summary["partitions"] >= 1 and summary["recovered"] == summary["partitions"]
    assert len(data["per_partition_ms"]) == summary["partitions"]
    # Failover needs at least an election timeout (cluster/limits.py) and cannot exceed the load after the kill.
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"] < 5_500
    assert data["records"]["ok"] > 0 and data["killed_broker"] in (1, 2, 3)
