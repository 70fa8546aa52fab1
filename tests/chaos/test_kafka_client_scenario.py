"""``raftmq chaos run ... --client kafka``: the chaos workload driven by confluent-kafka producers through the
brokers' Kafka listeners, which sit behind fault proxies like the HTTP ports.

Goal: Kafka Metadata on the chaos cluster advertises the Kafka proxies (so the client's traffic to each
partition leader crosses a fault proxy), and a leader kill under acks=all with Kafka producers (half of them
idempotent) gets the checker's PASS: nothing acknowledged lost, no idempotent duplicate, failover measured.
Method: a chaos cluster with Kafka listeners asked for its metadata by a confluent-kafka AdminClient; then the
command itself (click's runner, in process) on a short kill-leader scenario written here (start 1.5 s, the
leader down 2 s, 7 s in all, 120 sends/s), its report.json read back. Bounded: one cluster each, a 7 s
workload, the whole file well under a minute. Waits are for conditions with deadlines; only the fault
schedule is time-based.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

import confluent_kafka.admin
import pytest
from click.testing import CliRunner
from raftmq.chaos.harness import ChaosCluster

from raftmq.cli import cli

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

SHORT_KILL_LEADER: Final = """
name = "kill-leader-short"
description = "SIGKILL the leader of partition 0 for 2 s (the CI's short run of kill-leader)."

[schedule]
start = 1.5
interval = 10.0
fault_duration = 2.0
jitter = 0.0
heal_gap = 1.0
tail = 2.5

[[fault]]
kind = "kill"
target = "leader"
partition = 0
"""
DURATION_S: Final = 7.0
RATE: Final = 120
ACKED_MIN: Final = 300  # 120/s x 7 s = 840 attempted; a stall would show as far fewer
FAILOVER_BOUND_MS: Final = 6_000.0  # generous: CI only checks that failover happens


def test_kafka_metadata_advertises_the_fault_proxies(tmp_path: Path) -> None:
    with ChaosCluster(tmp_path / "cluster", seed=3, python=sys.executable, kafka=True) as harness:
        harness.wait_ready(timeout_s=30)
        report = harness.verify_wiring()
        proxies = {name: address for name, address in report["clients"].items() if name.startswith("kafka_n")}
        assert set(proxies) == {"kafka_n1", "kafka_n2", "kafka_n3"}
        assert harness.kafka_bootstrap == ",".join(proxies[f"kafka_n{n}"] for n in harness.node_ids)
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": harness.kafka_bootstrap})
        metadata = admin.list_topics(timeout=10)
        advertised = {broker_id: f"{b.host}:{b.port}" for broker_id, b in metadata.brokers.items()}
        assert advertised == {n: proxies[f"kafka_n{n}"] for n in harness.node_ids}
        direct = {f"127.0.0.1:{node.kafka_port}" for node in harness.cluster.nodes.values()}
        assert not direct & set(advertised.values()), "a Kafka client would go around the proxies"


def test_kill_leader_with_kafka_producers_passes(tmp_path: Path) -> None:
    scenario = tmp_path / "kill-leader-short.toml"
    scenario.write_text(SHORT_KILL_LEADER)
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(cli, ["chaos", "run", str(scenario), "--client", "kafka", "--acks", "all",
                                      "--seed", "4", "--duration", f"{DURATION_S:g}s", "--rate", str(RATE),
                                      "--report-dir", str(report_dir)], catch_exceptions=False)
    report = json.loads((report_dir / "report.json").read_text())
    run = report["runs"][0]
    detail = f"{result.output}\n{json.dumps({k: run[k] for k in ('verdict', 'error', 'summary', 'failovers')})}"
    assert result.exit_code == 0, detail
    assert report["config"]["client"] == "kafka" and run["client"] == "kafka"
    summary = run["summary"]
    assert run["verdict"] == "PASS", detail
    assert summary["lost"] == 0 and summary["divergence"] == 0, detail
    check = run["check"]
    assert check["duplicated_idempotent"] == 0 and check["failed_but_present"] == 0, detail
    assert summary["acked"] >= ACKED_MIN, detail
    assert set(run["stats"]["wiring"]["clients"]) >= {"kafka_n1", "kafka_n2", "kafka_n3"}
    assert run["failovers"], f"the schedule kills the leader, so failover is measured\n{detail}"
    assert all(f["failover_ms"] is not None and f["failover_ms"] < FAILOVER_BOUND_MS for f in run["failovers"]), \
        detail
    history = json.loads((Path(run["run_dir"]) / "history.json").read_text())
    sends = history["sends"]
    assert {op["idempotent"] for op in sends} == {True, False}, "half the Kafka producers are idempotent"
    assert all(op["error"] is None or op["error"].startswith("KAFKA_") for op in sends)
    assert all(op["offset"] is not None for op in sends if op["outcome"] == "ok"), "acks=all answers offsets"
