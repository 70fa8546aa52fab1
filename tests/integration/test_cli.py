"""The ``raftmq`` CLI against real broker processes: topics, produce/consume round trips, status, bench,
demo, error exit codes, and ``cluster up`` in a real subprocess stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from raftmq.deploy.local_cluster import LocalCluster, find_free_ports, wait_until

from raftmq.cli import cli
from raftmq.cli.common import port_in_use

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def run(cluster: LocalCluster | None, *args: str, input: str | None = None) -> Result:
    env = {"RAFTMQ_BOOTSTRAP": ",".join(cluster.urls)} if cluster is not None else {}
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(cluster: LocalCluster, name: str, partitions: int = 3) -> None:
    result = run(cluster, "topic", "create", name, "--partitions", str(partitions))
    assert result.exit_code == 0, result.output


# --- topics ---------------------------------------------------------------------------------------


def test_topic_create_list_describe_delete(shared_cluster: LocalCluster) -> None:
    name = topic_name("cli-topics")
    result = run(shared_cluster, "topic", "create", name, "--partitions", "2", "--replication-factor", "3",
                 "--retention-ms", "3600000", "--min-insync-replicas", "2")
    assert result.exit_code == 0, result.output
    assert f"created topic {name}" in result.stdout

    again = run(shared_cluster, "topic", "create", name)
    assert again.exit_code == 1
    assert "TOPIC_ALREADY_EXISTS" in again.output

    listed = run(shared_cluster, "topic", "list")
    assert listed.exit_code == 0, listed.output
    assert name in listed.stdout

    described = run(shared_cluster, "topic", "describe", name)
    assert described.exit_code == 0, described.output
    assert "retention_ms" in described.stdout and "1 h (3600000)" in described.stdout
    rows = [line for line in described.stdout.splitlines() if re.match(r"^│\s+[01]\s+│", line)]
    assert len(rows) == 2, described.stdout  # one row per partition, each with a leader

    refused = run(shared_cluster, "topic", "delete", name, input="n\n")
    assert refused.exit_code == 1  # not confirmed: aborted, nothing deleted
    assert run(shared_cluster, "topic", "describe", name).exit_code == 0

    deleted = run(shared_cluster, "topic", "delete", name, "--yes")
    assert deleted.exit_code == 0, deleted.output
    gone = run(shared_cluster, "topic", "describe", name)
    assert gone.exit_code == 1
    assert "UNKNOWN_TOPIC_OR_PARTITION" in gone.output


# --- produce / consume ----------------------------------------------------------------------------


def test_produce_stdin_then_consume_text_and_json(shared_cluster: LocalCluster) -> None:
    name = topic_name("cli-stdin")
    create_topic(shared_cluster, name)
    lines = [f"user-{i % 7}:event {i}" for i in range(300)]
    produced = run(shared_cluster, "produce", name, "--acks", "all", "--key-separator", ":",
                   input="\n".join(lines) + "\n")
    assert produced.exit_code == 0, produced.output
    assert re.search(r"acked\s+│\s+300\s+│", produced.stdout), produced.stdout

    text = run(shared_cluster, "consume", name)
    assert text.exit_code == 0, text.output
    records = [line.split(" ", 3) for line in text.stdout.splitlines()]
    assert len(records) == 300
    assert sorted(f"{key}:{value}" for _, _, key, value in records) == sorted(lines)
    by_partition: dict[str, list[int]] = {}
    for partition, offset, key, _value in records:
        by_partition.setdefault(partition, []).append(int(offset))
        events_of_key = [int(v.split()[1]) for p, _, k, v in records if k == key]
        assert events_of_key == sorted(events_of_key)  # one key, one partition, send order
    assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())

    as_json = run(shared_cluster, "consume", name, "--format", "json", "--partition", "0", "--partition", "1")
    assert as_json.exit_code == 0, as_json.output
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert objects and {o["partition"] for o in objects} <= {0, 1}
    assert all(o["topic"] == name and o["key"].startswith("user-") and o["value"].startswith("event ")
               for o in objects)
    assert len(objects) == len(by_partition.get("0", [])) + len(by_partition.get("1", []))

    limited = run(shared_cluster, "consume", name, "--max", "5", "--offset", "2")
    assert limited.exit_code == 0, limited.output
    assert len(limited.stdout.splitlines()) == 5
    assert all(int(line.split()[1]) >= 2 for line in limited.stdout.splitlines())


def test_produce_count_then_consume(shared_cluster: LocalCluster) -> None:
    name = topic_name("cli-count")
    create_topic(shared_cluster, name, partitions=2)
    produced = run(shared_cluster, "produce", name, "--count", "500", "--size", "64", "--acks", "1",
                   "--partition", "1", "--key", "k")
    assert produced.exit_code == 0, produced.output
    consumed = run(shared_cluster, "consume", name, "--format", "json")
    assert consumed.exit_code == 0, consumed.output
    objects = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert [o["offset"] for o in objects] == list(range(500))
    assert all(o["partition"] == 1 and o["key"] == "k" and len(o["value"]) == 64 for o in objects)
    assert [int(o["value"][:10]) for o in objects] == list(range(500))  # generated values carry their index

    beyond = run(shared_cluster, "consume", name, "--from-end")
    assert beyond.exit_code == 0 and beyond.stdout == ""

    # A replica's own committed copy (the consumer reads the replica named by the bootstrap URL).
    replica = CliRunner().invoke(cli, ["consume", name, "-p", "1", "--any-replica", "-b", shared_cluster.urls[2]],
                                 catch_exceptions=False)
    assert replica.exit_code == 0, replica.output
    assert replica.stdout == run(shared_cluster, "consume", name, "-p", "1").stdout


def test_consume_follow_sees_new_records_and_stops_on_ctrl_c(shared_cluster: LocalCluster) -> None:
    name = topic_name("cli-follow")
    create_topic(shared_cluster, name, partitions=1)
    env = {**os.environ, "RAFTMQ_BOOTSTRAP": ",".join(shared_cluster.urls), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "raftmq.cli", "consume", name, "--follow"], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    try:
        produced = run(shared_cluster, "produce", name, input="one\ntwo\nthree\n")
        assert produced.exit_code == 0, produced.output
        seen: list[str] = []
        read_lines(lines, seen, lambda: len(seen) >= 3, timeout_s=30)
        assert [line.split()[-1] for line in seen] == ["one", "two", "three"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_cluster_status_shows_partitions_and_leaders(shared_cluster: LocalCluster) -> None:
    name = topic_name("cli-status")
    create_topic(shared_cluster, name)
    result = run(shared_cluster, "cluster", "status")
    assert result.exit_code == 0, result.output
    assert f"topic {name}" in result.stdout
    section = result.stdout.split(f"topic {name}", 1)[1]
    for partition in range(3):
        leader = shared_cluster.wait_for_leader(name, partition, timeout_s=10)
        assert re.search(rf"│\s+{partition}\s+│\s+{leader}\s+│\s+[123],[123],[123]\s+│", section), section
    for broker_id, node in shared_cluster.nodes.items():
        # id │ state │ rack │ URL │ reachable (raftmq/cli/cluster_status.py brokers_table)
        assert re.search(rf"│\s+{broker_id}\s+│\s+alive\s+│\s+\S+\s+│\s+{re.escape(node.url)}\s+│\s+yes",
                         result.stdout)


def test_status_marks_unreachable_brokers(shared_cluster: LocalCluster) -> None:
    dead = f"http://127.0.0.1:{find_free_ports(1)[0]}"
    result = CliRunner().invoke(cli, ["cluster", "status", "-b", dead, "--timeout", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert "CONNECTION_FAILED" in result.output and "no (CONNECTION_FAILED)" in result.stdout

    mixed = run(shared_cluster, "cluster", "status", "-b", f"{dead},{shared_cluster.urls[0]}")
    assert mixed.exit_code == 0, mixed.output
    assert "no (CONNECTION_FAILED)" in mixed.stdout and "controller (leader)" in mixed.stdout


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_topic_exits_1_with_the_code(shared_cluster: LocalCluster) -> None:
    for args in (["produce", "no-such-topic", "--count", "3"], ["consume", "no-such-topic"],
                 ["topic", "describe", "no-such-topic"], ["topic", "delete", "no-such-topic", "--yes"]):
        result = run(shared_cluster, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "UNKNOWN_TOPIC_OR_PARTITION" in result.output, args
        assert "raftmq topic create" in result.output  # the hint says what to do next


def test_usage_errors_exit_2(shared_cluster: LocalCluster) -> None:
    bad_acks = run(shared_cluster, "produce", "t", "--acks", "2")
    assert bad_acks.exit_code == 2
    assert "--acks" in bad_acks.output
    assert run(shared_cluster, "bench", "produce", "--acks", "all,7").exit_code == 2
    assert run(shared_cluster, "consume", "t", "--offset", "3", "--from-end").exit_code == 2
    assert CliRunner().invoke(cli, ["cluster", "status", "-b", "ftp://x"]).exit_code == 2


# --- bench ----------------------------------------------------------------------------------------


def test_bench_produce_writes_a_json_report(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "produce", "--records", "2000", "--record-bytes", "100",
                                      "--acks", "all,1", "--bootstrap", ",".join(shared_cluster.urls),
                                      "--report", str(report), "--max-seconds", "60"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "records/s" in result.stdout and "p50" in result.stdout
    data = json.loads(report.read_text())
    assert data["machine"]["cpu_count"] == os.cpu_count()
    assert data["machine"]["python_version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert data["aborted"] is None
    assert [run["config"]["acks"] for run in data["runs"]] == ["all", "1"]
    for run_ in data["runs"]:
        results = run_["results"]
        assert results["acked"] == 2000 and results["failed"] == 0 and results["unknown"] == 0
        assert results["records_per_s"] > 0 and results["mb_per_s"] > 0
        latency = results["latency"]
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"]
        assert run_["config"]["record_bytes"] == 100 and run_["config"]["partitions"] == 3
    # The benchmark's topics are removed from an existing cluster afterwards.
    listed = run(shared_cluster, "topic", "list")
    assert "bench-" not in listed.stdout


# --- demo -----------------------------------------------------------------------------------------


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--max-seconds", "90"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "SIGKILL broker" in result.stdout
    assert "Cluster stopped" in result.stdout


# --- cluster up + Ctrl-C ------------------------------------------------------------------------------------


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def read_lines(lines: queue.Queue[str | None], seen: list[str], done: Callable[[], bool], *,
               timeout_s: float) -> None:
    """Move lines from ``lines`` into ``seen`` until ``done()``; fail at the deadline or at end of output."""
    deadline = time.monotonic() + timeout_s
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout_s} s; output so far:\n{''.join(seen)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"the process exited early; output:\n{''.join(seen)}")
        seen.append(line)


def _free_base_port(nodes: int, offsets: tuple[int, ...] = (0, 100)) -> int:
    def pick() -> int | None:
        base = find_free_ports(1)[0]
        ports = [base + offset + i for offset in offsets for i in range(nodes)]
        return base if all(p < 65536 and not port_in_use(p) for p in ports) else None

    return int(wait_until(pick, timeout_s=10, what="a free block of ports", interval_s=0))


def test_cluster_up_then_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    base = _free_base_port(3, (0, 50, 100))  # client ports base+i, Kafka ports base+50+i, peer ports base+100+i
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "raftmq.cli", "cluster", "up", "--dir", str(tmp_path / "c"),
               "--base-port", str(base), "--kafka-base-port", str(base + 50)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    seen: list[str] = []
    pids: list[int] = []

    def read_until(marker: str, timeout_s: float) -> None:
        read_lines(lines, seen, lambda: any(marker in line for line in seen), timeout_s=timeout_s)

    try:
        read_until("Press Ctrl-C", 60)
        output = "".join(seen)
        row = re.compile(r"│\s+(\d)\s+│\s+http://127\.0\.0\.1:\d+\s+│\s+\S+\s+│\s+\S+\s+│\s+(\d+)\s+│")
        pids.extend(int(m.group(2)) for m in row.finditer(output))
        assert len(pids) == 3, output
        assert f"export RAFTMQ_BOOTSTRAP=http://127.0.0.1:{base}," in output
        kafka = ",".join(f"127.0.0.1:{base + 50 + i}" for i in range(3))
        assert f"bootstrap servers {kafka}" in output, output
        status = CliRunner().invoke(cli, ["cluster", "status", "-b", f"http://127.0.0.1:{base + 1}"])
        assert status.exit_code == 0 and status.stdout.count(" yes ") >= 3, status.output
        assert f"kafka 127.0.0.1:{base + 50}" in status.stdout, status.output

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=45) == 0
        read_until("all brokers stopped", 5)
        assert "stopped broker(s) 1,2,3 cleanly" in "".join(seen)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in pids:  # brokers run in their own session: never leave them behind on a failure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.stdout is not None:
            process.stdout.close()
