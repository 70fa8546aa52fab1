"""Where an acks=all produce request spends its time, per stage, measured inside the broker.

A ``StageTrace`` rides along with one produce request on the partition leader: the HTTP handler starts it
when the body is decoded, the service and the replication thread (node/replication.py) stamp it as the
request passes each point, and the handler hands it to ``StageTimes.record`` once the response is written.
The points, in the order a request passes them:

  decoded → submitted (handed to the replication thread) → appended (in the leader's journal) → sent
  (AppendEntries written to the peer sockets) → fsynced (the leader's own journal fsync is done) →
  committed (the commit index reached the entry: apply starts) → applied (the state machine returned) →
  on_asyncio (the result is back on the event loop) → responded (the response is written to the socket).

A stage is named after the point it ends at; its time is the gap from the previous point. ``sent`` comes
before ``fsynced`` because the leader sends AppendEntries before its own fsync (ReplicationLoop._loop_forever).

Cost: one ``time.perf_counter_ns()`` per point per request (not per record) and a list store; the
aggregates keep the last ``window`` samples per stage, so memory is bounded whatever the traffic. A trace
with a missing point (the request failed, timed out, or took another path) is not recorded.

Threads: stamps from the asyncio thread and the replication thread go into different slots of one list;
the replication thread's stamps happen before it resolves the request's future, which the asyncio thread
awaits before it reads them (``call_soon_threadsafe`` orders the two). ``record`` and ``snapshot`` run on
the asyncio thread only.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

POINTS = ("decoded", "submitted", "appended", "sent", "fsynced", "committed", "applied", "on_asyncio",
          "responded")
DECODED, SUBMITTED, APPENDED, SENT, FSYNCED, COMMITTED, APPLIED, ON_ASYNCIO, RESPONDED = range(len(POINTS))
STAGES = POINTS[1:]  # each stage ends at a point; "decoded" only starts the clock


class StageTrace:
    """The timestamps (``perf_counter_ns``) of one request; 0 = not reached."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times = [0] * len(POINTS)
        self.times[DECODED] = time.perf_counter_ns()

    def stamp(self, point: int) -> None:
        self.times[point] = time.perf_counter_ns()

    def complete(self) -> bool:
        return all(self.times)


def stamp_all(traces: list[StageTrace], point: int) -> None:
    """Stamp several traces with one clock read (the replication thread stamps a whole pass at once)."""
    if traces:
        now = time.perf_counter_ns()
        for trace in traces:
            trace.times[point] = now


def _percentile(ordered: list[int], fraction: float) -> int:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class StageTimes:
    """Per-stage aggregates over the last ``window`` complete traces (asyncio thread)."""

    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self.count = 0
        self._samples: list[deque[int]] = [deque(maxlen=window) for _ in STAGES]
        self._totals: deque[int] = deque(maxlen=window)

    def record(self, trace: StageTrace) -> None:
        if not trace.complete():
            return
        times = trace.times
        self.count += 1
        for stage, samples in enumerate(self._samples):
            samples.append(max(0, times[stage + 1] - times[stage]) // 1000)  # µs
        self._totals.append((times[RESPONDED] - times[DECODED]) // 1000)

    def snapshot(self) -> dict[str, Any]:
        """``{"count", "window", "stages": [{"stage", "count", "p50_us", "p99_us"}], "total": {...}}``."""
        rows = [self._row(name, samples) for name, samples in zip(STAGES, self._samples, strict=True)]
        return {"count": self.count, "window": self.window, "stages": rows, "total": self._row("total", self._totals)}

    @staticmethod
    def _row(name: str, samples: deque[int]) -> dict[str, Any]:
        ordered = sorted(samples)
        if not ordered:
            return {"stage": name, "count": 0, "p50_us": None, "p99_us": None}
        return {"stage": name, "count": len(ordered), "p50_us": _percentile(ordered, 0.50),
                "p99_us": _percentile(ordered, 0.99)}
