"""The chaos suite's Kafka client mode (``raftmq chaos run ... --client kafka``), its pure and wiring parts.

Goal: a confluent-kafka delivery report becomes the same kind of history entry the checker already judges
(never ``fail`` when the record may be stored), failover is timed without broker ids in the reports, and the
chaos cluster advertises the Kafka fault proxies so that a Kafka client's traffic goes through them.
Method: the pure mapping against every error name librdkafka has; the failover rule on a hand-made history;
the configs the harness writes, read back without starting a broker; a worker's bookkeeping (one record per
send, a producer replaced after a fatal error) against a fake sender. The end-to-end run is
tests/chaos/test_kafka_client_scenario.py.
"""

from __future__ import annotations

import functools
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest
from click.testing import CliRunner
from raftmq.chaos.harness import ChaosCluster
from raftmq.chaos.history import HistoryBuilder
from raftmq.chaos.kafka_delivery import NEVER_SENT, NO_REPORT, Delivery, delivery, error_code, refused
from raftmq.chaos.kafka_producer import KafkaClientMissing, KafkaWorker, import_confluent_kafka, producer_config
from raftmq.chaos.runner import compute_failovers
from raftmq.chaos.workload import Workload, WorkloadConfig
from raftmq.node import PeerAddress

from raftmq.cli import cli

KAFKA_ERROR_NAMES = sorted(name for name in dir(confluent_kafka.KafkaError)
                           if name.isupper() or (name.startswith("_") and not name.startswith("__")))


def test_a_report_without_error_is_ok_with_its_offset() -> None:
    ok = delivery(None, 2, 41)
    assert (ok.outcome, ok.partition, ok.offset, ok.error) == ("ok", 2, 41, None)
    at_acks_0 = delivery(None, 1, -1001)  # librdkafka's OFFSET_INVALID: acks=0 answers no offset
    assert (at_acks_0.outcome, at_acks_0.partition, at_acks_0.offset) == ("ok", 1, None)


@pytest.mark.parametrize("name", ["_MSG_TIMED_OUT", "REQUEST_TIMED_OUT", "_TRANSPORT", "NOT_LEADER_FOR_PARTITION",
                                  "NOT_ENOUGH_REPLICAS", "OUT_OF_ORDER_SEQUENCE_NUMBER", "_FATAL", "_PURGE_INFLIGHT"])
def test_errors_after_the_message_may_have_been_sent_are_unknown(name: str) -> None:
    # librdkafka retries until the delivery timeout: an earlier attempt may have been stored whatever the
    # last error says, so the checker must treat the send like the raftmq client's OUTCOME_UNKNOWN.
    outcome = delivery(name, 0, 17)
    assert (outcome.outcome, outcome.partition, outcome.offset) == ("unknown", 0, None)
    assert outcome.error == error_code(name)


def test_only_errors_raised_before_sending_are_definite_failures() -> None:
    assert NEVER_SENT <= set(KAFKA_ERROR_NAMES), "a name librdkafka does not have would never match"
    for name in KAFKA_ERROR_NAMES:
        expected = "fail" if name in NEVER_SENT else "unknown"
        assert delivery(name, -1, -1).outcome == expected, name
    assert refused("_QUEUE_FULL").outcome == "fail"


def test_error_codes_are_prefixed_and_readable() -> None:
    assert error_code("_MSG_TIMED_OUT") == "KAFKA_MSG_TIMED_OUT"
    assert error_code("NOT_LEADER_FOR_PARTITION") == "KAFKA_NOT_LEADER_FOR_PARTITION"
    assert NO_REPORT.startswith("KAFKA_")


def test_producer_config_matches_the_workload() -> None:
    config = producer_config("127.0.0.1:1,127.0.0.1:2", acks="all", idempotent=True, linger_ms=2.0,
                             request_timeout_ms=2000, delivery_timeout_ms=8000, client_id="w0")
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["message.timeout.ms"] == 8000 and config["request.timeout.ms"] == 2000
    assert config["partitioner"] == "murmur2_random"  # Java's partitioner: raftmq's key routing
    assert producer_config("b:1", acks="1", idempotent=False, linger_ms=0, request_timeout_ms=1,
                           delivery_timeout_ms=1, client_id="w")["acks"] == "1"
    confluent_kafka.Producer(config)  # librdkafka accepts every key and value


def _send(history: HistoryBuilder, value: str, start_ms: float, end_ms: float, leader: int | None) -> None:
    history.record_send(process=0, idempotent=True, acks="all", topic="t", key="k", value=value, start_ms=start_ms,
                        end_ms=end_ms, outcome="ok", partition=0, offset=0, leader_id=leader, leader_epoch=None)


def test_failover_without_broker_ids_counts_the_first_send_after_the_election() -> None:
    history = HistoryBuilder()
    _send(history, "in flight", 900.0, 1300.0, None)  # started before the fault: may have been the old leader's
    _send(history, "old leader", 1010.0, 1050.0, None)  # committed by the old leader before the cut took hold
    _send(history, "new leader", 1100.0, 1700.0, None)
    probe = {"step": 0, "kind": "kill", "partition": 0, "old_leader": 3, "old_term": 1, "fault_ms": 1000.0,
             "also_led": []}
    elected = [{"t_ms": 800.0, "partition": 0, "leader": 3, "term": 1},
               {"t_ms": 1600.0, "partition": 0, "leader": 2, "term": 2}]
    kafka = compute_failovers([probe], history.build(), elected, reports_name_leader=False)
    assert (kafka[0].failover_ms, kafka[0].new_leader, kafka[0].new_term) == (700.0, 2, 2)
    assert kafka[0].election_ms == 600.0
    # No election seen: no failover claimed.
    assert compute_failovers([probe], history.build(), elected[:1], reports_name_leader=False)[0].failover_ms is None
    # raftmq's own reports name the broker: sends without one never count there.
    assert compute_failovers([probe], history.build(), elected)[0].failover_ms is None


def test_the_chaos_cluster_advertises_its_kafka_proxies(tmp_path: Path) -> None:
    harness = ChaosCluster(tmp_path / "cluster", nodes=3, kafka=True)
    wanted = harness._client_wanted(2)
    assert [(name, kind) for name, kind, _upstream, _nodes in wanted] == [("http_n2", "client"),
                                                                         ("kafka_n2", "kafka")]
    assert wanted[1][2] == f"127.0.0.1:{harness.cluster.nodes[2].kafka_port}"
    cluster = harness.cluster
    for broker_id in cluster.nodes:
        cluster.set_kafka_advertised(broker_id, PeerAddress("127.0.0.1", 30000 + broker_id))
    cluster.write_configs()
    config = tomllib.loads(cluster.nodes[1].config_path.read_text())
    assert config["kafka_listen"] == f"127.0.0.1:{cluster.nodes[1].kafka_port}"
    assert config["kafka_advertised"] == "127.0.0.1:30001"
    assert {entry["id"]: entry["kafka"] for entry in config["brokers"]} == {
        1: "127.0.0.1:30001", 2: "127.0.0.1:30002", 3: "127.0.0.1:30003"}
    assert harness.kafka_bootstrap == "127.0.0.1:30001,127.0.0.1:30002,127.0.0.1:30003"


def test_the_kafka_workload_needs_a_bootstrap() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        Workload(WorkloadConfig(client="kafka"), ["http://127.0.0.1:1"], lambda: 0.0)
    with pytest.raises(ValueError, match="not 'raftmq' or 'kafka'"):
        Workload(WorkloadConfig(client="amqp"), ["http://127.0.0.1:1"], lambda: 0.0)


class FakeSender:
    """Stands in for a KafkaSender: keeps the report callbacks so the test decides what librdkafka says."""

    made: list[FakeSender] = []

    def __init__(self, config: dict[str, object], clock: object, name: str) -> None:
        self.name = name
        self.reports: dict[str, Callable[..., None]] = {}
        self.fatal = False
        self.stopped = False
        self.errors = {"_ALL_BROKERS_DOWN": 1}
        FakeSender.made.append(self)

    def send(self, topic: str, key: str, value: str, on_report: Callable[..., None]) -> str | None:
        if value.endswith("refused"):
            return "_QUEUE_FULL"
        self.reports[value] = on_report
        return None

    async def stop(self) -> int:
        self.stopped = True
        return 0


async def test_a_kafka_worker_records_every_send_once_and_restarts_after_a_fatal_error() -> None:
    FakeSender.made = []
    recorded: list[tuple[str, float, float | None, str, str | None]] = []
    released: list[str] = []

    def record(key: str, value: str, start_ms: float, end_ms: float | None, outcome: Delivery) -> None:
        recorded.append((value, start_ms, end_ms, outcome.outcome, outcome.error))

    worker = KafkaWorker({}, lambda: 0.0, record, name="w", topic="t",
                         sender_factory=FakeSender)  # type: ignore[arg-type]  # duck-typed stand-in
    for value in ("a", "b", "c-refused"):
        await worker.send("k", value, 1.0, functools.partial(released.append, value))
    first = FakeSender.made[0]
    first.reports["a"](5.0, None, 0, 7)
    first.reports["a"](6.0, None, 0, 7)  # a second report of one message: ignored
    first.fatal = True
    await worker.send("k", "d", 8.0, functools.partial(released.append, "d"))
    assert first.stopped and len(FakeSender.made) == 2, "a fatal error replaces the producer"
    FakeSender.made[1].reports["d"](9.0, "_MSG_TIMED_OUT", 1, -1)
    await worker.stop()
    assert recorded == [("c-refused", 1.0, None, "fail", "KAFKA_QUEUE_FULL"), ("a", 1.0, 5.0, "ok", None),
                        ("b", 1.0, None, "unknown", NO_REPORT), ("d", 8.0, 9.0, "unknown", "KAFKA_MSG_TIMED_OUT")]
    assert sorted(released) == ["a", "b", "c-refused", "d"]
    assert worker.errors == {"PRODUCER_RESTARTED_AFTER_FATAL_ERROR": 1, "_ALL_BROKERS_DOWN": 2}


def test_without_confluent_kafka_the_command_stops_with_a_coded_error(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # what an environment without the package has
    result = CliRunner().invoke(cli, ["chaos", "run", "kill-leader", "--client", "kafka", "--acks", "all",
                                      "--duration", "20s", "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert "DEPENDENCY_MISSING" in result.output and "raftmq[kafka]" in result.output
    assert not (tmp_path / "report").exists(), "nothing starts before the check"
    with pytest.raises(KafkaClientMissing, match=r"raftmq\[kafka\]"):
        import_confluent_kafka()
