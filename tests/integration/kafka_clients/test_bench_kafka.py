"""``raftmq bench produce --client kafka``: confluent-kafka measured against the shared Kafka-listener cluster
through the real command (topic, run, table, JSON report), flat out and at a fixed rate; and the usage errors
of the option, among them the coded error when confluent-kafka is not installed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from raftmq.deploy.local_cluster import LocalCluster

from raftmq.cli import cli

RECORDS = 2000


def _bench(cluster: LocalCluster, report: Path, *extra: str) -> dict[str, Any]:
    args = ["bench", "produce", "--client", "kafka", "--records", str(RECORDS), "--acks", "all",
            "--bootstrap", ",".join(cluster.urls), "--kafka-bootstrap", cluster.kafka_bootstrap,
            "--max-seconds", "60", "--report", str(report), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "kafka client (confluent-kafka)" in result.output and "Produce requests" in result.output
    return json.loads(report.read_text())


@pytest.mark.parametrize("rate", [None, 4000.0])
def test_the_kafka_client_is_measured_and_reported(kafka_cluster: LocalCluster, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, rate: float | None) -> None:
    # This cluster runs without leader balancing: do not wait the full balancing window for it.
    monkeypatch.setattr(importlib.import_module("raftmq.cli.bench"), "_BALANCE_WAIT_S", 0.5)
    report = _bench(kafka_cluster, tmp_path / "report.json", *(["--rate", str(rate)] if rate else []))
    assert report["settings"]["client"] == "kafka" and report["aborted"] is None
    (run,) = report["runs"]
    results = run["results"]
    assert run["config"]["client"] == "kafka" and run["config"]["rate"] == rate
    assert (results["attempted"], results["acked"], results["failed"], results["unknown"]) == (RECORDS, RECORDS, 0, 0)
    assert results["requests"] > 0 and results["records_per_s"] > 0
    assert 0 < results["latency"]["p50_ms"] <= results["latency"]["p99_ms"] <= results["latency"]["max_ms"]
    if rate:  # the schedule spreads the records: the run cannot be shorter than records / rate
        assert results["elapsed_s"] >= (RECORDS - 1) / rate
        assert results["records_per_s"] <= rate * 1.01


def test_a_missing_confluent_kafka_is_a_coded_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # makes `import confluent_kafka` fail
    result = CliRunner().invoke(cli, ["bench", "produce", "--client", "kafka", "--bootstrap", "http://127.0.0.1:1",
                                      "--kafka-bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "DEPENDENCY_MISSING" in result.output and "raftmq[kafka]" in result.output


@pytest.mark.parametrize(("args", "complaint"), [
    (["--bootstrap", "http://127.0.0.1:1"], "--kafka-bootstrap"),
    (["--via-proxies"], "no Kafka listeners"),
    (["--kafka-bootstrap", "127.0.0.1:1", "--client", "raftmq"], "only used with --client kafka"),
])
def test_kafka_client_usage_errors(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "produce", "--client", "kafka", *args])
    assert result.exit_code == 2 and complaint in result.output, result.output
