"""The benchmark's measuring parts: percentiles, overhead comparison, and latency from the SCHEDULED send
time (a stalled sender must not hide the queueing it caused: no coordinated omission)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from raftmq.client.types import DeliveryReport

from raftmq.cli.bench import _Recorder, _send_all, compare_rows, latency_summary, percentile, process_usage
from tests.conftest import wait_for_condition


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values, 0.999) == 100
    assert percentile([], 0.5) is None
    summary = latency_summary([0.001, 0.002, 0.003, 0.1])
    assert summary["p50_ms"] == 2.0 and summary["max_ms"] == 100.0 and summary["p99_ms"] == 100.0
    assert latency_summary([])["p50_ms"] is None


def test_compare_rows_pairs_direct_and_proxied_runs() -> None:
    def run(via: str, rate: float, p50: float, p99: float) -> dict[str, Any]:
        return {"config": {"acks": "all", "durability": "always", "via": via},
                "results": {"records_per_s": rate, "latency": {"p50_ms": p50, "p99_ms": p99}}}

    (row,) = compare_rows([run("direct", 1000.0, 2.0, 5.0), run("proxies", 800.0, 2.5, 9.0)])
    assert row["throughput_change_pct"] == -20.0 and row["p50_added_ms"] == 0.5 and row["p99_added_ms"] == 4.0
    assert compare_rows([run("direct", 1000.0, 2.0, 5.0)]) == []


class StallingProducer:
    """Acknowledges every record 1 ms after send(), but send() of record ``stall_at`` blocks ``stall_s``."""

    def __init__(self, stall_at: int, stall_s: float) -> None:
        self.stall_at, self.stall_s, self.calls = stall_at, stall_s, 0

    async def send(self, topic: str, value: bytes, *,
                   on_delivery: Callable[[DeliveryReport], object]) -> None:
        index = self.calls
        self.calls += 1
        if index == self.stall_at:
            await asyncio.sleep(self.stall_s)  # simulated buffer-full stall
        asyncio.get_running_loop().call_later(0.001, on_delivery, DeliveryReport("ok", topic, 0, index))


async def test_latency_counts_from_the_schedule_not_from_the_late_send() -> None:
    producer = StallingProducer(stall_at=10, stall_s=0.2)
    recorder = _Recorder()
    attempted, _, _, reason = await _send_all([producer], "t", 100, b"x", 1000.0, recorder,  # type: ignore[list-item]
                                              time.perf_counter() + 30, asyncio.Event())
    await wait_for_condition(lambda: recorder.resolved == attempted, timeout_s=5, what="every report")
    assert (attempted, reason, recorder.acked) == (100, None, 100)
    # Records 10..~200 were due during the 0.2 s stall: the first of them waited ~0.2 s, which a
    # "latency from send()" benchmark would report as ~1 ms.
    assert max(recorder.latencies) >= 0.19
    assert sorted(recorder.latencies)[50] >= 0.05


async def test_sending_stops_at_the_deadline() -> None:
    producer = StallingProducer(stall_at=-1, stall_s=0)
    recorder = _Recorder()
    attempted, _, _, reason = await _send_all([producer], "t", 100_000, b"x", 2000.0, recorder,  # type: ignore[list-item]
                                              time.perf_counter() + 0.2, asyncio.Event())
    assert reason is not None and "deadline" in reason
    assert 200 <= attempted < 1000


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_process_usage_reads_cpu_and_memory_of_a_live_process() -> None:
    sum(i * i for i in range(200_000))  # burn a little CPU so cpu_s is above zero
    usage = process_usage(os.getpid())
    assert usage is not None
    assert usage["cpu_s"] > 0
    assert 0 < usage["rss_mb"] <= usage["peak_rss_mb"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    assert process_usage(gone.pid) is None  # reaped: no /proc entry
