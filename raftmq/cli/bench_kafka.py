"""``raftmq bench produce --client kafka``: the same measurement with confluent-kafka (librdkafka) as the
producer, talking to the brokers' Kafka-protocol listeners instead of raftmq's HTTP API.

The run has the shape of raftmq's own (``bench.measure``): the same schedule (flat out, or record ``i`` due
at ``t0 + i / rate``), latency from the scheduled send time to the delivery report, the same
:class:`~raftmq.cli.bench.RunResult`. librdkafka sends from its own threads and runs delivery callbacks in
``poll()``/``flush()``, so the loop here is plain synchronous code that polls as it goes. confluent-kafka is
an optional dependency (extra ``kafka``), imported when this path runs, with a coded error when it is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from rich.progress import Progress

from raftmq.cli.bench import RunConfig, RunResult, _freeze_gc, _record_value, _Recorder, latency_summary
from raftmq.cli.common import ConfigProblem
from raftmq.client.types import DeliveryReport, DeliveryStatus
from raftmq.cluster.errors import error_from_wire

# librdkafka's own send queue (queue.buffering.max.messages, its default): when it is full produce() raises
# BufferError and the loop polls until there is room, as a Kafka application does.
_QUEUE_MESSAGES = 100_000
# While the queue is full the loop polls this long (seconds) for delivery reports before trying again.
_FULL_POLL_S = 0.005
# The live progress line is redrawn this often (seconds), as for raftmq's own client.
_TICK_S = 0.25
# librdkafka reports its counters (requests, retries) this often (ms); one more report is awaited after the
# flush so the final counts are in.
_STATS_INTERVAL_MS = 200
_STATS_WAIT_S = 2.0
# Bound on the metadata request that connects each producer before the run (seconds).
_METADATA_TIMEOUT_S = 10.0
# After the deadline or Ctrl-C, what is in flight gets this long to be acknowledged.
_ABORT_GRACE_S = 5.0
# librdkafka's delivery errors that leave the outcome open (the record may be stored): Jepsen's "info".
_UNKNOWN_OUTCOME = frozenset({"_MSG_TIMED_OUT", "_TIMED_OUT", "REQUEST_TIMED_OUT", "_TRANSPORT"})


def import_confluent_kafka() -> ModuleType:
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigProblem("--client kafka needs the confluent-kafka package, which is not installed",
                            "pip install 'raftmq[kafka]' (or confluent-kafka; make .venv/.installed-test installs "
                            "it too), or run with --client raftmq",
                            code="DEPENDENCY_MISSING") from None
    return confluent_kafka


class _Stats:
    """librdkafka's cumulative counters per producer, from its statistics callback (JSON)."""

    def __init__(self) -> None:
        self.requests = self.retries = 0
        self.reports = 0

    def update(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {}).values()
        self.requests = sum(int(b.get("req", {}).get("Produce", 0)) for b in brokers)
        self.retries = sum(int(b.get("txretries", 0)) for b in brokers)
        self.reports += 1


def _report_of(error: Any, message: Any) -> DeliveryReport:
    if error is None:
        return DeliveryReport("ok", message.topic(), message.partition(), message.offset())
    name = error.name()
    raftmq_error = error_from_wire({"code": f"KAFKA{name}" if name.startswith("_") else f"KAFKA_{name}",
                                    "message": f"librdkafka: {error.str()}"})
    status: DeliveryStatus = "unknown" if name in _UNKNOWN_OUTCOME else "failed"
    return DeliveryReport(status, message.topic(), message.partition(), None, error=raftmq_error)


def new_kafka_producer(kafka: ModuleType, bootstrap: str, config: RunConfig, stats: _Stats,
                       timeout_s: float) -> Any:
    """acks=all and idempotence as the issue asks (unless --acks/--no-idempotence say otherwise)."""
    acks = "all" if config.acks in ("all", "-1") else config.acks
    idempotent = config.idempotent if config.idempotent is not None else acks == "all"
    return kafka.Producer({
        "bootstrap.servers": bootstrap,
        "acks": acks,
        "enable.idempotence": idempotent,
        "linger.ms": config.linger_ms,
        "batch.size": config.batch_bytes,
        "queue.buffering.max.messages": _QUEUE_MESSAGES,
        # A record not acknowledged by the bench's deadline counts as unknown, not as a hang.
        "message.timeout.ms": max(1000, int(timeout_s * 1000)),
        "statistics.interval.ms": _STATS_INTERVAL_MS,
        "stats_cb": stats.update,
    })


def measure_kafka(bootstrap: str, topic: str, config: RunConfig, deadline: float, progress: Progress) -> RunResult:
    """One measured run with confluent-kafka producers (``config.producers`` of them, dealt round robin).

    Ctrl-C raises KeyboardInterrupt out of librdkafka's poll; the command reports the run as interrupted."""
    kafka = import_confluent_kafka()
    stats = [_Stats() for _ in range(config.producers)]
    producers = [new_kafka_producer(kafka, bootstrap, config, s, deadline - time.perf_counter()) for s in stats]
    for producer in producers:
        # Connect and learn the partition leaders before the clock starts, as raftmq's Producer.start() does.
        producer.list_topics(topic, timeout=max(1.0, min(_METADATA_TIMEOUT_S, deadline - time.perf_counter())))
    value = _record_value(config.record_bytes)
    if config.gc_freeze:
        _freeze_gc()
    if config.warmup_records:
        warm = _Recorder()
        _send(producers, topic, config.warmup_records, value, None, warm, deadline, None)
        _flush(producers, deadline)
    before = [(s.requests, s.retries) for s in stats]
    recorder = _Recorder()
    task = progress.add_task(f"kafka client {config.label}", total=config.records)
    cpu0 = time.process_time()
    attempted, t0, sent_at, reason = _send(producers, topic, config.records, value, config.rate, recorder,
                                           deadline, lambda: progress.update(
                                               task, completed=recorder.resolved, description=recorder.describe()))
    left = _flush(producers, deadline if reason is None else time.perf_counter() + _ABORT_GRACE_S)
    if left and reason is None:
        reason = "deadline (--max-seconds) passed while waiting for acknowledgements"
    client_cpu_s = round(time.process_time() - cpu0, 2)
    _await_stats(producers, stats)
    progress.update(task, completed=recorder.resolved, description=recorder.describe())
    elapsed = (recorder.last_done or time.perf_counter()) - t0
    requests = sum(s.requests - b[0] for s, b in zip(stats, before, strict=True))
    return RunResult(
        attempted=attempted, acked=recorder.acked, failed=recorder.failed, unknown=recorder.unknown,
        elapsed_s=round(elapsed, 4),
        records_per_s=round(recorder.acked / elapsed, 1) if elapsed > 0 else 0.0,
        mb_per_s=round(recorder.acked * config.record_bytes / elapsed / 1e6, 3) if elapsed > 0 else 0.0,
        latency=latency_summary(recorder.latencies),
        retries=sum(s.retries - b[1] for s, b in zip(stats, before, strict=True)),
        batches=0,  # librdkafka counts batches only in a rolling window; its Produce requests are below
        requests=requests,
        send_rate_per_s=round(attempted / (sent_at - t0), 1) if sent_at > t0 else 0.0,
        aborted=reason,
        errors={code: {"records": count, "message": error.message, "hint": error.hint}
                for code, (count, error) in recorder.errors.items()},
        client_cpu_s=client_cpu_s,
    )


def _send(producers: Sequence[Any], topic: str, count: int, value: bytes, rate: float | None,
          recorder: _Recorder, deadline: float,
          tick: Callable[[], None] | None) -> tuple[int, float, float, str | None]:
    """Send ``count`` records on the schedule; returns (attempted, t0, sending finished, abort reason)."""
    interval = 1.0 / rate if rate else 0.0
    n = len(producers)
    t0 = next_tick = time.perf_counter()
    reason: str | None = None
    attempted = 0
    for index in range(count):
        producer = producers[index % n]
        now = time.perf_counter()
        if rate:
            scheduled = t0 + index * interval
            while scheduled > now:  # wait for the schedule, serving delivery reports meanwhile
                producer.poll(scheduled - now)
                now = time.perf_counter()
        else:
            scheduled = now
        if now >= next_tick:
            next_tick = now + _TICK_S
            if tick is not None:
                tick()
            if now > deadline:
                reason = "deadline (--max-seconds) passed while sending"
                break
        on_delivery = _delivery(recorder, scheduled)
        while True:
            try:
                producer.produce(topic, value, on_delivery=on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: serve reports until there is room
                producer.poll(_FULL_POLL_S)
                if time.perf_counter() > deadline:
                    return attempted, t0, time.perf_counter(), "deadline (--max-seconds) passed while sending"
        attempted += 1
        producer.poll(0)
    return attempted, t0, time.perf_counter(), reason


def _delivery(recorder: _Recorder, scheduled: float) -> Callable[[Any, Any], None]:
    done = recorder.done
    return lambda error, message: done(scheduled, _report_of(error, message))


def _flush(producers: Sequence[Any], deadline: float) -> int:
    """Wait (until ``deadline``) for every record to be reported; returns how many are still in flight."""
    return sum(p.flush(max(0.0, deadline - time.perf_counter())) for p in producers)


def _await_stats(producers: Sequence[Any], stats: Sequence[_Stats]) -> None:
    """One more statistics report from each producer, so the counters include the end of the run."""
    wanted = [s.reports + 1 for s in stats]
    give_up = time.perf_counter() + _STATS_WAIT_S
    for producer, s, want in zip(producers, stats, wanted, strict=True):
        while s.reports < want and time.perf_counter() < give_up:
            producer.poll(_STATS_INTERVAL_MS / 1000)
