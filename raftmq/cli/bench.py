"""``raftmq bench produce``: a producer benchmark in the spirit of kafka-producer-perf-test.

One client process sends N records of S bytes with the async :class:`~client.producer.Producer`
(idempotence on) to a fresh topic, either flat out or at a target rate. Latency is measured per record
from its *scheduled* send time to its delivery report: with a target rate, record ``i`` is due at
``t0 + i / rate`` and a late sender does not hide the queueing it caused (no coordinated omission); flat
out, a record is "scheduled" when ``send()`` is called, so time spent waiting for buffer space counts.

Unless ``--bootstrap`` is given, every (durability, direct/proxies) combination gets its own fresh cluster
in a temporary folder, removed afterwards. Everything is bounded by ``--max-seconds``: when it passes, the
run in progress stops sending, waits briefly for what is in flight, and the report says ``aborted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from raftmq.cli.common import (
    EXIT_BROKER,
    ConfigProblem,
    OutcomeTally,
    RaftMQGroup,
    bootstrap_option,
    err,
    errors_table,
    fmt_int,
    normalize_acks,
    out,
    parse_comma_choice,
    safe,
    stop_on_signals,
)
from raftmq.client.admin import Admin
from raftmq.client.producer import Producer
from raftmq.client.types import DeliveryReport, ProducerCounters
from raftmq.cluster import limits
from raftmq.cluster.errors import ClientTimeout, ProducerClosed, RaftMQError

# In-flight work gets this long to finish after the deadline or Ctrl-C before the run is cut.
_ABORT_GRACE_S = 5.0
# Leader balancing hands a partition to its preferred replica after ~5 s of stable leadership (node/replication.py).
_BALANCE_WAIT_S = 15.0
# A flat-out sender yields to the event loop every this many records so that batches go out meanwhile.
_YIELD_EVERY = 64
# The live progress line is redrawn this often (seconds): often enough to look live, rarely enough to cost
# nothing next to the sending.
_TICK_S = 0.25
# A fresh cluster gets what is left of --max-seconds to become ready, but at least the minimum (a start
# always takes a few seconds) and at most the maximum (a cluster that is not up by then will not be).
_READY_TIMEOUT_MIN_S = 5.0
_READY_TIMEOUT_MAX_S = 60.0
# Each run's topic gets what is left of --max-seconds for its leaders, within these bounds (same reasons).
_TOPIC_TIMEOUT_MIN_S = 5.0
_TOPIC_TIMEOUT_MAX_S = 30.0
# Brokers get this long after SIGTERM to stop cleanly before they are killed.
_CLUSTER_STOP_S = 20.0
# py-spy samples per second: enough for a readable flame graph of a run of some seconds, light on the broker.
_PROFILE_RATE_HZ = 100
# py-spy writes its flame graph after SIGINT; a big profile takes a while, a stuck py-spy is killed after this.
_PROFILER_STOP_S = 20.0
# After SIGKILL a process is gone at once; this only bounds the wait for the kernel to reap it.
_PROFILER_REAP_S = 5.0
# The tail of py-spy's own output that goes into the report when it wrote no profile (enough for its error).
_PROFILER_LOG_TAIL_CHARS = 2000
# `git rev-parse` for the report's commit: instant in a checkout; the report must not hang on a stuck git.
_GIT_TIMEOUT_S = 5.0
# Every record's value repeats this filler, cut to --record-bytes.
_FILLER = b"raftmq-bench-"
# The report's "aborted" reason when --max-seconds passes between runs.
_DEADLINE_PASSED = "deadline (--max-seconds) passed"


@click.group("bench", cls=RaftMQGroup)
def bench() -> None:
    """Benchmarks."""


# --- one measured run ---------------------------------------------------------------------------------


@dataclass
class RunConfig:
    acks: str
    durability: str
    via: str  # "direct", "proxies" or "external" (--bootstrap)
    records: int
    record_bytes: int
    partitions: int
    replication_factor: int | None
    rate: float | None
    linger_ms: float
    batch_bytes: int
    producers: int
    nodes: int | None
    warmup_records: int
    idempotent: bool | None = None  # None: on for acks=all, off otherwise (the producer's default)
    gc_freeze: bool = True
    client: str = "raftmq"  # "raftmq" (its own client, HTTP) or "kafka" (confluent-kafka, Kafka protocol)

    @property
    def label(self) -> str:
        rate = f"{self.rate:,.0f}/s" if self.rate else "flat out"
        client = "kafka client (confluent-kafka) " if self.client == "kafka" else ""
        return f"{client}acks={self.acks} durability={self.durability} {self.via} {rate}"


class _Recorder(OutcomeTally):
    """Delivery callbacks: outcomes, errors by code, and per-record latency (ok only)."""

    def __init__(self) -> None:
        super().__init__()
        self.latencies: list[float] = []
        self.last_done = 0.0

    def done(self, scheduled: float, report: DeliveryReport) -> None:
        now = time.perf_counter()
        self.last_done = now
        if self.count(report):
            self.latencies.append(now - scheduled)


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    values = sorted(latencies_s)
    as_ms = (lambda v: None if v is None else round(v * 1000.0, 3))  # noqa: E731
    return {
        "p50_ms": as_ms(percentile(values, 0.50)),
        "p95_ms": as_ms(percentile(values, 0.95)),
        "p99_ms": as_ms(percentile(values, 0.99)),
        "p999_ms": as_ms(percentile(values, 0.999)),
        "max_ms": as_ms(values[-1] if values else None),
        "mean_ms": as_ms(sum(values) / len(values) if values else None),
    }


@dataclass
class RunResult:
    attempted: int = 0
    acked: int = 0
    failed: int = 0
    unknown: int = 0
    elapsed_s: float = 0.0
    records_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency: dict[str, float | None] = field(default_factory=dict)
    retries: int = 0
    batches: int = 0
    requests: int = 0
    records_per_batch: float = 0.0
    send_rate_per_s: float = 0.0
    aborted: str | None = None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the CPU went: this (client) process during the run, and each broker the benchmark started
    # (cpu_s during the run, rss_mb at its end, peak_rss_mb over the broker's life). Linux /proc only.
    client_cpu_s: float | None = None
    brokers: dict[str, dict[str, float]] = field(default_factory=dict)


async def _send_all(producers: Sequence[Producer], topic: str, count: int, value: bytes, rate: float | None,
                    recorder: _Recorder, deadline: float,
                    stop: asyncio.Event) -> tuple[int, float, float, str | None]:
    """Send ``count`` records; returns (attempted, t0, sending finished, abort reason)."""
    interval = 1.0 / rate if rate else 0.0
    n_producers = len(producers)
    t0 = time.perf_counter()
    attempted = 0
    reason: str | None = None
    done = recorder.done
    for index in range(count):
        if rate:
            scheduled = t0 + index * interval
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)  # the rate limiter's schedule
            elif index % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # behind schedule: still let the batches go out
        else:
            scheduled = time.perf_counter()
            if index % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the sender tasks and I/O run
        if index % _YIELD_EVERY == 0:
            if stop.is_set():
                reason = "interrupted"
                break
            if time.perf_counter() > deadline:
                reason = "deadline (--max-seconds) passed while sending"
                break
        attempted += 1
        try:
            # The on_delivery path: no future and no scheduled callback per record (see client/producer.py).
            await producers[index % n_producers].send(topic, value, on_delivery=functools.partial(done, scheduled))
        except ProducerClosed:
            attempted -= 1
            reason = reason or "producer closed"
            break
        except RaftMQError as exc:
            recorder.send_raised(exc)
    return attempted, t0, time.perf_counter(), reason


async def _ticker(progress: Progress, task: Any, recorder: _Recorder, t0: list[float]) -> None:
    while True:
        elapsed = time.perf_counter() - t0[0] if t0[0] else 0.0
        rate = recorder.acked / elapsed if elapsed > 0 else 0.0
        progress.update(task, completed=recorder.resolved,
                        description=f"acked {recorder.acked:,} ({rate:,.0f}/s)  failed {recorder.failed:,}  "
                                    f"unknown {recorder.unknown:,}")
        await asyncio.sleep(_TICK_S)


@dataclass
class _Session:
    """The started producers of one run and what each of its sends shares."""

    producers: list[Producer]
    topic: str
    value: bytes
    deadline: float
    stop: asyncio.Event  # set by SIGINT/SIGTERM


@dataclass
class _Sending:
    """What the measured send loop leaves for the result."""

    attempted: int
    t0: float
    sent_at: float  # when the last send() returned
    reason: str | None  # why the run was aborted; None when it was not
    client_cpu_s: float


def _record_value(record_bytes: int) -> bytes:
    return (_FILLER * (record_bytes // len(_FILLER) + 1))[:record_bytes]


def _new_producers(urls: Sequence[str], config: RunConfig) -> list[Producer]:
    return [Producer(urls, acks=normalize_acks(config.acks), idempotent=config.idempotent,
                     linger_ms=config.linger_ms, batch_bytes=config.batch_bytes,
                     buffer_bytes=max(limits.client_buffer_bytes_default, 2 * config.batch_bytes))
            for _ in range(config.producers)]


def _freeze_gc() -> None:
    # The process's long-lived objects (modules, rich, aiohttp ...) go to the permanent generation, so the
    # full collections that the in-flight records trigger stop rescanning them: measured 2.3-2.5 s of 13 s
    # client CPU per 1M records without it, 0.15 s with it.
    gc.collect()
    gc.freeze()


async def measure(urls: Sequence[str], topic: str, config: RunConfig, deadline: float,
                  progress: Progress) -> RunResult:
    producers = _new_producers(urls, config)
    started: list[Producer] = []
    try:
        async with stop_on_signals() as stop:
            for producer in producers:
                await producer.start()
                started.append(producer)
            session = _Session(producers, topic, _record_value(config.record_bytes), deadline, stop)
            if config.gc_freeze:
                _freeze_gc()
            if config.warmup_records:
                await _warm_up(session, config.warmup_records, progress)
            before = [p.counters for p in producers]
            recorder = _Recorder()
            sending = await _measured_sends(session, config, recorder, progress)
    finally:
        for producer in started:
            await producer.stop(timeout_s=_ABORT_GRACE_S)
    after = [p.counters for p in producers]
    return _run_result(config, recorder, sending, before, after)


async def _warm_up(session: _Session, records: int, progress: Progress) -> None:
    """Send ``records`` flat out and wait for them, unmeasured."""
    warm = _Recorder()
    task = progress.add_task("warming up", total=records)
    await _send_all(session.producers, session.topic, records, session.value, None, warm, session.deadline,
                    session.stop)
    await _flush(session.producers, session.deadline)
    progress.update(task, completed=warm.resolved, description=f"warm-up: acked {warm.acked:,}")


async def _measured_sends(session: _Session, config: RunConfig, recorder: _Recorder,
                          progress: Progress) -> _Sending:
    """The measured part: send every record, wait for the acknowledgements, with a live progress line."""
    task = progress.add_task(config.label, total=config.records)
    t0_box = [0.0]
    ticker = asyncio.create_task(_ticker(progress, task, recorder, t0_box))
    try:
        cpu0 = time.process_time()
        t0_box[0] = time.perf_counter()
        attempted, t0, sent_at, reason = await _send_all(session.producers, session.topic, config.records,
                                                        session.value, config.rate, recorder,
                                                        session.deadline, session.stop)
        if reason is None:
            reason = await _await_acks(session, recorder, attempted)
        sending = _Sending(attempted, t0, sent_at, reason, round(time.process_time() - cpu0, 2))
        if reason is not None:
            for producer in session.producers:
                await producer.stop(timeout_s=_ABORT_GRACE_S)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    progress.update(task, completed=recorder.resolved, description=recorder.describe())
    return sending


async def _await_acks(session: _Session, recorder: _Recorder, attempted: int) -> str | None:
    """Wait for every record sent to resolve; returns why the run is cut short, or None."""
    stop = session.stop
    reason: str | None = None
    try:
        await _flush(session.producers, max(session.deadline, time.perf_counter()) if not stop.is_set()
                     else time.perf_counter() + _ABORT_GRACE_S, stop)
    except ClientTimeout:
        reason = "deadline (--max-seconds) passed while waiting for acknowledgements"
    if stop.is_set() and reason is None and recorder.resolved < attempted:
        reason = "interrupted"
    return reason


def _counter_delta(after: Sequence[ProducerCounters], before: Sequence[ProducerCounters],
                   counter: Callable[[ProducerCounters], int]) -> int:
    return sum(counter(a) - counter(b) for a, b in zip(after, before, strict=True))


def _run_result(config: RunConfig, recorder: _Recorder, sending: _Sending, before: Sequence[ProducerCounters],
                after: Sequence[ProducerCounters]) -> RunResult:
    attempted, t0, sent_at = sending.attempted, sending.t0, sending.sent_at
    elapsed = max(recorder.last_done, sent_at) - t0
    batches = _counter_delta(after, before, lambda c: c.batches)
    return RunResult(
        attempted=attempted,
        acked=recorder.acked, failed=recorder.failed, unknown=recorder.unknown,
        elapsed_s=round(elapsed, 4),
        records_per_s=round(recorder.acked / elapsed, 1) if elapsed > 0 else 0.0,
        mb_per_s=round(recorder.acked * config.record_bytes / elapsed / 1e6, 3) if elapsed > 0 else 0.0,
        latency=latency_summary(recorder.latencies),
        retries=_counter_delta(after, before, lambda c: c.retries),
        batches=batches,
        requests=_counter_delta(after, before, lambda c: c.requests),
        records_per_batch=round(attempted / batches, 1) if batches else 0.0,
        send_rate_per_s=round(attempted / (sent_at - t0), 1) if sent_at > t0 else 0.0,
        aborted=sending.reason,
        errors={code: {"records": count, "message": error.message, "hint": error.hint}
                for code, (count, error) in recorder.errors.items()},
        client_cpu_s=sending.client_cpu_s,
    )


async def _flush(producers: Sequence[Producer], deadline: float, stop: asyncio.Event | None = None) -> None:
    """Wait until everything sent resolved, until ``deadline`` (ClientTimeout) or ``stop`` (returns)."""
    flush: asyncio.Future[list[None]] = asyncio.gather(
        *(p.flush(timeout_s=max(0.0, deadline - time.perf_counter())) for p in producers))
    if stop is None:
        await flush
        return
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([flush, stopped], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
    if flush.done():
        flush.result()
    else:
        flush.cancel()
        with contextlib.suppress(asyncio.CancelledError, RaftMQError):
            await flush


# --- clusters, topics, profiling ------------------------------------------------------------------------


class _Target:
    """Where a group of runs sends: an existing cluster, or one started (and stopped) here."""

    def __init__(self, urls: list[str], local: Any = None, harness: Any = None, root: Path | None = None,
                 kafka_bootstrap: str = ""):
        self.urls = urls
        self.kafka_bootstrap = kafka_bootstrap  # host:port,... of the Kafka listeners ("" if none)
        self.local = local
        self.harness = harness
        self.root = root

    def pid_of(self, broker_id: int) -> int | None:
        if self.local is None:
            return None
        node = self.local.nodes.get(broker_id)
        return node.pid if node is not None else None


@contextlib.contextmanager
def _target(bootstrap: list[str] | None, via: str, nodes: int, durability: str,
            deadline: float, kafka_bootstrap: str | None = None) -> Iterator[_Target]:
    """``kafka_bootstrap``: None for no Kafka listeners; else the existing cluster's ("" when starting one)."""
    if bootstrap is not None:
        yield _Target(bootstrap, kafka_bootstrap=kafka_bootstrap or "")
        return
    from raftmq.deploy.local_cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix=f"raftmq-bench-{durability}-{via}-"))
    harness: Any = None
    local: Any = None
    try:
        ready_timeout = max(_READY_TIMEOUT_MIN_S, min(_READY_TIMEOUT_MAX_S, deadline - time.perf_counter()))
        with err().status(f"starting a fresh {nodes}-node cluster ({via}, durability {durability}) ..."):
            if via == "proxies":
                try:
                    from raftmq.chaos.harness import ChaosCluster
                except ImportError as exc:
                    raise ConfigProblem(f"--via-proxies/--compare-proxies need chaos.harness: {exc}",
                                        "run without them, or update your checkout") from None
                harness = ChaosCluster(root, nodes=nodes, durability=durability)
                local = harness.cluster
                harness.start()
                harness.wait_ready(timeout_s=ready_timeout)
                urls = list(harness.client_urls)
            else:
                local = LocalCluster(root, nodes=nodes, durability=durability, kafka=kafka_bootstrap is not None)
                local.start()
                local.wait_ready(timeout_s=ready_timeout)
                urls = local.urls
        yield _Target(urls, local, harness, root, local.kafka_bootstrap)
    finally:
        with err().status("stopping the benchmark cluster ..."):
            if harness is not None:
                with contextlib.suppress(Exception):
                    harness.stop()
            if local is not None:
                local.stop(timeout_s=_CLUSTER_STOP_S)
        shutil.rmtree(root, ignore_errors=True)


async def _create_topic(urls: Sequence[str], name: str, config: RunConfig,
                        timeout_s: float) -> dict[int, int | None]:
    """Create the run's topic, wait for leaders; returns partition -> leader id.

    Then wait (bounded) for leader balancing to put each leader on its preferred replica: otherwise the
    hand-over happens a few seconds into the measurement and shows up as retries and a latency spike. A
    cluster that does not balance (leader_rebalance = false) is measured as it is once the wait ends."""
    async with Admin(urls) as admin:
        await admin.create_topic(name, config.partitions, config.replication_factor)
        info = await admin.wait_for_topic(name, timeout_s=timeout_s)
        with contextlib.suppress(ClientTimeout):
            info = await admin.wait_for_topic(name, timeout_s=_BALANCE_WAIT_S, preferred_leaders=True)
    return {p.partition: p.leader_id for p in info.partitions}


async def _delete_topic(urls: Sequence[str], name: str) -> None:
    async with Admin(urls) as admin:
        await admin.delete_topic(name)


def find_py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"  # a virtualenv that is not activated
    return str(beside) if beside.exists() else None


class _Profiler:
    """py-spy recording one broker for the duration of a run (stopped with SIGINT, which makes it write)."""

    def __init__(self, py_spy: str, pid: int, output: Path) -> None:
        self.output = output
        self.pid = pid
        self.stderr_path = output.with_suffix(output.suffix + ".log")
        with open(self.stderr_path, "wb") as log:
            self.process = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--rate", str(_PROFILE_RATE_HZ), "--nonblocking", "--format",
                 "flamegraph", "--output", str(output)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def finish(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=_PROFILER_STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=_PROFILER_REAP_S)
        log = ""
        if self.stderr_path.exists():
            log = self.stderr_path.read_text(errors="replace").strip()[-_PROFILER_LOG_TAIL_CHARS:]
        if self.output.exists() and self.output.stat().st_size > 0:
            return {"pid": self.pid, "flamegraph": str(self.output), "log": str(self.stderr_path)}
        return {"pid": self.pid, "error": f"py-spy wrote no profile (exit {self.process.returncode}): {log}",
                "hint": "py-spy needs ptrace permission (root, or CAP_SYS_PTRACE in containers)"}


# --- reporting ---------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_bytes"] = int(line.split()[1]) * 1024
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=_GIT_TIMEOUT_S, cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
        if commit:
            facts["raftmq_commit"] = commit
    return facts


def process_usage(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system), RSS and peak RSS in MB of a live process, from /proc (None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; utime and stime are fields 14 and 15
    usage = {"cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            usage["rss_mb" if name == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    return usage


def _usage_of(target: _Target, broker_id: int) -> dict[str, float] | None:
    pid = target.pid_of(broker_id)
    return process_usage(pid) if pid is not None else None


def broker_usage(target: _Target, before: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per broker: CPU seconds since ``before`` and memory now; brokers that are gone are left out."""
    usage: dict[str, dict[str, float]] = {}
    for broker_id, start in before.items():
        now = _usage_of(target, broker_id)
        if now is not None:
            usage[str(broker_id)] = {**now, "cpu_s": round(now["cpu_s"] - start["cpu_s"], 2)}
    return usage


def result_table(config: RunConfig, result: RunResult) -> Table:
    table = Table(title=config.label, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    lat = result.latency

    def ms(key: str) -> str:
        value = lat.get(key)
        return "-" if value is None else f"{value:,.2f} ms"

    table.add_row("records",
                  f"{config.records:,} x {config.record_bytes:,} B, {config.partitions} partition(s)")
    table.add_row("throughput", f"{result.records_per_s:,.0f} records/s   {result.mb_per_s:,.2f} MB/s")
    table.add_row("latency p50 / p95 / p99", f"{ms('p50_ms')} / {ms('p95_ms')} / {ms('p99_ms')}")
    table.add_row("latency p99.9 / max", f"{ms('p999_ms')} / {ms('max_ms')}")
    outcome = f"acked {result.acked:,}  failed {result.failed:,}  unknown {result.unknown:,}"
    table.add_row("outcome", outcome if result.acked == config.records else f"[yellow]{outcome}[/]")
    if result.batches or not result.requests:
        table.add_row("batches", f"{result.batches:,} ({result.records_per_batch:,.1f} records each), "
                                 f"{result.retries:,} retries")
    else:  # librdkafka counts Produce requests (each with a batch per partition), not batches
        table.add_row("requests", f"{result.requests:,} Produce requests, {result.retries:,} retries")
    table.add_row("elapsed", f"{result.elapsed_s:,.2f} s (sent at {result.send_rate_per_s:,.0f} records/s)")
    if result.client_cpu_s is not None and result.attempted:
        per_record = result.client_cpu_s / result.attempted * 1e6
        brokers = "  ".join(f"b{b} {u['cpu_s']:.1f}" for b, u in sorted(result.brokers.items()))
        table.add_row("CPU seconds", f"client {result.client_cpu_s:.1f} ({per_record:.1f} µs/record)"
                                     + (f"  brokers {brokers}" if brokers else ""))
    if result.brokers:
        table.add_row("broker RSS now / peak", "  ".join(
            f"b{b} {u.get('rss_mb', 0):.0f}/{u.get('peak_rss_mb', 0):.0f} MB"
            for b, u in sorted(result.brokers.items())))
    if result.aborted:
        table.add_row("aborted", f"[red]{safe(result.aborted)}[/]")
    return table


def compare_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for run in runs:
        key = (run["config"]["acks"], run["config"]["durability"])
        by_key.setdefault(key, {})[run["config"]["via"]] = run["results"]
    rows = []
    for (acks, durability), vias in by_key.items():
        direct, proxied = vias.get("direct"), vias.get("proxies")
        if direct is None or proxied is None:
            continue

        def added(key: str, d: dict[str, Any] = direct, p: dict[str, Any] = proxied) -> float | None:
            a, b = d["latency"].get(key), p["latency"].get(key)
            return None if a is None or b is None else round(b - a, 3)

        base = direct["records_per_s"]
        change = None if not base else round((proxied["records_per_s"] - base) / base * 100, 1)
        rows.append({"acks": acks, "durability": durability,
                     "direct_records_per_s": direct["records_per_s"],
                     "proxies_records_per_s": proxied["records_per_s"], "throughput_change_pct": change,
                     "p50_added_ms": added("p50_ms"), "p99_added_ms": added("p99_ms")})
    return rows


def compare_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="fault-proxy overhead (proxies vs direct)", title_justify="left")
    for column in ("acks", "durability", "direct rec/s", "proxies rec/s", "throughput", "p50 added",
                   "p99 added"):
        table.add_column(column, justify="right")
    for row in rows:
        change = row["throughput_change_pct"]
        table.add_row(row["acks"], row["durability"], f"{row['direct_records_per_s']:,.0f}",
                      f"{row['proxies_records_per_s']:,.0f}", "-" if change is None else f"{change:+.1f} %",
                      "-" if row["p50_added_ms"] is None else f"{row['p50_added_ms']:+.2f} ms",
                      "-" if row["p99_added_ms"] is None else f"{row['p99_added_ms']:+.2f} ms")
    return table


def summary_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="all runs", title_justify="left")
    for column in ("acks", "durability", "via", "rate", "records/s", "MB/s", "p50", "p99", "p99.9", "max",
                   "acked", "failed", "unknown"):
        table.add_column(column, justify="right")
    for run in runs:
        c, r = run["config"], run["results"]
        lat = r["latency"]

        def ms(key: str, lat: dict[str, Any] = lat) -> str:
            return "-" if lat.get(key) is None else f"{lat[key]:,.1f}"

        table.add_row(c["acks"], c["durability"], c["via"], f"{c['rate']:,.0f}" if c["rate"] else "max",
                      f"{r['records_per_s']:,.0f}", f"{r['mb_per_s']:,.2f}", ms("p50_ms"), ms("p99_ms"),
                      ms("p999_ms"), ms("max_ms"), fmt_int(r["acked"]), fmt_int(r["failed"]),
                      fmt_int(r["unknown"]))
    return table


# --- the command -------------------------------------------------------------------------------------------


@bench.command("produce")
@click.option("--records", type=click.IntRange(1), default=200_000, show_default=True,
              help="Records per run.")
@click.option("--record-bytes", type=click.IntRange(0, limits.record_bytes_max), default=100,
              show_default=True)
@click.option("--acks", "acks_text", default="all", show_default=True,
              help="all, 1 or 0; a comma list runs once per level.")
@click.option("--partitions", type=click.IntRange(1, limits.partitions_per_topic_max), default=3,
              show_default=True)
@click.option("--replication-factor", type=click.IntRange(1, 99), default=None,
              help="[default: every broker]")
@click.option("--rate", type=click.FloatRange(1, 10_000_000), default=None,
              help="Target records/s (token-bucket schedule) [default: flat out].")
@click.option("--linger-ms", type=click.FloatRange(0, 10_000), default=limits.client_linger_ms_default,
              show_default=True)
@click.option("--batch-bytes", type=click.IntRange(1024, limits.batch_bytes_max),
              default=limits.client_batch_bytes_default, show_default=True)
@click.option("--producers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Producer instances in this one process (records are dealt round robin).")
@click.option("--durability", "durability_text", default=None,
              help="always, interval or never (comma list: one cluster per level) [default: always].")
@click.option("--nodes", type=click.IntRange(1, 99), default=3, show_default=True)
@bootstrap_option(default=None, from_env=False,
                  help_text="Use this existing cluster instead of starting one (not from RAFTMQ_BOOTSTRAP).")
@click.option("--via-proxies", is_flag=True,
              help="Start the cluster behind fault proxies (no faults injected).")
@click.option("--compare-proxies", is_flag=True, help="Run every configuration direct AND through proxies.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON report file [default: reports/bench-<UTC time>.json].")
@click.option("--warmup-records", type=click.IntRange(0), default=0, show_default=True,
              help="Records sent (and not measured) before each run.")
@click.option("--max-seconds", type=click.FloatRange(1, 86_400), default=300.0, show_default=True,
              help="Deadline for the whole benchmark; a run in progress is aborted cleanly.")
@click.option("--profile", is_flag=True, help="Record the leader of partition 0 with py-spy (flame graph).")
@click.option("--no-idempotence", is_flag=True,
              help="Disable the idempotent producer (it is on for acks=all, off for acks 0 and 1).")
@click.option("--gc-freeze/--no-gc-freeze", default=True, show_default=True,
              help="gc.freeze() the client process before measuring (what a long-running producer "
                   "application would do; see README \"Performance\").")
@click.option("--client", type=click.Choice(["raftmq", "kafka"]), default="raftmq", show_default=True,
              help="The producer measured: raftmq's own client (HTTP API) or confluent-kafka over the Kafka "
                   "protocol (pip install confluent-kafka).")
@click.option("--kafka-bootstrap", default=None, metavar="HOST:PORT,...",
              help="With --client kafka and --bootstrap: the cluster's Kafka listeners.")
def produce(records: int, record_bytes: int, acks_text: str, partitions: int, replication_factor: int | None,
            rate: float | None, linger_ms: float, batch_bytes: int, producers: int,
            durability_text: str | None,
            nodes: int, bootstrap: list[str] | None, via_proxies: bool, compare_proxies: bool,
            report_path: Path | None, warmup_records: int, max_seconds: float, profile: bool,
            no_idempotence: bool, gc_freeze: bool, client: str, kafka_bootstrap: str | None) -> None:
    """Measure producer throughput and per-record latency (send -> delivery report)."""
    acks_list, durabilities, vias = _matrix(acks_text, durability_text, bootstrap, via_proxies, compare_proxies)
    kafka_bootstrap = _check_kafka_client(client, kafka_bootstrap, bootstrap, vias)
    if replication_factor is not None and bootstrap is None and replication_factor > nodes:
        raise click.BadParameter(f"{replication_factor} > --nodes {nodes}",
                                 param_hint="'--replication-factor'")
    plan = BenchPlan(records=records, record_bytes=record_bytes, acks=acks_list, partitions=partitions,
                     replication_factor=replication_factor, rate=rate, linger_ms=linger_ms,
                     batch_bytes=batch_bytes, producers=producers, durabilities=durabilities, nodes=nodes,
                     bootstrap=bootstrap, vias=vias, warmup_records=warmup_records, max_seconds=max_seconds,
                     profile=profile, idempotent=None if not no_idempotence else False, gc_freeze=gc_freeze,
                     client=client, kafka_bootstrap=kafka_bootstrap)
    bench_run = _bench_run(plan, report_path)
    report = _new_report(plan, bench_run)
    _run_plan_and_report(plan, bench_run, report)
    _exit_unless_complete(report)


@dataclass(frozen=True)
class BenchPlan:
    """The checked options of one ``bench produce``: every (durability, via, acks) run it makes."""

    records: int
    record_bytes: int
    acks: list[str]
    partitions: int
    replication_factor: int | None
    rate: float | None
    linger_ms: float
    batch_bytes: int
    producers: int
    durabilities: list[str]
    nodes: int
    bootstrap: list[str] | None
    vias: list[str]
    warmup_records: int
    max_seconds: float
    profile: bool
    idempotent: bool | None
    gc_freeze: bool
    client: str = "raftmq"
    kafka_bootstrap: str | None = None  # Kafka listeners: None without --client kafka, "" for a started cluster

    @property
    def cluster_nodes(self) -> int | None:
        """Brokers of the clusters the benchmark starts (None: an existing cluster, size unknown)."""
        return self.nodes if self.bootstrap is None else None

    def run_config(self, acks: str, durability: str, via: str) -> RunConfig:
        return RunConfig(acks=acks, durability=durability, via=via, records=self.records,
                         record_bytes=self.record_bytes, partitions=self.partitions,
                         replication_factor=self.replication_factor, rate=self.rate, linger_ms=self.linger_ms,
                         batch_bytes=self.batch_bytes, producers=self.producers, nodes=self.cluster_nodes,
                         warmup_records=self.warmup_records, idempotent=self.idempotent,
                         gc_freeze=self.gc_freeze, client=self.client)

    def settings(self) -> dict[str, Any]:
        """The report's "settings" (its keys and their order are part of the report format)."""
        return {"records": self.records, "record_bytes": self.record_bytes, "acks": self.acks,
                "partitions": self.partitions,
                "replication_factor": self.replication_factor, "rate": self.rate, "linger_ms": self.linger_ms,
                "batch_bytes": self.batch_bytes, "producers": self.producers, "durability": self.durabilities,
                "nodes": self.cluster_nodes, "bootstrap": self.bootstrap, "vias": self.vias,
                "warmup_records": self.warmup_records, "max_seconds": self.max_seconds,
                "idempotent": self.idempotent, "profile": self.profile, "gc_freeze": self.gc_freeze,
                "client": self.client}


@dataclass(frozen=True)
class _BenchRun:
    """What every run of one invocation shares: its time stamp, deadline, profiler and report file."""

    stamp: str  # UTC time of the start, in topic names and the default report name
    deadline: float  # time.perf_counter() value that --max-seconds ends at
    py_spy: str | None  # py-spy's path when profiling
    report_path: Path


def _matrix(acks_text: str, durability_text: str | None, bootstrap: list[str] | None, via_proxies: bool,
            compare_proxies: bool) -> tuple[list[str], list[str], list[str]]:
    """The ack levels, durabilities and ways to reach the cluster that the runs cover."""
    acks_list = parse_comma_choice(acks_text, ["0", "1", "all", "-1"], "--acks")
    acks_list = list(dict.fromkeys("all" if a == "-1" else a for a in acks_list))
    durabilities = parse_comma_choice(durability_text or "always", ["always", "interval", "never"],
                                      "--durability")
    if bootstrap is not None:
        if durability_text is not None:
            raise click.BadParameter("the durability of an existing cluster is set in its node configs; "
                                     "drop --durability or --bootstrap", param_hint="'--durability'")
        if via_proxies or compare_proxies:
            raise click.BadParameter("--via-proxies/--compare-proxies start their own cluster; "
                                     "drop --bootstrap", param_hint="'--bootstrap'")
        return acks_list, ["(existing cluster)"], ["external"]
    vias = ["direct", "proxies"] if compare_proxies else ["proxies"] if via_proxies else ["direct"]
    return acks_list, durabilities, vias


def _check_kafka_client(client: str, kafka_bootstrap: str | None, bootstrap: list[str] | None,
                        vias: list[str]) -> str | None:
    """The Kafka listeners to use: None for --client raftmq, "" when the benchmark starts the cluster."""
    if client != "kafka":
        if kafka_bootstrap is not None:
            raise click.BadParameter("only used with --client kafka", param_hint="'--kafka-bootstrap'")
        return None
    from raftmq.cli.bench_kafka import import_confluent_kafka

    import_confluent_kafka()  # before a cluster is started: a missing package is a usage error
    if "proxies" in vias:
        raise click.BadParameter("the fault-proxy cluster opens no Kafka listeners; drop --via-proxies/"
                                 "--compare-proxies", param_hint="'--client'")
    if bootstrap is not None and not kafka_bootstrap:
        raise click.BadParameter("--client kafka with --bootstrap needs the cluster's Kafka listeners too "
                                 "(e.g. --kafka-bootstrap 127.0.0.1:9092)", param_hint="'--kafka-bootstrap'")
    return kafka_bootstrap or ""


def _bench_run(plan: BenchPlan, report_path: Path | None) -> _BenchRun:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report_path = report_path or Path("reports") / f"bench-{stamp}.json"
    py_spy = _profiler_binary(plan)
    return _BenchRun(stamp, time.perf_counter() + plan.max_seconds, py_spy, report_path)


def _profiler_binary(plan: BenchPlan) -> str | None:
    """py-spy's path when --profile is given and can be honoured (else None, with a warning)."""
    py_spy = find_py_spy() if plan.profile else None
    console = err()
    if plan.profile and py_spy is None:
        console.print("[yellow]--profile: py-spy is not installed (pip install py-spy); running without a "
                      "profile[/]")
    if plan.profile and plan.bootstrap is not None:
        console.print("[yellow]--profile needs a cluster started by the benchmark (its broker pids); "
                      "running without a profile[/]")
        py_spy = None
    return py_spy


def _new_report(plan: BenchPlan, bench_run: _BenchRun) -> dict[str, Any]:
    report: dict[str, Any] = {
        "tool": "raftmq bench produce",
        "report_version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": ["raftmq", *sys.argv[1:]] if sys.argv and "raftmq" in Path(sys.argv[0]).name else None,
        "machine": machine_facts(),
        "settings": plan.settings(),
        "runs": [],
        "aborted": None,
    }
    if plan.profile and bench_run.py_spy is None:
        report["profile_skipped"] = ("py-spy is not installed" if plan.bootstrap is None
                                     else "--profile needs a cluster started by the benchmark")
    return report


def _run_plan_and_report(plan: BenchPlan, bench_run: _BenchRun, report: dict[str, Any]) -> None:
    """Every run of the plan, then the summary tables and the report file (also after an abort)."""
    try:
        _run_plan(plan, bench_run, report)
    except KeyboardInterrupt:
        report["aborted"] = "interrupted"
    finally:
        _print_summary(report)
        report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        bench_run.report_path.parent.mkdir(parents=True, exist_ok=True)
        bench_run.report_path.write_text(json.dumps(report, indent=2) + "\n")
        out().print(f"report written to {bench_run.report_path}")


def _run_plan(plan: BenchPlan, bench_run: _BenchRun, report: dict[str, Any]) -> None:
    """One cluster per (durability, via), one run per ack level on it; stops at the first abort."""
    run_number = 0
    for durability, via in itertools.product(plan.durabilities, plan.vias):
        if time.perf_counter() > bench_run.deadline:
            report["aborted"] = _DEADLINE_PASSED
            return
        with _target(plan.bootstrap, via, plan.nodes, durability, bench_run.deadline,
                     plan.kafka_bootstrap) as target:
            for acks in plan.acks:
                if time.perf_counter() > bench_run.deadline:
                    report["aborted"] = _DEADLINE_PASSED
                    return
                run_number += 1
                config = plan.run_config(acks, durability, via)
                run = _one_run(target, config, run_number, bench_run)
                report["runs"].append(run)
                _print_run(config, run)
                if run["results"]["aborted"]:
                    report["aborted"] = run["results"]["aborted"]
                    return


def _print_run(config: RunConfig, run: dict[str, Any]) -> None:
    stdout = out()
    stdout.print(result_table(config, RunResult(**run["results"])))
    if run["results"]["errors"]:
        errors = {code: (e["records"], RaftMQError(e["message"])) for code, e in
                  run["results"]["errors"].items()}
        stdout.print(errors_table(errors, title="errors by code"))


def _print_summary(report: dict[str, Any]) -> None:
    """With several runs, all of them in one table; the proxy overhead when runs can be compared."""
    if not report["runs"]:
        return
    stdout = out()
    if len(report["runs"]) > 1:
        stdout.print(summary_table(report["runs"]))
    comparisons = compare_rows(report["runs"])
    if comparisons:
        report["comparisons"] = comparisons
        stdout.print(compare_table(comparisons))


def _exit_unless_complete(report: dict[str, Any]) -> None:
    """Exit code 1 when the benchmark was aborted or a run did not get every record acknowledged."""
    incomplete = [r for r in report["runs"] if r["results"]["acked"] != r["config"]["records"]]
    if report["aborted"] or incomplete:
        if report["aborted"]:
            err().print(f"[red]benchmark aborted: {report['aborted']}[/]")
        raise click.exceptions.Exit(EXIT_BROKER)


def _one_run(target: _Target, config: RunConfig, number: int, bench_run: _BenchRun) -> dict[str, Any]:
    topic = f"bench-{bench_run.stamp.lower()}-{number}-acks{config.acks}"
    timeout = max(_TOPIC_TIMEOUT_MIN_S, min(_TOPIC_TIMEOUT_MAX_S, bench_run.deadline - time.perf_counter()))
    with err().status(f"creating topic {topic} ({config.partitions} partitions) ..."):
        leaders = asyncio.run(_create_topic(target.urls, topic, config, timeout))
    run: dict[str, Any] = {"config": asdict(config), "topic": topic, "leaders": leaders}
    profiler = _start_profiler(target, leaders, number, bench_run, run)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err())
    broker_ids = sorted(target.local.nodes) if target.local is not None else []
    before = {b: u for b in broker_ids if (u := _usage_of(target, b)) is not None}
    try:
        with progress:
            if config.client == "kafka":
                from raftmq.cli.bench_kafka import measure_kafka

                result = measure_kafka(target.kafka_bootstrap, topic, config, bench_run.deadline, progress)
            else:
                result = asyncio.run(measure(target.urls, topic, config, bench_run.deadline, progress))
        result.brokers = broker_usage(target, before)
    finally:
        if profiler is not None:
            _finish_profiler(profiler, leaders, run)
    run["results"] = asdict(result)
    if target.local is None:  # an existing cluster: do not leave benchmark topics behind
        with contextlib.suppress(RaftMQError):
            asyncio.run(_delete_topic(target.urls, topic))
    return run


def _start_profiler(target: _Target, leaders: dict[int, int | None], number: int, bench_run: _BenchRun,
                    run: dict[str, Any]) -> _Profiler | None:
    """py-spy on the leader of partition 0 when profiling (None otherwise, or with an error in ``run``)."""
    if bench_run.py_spy is None:
        return None
    leader = leaders.get(0)
    pid = target.pid_of(leader) if leader is not None else None
    if pid is None:
        run["profile"] = {"error": "could not find the pid of the leader of partition 0"}
        return None
    report_path = bench_run.report_path
    output = report_path.parent / f"{report_path.stem}.run{number}.broker{leader}.svg"
    output.parent.mkdir(parents=True, exist_ok=True)
    return _Profiler(bench_run.py_spy, pid, output.resolve())


def _finish_profiler(profiler: _Profiler, leaders: dict[int, int | None], run: dict[str, Any]) -> None:
    run["profile"] = profiler.finish()
    if "error" in run["profile"]:
        err().print(f"[yellow]profile: {safe(run['profile']['error'])}[/]")
    else:
        err().print(f"profile of broker {leaders.get(0)} written to {run['profile']['flamegraph']}")
