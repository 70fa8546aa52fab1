"""The hostile-neighbour verdict and its pieces, without a cluster.

Goal: the producers' latency is measured over the sends that started while the neighbour ran; the verdict
counts the hostile cases per class (informational) and fails a run whose neighbour never reported, whose
garbage peer connections were kept, whose producers' p99 or brokers' memory went over the bounds in
cluster/limits.py. The malformed requests are reproducible from the seed. Method: plain histories and
reports built by hand.
"""

from __future__ import annotations

import random

from raftmq.chaos.history import History, SendOp
from raftmq.chaos.hostile import Tally, _malformed_request
from raftmq.chaos.runner import hostile_findings, send_latency
from raftmq.chaos.scenario import load
from raftmq.cluster import limits


def _send(op_id: int, start_ms: float, end_ms: float, outcome: str = "ok") -> SendOp:
    return SendOp(op_id=op_id, process=0, idempotent=False, topic="chaos", key="k", value=f"v{op_id}",
                  partition=0, acks="all", start_ms=start_ms, end_ms=end_ms, outcome=outcome)  # type: ignore[arg-type]


def test_latency_counts_only_ok_sends_started_inside_the_windows() -> None:
    sends = [_send(i, 1000.0 + i, 1010.0 + i) for i in range(99)]  # 10 ms each, inside
    sends.append(_send(99, 1500.0, 1900.0))  # 400 ms, inside: the p99 at 100 sends is the largest
    sends.append(_send(100, 100.0, 5000.0))  # outside the window
    sends.append(_send(101, 1200.0, 9000.0, outcome="unknown"))  # not ok
    latency = send_latency(History(sends, [], [], []), [(1000.0, 2000.0)])
    assert latency == {"sends": 100, "p50_ms": 10.0, "p99_ms": 10.0, "max_ms": 400.0}
    assert send_latency(History([], [], [], []), [(0.0, 1.0)])["p99_ms"] is None


def _report(**classes: dict[str, int]) -> dict[str, object]:
    return {"classes": classes, "duration_s": 11.0, "target": 1}


def test_a_clean_hostile_run_only_reports_the_counts() -> None:
    stats = {"hostile_latency": {"p99_ms": 120.0}, "rss_max_bytes": {1: 100 * limits.MIB}}
    found = hostile_findings([_report(peer_garbage={"closed": 40}, http_malformed={"4xx": 300, "closed": 5})], stats)
    assert [(f["kind"], f["expected"]) for f in found] == [("hostile_neighbour", True)]
    assert "peer_garbage: closed 40" in found[0]["explanation"] and found[0]["count"] == 345
    assert stats["hostile_totals"]["http_malformed"] == {"4xx": 300, "closed": 5}


def test_kept_garbage_slow_producers_and_memory_fail_the_run() -> None:
    stats = {"hostile_latency": {"p99_ms": limits.hostile_producer_p99_ms_max + 1},
             "rss_max_bytes": {2: limits.hostile_broker_rss_bytes_max + 1}}
    found = hostile_findings([_report(peer_garbage={"closed": 3, "held": 2})], stats)
    bugs = {f["kind"] for f in found if not f["expected"]}
    assert bugs == {"hostile_peer_connection_held", "producer_p99_over_bound", "broker_rss_over_bound"}


def test_a_neighbour_that_never_reported_fails_the_run() -> None:
    assert [f["kind"] for f in hostile_findings([], {})] == ["hostile_neighbour_failed"]
    assert not hostile_findings([{"error": "no report", "target": 1}], {})[0]["expected"]


def test_malformed_requests_follow_the_seed_and_tally_counts() -> None:
    first = [_malformed_request(random.Random(5), "127.0.0.1", "chaos") for _ in range(3)]
    again = [_malformed_request(random.Random(5), "127.0.0.1", "chaos") for _ in range(3)]
    assert first == again
    tally = Tally()
    tally.add("slow_connections", "closed_by_broker")
    tally.add("slow_connections", "closed_by_broker")
    assert tally.to_json() == {"slow_connections": {"closed_by_broker": 2}}


def test_the_fuzzer_never_sends_a_well_formed_destructive_command() -> None:
    """The client API has no authentication by design: deleting the workload's topic or draining a real
    broker is an operator's command, and once made the fuzzer's own doing showed up as total loss."""
    for seed in range(3000):
        request = _malformed_request(random.Random(seed), "127.0.0.1", "chaos")
        line = request.split(b"\r\n", 1)[0]
        assert not line.startswith(b"DELETE /v1/topics/chaos"), line
        for broker in (b"0", b"1", b"2", b"3"):
            assert not line.split(b"?")[0].endswith(b"/v1/brokers/" + broker + b"/drain HTTP/1.1"), line
            assert b"/v1/brokers/" + broker + b"/drain " not in line and b"/v1/brokers/" + broker + b"/drain?" \
                not in line, line


def test_the_hostile_scenario_ships() -> None:
    scenario = load("hostile-neighbour")
    assert scenario.hostile and not scenario.needs_faultfs
