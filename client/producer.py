"""The producer: batching, ordered delivery per partition, retries, idempotence, and honest outcomes.

Data path::

    send() --(bounded byte buffer, waits up to the delivery deadline)--> per-partition accumulator
        open batch (linger_ms / batch_bytes) -> sealed batches -> ONE request in flight per partition

* ``send()`` does little per record: normalise the bytes, pick the partition, reserve buffer bytes,
  append a tuple and create one future (with ``on_delivery``, none: the callback is called directly when
  the batch resolves, saving the future and its scheduled callback per record). No task per record; a
  batch is encoded once (``encode_batch``) when its partition's sender takes it, and resent as the same
  bytes on every retry.
* Each partition used gets one sender task (started on first use, cancelled and awaited by ``stop()``).
  It keeps ONE produce request in flight: HTTP has no per-connection ordering, so this is what keeps a
  partition's records in send order. While a request is in flight the next batch keeps filling, so batches
  grow with latency (adaptive batching); linger only applies while the partition is idle.
* Partition choice: explicit ``partition``; else ``partition_for(key)`` for keyed records (murmur2, as the
  broker and Kafka); else "sticky": keyless records go to one partition per topic until its batch is
  sealed or taken, then to the next (round robin over batches, not records).

Outcomes (every send future resolves, or its ``on_delivery`` callback is called, exactly once, with a
:class:`DeliveryReport`):

* ``ok`` on a success answer, or on ``DUPLICATE_SEQUENCE`` (stored earlier; ``offset`` None).
* ``unknown`` when ANY attempt of the batch ended with an indefinite error (``definite=False``: timeouts,
  dropped connections, ``OUTCOME_UNKNOWN``, ``NOT_ENOUGH_REPLICAS_AFTER_APPEND`` ...) and no later attempt
  succeeded, even if a later attempt got a definite error.
* ``failed`` otherwise: every attempt got a definite error, or the batch was never sent (its delivery
  deadline passed in the queue, or the producer stopped first). A connect failure (``sent=False``) is
  definite: the request never left the client.

Retries: only errors flagged ``retriable``, with capped exponential backoff and jitter
(``retry_backoff_ms`` .. ``limits.client_retry_backoff_ms_max``), until the batch's delivery deadline
(``delivery_timeout_ms`` after its first record's ``send()``). ``NOT_LEADER`` re-routes at once to the
leader its details name; errors flagged ``refresh_metadata`` refresh the cluster view first. A leader
that neither answers nor refuses (paused, cut off) is found out without waiting for the request timeout:
while a request (acks 1 or all) waits longer than ``limits.client_leader_probe_after_ms``, the other
brokers are asked for the partition's leader every ``limits.client_leader_probe_interval_ms``; once they
name a newer one, the request is abandoned (its outcome stays unknown) and the same bytes are sent there
(with idempotence the same sequence: stored once).

Idempotence (default on): ``start()`` gets a producer id (``POST /v1/producers``). Each partition numbers
its records from 0 (``base_sequence`` = records this producer id sent to the partition before); a retry
resends the same bytes, so the broker stores the batch once (a ``duplicate: true`` answer carries the
original offset). Partition "sessions" are reset, i.e. the partition moves to the producer's newest id
(allocating a new one if it already uses the newest) and restarts its sequence at 0:

* after an encoded batch of that partition ended ``failed`` or ``unknown``: its sequence numbers may or
  may not be stored, so continuing would answer ``OUT_OF_ORDER_SEQUENCE`` or hide a gap. The reset
  happens lazily, when the partition's next batch is encoded.
* on ``OUT_OF_ORDER_SEQUENCE`` or ``UNKNOWN_PRODUCER_ID``: if every attempt of the batch so far was
  definite (so it is certainly not stored) the batch is re-encoded under the new id with sequence 0 and
  retried (new bytes, but nothing to duplicate). Otherwise it ends ``unknown`` and the next batch resets.
* when a partition's sequence would overflow int32.

With ``producer_name``, every new producer id is allocated under that name, and the cluster fences the
older ids of the name (PRODUCER_FENCED): a batch of this producer still under an id it renewed itself is
renumbered like above; a PRODUCER_FENCED for its newest id means another instance started with the same
name, and this producer stops: that batch and every later one fail with ``ProducerFenced``.

What happens to in-flight batches on a reset: nothing. A partition has at most one batch in flight, and
it is the one that caused the reset; batches of OTHER partitions keep their producer id, sequences and
bytes (ids are per partition state, so a reset on one partition never renumbers another's batches).
Queued batches of the reset partition are not encoded yet and simply get numbers under the new id.

Idempotence needs ``acks="all"`` (as in Kafka): the broker decides "append, duplicate or gap" when the
entry is applied, after commit, so an acks=0/1 answer cannot tell the producer whether its sequence was
accepted; a batch acked that way could still be refused at apply (e.g. after a lost predecessor) and never
stored. ``idempotent=None`` (the default) means on for acks=all and off otherwise; asking for it with
acks 0 or 1 is an error, and the broker refuses such batches too. With ``acks=0``/``1`` an ``ok`` report
carries no offset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, overload
from urllib.parse import quote

from raftmq.client.connection import (
    AsyncLifecycle,
    ByteBudget,
    Connection,
    MetadataFetcher,
    attempt_was_definite,
    backoff_s,
)
from raftmq.client.metadata import ClusterView
from raftmq.client.types import AcksSetting, DeliveryReport, ProducerCounters
from raftmq.cluster import limits
from raftmq.cluster.batch import BATCH_HEADER_BYTES, encode_batch
from raftmq.cluster.errors import (
    BufferExhausted,
    ClientTimeout,
    ConnectionFailed,
    DuplicateSequence,
    InvalidAcks,
    LeaderNotAvailable,
    NotLeader,
    OutOfOrderSequence,
    ProducerClosed,
    ProducerFenced,
    RaftMQError,
    RecordTooLarge,
    UnexpectedResponse,
    UnknownProducerId,
    UnknownTopicOrPartition,
)
from raftmq.cluster.routing import partition_for

__all__ = ["Producer", "DeliveryReport", "ProducerCounters"]

log = logging.getLogger("raftmq.client.producer")

_SEQUENCE_MAX: Final = 2**31 - 1
# Upper bound of the overhead of one record in a RecordBatch v2 body: varint length (5) + attributes (1) +
# timestamp delta varlong (10) + offset delta varint (5) + key and value lengths (5 + 5) + header count (5);
# each header adds its key and value lengths (5 + 5).
_RECORD_OVERHEAD_BYTES: Final = 36
_HEADER_OVERHEAD_BYTES: Final = 10
_BATCH_OVERHEAD_BYTES: Final = BATCH_HEADER_BYTES

HeadersArg = Mapping[str, bytes | str | None] | Iterable[tuple[str, bytes | str | None]] | None
_Record = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...], int]
_new_tuple = tuple.__new__
# What a queued record reports to: its future, or the caller's on_delivery callback.
DeliveryCallback = Callable[[DeliveryReport], object]
_Waiter = asyncio.Future[DeliveryReport] | DeliveryCallback


def _checked_extras(headers: HeadersArg, timestamp_ms: int | None, size: int
                    ) -> tuple[tuple[tuple[str, bytes | None], ...], int, int]:
    """Headers and timestamp of a record as send() stores them, and the record's estimated size in the batch
    (``size``: key and value bytes). Raises TypeError/ValueError for bad arguments, RecordTooLarge."""
    hdrs = _to_headers(headers) if headers else ()
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    elif type(timestamp_ms) is not int or not 0 <= timestamp_ms <= limits.timestamp_ms_max:
        raise ValueError("timestamp_ms must be an int in [0, 2**63)")
    if hdrs:
        size += sum(len(n) + (len(v) if v is not None else 0) for n, v in hdrs)
    if size > limits.record_bytes_max:
        raise RecordTooLarge("record too large", size_bytes=size, size_bytes_max=limits.record_bytes_max)
    return hdrs, timestamp_ms, size + _RECORD_OVERHEAD_BYTES + _HEADER_OVERHEAD_BYTES * len(hdrs)


def _to_bytes(value: Any, what: str) -> bytes | None:
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, str or None, not {type(value).__name__}")


def _to_headers(headers: HeadersArg) -> tuple[tuple[str, bytes | None], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError("header names must be str")
        out.append((name, _to_bytes(value, "header value")))
    if len(out) > limits.headers_per_record_max:
        raise RecordTooLarge("too many headers", headers=len(out), headers_max=limits.headers_per_record_max)
    return tuple(out)


def _normalize_acks(acks: AcksSetting | str) -> int | str:
    if acks in ("all", -1, "-1"):
        return "all"
    if acks in (0, 1, "0", "1"):
        return int(acks)
    raise InvalidAcks(f"acks must be 0, 1 or 'all', not {acks!r}")


def _report(waiter: _Waiter, report: DeliveryReport) -> None:
    """Hand a record's report to its future or on_delivery callback; a callback's error stays its own."""
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():  # the caller may have cancelled it
            waiter.set_result(report)
        return
    try:
        waiter(report)
    except Exception:
        log.exception("on_delivery callback %r raised; the record's report was %s", waiter, report.status)


class _Batch:
    """Records for one partition, sent together. Mutable; owned by the producer's event loop."""

    __slots__ = (
        "topic", "partition", "records", "waiters", "size_bytes", "created_s",
        "deadline_s", "encoded", "producer_id", "base_sequence", "attempts", "indefinite_error", "in_flight",
        "resolved", "done",
    )

    def __init__(self, topic: str, partition: int, now_s: float, deadline_s: float,
                 done: asyncio.Future[None]) -> None:
        self.topic = topic
        self.partition = partition
        self.records: list[_Record] = []
        self.waiters: list[_Waiter] = []
        self.size_bytes = _BATCH_OVERHEAD_BYTES
        self.created_s = now_s
        self.deadline_s = deadline_s
        self.encoded: bytes | None = None
        self.producer_id = -1
        self.base_sequence = -1
        self.attempts = 0
        self.indefinite_error: RaftMQError | None = None
        self.in_flight = False
        self.resolved = False
        self.done = done


@dataclasses.dataclass
class _Attempt:
    """Where one batch's delivery stands between its attempts."""

    path: str
    last_error: RaftMQError | None = None
    retry: int = 0  # retries so far (drives the backoff)
    reroute_url: str | None = None  # send the next attempt here (a NOT_LEADER answer named it)
    not_leader_streak: int = 0
    renumbered: int = 0  # times this batch was re-encoded under a new producer id


class _PartitionState:
    """Accumulator, sender task and idempotence state of one partition."""

    __slots__ = ("topic", "partition", "open", "sealed", "in_flight", "wake", "task", "producer_id",
                 "next_sequence", "needs_reset")

    def __init__(self, topic: str, partition: int, producer_id: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: _Batch | None = None
        self.sealed: collections.deque[_Batch] = collections.deque()
        self.in_flight: _Batch | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.producer_id = producer_id
        self.next_sequence = 0
        self.needs_reset = False

    def unresolved(self) -> list[_Batch]:
        batches = [b for b in (self.in_flight, *self.sealed, self.open) if b is not None and not b.resolved]
        return batches


def retry_pause_s(retry: int, *, base_ms: int, max_ms: int, leaderless: bool, rng: random.Random) -> float:
    """The backoff before retry ``retry``; while the partition is between leaders, never longer than
    ``limits.client_leader_retry_backoff_ms_max`` (the new leader is usually one election away)."""
    if leaderless:
        max_ms = min(max_ms, limits.client_leader_retry_backoff_ms_max)
    return backoff_s(retry, base_ms=min(base_ms, max_ms), max_ms=max_ms, rng=rng)


class Producer(AsyncLifecycle):
    """An asyncio producer. Use ``async with Producer([...]) as p:`` or ``start()``/``stop()``.

    Args:
        bootstrap_urls: one or more broker client URLs (``http://host:port``).
        acks: ``"all"`` (default; offsets in reports), ``1`` or ``0`` (no offsets; see docs/api.md).
        idempotent: number batches so retries are stored once. Default (None): on with acks="all", off
            with acks 0 and 1; True with acks 0 or 1 raises ValueError (see the module docstring).
        linger_ms: how long an idle partition's first record waits for company before sending.
        batch_bytes: seal a batch at this estimated size (<= ``limits.batch_bytes_max``).
        buffer_bytes: records waiting or in flight, in estimated bytes; ``send()`` waits for room.
        request_timeout_ms: deadline of one produce request (the broker's ``timeout_ms`` is a bit less).
        delivery_timeout_ms: deadline of a send, from ``send()`` to its report, retries included.
        retry_backoff_ms: first retry backoff; doubles per retry up to ``limits.client_retry_backoff_ms_max``.
        metadata_max_age_ms: refresh the cluster view when older than this.
        producer_name: a stable name for an idempotent producer (like Kafka's transactional.id): when a new
            producer starts with the same name, this one is fenced (its sends fail with PRODUCER_FENCED,
            nothing of them stored), so two instances of one service can never interleave writes.
        rng: randomness for jitter and the first sticky partition (inject a seeded one in tests).

    Raises:
        ValueError: an option is out of range. InvalidAcks: bad ``acks``.
    """

    def __init__(
        self,
        bootstrap_urls: str | Iterable[str],
        *,
        acks: AcksSetting | str = "all",
        idempotent: bool | None = None,
        linger_ms: float = limits.client_linger_ms_default,
        batch_bytes: int = limits.client_batch_bytes_default,
        buffer_bytes: int = limits.client_buffer_bytes_default,
        request_timeout_ms: int = limits.client_request_timeout_ms_default,
        delivery_timeout_ms: int = limits.client_delivery_timeout_ms_default,
        retry_backoff_ms: int = limits.client_retry_backoff_ms_default,
        retry_backoff_ms_max: int = limits.client_retry_backoff_ms_max,
        metadata_max_age_ms: int = limits.client_metadata_max_age_ms,
        producer_name: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(bootstrap_urls, str):
            bootstrap_urls = [bootstrap_urls]
        if linger_ms < 0:
            raise ValueError("linger_ms must be >= 0")
        if not _BATCH_OVERHEAD_BYTES < batch_bytes <= limits.batch_bytes_max:
            raise ValueError(f"batch_bytes must be in ({_BATCH_OVERHEAD_BYTES}, {limits.batch_bytes_max}]")
        if buffer_bytes < batch_bytes:
            raise ValueError("buffer_bytes must be >= batch_bytes")
        if delivery_timeout_ms <= 0 or request_timeout_ms <= 0 or retry_backoff_ms < 0:
            raise ValueError("timeouts must be > 0 and retry_backoff_ms >= 0")
        self.acks = _normalize_acks(acks)
        if idempotent is None:
            idempotent = self.acks == "all"
        elif idempotent and self.acks != "all":
            raise ValueError("an idempotent producer needs acks='all': with acks 0 or 1 the broker answers before "
                             "it decides whether the batch's sequence is accepted")
        self.idempotent = idempotent
        if producer_name is not None and not idempotent:
            raise ValueError("producer_name needs an idempotent producer (acks='all')")
        self.producer_name = producer_name
        self.linger_s = linger_ms / 1000.0
        self.batch_bytes = batch_bytes
        self.buffer_bytes = buffer_bytes
        self.request_timeout_s = request_timeout_ms / 1000.0
        self.delivery_timeout_s = delivery_timeout_ms / 1000.0
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_ms_max = max(retry_backoff_ms, retry_backoff_ms_max)
        self._rng = rng if rng is not None else random.Random()
        self._view = ClusterView(list(bootstrap_urls), max_age_ms=metadata_max_age_ms)
        self._conn = Connection(request_timeout_ms=request_timeout_ms)
        self._fetcher = MetadataFetcher(self._conn, self._view)
        self._buffer = ByteBudget(buffer_bytes)
        self._partitions: dict[tuple[str, int], _PartitionState] = {}
        self._sticky: dict[str, int] = {}
        self._key_partitions: dict[tuple[bytes, int], int] = {}
        self._producer_id = -1
        self._producer_epoch = -1
        self._fenced: ProducerFenced | None = None  # set once a newer instance of producer_name fenced us
        self._pid_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._flushing = 0
        # counters
        self._sent = self._acked = self._failed = self._unknown = 0
        self._retries = self._batches = self._requests = self._resets = 0

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch metadata and (idempotent) a producer id. Deadline: ``request_timeout_ms``.

        Raises:
            ConnectionFailed / ClientTimeout: no bootstrap broker answered in time.
            ProducerClosed: the producer was stopped before.
            RaftMQError: a broker refused to allocate a producer id.
        """
        if self._closing or self._closed:
            raise ProducerClosed("producer was stopped; create a new one")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        try:
            await self._fetcher.refresh(timeout_s=self.request_timeout_s)
            if self.idempotent:
                deadline = time.monotonic() + self.request_timeout_s
                self._producer_id = await self._allocate_producer_id(deadline)
        except BaseException:
            await self._conn.close()
            self._closed = True
            raise
        self._started = True

    async def stop(self, timeout_s: float | None = None) -> None:
        """Flush, then fail what is left, then close. Idempotent.

        Waits up to ``timeout_s`` (default ``delivery_timeout_ms``; every batch ends by its own delivery
        deadline anyway) for queued and in-flight batches. After that, sender tasks are cancelled: a batch
        with a request in flight (or an earlier indefinite attempt) resolves ``unknown``; every other
        batch resolves ``failed`` with ``ProducerClosed``. Concurrent ``send()`` calls waiting for buffer
        space raise ``ProducerClosed``. When ``stop()`` returns, every future ``send()`` returned is done.
        """
        if self._closed:
            return
        if self._stopped is not None:  # another stop() is running: wait for it
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._stop(timeout_s)
        finally:
            self._closed = True
            self._stopped.set_result(None)

    async def _stop(self, timeout_s: float | None) -> None:
        self._closing = True
        self._buffer.close(ProducerClosed("producer stopped while waiting for buffer space"))
        timeout_s = self.delivery_timeout_s if timeout_s is None else timeout_s
        tasks = [st.task for st in self._partitions.values() if st.task is not None]
        for st in self._partitions.values():
            st.wake.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, timeout_s))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    log.error("producer sender task failed", exc_info=task.exception())
        closed = ProducerClosed("producer stopped before the batch was sent")
        for st in self._partitions.values():
            for batch in st.unresolved():
                self._finish(st, batch, "unknown" if batch.indefinite_error else "failed",
                             batch.indefinite_error or closed)
        await self._conn.close()

    # --- observability ------------------------------------------------------------------------------

    @property
    def counters(self) -> ProducerCounters:
        return ProducerCounters(self._sent, self._acked, self._failed, self._unknown, self._retries,
                                self._batches, self._requests, self._resets, self._buffer.used_bytes)

    @property
    def producer_id(self) -> int:
        """The newest producer id (-1 when not idempotent). Partitions may still use older ones."""
        return self._producer_id

    @property
    def producer_epoch(self) -> int:
        """How many instances of ``producer_name`` started before this one's newest id (-1: not idempotent)."""
        return self._producer_epoch

    @property
    def fenced(self) -> bool:
        """A newer producer with the same ``producer_name`` started: every send fails with PRODUCER_FENCED."""
        return self._fenced is not None

    @property
    def cluster(self) -> ClusterView:
        return self._view

    # --- sending ------------------------------------------------------------------------------------

    @overload
    async def send(self, topic: str, value: bytes | str | None, *, key: bytes | str | None = None,
                   headers: HeadersArg = None, partition: int | None = None, timestamp_ms: int | None = None,
                   on_delivery: None = None) -> asyncio.Future[DeliveryReport]: ...

    @overload
    async def send(self, topic: str, value: bytes | str | None, *, key: bytes | str | None = None,
                   headers: HeadersArg = None, partition: int | None = None, timestamp_ms: int | None = None,
                   on_delivery: DeliveryCallback) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> asyncio.Future[DeliveryReport] | None:
        """Queue one record; return a future that resolves to its :class:`DeliveryReport` (never raises), or
        with ``on_delivery`` return None and call ``on_delivery(report)`` exactly once on the event loop
        (librdkafka's delivery callback: keep it short; what it raises is logged). That is the cheaper path.

        Waits (up to the delivery deadline) only for buffer space, or for a new topic's metadata (up to
        ``request_timeout_ms``). ``str`` keys, values and header values are UTF-8 encoded.

        Raises (nothing was queued): ProducerClosed (not started, or stopping), ProducerFenced,
        BufferExhausted (buffer full until the deadline), RecordTooLarge (above ``limits.record_bytes_max``
        or the buffer), UnknownTopicOrPartition, TypeError/ValueError (bad key, value, header, timestamp).
        """
        if not self._started or self._closing:
            raise ProducerClosed("producer is not running" if not self._started else "producer is stopping")
        if self._fenced is not None:
            raise self._fenced
        # The hot path is written out here (one call per helper costs ~5 % of a send): only headers, explicit
        # timestamps and keyed or explicit partitions take the helpers.
        key_b = key if key is None or type(key) is bytes else _to_bytes(key, "key")
        value_b = value if value is None or type(value) is bytes else _to_bytes(value, "value")
        size = (len(key_b) if key_b is not None else 0) + (len(value_b) if value_b is not None else 0)
        if headers or timestamp_ms is not None:
            hdrs, timestamp_ms, size = _checked_extras(headers, timestamp_ms, size)
        elif size > limits.record_bytes_max:
            raise RecordTooLarge("record too large", size_bytes=size, size_bytes_max=limits.record_bytes_max)
        else:
            hdrs, timestamp_ms, size = (), int(time.time() * 1000), size + _RECORD_OVERHEAD_BYTES
        now = time.monotonic()
        deadline = now + self.delivery_timeout_s
        count = self._view.partition_count(topic)
        if count is None:
            count = await self._await_topic(topic, min(deadline, now + self.request_timeout_s))
        if partition is not None or key_b is not None or self._sticky.get(topic, count) >= count:
            partition = self._choose_partition(topic, key_b, partition, count)
        else:
            partition = self._sticky[topic]
        if not self._buffer.try_acquire(size):
            await self._wait_for_buffer(size, deadline, topic)
        if self._closing:  # stop() began while this send() awaited metadata or buffer space
            self._buffer.release(size)
            raise ProducerClosed("producer is stopping")
        # No await from here on: stop() cannot interleave and miss this record.
        st = self._partitions.get((topic, partition))
        if st is None:
            st = self._new_partition(topic, partition)
        assert self._loop is not None
        waiter: _Waiter = on_delivery if on_delivery is not None else self._loop.create_future()
        batch = st.open
        if (batch is None or batch.size_bytes + size > self.batch_bytes
                or len(batch.records) >= limits.batch_records_max):
            if batch is not None:
                self._seal(st)
            batch = _Batch(topic, partition, now, deadline, self._loop.create_future())
            st.open = batch
            st.wake.set()
        batch.records.append((key_b, value_b, hdrs, timestamp_ms))
        batch.waiters.append(waiter)
        batch.size_bytes += size
        self._sent += 1
        if batch.size_bytes >= self.batch_bytes:
            self._seal(st)
            st.wake.set()
        return None if on_delivery is not None else waiter  # type: ignore[return-value]

    def _choose_partition(self, topic: str, key: bytes | None, partition: int | None, count: int) -> int:
        """The partition given (checked), else the key's (murmur2, as Kafka), else the topic's sticky one."""
        if partition is not None:
            if not 0 <= partition < count:
                raise UnknownTopicOrPartition(f"{topic} has {count} partitions; no partition {partition}",
                                              topic=topic, partition=partition)
            return partition
        if key is not None:
            cache = self._key_partitions
            chosen = cache.get((key, count))
            if chosen is None:
                # murmur2 is pure Python (~µs per key); most workloads repeat keys, so remember them.
                if len(cache) >= limits.client_key_partition_cache_max:
                    cache.clear()
                chosen = cache[(key, count)] = partition_for(key, count)
            return chosen
        sticky = self._sticky.get(topic)
        if sticky is None or sticky >= count:
            sticky = self._sticky[topic] = self._rng.randrange(count)
        return sticky

    async def _wait_for_buffer(self, size: int, deadline: float, topic: str) -> None:
        """The slow path of send(): wait for buffer space until the delivery deadline."""
        if size + _BATCH_OVERHEAD_BYTES > self.buffer_bytes:
            raise RecordTooLarge("record larger than the producer buffer", size_bytes=size,
                                 buffer_bytes=self.buffer_bytes)
        try:
            await self._buffer.acquire(size, deadline - time.monotonic())
        except TimeoutError:
            raise BufferExhausted("producer buffer full until the delivery deadline",
                                  buffer_bytes=self.buffer_bytes, topic=topic) from None

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> DeliveryReport:
        """``send()`` and wait for the report (bounded by the delivery deadline).

        Raises:
            what ``send()`` raises; the report's ``error`` unless its status is ok (check
            ``error.definite`` / catch ``ClientTimeout``: an unknown outcome is not a failure).
        """
        future = await self.send(topic, value, key=key, headers=headers, partition=partition,
                                 timestamp_ms=timestamp_ms)
        report = await future
        return report.raise_for_status()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued now without waiting for linger; return when those sends resolved.

        Raises:
            ClientTimeout: not all of them resolved within ``timeout_s`` (default: the delivery timeout
                plus one second, by when every batch has ended).
        """
        timeout_s = self.delivery_timeout_s + 1.0 if timeout_s is None else timeout_s
        waiting = [b.done for st in self._partitions.values() for b in st.unresolved()]
        if not waiting:
            return
        self._flushing += 1
        try:
            for st in self._partitions.values():
                st.wake.set()
            _, pending = await asyncio.wait(waiting, timeout=max(0.0, timeout_s))
        finally:
            self._flushing -= 1
        if pending:
            raise ClientTimeout("flush timed out", batches_pending=len(pending), timeout_s=timeout_s)

    # --- internals: accumulation ---------------------------------------------------------------------

    def _new_partition(self, topic: str, partition: int) -> _PartitionState:
        st = _PartitionState(topic, partition, self._producer_id)
        self._partitions[(topic, partition)] = st
        st.task = asyncio.get_running_loop().create_task(
            self._run_partition(st), name=f"raftmq-producer-{topic}-{partition}"
        )
        return st

    def _seal(self, st: _PartitionState) -> None:
        batch = st.open
        if batch is None:
            return
        st.open = None
        st.sealed.append(batch)
        self._advance_sticky(st)

    def _advance_sticky(self, st: _PartitionState) -> None:
        if self._sticky.get(st.topic) == st.partition:
            count = self._view.partition_count(st.topic) or 1
            self._sticky[st.topic] = (st.partition + 1) % count

    async def _await_topic(self, topic: str, deadline_s: float) -> int:
        attempt = 0
        last_error: RaftMQError | None = None
        while True:
            try:
                await self._fetcher.refresh(timeout_s=max(0.001, deadline_s - time.monotonic()))
            except RaftMQError as exc:
                last_error = exc
            count = self._view.partition_count(topic)
            if count:
                return count
            if self._closing:
                raise ProducerClosed("producer is stopping")
            attempt += 1
            pause = backoff_s(attempt, base_ms=self.retry_backoff_ms, max_ms=self.retry_backoff_ms_max,
                              rng=self._rng)
            if time.monotonic() + pause >= deadline_s:
                raise UnknownTopicOrPartition(f"topic {topic!r} is not in the cluster metadata",
                                              topic=topic) from last_error
            await asyncio.sleep(pause)  # retry backoff, not synchronisation

    # --- internals: the per-partition sender ---------------------------------------------------------

    async def _run_partition(self, st: _PartitionState) -> None:
        while True:
            batch = await self._next_batch(st)
            if batch is None:
                return
            st.in_flight = batch
            try:
                await self._deliver(st, batch)
            except Exception as exc:  # noqa: BLE001 - a bug must not strand the partition's later sends
                log.exception("producer bug while delivering %s/%s", st.topic, st.partition)
                if not batch.resolved:
                    error = UnexpectedResponse(f"client error while delivering: {exc!r}")
                    self._finish(st, batch, "unknown" if batch.attempts else "failed", error)
            finally:
                st.in_flight = None

    async def _next_batch(self, st: _PartitionState) -> _Batch | None:
        while True:
            if st.sealed:
                return st.sealed.popleft()
            batch = st.open
            wait_s: float | None = None
            if batch is not None:
                wait_s = batch.created_s + self.linger_s - time.monotonic()
                if wait_s <= 0 or self._closing or self._flushing:
                    st.open = None
                    self._advance_sticky(st)
                    return batch
            elif self._closing:
                return None
            st.wake.clear()
            if wait_s is None:
                await st.wake.wait()  # idle: woken by send() or stop(), cancelled by stop()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await st.wake.wait()

    async def _deliver(self, st: _PartitionState, batch: _Batch) -> None:
        """Send ``batch`` until it resolves. Cancellation (stop) resolves it: unknown if a request may have
        reached the broker, failed otherwise."""
        try:
            await self._attempts(st, batch)
        finally:
            if not batch.resolved:
                if batch.in_flight or batch.indefinite_error is not None:
                    error = batch.indefinite_error or ClientTimeout(
                        "producer stopped while the request was in flight")
                    self._finish(st, batch, "unknown", error)
                else:
                    closed = ProducerClosed("producer stopped before the batch was sent")
                    self._finish(st, batch, "failed", closed)

    async def _attempts(self, st: _PartitionState, batch: _Batch) -> None:
        """Send ``batch`` until it resolves: route it, encode it once, send, and decide what an error means."""
        attempt = _Attempt(f"/v1/topics/{quote(batch.topic, safe='')}/partitions/{batch.partition}/records")
        while True:
            if self._fenced is not None:
                self._finish_error(st, batch, self._fenced)  # a newer instance owns the name: send nothing more
                return
            if batch.deadline_s - time.monotonic() <= 0:
                self._finish_error(st, batch, attempt.last_error or ClientTimeout(
                    "delivery timeout expired before the batch was sent", sent=False))
                return
            url = await self._route(batch, attempt)
            if url is None:
                continue
            if batch.encoded is None:  # encode once; again only after a reset of a certainly-unstored batch
                try:
                    await self._encode(st, batch)
                except RaftMQError as exc:
                    self._finish_error(st, batch, exc)
                    return
            timeout_s = min(self.request_timeout_s, batch.deadline_s - time.monotonic())
            if timeout_s < limits.client_attempt_s_min:
                batch.deadline_s = time.monotonic()  # too little time left to be worth a request
                continue
            error = await self._send_once(st, batch, url + attempt.path, url, timeout_s, attempt)
            if error is None:
                return
            if attempt.reroute_url is not None and isinstance(error, ClientTimeout):
                continue  # the leader moved while the request waited: resend there at once
            if await self._after_error(st, batch, error, url, attempt):
                return

    async def _route(self, batch: _Batch, attempt: _Attempt) -> str | None:
        """The URL to send to (a re-route first, else the known leader, refreshing stale metadata); None
        after backing off when no leader is known."""
        url, attempt.reroute_url = attempt.reroute_url, None
        if url is not None:
            return url
        now = time.monotonic()
        url = self._view.leader_url(batch.topic, batch.partition)
        refresh_error: RaftMQError | None = None
        if url is None or self._view.is_stale(now):
            try:
                await self._fetcher.refresh(timeout_s=min(batch.deadline_s - now, self.request_timeout_s),
                                            force=url is None)
            except RaftMQError as exc:
                refresh_error = exc
            url = self._view.leader_url(batch.topic, batch.partition)
        if url is None:
            # Not sent because of it, so definite for this batch (earlier attempts still count).
            reason = f" (metadata refresh failed: {refresh_error})" if refresh_error else ""
            attempt.last_error = LeaderNotAvailable(f"no known leader for {batch.topic}/{batch.partition}{reason}",
                                                    topic=batch.topic, partition=batch.partition)
            attempt.retry += 1
            await self._backoff(attempt.retry, batch, leaderless=True)
        return url

    async def _send_once(self, st: _PartitionState, batch: _Batch, target: str, url: str,
                         timeout_s: float, attempt: _Attempt) -> RaftMQError | None:
        """One produce request. None: the batch is resolved ok; else the error it got (a ClientTimeout with
        ``attempt.reroute_url`` set: the partition's leader moved while the request waited)."""
        body = {"acks": self.acks, "timeout_ms": max(1, min(limits.produce_timeout_ms_max, int(timeout_s * 900))),
                "batch": batch.encoded}
        if batch.attempts == 0:
            self._batches += 1
        else:
            self._retries += 1
        batch.attempts += 1
        self._requests += 1
        batch.in_flight = True
        try:
            request = self._conn.request("POST", target, body=body, timeout_s=timeout_s)
            if self.acks != 0:
                response = await self._request_watching_leader(batch, request, url, attempt)
            else:
                response = await request
        except DuplicateSequence:
            batch.in_flight = False
            self._finish_ok(st, batch, None, url)
            return None
        except RaftMQError as exc:
            batch.in_flight = False
            if not attempt_was_definite(exc):
                batch.indefinite_error = exc
            return exc
        self._finish_ok(st, batch, response, url)
        return None

    async def _request_watching_leader(self, batch: _Batch, request: Coroutine[Any, Any, Any], url: str,
                                       attempt: _Attempt) -> Any:
        """Await ``request`` (sent to the partition's leader at ``url``); while it waits unanswered, ask the
        other brokers whether leadership moved. A paused or cut-off leader neither answers nor refuses, so
        without this the batch would sit there for the whole request timeout after a new leader was elected.
        An idempotent producer's resend carries the same producer id and sequence, so the new leader stores
        the records once (or answers DUPLICATE_SEQUENCE if they reached it before the fault). Without
        idempotence the resend may store them twice, exactly as the retry after the request timeout would:
        this is that retry, made as soon as leadership has provably moved."""
        task = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait({task}, timeout=limits.client_leader_probe_after_ms / 1000)
            while not done:
                await self._fetcher.probe_leaders(batch.topic, avoid_url=url,
                                                  timeout_s=limits.client_leader_probe_timeout_ms / 1000)
                moved = self._view.leader_url(batch.topic, batch.partition)
                if moved is not None and moved != url and not task.done():
                    attempt.reroute_url = moved
                    raise ClientTimeout(f"the leader of {batch.topic}/{batch.partition} moved to {moved} while "
                                        f"the request waited at {url}; resent there with the same sequence")
                done, _ = await asyncio.wait({task}, timeout=limits.client_leader_probe_interval_ms / 1000)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RaftMQError):
                    await task

    async def _after_error(self, st: _PartitionState, batch: _Batch, error: RaftMQError, url: str,
                           attempt: _Attempt) -> bool:
        """Decide what ``error`` means for ``batch``: True when the batch is resolved, False to try again
        (after re-routing, renumbering or a backoff, as the error says)."""
        attempt.last_error = error
        if isinstance(error, NotLeader):
            attempt.not_leader_streak += 1
            new_url = self._view.apply_not_leader(batch.topic, batch.partition, error.details, failed_url=url)
            attempt.reroute_url = new_url
            if new_url is not None and new_url != url and attempt.not_leader_streak == 1:
                return False  # re-route at once, once; then back off
        else:
            attempt.not_leader_streak = 0
            if error.refresh_metadata:
                self._view.mark_stale()
        if isinstance(error, ProducerFenced) and st.producer_id == self._producer_id:
            self._fence(error)  # a newer instance of producer_name started: this one must stop writing
            self._finish_error(st, batch, error)
            return True
        if self.idempotent and isinstance(error, OutOfOrderSequence | UnknownProducerId | ProducerFenced):
            # (ProducerFenced here: this producer fenced its own older id when it renewed it.)
            if batch.indefinite_error is not None:
                self._finish_error(st, batch, error)  # maybe stored under the old numbering: unknown
                return True
            # Certainly not stored: renumber under a fresh producer id and retry (at once the first time;
            # with backoff if the broker keeps refusing).
            batch.encoded = None
            st.needs_reset = True
            attempt.renumbered += 1
            if attempt.renumbered > 1:
                attempt.retry += 1
                await self._backoff(attempt.retry, batch)
            return False
        if not error.retriable:
            self._finish_error(st, batch, error)
            return True
        attempt.retry += 1
        # A leader that cannot be reached (CONNECTION_FAILED: killed, restarting) is about to be replaced like
        # one that says it is not the leader: look again soon.
        leaderless = isinstance(error, NotLeader | LeaderNotAvailable | ConnectionFailed)
        await self._backoff(attempt.retry, batch, leaderless=leaderless)
        return False

    async def _backoff(self, retry: int, batch: _Batch, *, leaderless: bool = False) -> None:
        pause = retry_pause_s(retry, base_ms=self.retry_backoff_ms, max_ms=self.retry_backoff_ms_max,
                              leaderless=leaderless, rng=self._rng)
        pause = min(pause, max(0.0, batch.deadline_s - time.monotonic()))
        if pause > 0:
            await asyncio.sleep(pause)  # retry backoff, not synchronisation

    async def _encode(self, st: _PartitionState, batch: _Batch) -> None:
        count = len(batch.records)
        if self.idempotent:
            if st.needs_reset or st.producer_id < 0 or st.next_sequence + count - 1 > _SEQUENCE_MAX:
                await self._reset_partition(st, batch.deadline_s)
            batch.producer_id = st.producer_id
            batch.base_sequence = st.next_sequence
            st.next_sequence += count
            batch.encoded = encode_batch(batch.records, producer_id=batch.producer_id,
                                         base_sequence=batch.base_sequence, sizes_checked=True)
        else:
            batch.encoded = encode_batch(batch.records, sizes_checked=True)

    async def _reset_partition(self, st: _PartitionState, deadline_s: float) -> None:
        """Move ``st`` to the newest producer id (allocating one if ``st`` already uses it), sequence 0."""
        old = st.producer_id
        try:
            async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
                async with self._pid_lock:
                    if self._producer_id == old or self._producer_id < 0:
                        self._producer_id = await self._allocate_producer_id(deadline_s)
        except TimeoutError:
            raise ClientTimeout("timed out getting a new producer id", sent=False) from None
        st.producer_id = self._producer_id
        st.next_sequence = 0
        st.needs_reset = False
        self._resets += 1

    async def _allocate_producer_id(self, deadline_s: float) -> int:
        """``POST /v1/producers`` on any broker, retrying retriable errors until ``deadline_s``.

        Raises: the last error (ClientTimeout, ConnectionFailed, ...) or UnexpectedResponse.
        """
        retry = 0
        while True:
            remaining = deadline_s - time.monotonic()
            try:
                body = {"name": self.producer_name} if self.producer_name is not None else {}
                response = await self._fetcher.any_broker_request("POST", "/v1/producers", body=body,
                                                                  timeout_s=max(0.001, remaining))
            except RaftMQError as exc:
                retry += 1
                pause = backoff_s(retry, base_ms=self.retry_backoff_ms, max_ms=self.retry_backoff_ms_max,
                                  rng=self._rng)
                if not exc.retriable or time.monotonic() + pause >= deadline_s:
                    raise
                await asyncio.sleep(pause)  # retry backoff, not synchronisation
                continue
            producer_id = response.get("producer_id")
            epoch = response.get("producer_epoch", 0)
            if type(producer_id) is not int or producer_id < 0 or type(epoch) is not int:
                raise UnexpectedResponse("POST /v1/producers answered without a producer_id")
            self._producer_epoch = epoch
            return producer_id

    def _fence(self, error: ProducerFenced) -> None:
        if self._fenced is None:
            log.error("producer %s (id %d) was fenced: %s", self.producer_name, self._producer_id, error.message)
            self._fenced = error

    # --- internals: outcomes ---------------------------------------------------------------------------

    def _finish_ok(self, st: _PartitionState, batch: _Batch, response: dict[str, Any] | None,
                   url: str) -> None:
        """Resolve a stored batch. ``response`` None = DUPLICATE_SEQUENCE (stored before, offset unknown).

        Raises UnexpectedResponse (before resolving anything) when the answer is malformed."""
        if batch.resolved:
            return
        count = len(batch.waiters)
        base_offset: int | None = None
        leader_epoch: int | None = None
        duplicate = response is None
        leader_id: int | None = self._view.broker_id_for_url(url)
        if response is not None:
            raw_offset = response.get("base_offset")
            raw_count = response.get("record_count")
            raw_epoch = response.get("leader_epoch")
            if raw_count is not None and raw_count != count:
                raise UnexpectedResponse("produce answer has another record_count", record_count=raw_count,
                                         expected=count)
            if self.acks == "all":
                if type(raw_offset) is not int or raw_offset < 0:
                    raise UnexpectedResponse("acks=all produce answer without a base_offset")
                base_offset = raw_offset
            leader_epoch = raw_epoch if type(raw_epoch) is int else None
            duplicate = bool(response.get("duplicate", False))
            raw_broker = response.get("broker_id")
            if type(raw_broker) is int:
                leader_id = raw_broker
        topic, partition = batch.topic, batch.partition
        self._acked += count
        waiters = batch.waiters
        self._resolved(batch)  # before the callbacks: they may look at the producer
        # One report per record, built with tuple.__new__: a NamedTuple's own constructor costs 3x as much,
        # and this loop runs once per record.
        for index, waiter in enumerate(waiters):
            _report(waiter, _new_tuple(DeliveryReport, (
                "ok", topic, partition, None if base_offset is None else base_offset + index, None,
                leader_id, leader_epoch, duplicate)))

    def _finish_error(self, st: _PartitionState, batch: _Batch, error: RaftMQError) -> None:
        if batch.indefinite_error is not None:
            # Report the last error if it is indefinite, else the indefinite one that makes this "unknown".
            reported = error if not attempt_was_definite(error) else batch.indefinite_error
            self._finish(st, batch, "unknown", reported)
        else:
            self._finish(st, batch, "failed", error)

    def _finish(self, st: _PartitionState, batch: _Batch, status: str, error: RaftMQError) -> None:
        if batch.resolved:
            return
        report = DeliveryReport(status, batch.topic, batch.partition, None, error)  # type: ignore[arg-type]
        if status == "unknown":
            self._unknown += len(batch.waiters)
        else:
            self._failed += len(batch.waiters)
        if self.idempotent and batch.encoded is not None:
            st.needs_reset = True  # its sequence numbers may or may not be stored
        waiters = batch.waiters
        self._resolved(batch)  # before the callbacks: they may look at the producer
        for waiter in waiters:
            _report(waiter, report)

    def _resolved(self, batch: _Batch) -> None:
        batch.resolved = True
        batch.in_flight = False
        self._buffer.release(batch.size_bytes - _BATCH_OVERHEAD_BYTES)
        batch.records = []
        batch.waiters = []
        batch.encoded = None
        if not batch.done.done():
            batch.done.set_result(None)

