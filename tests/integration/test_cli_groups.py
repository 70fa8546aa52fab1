"""Consumer groups through the CLI on real broker processes (pysyncobj replication of ``__consumer_offsets``):
``consume --group`` reads and commits, resumes at the committed offsets, ``group list / describe`` show the
group and its lag, and ``group reset-offsets`` is a dry run until ``--execute``."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from raftmq.deploy.local_cluster import LocalCluster, wait_until

from raftmq.cli import cli

pytestmark = pytest.mark.cluster


def run(cluster: LocalCluster, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env={"RAFTMQ_BOOTSTRAP": ",".join(cluster.urls)},
                              catch_exceptions=False)


def values(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return sorted(line.split()[-1] for line in result.stdout.splitlines() if line.strip())


def total_lag(result: Result) -> int:
    assert result.exit_code == 0, result.output
    found = re.search(r"total lag ([\d,]+)", result.stdout)
    assert found is not None, result.stdout
    return int(found.group(1).replace(",", ""))


def test_consume_as_a_group_resumes_and_reports_lag(shared_cluster: LocalCluster) -> None:
    topic, group = f"cli-group-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    assert run(shared_cluster, "topic", "create", topic, "--partitions", "2").exit_code == 0
    first = [f"a{i:02d}" for i in range(10)]
    assert run(shared_cluster, "produce", topic, "--acks", "all", input="\n".join(first) + "\n").exit_code == 0
    assert values(run(shared_cluster, "consume", topic, "--group", group, "--timeout", "20")) == first

    listed = run(shared_cluster, "group", "list")
    assert listed.exit_code == 0 and re.search(rf"{group}\s+│\s+empty\s+│\s+0\s+│\s+0\s+│", listed.stdout), \
        listed.output
    assert total_lag(run(shared_cluster, "group", "describe", group)) == 0

    more = [f"b{i:02d}" for i in range(5)]
    assert run(shared_cluster, "produce", topic, "--acks", "all", input="\n".join(more) + "\n").exit_code == 0
    assert total_lag(run(shared_cluster, "group", "describe", group)) == 5
    # `cluster status` lists the groups with their total lag (a coordinator still settling shows "?": retried)
    row = rf"{group}\s+│\s+empty\s+│\s+0\s+│\s+5\s+│"
    wait_until(lambda: re.search(row, run(shared_cluster, "cluster", "status").stdout) is not None, timeout_s=20,
               what="the group's row in cluster status")
    assert values(run(shared_cluster, "consume", topic, "--group", group, "--timeout", "20")) == more

    dry = run(shared_cluster, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
    assert dry.exit_code == 0 and "dry run" in dry.stdout, dry.output
    assert total_lag(run(shared_cluster, "group", "describe", group)) == 0
    done = run(shared_cluster, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", "--execute")
    assert done.exit_code == 0, done.output
    assert total_lag(run(shared_cluster, "group", "describe", group)) == 15
    assert values(run(shared_cluster, "consume", topic, "--group", group, "--timeout", "20")) == sorted(first + more)


def test_bench_consume_reports_throughput_and_rebalance_times(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "consume.json"
    result = CliRunner().invoke(cli, ["bench", "consume", "--bootstrap", ",".join(shared_cluster.urls),
                                      "--records", "3000", "--partitions", "3", "--consumers", "3",
                                      "--session-timeout-ms", "1000", "--report", str(report)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["records"] == 3000 and figures["records_per_s"] > 0
    # at least the session timeout less the heartbeat interval (the member was last heard up to 1/3 session before)
    assert 0.5 <= figures["rebalance_after_crash_s"] < 30
    assert 0 < figures["rebalance_after_leave_s"] < figures["rebalance_after_crash_s"]
