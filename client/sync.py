"""Blocking wrappers for scripts: ``SyncProducer``, ``SyncConsumer``, ``SyncAdmin``.

Each wrapper owns ONE event loop running in a daemon thread, started by ``start()`` (or ``with``) and
stopped by ``stop()``; the async client lives on that loop. Every call takes ``timeout_s`` (default: the
client's own deadline plus a margin) and raises ``ClientTimeout`` when it passes, after cancelling the
coroutine on the loop. Errors are the async client's errors, re-raised in the calling thread.

Not for use from inside a running event loop (it would block it): use the async clients there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.group_consumer import GroupConsumer
from raftmq.client.metadata import BrokerInfo, ClusterMetadata, TopicInfo
from raftmq.client.producer import HeadersArg, Producer
from raftmq.client.types import ConsumerRecord, DeliveryReport, HealthInfo, ProducerCounters, TopicPartition
from raftmq.cluster.errors import ClientTimeout

__all__ = ["SyncAdmin", "SyncConsumer", "SyncGroupConsumer", "SyncProducer"]

T = TypeVar("T")
C = TypeVar("C", Producer, Consumer, GroupConsumer, Admin)

# Extra time a blocking call allows beyond the async client's own deadline (scheduling, thread hop).
sync_call_margin_s: Final = 5.0
# How long stop() waits for the loop thread to finish after the client stopped.
sync_thread_join_timeout_s: Final = 10.0


class _LoopThread:
    """An event loop in a daemon thread, with a deadline on every call into it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name=self._name, daemon=True)
        thread.start()
        if not ready.wait(sync_thread_join_timeout_s):
            raise RuntimeError("event loop thread did not start")
        self._loop, self._thread = loop, thread

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout_s: float) -> T:
        """Run ``factory()`` on the loop and wait up to ``timeout_s`` for its result.

        Raises: what the coroutine raises; ClientTimeout when the deadline passes (the coroutine is
        cancelled); RuntimeError when the loop is not running.
        """
        if self._loop is None or not self.running:
            raise RuntimeError("not started (call start() or use 'with')")
        future = asyncio.run_coroutine_threadsafe(factory(), self._loop)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ClientTimeout(f"call did not finish within {timeout_s} s") from None

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(sync_thread_join_timeout_s)
        self._loop = self._thread = None


class _SyncBase(Generic[C]):
    def __init__(self, client: C, name: str, client_timeout_s: float) -> None:
        self._client: C = client
        self._thread = _LoopThread(name)
        self._default_timeout_s = client_timeout_s + sync_call_margin_s
        self._started = False

    def _t(self, timeout_s: float | None) -> float:
        return self._default_timeout_s if timeout_s is None else timeout_s

    def start(self, timeout_s: float | None = None) -> None:
        """Start the loop thread and the async client. Raises what the client's ``start()`` raises."""
        if self._started:
            return
        self._thread.start()
        try:
            self._thread.call(self._client.start, self._t(timeout_s))
        except BaseException:
            try:
                with contextlib.suppress(Exception):
                    self._thread.call(self._client.stop, self._t(None))
            finally:
                self._thread.stop()
            raise
        self._started = True

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the async client, then the loop thread. Idempotent."""
        if not self._thread.running:
            return
        try:
            self._thread.call(self._client.stop, self._t(timeout_s))
        finally:
            self._thread.stop()
            self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class SyncProducer(_SyncBase[Producer]):
    """Blocking :class:`~client.producer.Producer`; takes the same arguments."""

    def __init__(self, bootstrap_urls: str | Iterable[str], **options: Any) -> None:
        client = Producer(bootstrap_urls, **options)
        super().__init__(client, "raftmq-sync-producer", client.delivery_timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        """Flush (up to the delivery timeout), fail what is left, stop. Idempotent."""
        super().stop(timeout_s)

    def send(self, topic: str, value: bytes | str | None, *, key: bytes | str | None = None,
             headers: HeadersArg = None, partition: int | None = None, timestamp_ms: int | None = None,
             timeout_s: float | None = None) -> concurrent.futures.Future[DeliveryReport]:
        """Queue a record; returns a ``concurrent.futures.Future`` of its DeliveryReport.

        Raises: what ``Producer.send`` raises; ClientTimeout if queueing (buffer space) took too long.
        """
        producer: Producer = self._client

        async def queue() -> concurrent.futures.Future[DeliveryReport]:
            report: concurrent.futures.Future[DeliveryReport] = concurrent.futures.Future()

            def deliver(result: DeliveryReport) -> None:
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # the caller cancelled it
                    report.set_result(result)

            await producer.send(topic, value, key=key, headers=headers, partition=partition,
                                timestamp_ms=timestamp_ms, on_delivery=deliver)
            return report

        return self._thread.call(queue, self._t(timeout_s))

    def send_and_wait(self, topic: str, value: bytes | str | None, *, key: bytes | str | None = None,
                      headers: HeadersArg = None, partition: int | None = None,
                      timestamp_ms: int | None = None, timeout_s: float | None = None) -> DeliveryReport:
        """Send and wait. Raises: the report's error unless ok; ClientTimeout after ``timeout_s``."""
        producer: Producer = self._client
        return self._thread.call(lambda: producer.send_and_wait(
            topic, value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp_ms),
            self._t(timeout_s))

    def flush(self, timeout_s: float | None = None) -> None:
        """Raises ClientTimeout when not everything resolved in time."""
        timeout = self._t(timeout_s)
        self._thread.call(lambda: self._client.flush(timeout), timeout + sync_call_margin_s)

    @property
    def counters(self) -> ProducerCounters:
        return self._client.counters  # a snapshot of ints; safe to read from another thread


class SyncConsumer(_SyncBase[Consumer]):
    """Blocking :class:`~client.consumer.Consumer`; takes the same arguments."""

    def __init__(self, bootstrap_urls: str | Iterable[str], **options: Any) -> None:
        client = Consumer(bootstrap_urls, **options)
        super().__init__(client, "raftmq-sync-consumer", client.request_timeout_s)

    def _on_loop(self, fn: Callable[[], T], timeout_s: float | None) -> T:
        async def run() -> T:
            return fn()

        return self._thread.call(run, self._t(timeout_s))

    def assign(self, partitions: Iterable[tuple[str, int]], *, timeout_s: float | None = None) -> None:
        items = list(partitions)
        self._on_loop(lambda: self._client.assign(items), timeout_s)

    def assignment(self) -> list[TopicPartition]:
        return self._on_loop(self._client.assignment, None)

    def seek(self, topic: str, partition: int, offset: int, *, timeout_s: float | None = None) -> None:
        self._on_loop(lambda: self._client.seek(topic, partition, offset), timeout_s)

    def seek_to_beginning(self, *partitions: tuple[str, int], timeout_s: float | None = None) -> None:
        self._thread.call(lambda: self._client.seek_to_beginning(*partitions), self._t(timeout_s))

    def seek_to_end(self, *partitions: tuple[str, int], timeout_s: float | None = None) -> None:
        self._thread.call(lambda: self._client.seek_to_end(*partitions), self._t(timeout_s))

    def position(self, topic: str, partition: int, *, timeout_s: float | None = None) -> int:
        return self._thread.call(lambda: self._client.position(topic, partition), self._t(timeout_s))

    def poll(self, timeout_ms: int = 1000, max_records: int = 500) -> list[ConsumerRecord]:
        """Raises what ``Consumer.poll`` raises."""
        return self._thread.call(lambda: self._client.poll(timeout_ms, max_records),
                                 timeout_ms / 1000.0 + sync_call_margin_s)

    def end_offsets(self, partitions: Iterable[tuple[str, int]], *,
                    timeout_s: float | None = None) -> dict[TopicPartition, int]:
        items = list(partitions)
        return self._thread.call(lambda: self._client.end_offsets(items), self._t(timeout_s))

    def beginning_offsets(self, partitions: Iterable[tuple[str, int]], *,
                          timeout_s: float | None = None) -> dict[TopicPartition, int]:
        items = list(partitions)
        return self._thread.call(lambda: self._client.beginning_offsets(items), self._t(timeout_s))

    def offsets_for_times(self, timestamps_ms: Mapping[tuple[str, int], int], *,
                          timeout_s: float | None = None) -> dict[TopicPartition, int | None]:
        items = dict(timestamps_ms)
        return self._thread.call(lambda: self._client.offsets_for_times(items), self._t(timeout_s))


class SyncGroupConsumer(_SyncBase[GroupConsumer]):
    """Blocking :class:`~client.group_consumer.GroupConsumer`; takes the same arguments (callbacks run on the
    wrapper's loop thread)."""

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, **options: Any) -> None:
        client = GroupConsumer(bootstrap_urls, group_id, **options)
        super().__init__(client, "raftmq-sync-group-consumer",
                         max(client.consumer.request_timeout_s, client.session_timeout_ms / 1000))

    def poll(self, timeout_ms: int = 1000, max_records: int = 500) -> list[ConsumerRecord]:
        """Raises what ``GroupConsumer.poll`` raises."""
        return self._thread.call(lambda: self._client.poll(timeout_ms, max_records),
                                 timeout_ms / 1000.0 + self._default_timeout_s)

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "",
               timeout_s: float | None = None) -> int:
        """Commit and wait (see ``GroupConsumer.commit``)."""
        return self._thread.call(lambda: self._client.commit(offsets, metadata=metadata), self._t(timeout_s))

    def commit_async(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "",
                     callback: Callable[[int | None, Any], None] | None = None) -> None:
        """Start a commit and return; ``callback(committed, error)`` runs on the loop thread."""

        async def start() -> None:
            self._client.commit_async(offsets, metadata=metadata, callback=callback)

        self._thread.call(start, self._t(None))

    def committed(self, *, timeout_s: float | None = None) -> dict[TopicPartition, int]:
        return self._thread.call(lambda: self._client.committed(), self._t(timeout_s))

    def assignment(self) -> list[TopicPartition]:
        async def read() -> list[TopicPartition]:
            return self._client.assignment()

        return self._thread.call(read, self._t(None))

    def seek(self, topic: str, partition: int, offset: int, *, timeout_s: float | None = None) -> None:
        async def seek() -> None:
            self._client.seek(topic, partition, offset)

        self._thread.call(seek, self._t(timeout_s))


class SyncAdmin(_SyncBase[Admin]):
    """Blocking :class:`~client.admin.Admin`; takes the same arguments."""

    def __init__(self, bootstrap_urls: str | Iterable[str], **options: Any) -> None:
        client = Admin(bootstrap_urls, **options)
        super().__init__(client, "raftmq-sync-admin", client.request_timeout_s)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                     config: Mapping[str, Any] | None = None, *, timeout_s: float | None = None) -> TopicInfo:
        return self._thread.call(
            lambda: self._client.create_topic(name, partitions, replication_factor, config),
            self._t(timeout_s))

    def delete_topic(self, name: str, *, timeout_s: float | None = None) -> None:
        self._thread.call(lambda: self._client.delete_topic(name), self._t(timeout_s))

    def list_topics(self, *, timeout_s: float | None = None) -> list[TopicInfo]:
        return self._thread.call(self._client.list_topics, self._t(timeout_s))

    def describe_topic(self, name: str, *, timeout_s: float | None = None) -> TopicInfo:
        return self._thread.call(lambda: self._client.describe_topic(name), self._t(timeout_s))

    def wait_for_topic(self, name: str, *, timeout_s: float = 10.0) -> TopicInfo:
        return self._thread.call(lambda: self._client.wait_for_topic(name, timeout_s=timeout_s),
                                 timeout_s + sync_call_margin_s)

    def metadata(self, *, url: str | None = None, timeout_s: float | None = None) -> ClusterMetadata:
        return self._thread.call(lambda: self._client.metadata(url=url), self._t(timeout_s))

    def health(self, url: str | None = None, *, timeout_s: float | None = None) -> HealthInfo:
        return self._thread.call(lambda: self._client.health(url), self._t(timeout_s))

    def _outer(self, timeout_s: float | None) -> float:
        """The thread call's deadline when the async call gets ``timeout_s`` itself: later by the margin, so
        the async client's own ClientTimeout (which names what it waited for) is the one raised."""
        return self._t(None) if timeout_s is None else timeout_s + sync_call_margin_s

    def controller_metadata(self, *, timeout_s: float | None = None) -> ClusterMetadata:
        return self._thread.call(lambda: self._client.controller_metadata(timeout_s=timeout_s), self._outer(timeout_s))

    def alter_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                    *, timeout_s: float | None = None) -> TopicInfo:
        return self._thread.call(lambda: self._client.alter_topic(name, partitions, replication_factor,
                                                                  timeout_s=timeout_s), self._outer(timeout_s))

    def drain_broker(self, broker_id: int, *, timeout_s: float | None = None) -> BrokerInfo:
        return self._thread.call(lambda: self._client.drain_broker(broker_id, timeout_s=timeout_s),
                                 self._outer(timeout_s))

    def cancel_drain(self, broker_id: int, *, timeout_s: float | None = None) -> BrokerInfo | None:
        return self._thread.call(lambda: self._client.cancel_drain(broker_id, timeout_s=timeout_s),
                                 self._outer(timeout_s))

    def wait_for_drain(self, broker_id: int, *, timeout_s: float) -> ClusterMetadata:
        return self._thread.call(lambda: self._client.wait_for_drain(broker_id, timeout_s=timeout_s),
                                 timeout_s + sync_call_margin_s)

    def wait_for_moves(self, topic: str, *, timeout_s: float, partitions: int | None = None,
                       replication_factor: int | None = None) -> ClusterMetadata:
        return self._thread.call(lambda: self._client.wait_for_moves(
            topic, timeout_s=timeout_s, partitions=partitions, replication_factor=replication_factor),
            timeout_s + sync_call_margin_s)
