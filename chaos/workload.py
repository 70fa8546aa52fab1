"""The chaos workload: concurrent producers and a consumer through the client proxies, recorded as a history.

* Producers: ``processes`` workers (with acks=all the first half idempotent, the rest not; idempotence
  needs acks=all, so at acks 0 and 1 none is), each with its own real
  ``client.Producer`` bootstrapped from the client proxy URLs, all at the run's one ack level. Worker ``w``
  sends unique values ``p{w}-{n}`` under a small key set chosen so every partition gets keys, at a bounded
  rate (``rate`` sends/s in total) and bounded in count (``rate x duration x 1.5``) and in time, with at most
  ``in_flight_max`` unresolved sends per worker (when the cluster stalls, the rate drops instead of the buffer
  growing). Short client timeouts (request 2 s, delivery 8 s) make outcomes resolve during the run. These
  numbers and every other timeout, retry backoff and bound of the workload are in chaos/limits.py.
* Every send is recorded (``HistoryBuilder.record_send``) when its report arrives: start/end in monotonic ms
  since the run started, outcome ok / fail / unknown exactly as the ``DeliveryReport`` says (``unknown`` is
  never turned into ``fail``), partition, offset (acks=all), acknowledging broker and term, error code.
  A ``send()`` that raises queued nothing: a definite ``fail``.
* With ``client="kafka"`` the workers are confluent-kafka producers on the brokers' Kafka listeners (through
  their proxies; chaos/kafka_producer.py), same keys, values, rate and bounds, idempotent as above. A delivery
  report becomes a send as chaos/kafka_delivery.py says (no error: ``ok`` with its offset; an error: ``unknown``
  unless the message never left the client). Kafka reports do not name the acknowledging broker or its term,
  so those stay None (the runner times failover for such sends differently). The consumer and the final
  drain are raftmq's own (HTTP API), whatever the producers' client.
* A consumer polls every partition from offset 0 during the run (``PollOp`` per partition per poll).
* After the faults (the runner heals and waits for convergence) ``drain`` reads every partition from its
  leader, offset 0 up to the high watermark (``ReadRecord``), and every replica's own copy with ``replica=any``
  straight from each broker's client port (``ReplicaLog``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote

from raftmq.chaos import limits
from raftmq.chaos.history import Acks, History, HistoryBuilder, LogRecord, Outcome
from raftmq.chaos.kafka_delivery import Delivery
from raftmq.chaos.kafka_producer import KafkaWorker, producer_config
from raftmq.client import Admin, Consumer, DeliveryReport, Producer
from raftmq.cluster.errors import RaftMQError, TopicAlreadyExists
from raftmq.cluster.routing import partition_for
from raftmq.deploy.local_cluster import http_json

log = logging.getLogger("raftmq.chaos.workload")

# The history's process id for the consumer's polls (producer workers are 0, 1, ...).
CONSUMER_PROCESS: Final = 1000
_OUTCOMES: Final[dict[str, Outcome]] = {"ok": "ok", "failed": "fail", "unknown": "unknown"}


@dataclass(frozen=True)
class WorkloadConfig:
    acks: str = "all"
    topic: str = "chaos"
    partitions: int = limits.topic_partitions_default
    replication_factor: int = limits.topic_replication_factor_default
    min_insync_replicas: int = limits.topic_min_insync_replicas_default
    processes: int = limits.producer_processes_default  # the first half idempotent (acks=all only)
    rate: float = limits.send_rate_per_s_default  # sends per second, all workers together
    keys_per_partition: int = limits.keys_per_partition_default
    request_timeout_ms: int = limits.request_timeout_ms_default
    delivery_timeout_ms: int = limits.delivery_timeout_ms_default
    in_flight_max: int = limits.in_flight_sends_max  # unresolved sends per worker
    linger_ms: float = limits.linger_ms_default
    consumer: bool = True
    seed: int = 0
    client: str = "raftmq"  # the producers' client: "raftmq" (HTTP API) or "kafka" (confluent-kafka)

    @property
    def idempotent_processes(self) -> int:
        return self.processes - self.processes // 2


def choose_keys(partitions: int, per_partition: int) -> list[str]:
    """Keys k0, k1, ... picked (with the client's murmur2 routing) until every partition has ``per_partition``."""
    keys: list[str] = []
    counts = Counter[int]()
    for index in range(limits.key_candidates_max):
        key = f"k{index}"
        partition = partition_for(key.encode(), partitions)
        if counts[partition] < per_partition:
            counts[partition] += 1
            keys.append(key)
        if len(keys) == partitions * per_partition:
            return keys
    raise RuntimeError("could not find keys for every partition")


def _text(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


class Workload:
    """Producers + consumer for one run. ``clock()`` gives monotonic ms since the run started."""

    def __init__(self, config: WorkloadConfig, client_urls: list[str], clock: Callable[[], float], *,
                 kafka_bootstrap: str = "") -> None:
        if config.client not in ("raftmq", "kafka"):
            raise ValueError(f"client {config.client!r} is not 'raftmq' or 'kafka'")
        if config.client == "kafka" and not kafka_bootstrap:
            raise ValueError("client 'kafka' needs the brokers' Kafka bootstrap servers")
        self.config = config
        self.urls = list(client_urls)
        self.kafka_bootstrap = kafka_bootstrap
        self.clock = clock
        self.history = HistoryBuilder()
        self.keys = choose_keys(config.partitions, config.keys_per_partition)
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_ok: dict[int, tuple[float, int | None, int | None]] = {}  # partition -> (end_ms, leader, term)
        self.polled = 0
        self.poll_errors: Counter[str] = Counter()
        self._stop_producing = asyncio.Event()
        self._stop_consuming = asyncio.Event()

    # --- setup ------------------------------------------------------------------------------------------

    async def create_topic(self) -> None:
        """Create the topic (replication factor 3, min.insync.replicas 2) and wait until every partition leads."""
        cfg = self.config
        async with Admin(self.urls, request_timeout_ms=limits.admin_request_timeout_ms) as admin:
            deadline = time.monotonic() + limits.topic_create_deadline_s
            while True:
                try:
                    await admin.create_topic(cfg.topic, cfg.partitions, cfg.replication_factor,
                                             {"min_insync_replicas": cfg.min_insync_replicas})
                    break
                except TopicAlreadyExists:
                    break
                except RaftMQError as exc:
                    if time.monotonic() >= deadline or (exc.definite and not exc.retriable):
                        raise
                    await asyncio.sleep(limits.topic_create_retry_s)  # retry backoff while the metadata group elects
            await admin.wait_for_topic(cfg.topic, timeout_s=max(limits.topic_wait_s_min,
                                                                   deadline - time.monotonic()))

    # --- the run ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop issuing new sends (outstanding ones still resolve)."""
        self._stop_producing.set()

    def stop_consumer(self) -> None:
        self._stop_consuming.set()

    async def run_producers(self, duration_s: float) -> None:
        """Run every producer worker until ``duration_s`` has passed (or ``stop()``), then wait (bounded by the
        delivery timeout) until every send has its report."""
        end = time.monotonic() + duration_s
        idempotent = self.config.acks == "all"  # the producer refuses idempotence with acks 0 and 1
        worker = self._kafka_producer if self.config.client == "kafka" else self._producer
        workers = [asyncio.create_task(
            worker(w, idempotent and w < self.config.idempotent_processes, end, duration_s),
            name=f"chaos-producer-{w}") for w in range(self.config.processes)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _start_producer(self, producer: Producer, end: float) -> bool:
        while True:
            try:
                await producer.start()
                return True
            except RaftMQError as exc:
                self.errors[f"producer start: {exc.code}"] += 1
                if time.monotonic() >= end or self._stop_producing.is_set():
                    return False
                await asyncio.sleep(limits.producer_start_retry_s)  # retry backoff: the cluster may be faulted now

    async def _producer(self, worker: int, idempotent: bool, end: float, duration_s: float) -> None:
        cfg = self.config
        producer = Producer(self.urls, acks=cfg.acks, idempotent=idempotent, linger_ms=cfg.linger_ms,
                            request_timeout_ms=cfg.request_timeout_ms, delivery_timeout_ms=cfg.delivery_timeout_ms,
                            rng=random.Random(f"{cfg.seed}:{worker}:client"))
        if not await self._start_producer(producer, end):
            return

        async def send(key: str, value: str, start_ms: float, release: Callable[[], None]) -> None:
            try:
                future = await producer.send(cfg.topic, value, key=key)
            except RaftMQError as exc:  # nothing was queued: definitely not stored
                release()
                self._record(worker, idempotent, key, value, start_ms, None, exc)
                return
            future.add_done_callback(functools.partial(self._on_done, release, worker, idempotent, key, value,
                                                       start_ms))

        try:
            await self._send_paced(worker, end, duration_s, send)
        finally:
            await producer.stop(timeout_s=cfg.delivery_timeout_ms / 1000 + limits.producer_stop_grace_s)

    async def _kafka_producer(self, worker: int, idempotent: bool, end: float, duration_s: float) -> None:
        """The same worker with a confluent-kafka producer (chaos/kafka_producer.py): one report per send."""
        cfg = self.config
        config = producer_config(self.kafka_bootstrap, acks=cfg.acks, idempotent=idempotent, linger_ms=cfg.linger_ms,
                                 request_timeout_ms=cfg.request_timeout_ms,
                                 delivery_timeout_ms=cfg.delivery_timeout_ms, client_id=f"chaos-kafka-{worker}")
        sends = KafkaWorker(config, self.clock, functools.partial(self._record_delivery, worker, idempotent),
                            name=f"chaos-kafka-{worker}", topic=cfg.topic)
        try:
            await self._send_paced(worker, end, duration_s, sends.send)
        finally:
            await sends.stop()
            for name, count in sends.errors.items():
                self.errors[f"kafka client: {name}"] += count

    async def _send_paced(self, worker: int, end: float, duration_s: float,
                          send: Callable[[str, str, float, Callable[[], None]], Awaitable[None]]) -> None:
        """The worker's sends: unique values under seeded keys, paced at its share of the rate, bounded in count,
        in time and in unresolved sends (``send`` gets a ``release`` to call when the send's outcome is in)."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{worker}")
        interval = cfg.processes / cfg.rate
        count_max = int(cfg.rate / cfg.processes * duration_s * limits.send_count_headroom) + limits.send_count_slack
        slots = asyncio.Semaphore(cfg.in_flight_max)
        next_at = time.monotonic()
        for n in range(count_max):
            now = time.monotonic()
            if now >= end or self._stop_producing.is_set():
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)  # rate pacing
            next_at = max(next_at + interval, time.monotonic() - limits.send_catch_up_s_max)
            try:
                async with asyncio.timeout(max(0.0, end - time.monotonic())):
                    await slots.acquire()
            except TimeoutError:
                break
            key = self.keys[rng.randrange(len(self.keys))]
            value = f"p{worker}-{n}"
            self.counts["sent"] += 1
            await send(key, value, self.clock(), slots.release)

    def _on_done(self, release: Callable[[], None], worker: int, idempotent: bool, key: str, value: str,
                 start_ms: float, future: asyncio.Future[DeliveryReport]) -> None:
        release()
        self._on_report(worker, idempotent, key, value, start_ms, future)

    def _on_report(self, worker: int, idempotent: bool, key: str, value: str, start_ms: float,
                   future: asyncio.Future[DeliveryReport]) -> None:
        if future.cancelled():
            self._record(worker, idempotent, key, value, start_ms, None, None, unknown_reason="CANCELLED")
            return
        exc = future.exception()
        if exc is not None:  # never happens by the Producer's contract; if it does, the outcome is unknown
            self._record(worker, idempotent, key, value, start_ms, None, None,
                         unknown_reason=repr(exc)[: limits.unknown_reason_chars_max])
            return
        self._record(worker, idempotent, key, value, start_ms, future.result(), None)

    def _record(self, worker: int, idempotent: bool, key: str, value: str, start_ms: float,
                report: DeliveryReport | None, raised: RaftMQError | None, unknown_reason: str | None = None) -> None:
        end_ms = max(self.clock(), start_ms)
        outcome: Outcome
        if report is None:
            outcome = "unknown" if unknown_reason else "fail"
            error = unknown_reason or (raised.code if raised is not None else None)
            partition = offset = leader_id = leader_epoch = None
        else:
            outcome = _OUTCOMES[report.status]
            error = report.error.code if report.error is not None else None
            partition, offset = report.partition, report.offset
            leader_id, leader_epoch = report.leader_id, report.leader_epoch
        self._record_send(worker, idempotent, key, value, start_ms, end_ms, outcome, partition, offset, leader_id,
                          leader_epoch, error)

    def _record_delivery(self, worker: int, idempotent: bool, key: str, value: str, start_ms: float,
                         end_ms: float | None, outcome: Delivery) -> None:
        """A Kafka client's send (no acknowledging broker or term: its reports do not say)."""
        end_ms = max(self.clock() if end_ms is None else end_ms, start_ms)
        self._record_send(worker, idempotent, key, value, start_ms, end_ms, outcome.outcome, outcome.partition,
                          outcome.offset, None, None, outcome.error)

    def _record_send(self, worker: int, idempotent: bool, key: str, value: str, start_ms: float, end_ms: float,
                     outcome: Outcome, partition: int | None, offset: int | None, leader_id: int | None,
                     leader_epoch: int | None, error: str | None) -> None:
        cfg = self.config
        self.history.record_send(process=worker, idempotent=idempotent, acks=cast(Acks, cfg.acks), topic=cfg.topic,
                                 key=key,
                                 value=value, start_ms=start_ms, end_ms=end_ms, outcome=outcome,
                                 partition=partition, offset=offset, leader_id=leader_id,
                                 leader_epoch=leader_epoch, error=error)
        self.counts[outcome] += 1
        if error:
            self.errors[error] += 1
        if outcome == "ok" and partition is not None:
            self.last_ok[partition] = (end_ms, leader_id, leader_epoch)

    async def run_consumer(self) -> None:
        """Poll every partition from offset 0 until ``stop_consumer()``; record each poll per partition."""
        cfg = self.config
        consumer = Consumer(self.urls, max_wait_ms=limits.consumer_max_wait_ms,
                            request_timeout_ms=cfg.request_timeout_ms, auto_offset_reset="earliest",
                            rng=random.Random(f"{cfg.seed}:consumer"))
        consumer.assign([(cfg.topic, p) for p in range(cfg.partitions)])
        while not self._stop_consuming.is_set():
            try:
                await consumer.start()
                break
            except RaftMQError as exc:
                self.poll_errors[exc.code] += 1
                await asyncio.sleep(limits.consumer_start_retry_s)  # retry backoff
        else:
            return
        try:
            while not self._stop_consuming.is_set():
                start_ms = self.clock()
                try:
                    records = await consumer.poll(timeout_ms=limits.consumer_poll_timeout_ms)
                except RaftMQError as exc:
                    self.poll_errors[exc.code] += 1
                    await asyncio.sleep(limits.consumer_poll_retry_s)  # retry backoff after a paused partition's error
                    continue
                end_ms = self.clock()
                by_partition: dict[int, list[LogRecord]] = {}
                for record in records:
                    by_partition.setdefault(record.partition, []).append(
                        (record.offset, _text(record.key), _text(record.value)))
                for partition, rows in sorted(by_partition.items()):
                    self.history.record_poll(CONSUMER_PROCESS, cfg.topic, partition, start_ms, end_ms, rows)
                self.polled += len(records)
        finally:
            await consumer.stop()

    # --- after the faults -------------------------------------------------------------------------------

    def drain(self, leader_url: Callable[[int], str], replicas: dict[int, str], *,
              hosts: dict[int, list[int]] | None = None, timeout_s: float = limits.drain_deadline_s) -> dict[str, Any]:
        """Blocking (call from a thread). ``leader_url(partition)``: the current leader's direct URL (asked
        again when leadership moves during the drain); ``replicas``: broker id -> direct URL; ``hosts``:
        partition -> the brokers holding a replica (default: every broker in ``replicas``). Records
        ReadRecords and ReplicaLogs; returns counts."""
        cfg = self.config
        deadline = time.monotonic() + timeout_s
        summary: dict[str, Any] = {"leader_records": {}, "replica_records": {}}
        for partition in range(cfg.partitions):
            _start, rows = read_partition(functools.partial(leader_url, partition), cfg.topic, partition,
                                          replica=False, deadline=deadline)
            for offset, key, value in rows:
                self.history.record_read(cfg.topic, partition, offset, key, value)
            summary["leader_records"][partition] = len(rows)
        for broker_id, url in sorted(replicas.items()):
            for partition in range(cfg.partitions):
                if hosts is not None and broker_id not in hosts.get(partition, ()):
                    continue
                start, rows = read_partition(functools.partial(str, url), cfg.topic, partition, replica=True,
                                             deadline=deadline)
                self.history.record_replica(broker_id, cfg.topic, partition, start, rows)
                summary["replica_records"][f"{broker_id}/{partition}"] = len(rows)
        return summary

    def build(self) -> History:
        return self.history.build()


def read_partition(url_for: Callable[[], str], topic: str, partition: int, *, replica: bool, deadline: float
                   ) -> tuple[int, list[LogRecord]]:
    """Read one partition from its log start to the high watermark through the JSON fetch API, from
    ``url_for()`` (asked again after NOT_LEADER / LEADER_NOT_AVAILABLE: leadership may move meanwhile).
    Returns (log_start_offset, [(offset, key, value)]). Retries transient errors until ``deadline``."""
    rows: list[LogRecord] = []
    offset: int | None = None
    log_start = 0
    url = url_for()
    last_problem = ""
    while True:
        path = f"{url}/v1/topics/{quote(topic, safe='')}/partitions/{partition}/records"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"drain of {topic}/{partition} from {url} did not finish in time (at offset {offset};"
                               f" last problem: {last_problem or 'none'})")
        query = f"?offset={offset if offset is not None else 0}&max_bytes={limits.drain_page_bytes}"
        if replica:
            query += "&replica=any"
        try:
            status, body = http_json(path + query, timeout_s=limits.drain_request_timeout_s)
        except OSError as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
            log.warning("drain %s: %s", path, exc)
            time.sleep(limits.drain_retry_s)  # retry backoff
            url = url_for()
            continue
        if status != 200:
            code = ((body or {}).get("error") or {}).get("code") if isinstance(body, dict) else None
            if code == "OFFSET_OUT_OF_RANGE":
                details = (body["error"].get("details") or {})
                start = int(details.get("log_start_offset") or 0)
                end = int(details.get("log_end_offset") or 0)
                if offset is None or offset < start:
                    offset = start
                    log_start = start
                    continue
                if offset >= end:
                    return log_start, rows
            if code in ("LEADER_NOT_AVAILABLE", "BROKER_NOT_READY", "REQUEST_TIMED_OUT", "NOT_LEADER"):
                last_problem = str(code)
                time.sleep(limits.drain_retry_s)  # retry backoff
                url = url_for()
                continue
            raise RuntimeError(f"drain of {topic}/{partition} from {url}: HTTP {status} {body}")
        if offset is None:
            log_start = int(body.get("log_start_offset") or 0)
            offset = max(0, log_start)
            if offset > 0:
                continue  # re-read from the log start
        for record in body.get("records") or []:
            if record["offset"] >= offset:
                rows.append((int(record["offset"]), record.get("key"), record.get("value")))
        next_offset = int(body.get("next_offset", offset))
        high_watermark = int(body.get("high_watermark") or 0)
        if next_offset <= offset:
            if offset >= high_watermark:
                return log_start, rows
            raise RuntimeError(f"drain of {topic}/{partition} from {url} made no progress at offset {offset} "
                               f"(high watermark {high_watermark})")
        offset = next_offset
        if offset >= high_watermark:
            return log_start, rows
