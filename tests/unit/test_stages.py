"""Per-stage latency aggregates (node/stages.py): deltas between consecutive points, bounded memory,
incomplete traces ignored."""

from __future__ import annotations

from raftmq.node.stages import POINTS, STAGES, StageTimes, StageTrace


def _trace(gaps_us: list[int]) -> StageTrace:
    trace = StageTrace()
    t = 1_000_000
    trace.times[0] = t
    for point, gap in enumerate(gaps_us, start=1):
        t += gap * 1000
        trace.times[point] = t
    return trace


def test_each_stage_is_the_gap_from_the_previous_point() -> None:
    times = StageTimes()
    gaps = list(range(10, 10 * len(STAGES) + 1, 10))
    times.record(_trace(gaps))
    snapshot = times.snapshot()
    assert snapshot["count"] == 1
    assert [row["stage"] for row in snapshot["stages"]] == list(POINTS[1:])
    assert [row["p50_us"] for row in snapshot["stages"]] == gaps
    assert snapshot["total"]["p50_us"] == sum(gaps)


def test_percentiles_and_a_bounded_window() -> None:
    times = StageTimes(window=100)
    for i in range(1, 1001):
        times.record(_trace([i] * len(STAGES)))
    snapshot = times.snapshot()
    assert snapshot["count"] == 1000
    row = snapshot["stages"][0]
    assert row["count"] == 100  # only the last 100 are kept
    assert row["p50_us"] == 951 and row["p99_us"] == 1000


def test_incomplete_traces_are_not_recorded() -> None:
    times = StageTimes()
    trace = StageTrace()  # only "decoded"
    times.record(trace)
    snapshot = times.snapshot()
    assert snapshot["count"] == 0
    assert snapshot["stages"][0] == {"stage": "submitted", "count": 0, "p50_us": None, "p99_us": None}
