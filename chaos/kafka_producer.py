"""One chaos producer worker's Kafka client (``--client kafka``): a confluent-kafka (librdkafka) Producer
talking to the brokers' Kafka-protocol listeners through their fault proxies (``KafkaSender``), and the
worker's sends on it (``KafkaWorker``: one history entry per send, whatever happens).

librdkafka sends from its own threads and hands delivery reports to whoever calls ``poll()``; here that is
the sender's own thread, which takes the report's end time at once and passes the report to the event loop
(``call_soon_threadsafe``), where the workload records it: the history is only touched on the loop.
``produce()`` itself only queues and is called on the loop. ``stop()`` flushes (bounded by the delivery
timeout, after which librdkafka has reported every message) and joins the thread (bounded).

The producer's settings: ``acks`` as the run's level; idempotence as the worker's; ``message.timeout.ms`` =
the workload's delivery timeout and ``request.timeout.ms`` its request timeout, so outcomes resolve during
the run; Kafka's murmur2 partitioner (``murmur2_random``), which is raftmq's own key routing bit for bit, so
the workload's keys land on the partitions it chose them for; reconnect and retry backoffs bounded
(chaos/limits.py). confluent-kafka is an optional dependency (extra ``kafka``), imported when a sender is
made.

A fatal librdkafka error (an idempotence failure it cannot recover from) leaves a producer refusing every
message; the worker then does what an application does: it stops that producer, records what it never
reported as ``unknown``, counts the error, and starts a new one, so the run keeps its load.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from raftmq.chaos import limits
from raftmq.chaos.kafka_delivery import NO_REPORT, Delivery, delivery, refused

log = logging.getLogger("raftmq.chaos.kafka_producer")
_LIBRDKAFKA_LOG = logging.getLogger("raftmq.chaos.librdkafka")

# (end_ms, error name or None, partition, offset) -> recorded by the workload on the event loop.
ReportCallback = Callable[[float, str | None, int | None, int | None], None]


class KafkaClientMissing(RuntimeError):
    """confluent-kafka is not installed: ``--client kafka`` cannot run."""


def import_confluent_kafka() -> ModuleType:
    try:
        import confluent_kafka
    except ImportError:
        raise KafkaClientMissing("the Kafka client workload needs the confluent-kafka package: "
                                 "pip install 'raftmq[kafka]' (or confluent-kafka)") from None
    return confluent_kafka


def producer_config(bootstrap: str, *, acks: str, idempotent: bool, linger_ms: float, request_timeout_ms: int,
                    delivery_timeout_ms: int, client_id: str) -> dict[str, Any]:
    """librdkafka's settings for one worker (the module docstring says why each)."""
    return {
        "bootstrap.servers": bootstrap, "client.id": client_id,
        "acks": "all" if acks == "all" else acks, "enable.idempotence": idempotent,
        "linger.ms": linger_ms, "request.timeout.ms": request_timeout_ms,
        "message.timeout.ms": delivery_timeout_ms, "partitioner": "murmur2_random",
        "reconnect.backoff.ms": limits.kafka_reconnect_backoff_ms,
        "reconnect.backoff.max.ms": limits.kafka_reconnect_backoff_max_ms,
        "retry.backoff.ms": limits.kafka_retry_backoff_ms,
        "retry.backoff.max.ms": limits.kafka_retry_backoff_max_ms,
        "socket.connection.setup.timeout.ms": limits.kafka_connection_setup_timeout_ms,
    }


class KafkaSender:
    """A started Producer plus the thread that polls it. ``send`` on the event loop; reports come back to
    ``on_report`` on the loop, once per message that ``send`` queued."""

    def __init__(self, config: dict[str, Any], clock: Callable[[], float], name: str) -> None:
        self._kafka = import_confluent_kafka()
        # librdkafka's own log lines (connection drops are routine under faults) go to Python logging, not stderr.
        self._config = {**config, "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
        self._clock = clock
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._producer: Any = self._kafka.Producer(self._config)
        self._stopping = threading.Event()
        self._flushed: asyncio.Future[int] = self._loop.create_future()
        self._thread = threading.Thread(target=self._poll_loop, name=name, daemon=True)
        self._thread.start()
        # librdkafka's client-wide errors (all brokers down, a fatal idempotence error), counted by name.
        self.errors: dict[str, int] = {}
        self.fatal = False  # a fatal error happened: this producer refuses every message from now on

    def send(self, topic: str, key: str, value: str, on_report: ReportCallback) -> str | None:
        """Queue one message; None, or the error name when ``produce()`` refused it (nothing was queued)."""
        try:
            self._producer.produce(topic, value=value.encode(), key=key.encode(),
                                   on_delivery=functools.partial(self._delivered, on_report))
        except BufferError:
            return "_QUEUE_FULL"
        except self._kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            return str(error.name()) if error is not None and hasattr(error, "name") else "_FAIL"
        return None

    def _delivered(self, on_report: ReportCallback, error: Any, message: Any) -> None:
        """On the sender's thread, inside poll()/flush()."""
        end_ms = self._clock()
        name = None if error is None else str(error.name())
        self._loop.call_soon_threadsafe(on_report, end_ms, name, message.partition(), message.offset())

    def _on_error(self, error: Any) -> None:
        name = str(error.name())
        fatal = bool(error.fatal())
        if fatal:
            log.warning("%s: fatal Kafka client error %s: %s", self._name, name, error.str())
        self._loop.call_soon_threadsafe(self._count_error, name, fatal)

    def _count_error(self, name: str, fatal: bool = False) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        self.fatal = self.fatal or fatal

    def _poll_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._producer.poll(limits.kafka_poll_s)
            remaining = int(self._producer.flush(self._flush_timeout_s))
        except Exception as exc:  # noqa: BLE001 - whatever is left unreported is recorded unknown by the caller
            log.exception("%s: poll loop failed", self._name)
            self._loop.call_soon_threadsafe(self._set_flushed, -1, exc)
            return
        self._loop.call_soon_threadsafe(self._set_flushed, remaining, None)

    def _set_flushed(self, remaining: int, exc: BaseException | None) -> None:
        if not self._flushed.done():
            self._flushed.set_result(remaining)
        if exc is not None:
            self._count_error(f"POLL_LOOP_FAILED: {type(exc).__name__}")

    @property
    def _flush_timeout_s(self) -> float:
        return float(self._config["message.timeout.ms"]) / 1000 + limits.producer_stop_grace_s

    async def stop(self) -> int:
        """Flush what is queued (librdkafka reports every message within its delivery timeout), stop the thread.
        Returns how many messages were still unreported (-1: the poll loop failed)."""
        self._stopping.set()
        try:
            async with asyncio.timeout(self._flush_timeout_s + limits.kafka_sender_join_s):
                remaining = await asyncio.shield(self._flushed)
        except TimeoutError:
            remaining = -1
        await asyncio.to_thread(self._thread.join, limits.kafka_sender_join_s)
        return remaining


class KafkaWorker:
    """A worker's sends on a ``KafkaSender``: each becomes exactly one ``record(key, value, start_ms, end_ms,
    Delivery)`` call (``end_ms`` None: now), from its delivery report, from ``produce()`` refusing it, or,
    when its sender stopped without reporting it, as ``unknown``. Its ``release`` is called with the record.
    Event loop only."""

    def __init__(self, config: dict[str, Any], clock: Callable[[], float],
                 record: Callable[[str, str, float, float | None, Delivery], None], *, name: str, topic: str,
                 sender_factory: Callable[[dict[str, Any], Callable[[], float], str], KafkaSender] = KafkaSender
                 ) -> None:
        self._config = config
        self._clock = clock
        self._record = record
        self._name = name
        self._topic = topic
        self._new_sender = sender_factory
        self._generation = 0
        self._sender = sender_factory(config, clock, name)
        # value -> (key, start_ms, release, the sender generation that queued it)
        self._pending: dict[str, tuple[str, float, Callable[[], None], int]] = {}
        self.errors: dict[str, int] = {}

    async def send(self, key: str, value: str, start_ms: float, release: Callable[[], None]) -> None:
        if self._sender.fatal:
            await self._replace_sender()
        self._pending[value] = (key, start_ms, release, self._generation)
        problem = self._sender.send(self._topic, key, value, functools.partial(self._on_report, value))
        if problem is not None:  # produce() refused it: nothing was queued
            self._settle(value, None, refused(problem))

    def _on_report(self, value: str, end_ms: float, error: str | None, partition: int | None,
                   offset: int | None) -> None:
        if value in self._pending:
            self._settle(value, end_ms, delivery(error, partition, offset))

    def _settle(self, value: str, end_ms: float | None, outcome: Delivery) -> None:
        key, start_ms, release, _generation = self._pending.pop(value)
        release()
        self._record(key, value, start_ms, end_ms, outcome)

    async def _replace_sender(self) -> None:
        self.errors["PRODUCER_RESTARTED_AFTER_FATAL_ERROR"] = self.errors.get("PRODUCER_RESTARTED_AFTER_FATAL_ERROR",
                                                                              0) + 1
        await self._retire()
        self._generation += 1
        self._sender = self._new_sender(self._config, self._clock, f"{self._name}.{self._generation}")

    async def _retire(self) -> None:
        """Stop the current sender; what it never reported is ``unknown``."""
        unreported = await self._sender.stop()
        for name, count in self._sender.errors.items():
            self.errors[name] = self.errors.get(name, 0) + count
        left = [value for value, row in self._pending.items() if row[3] == self._generation]
        if left:
            log.warning("%s: %d sends without a delivery report (flush left %d)", self._name, len(left), unreported)
        for value in left:
            self._settle(value, None, Delivery("unknown", None, None, NO_REPORT))

    async def stop(self) -> None:
        await self._retire()
