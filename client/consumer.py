"""The consumer: manual assignment, positions, bounded prefetch, long-poll fetches, CRC checks.

Model (Kafka's, minus groups and committed offsets):

* ``assign([(topic, partition), ...])`` sets the partitions to read; each has a *position*, the offset of
  the next record ``poll()`` returns. ``seek()`` sets it; ``seek_to_beginning()``/``seek_to_end()`` set it
  from the offsets endpoint; an unset position is resolved with ``auto_offset_reset`` on first use.
* One fetcher task per assigned partition fetches ahead of the position (long-polling with ``max_wait_ms``
  at the end of the log) into a prefetch buffer bounded in bytes (``prefetch_bytes_max``, default
  ``limits.client_fetch_prefetch_bytes_max``): a fetcher reserves ``max(fetch_max_bytes, batch_bytes_max)``
  before each request (an answer holds at most that), so buffered + in-flight bytes never exceed the bound.
  ``poll()`` drains the buffer, rotating over partitions for fairness; a batch's bytes are released once
  all its records were returned.
* A fetch returns whole batches from the one holding the requested offset, so records below the position
  are skipped. With ``check_crcs`` every batch's CRC-32C is verified (``check_batch_crc``).
* ``NOT_LEADER`` re-routes to the leader its details name; errors flagged ``refresh_metadata`` refresh the
  cluster view; other retriable errors back off (capped exponential, jitter) and retry, indefinitely:
  a consumer waits for the cluster rather than giving up.

Errors that stop a partition (the partition is *paused*: no more fetches until ``seek``/``seek_to_*``,
and the error is raised once by the next ``poll()`` after the records before it were returned):

* ``CorruptBatch``: a batch failed its CRC or length checks. The position stays at the first record of
  the bad batch; ``seek(position + n)`` skips past it deliberately.
* ``OffsetOutOfRange`` with ``auto_offset_reset="none"`` (or no position and policy ``none``).
* any non-retriable error (e.g. ``INVALID_OFFSET``).

``OFFSET_OUT_OF_RANGE`` policies (as Kafka's ``auto.offset.reset``):

* ``"earliest"``: move to the log start (details' ``log_start_offset``, else ``at=earliest``).
* ``"latest"``: move to the high watermark (``at=latest``), skipping what is between.
* ``"none"``: raise from ``poll()`` and pause the partition.

An offset ABOVE the log end is first treated as transient for up to ``request_timeout_ms`` (retried with
backoff and a metadata refresh): a freshly elected leader may briefly report a lower high watermark than
the old one, and resetting then would replay (earliest) or skip (latest) records for no reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self
from urllib.parse import quote

from raftmq.client.connection import AsyncLifecycle, ByteBudget, Connection, MetadataFetcher, backoff_s
from raftmq.client.metadata import ClusterView
from raftmq.client.types import ConsumerRecord, OffsetInfo, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.batch import BatchHeader, Record, check_batch_crc, decode_records, iter_batches
from raftmq.cluster.errors import (
    ClientTimeout,
    CorruptBatch,
    LeaderNotAvailable,
    NotLeader,
    OffsetOutOfRange,
    RaftMQError,
    UnexpectedResponse,
)

__all__ = ["Consumer", "ConsumerRecord", "TopicPartition", "OffsetInfo"]

log = logging.getLogger("raftmq.client.consumer")

OffsetReset = Literal["earliest", "latest", "none"]



class _Step(enum.Enum):
    FETCH = "fetch"  # the partition has a position: fetch (or, after a fetch, it answered)
    AGAIN = "again"  # try again (after a backoff or a re-route)
    STOP = "stop"    # stop fetching this assignment (paused on an error, or reassigned)


@dataclasses.dataclass
class _FetchState:
    """One partition fetcher's retry count and re-route between requests."""

    path: str
    retry: int = 0
    reroute: str | None = None


class _Chunk:
    """One fetched batch in the prefetch buffer; records are decoded when poll() first reaches it."""

    __slots__ = ("header", "data", "size_bytes", "records", "index")

    def __init__(self, header: BatchHeader, data: memoryview) -> None:
        self.header = header
        self.data = data
        self.size_bytes = len(data)
        self.records: list[Record] | None = None
        self.index = 0


class _PartitionFetch:
    """Position, prefetch buffer, fetcher task and pause state of one assigned partition."""

    __slots__ = ("topic", "partition", "position", "fetch_offset", "generation", "chunks", "error",
                 "error_raised", "task", "high_watermark", "log_start_offset", "above_end_since")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.position: int | None = None
        self.fetch_offset: int | None = None
        self.generation = 0
        self.chunks: collections.deque[_Chunk] = collections.deque()
        self.error: RaftMQError | None = None
        self.error_raised = False
        self.task: asyncio.Task[None] | None = None
        self.high_watermark: int | None = None
        self.log_start_offset: int | None = None
        self.above_end_since: float | None = None


class Consumer(AsyncLifecycle):
    """An asyncio consumer with manual assignment. ``async with Consumer([...]) as c:``.

    Args:
        bootstrap_urls: one or more broker client URLs.
        fetch_max_bytes: ``max_bytes`` of one fetch (the broker returns at least one whole batch).
        max_wait_ms: long-poll: how long the broker holds a fetch at the end of the log (<= 30 000).
        auto_offset_reset: ``"earliest"``, ``"latest"`` or ``"none"``: what to do without a valid position.
        check_crcs: verify every fetched batch's CRCs.
        read_from_any_replica: fetch with ``replica=any`` from a replica instead of the leader (committed
            but possibly behind; for comparing replicas). The replica used is the first of the partition's
            replicas whose URL is a bootstrap URL, else the first replica.
        request_timeout_ms: deadline of one request (a fetch adds ``max_wait_ms``).
        retry_backoff_ms: first retry backoff (capped exponential with jitter).
        prefetch_bytes_max: bound of fetched-but-not-returned bytes plus reservations of running fetches.
        metadata_max_age_ms: refresh the cluster view when older than this.
        rng: randomness for jitter.

    Raises:
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        bootstrap_urls: str | Iterable[str],
        *,
        fetch_max_bytes: int = limits.fetch_bytes_max_default,
        max_wait_ms: int = 500,
        auto_offset_reset: OffsetReset = "earliest",
        check_crcs: bool = True,
        read_from_any_replica: bool = False,
        request_timeout_ms: int = limits.client_request_timeout_ms_default,
        retry_backoff_ms: int = limits.client_retry_backoff_ms_default,
        retry_backoff_ms_max: int = limits.client_retry_backoff_ms_max,
        prefetch_bytes_max: int = limits.client_fetch_prefetch_bytes_max,
        metadata_max_age_ms: int = limits.client_metadata_max_age_ms,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(bootstrap_urls, str):
            bootstrap_urls = [bootstrap_urls]
        if not 1 <= fetch_max_bytes <= limits.fetch_bytes_max:
            raise ValueError(f"fetch_max_bytes must be in [1, {limits.fetch_bytes_max}]")
        if not 0 <= max_wait_ms <= limits.fetch_wait_ms_max:
            raise ValueError(f"max_wait_ms must be in [0, {limits.fetch_wait_ms_max}]")
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ValueError("auto_offset_reset must be 'earliest', 'latest' or 'none'")
        self._reserve_bytes = max(fetch_max_bytes, limits.batch_bytes_max)
        if prefetch_bytes_max < self._reserve_bytes:
            raise ValueError(f"prefetch_bytes_max must be >= {self._reserve_bytes} (one fetch answer)")
        if request_timeout_ms <= 0 or retry_backoff_ms < 0:
            raise ValueError("request_timeout_ms must be > 0 and retry_backoff_ms >= 0")
        self.fetch_max_bytes = fetch_max_bytes
        self.max_wait_ms = max_wait_ms
        self.auto_offset_reset: OffsetReset = auto_offset_reset
        self.check_crcs = check_crcs
        self.read_from_any_replica = read_from_any_replica
        self.request_timeout_s = request_timeout_ms / 1000.0
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_ms_max = max(retry_backoff_ms, retry_backoff_ms_max)
        self._rng = rng if rng is not None else random.Random()
        self._view = ClusterView(list(bootstrap_urls), max_age_ms=metadata_max_age_ms)
        self._conn = Connection(request_timeout_ms=request_timeout_ms)  # fetches pass their own (+ max_wait)
        self._fetcher = MetadataFetcher(self._conn, self._view)
        self._budget = ByteBudget(prefetch_bytes_max)
        self._parts: dict[TopicPartition, _PartitionFetch] = {}
        self._order: list[_PartitionFetch] = []
        self._rotation = 0
        self._data = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._iter_buffer: collections.deque[ConsumerRecord] = collections.deque()
        self._started = False
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch metadata and start fetching the assigned partitions.

        Raises:
            ConnectionFailed / ClientTimeout: no bootstrap broker answered within ``request_timeout_ms``.
            RuntimeError: the consumer was stopped before.
        """
        if self._closed:
            raise RuntimeError("consumer was stopped; create a new one")
        if self._started:
            return
        try:
            await self._fetcher.refresh(timeout_s=self.request_timeout_s)
        except BaseException:
            await self._conn.close()
            self._closed = True
            raise
        self._started = True
        for pf in self._order:
            self._start_fetcher(pf)

    async def stop(self) -> None:
        """Cancel the fetchers (and await them), drop the prefetch buffer, close connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("consumer fetcher failed", exc_info=task.exception())
        for pf in self._order:
            self._clear_buffer(pf)
        self._data.set()  # wake a poll() in progress
        await self._conn.close()

    @property
    def cluster(self) -> ClusterView:
        return self._view

    # --- assignment and positions --------------------------------------------------------------------

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these partitions from now on. Partitions kept keep their positions and buffers;
        new ones start without a position (``auto_offset_reset`` decides on first fetch unless ``seek``).

        Raises:
            TypeError / ValueError: not (str, int >= 0) pairs.
        """
        wanted: list[TopicPartition] = []
        for item in partitions:
            topic, partition = item
            if not isinstance(topic, str) or type(partition) is not int or partition < 0:
                raise ValueError(f"not a (topic, partition) pair: {item!r}")
            wanted.append(TopicPartition(topic, partition))
        wanted = list(dict.fromkeys(wanted))
        for tp in list(self._parts):
            if tp not in wanted:
                pf = self._parts.pop(tp)
                self._stop_fetcher(pf)
                self._clear_buffer(pf)
        for tp in wanted:
            if tp not in self._parts:
                pf = self._parts[tp] = _PartitionFetch(tp.topic, tp.partition)
                if self._started:
                    self._start_fetcher(pf)
        self._order = [self._parts[tp] for tp in wanted]

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(pf.topic, pf.partition) for pf in self._order]

    def positions(self) -> dict[TopicPartition, int]:
        """The position of every assigned partition that has one (no lookups: the others are left out)."""
        return {TopicPartition(pf.topic, pf.partition): pf.position for pf in self._order if pf.position is not None}

    @property
    def connection(self) -> Connection:
        """The consumer's connection pool (a group consumer sends its coordinator requests through it)."""
        return self._conn

    @property
    def metadata_fetcher(self) -> MetadataFetcher:
        return self._fetcher

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Make ``offset`` the next record ``poll()`` returns for this partition. Drops prefetched data,
        un-pauses the partition, and restarts its fetcher.

        Raises:
            KeyError: the partition is not assigned. ValueError: ``offset`` is not an int >= 0.
        """
        if type(offset) is not int or offset < 0:
            raise ValueError("offset must be an int >= 0")
        pf = self._part(topic, partition)
        self._set_position(pf, offset)

    async def seek_to_beginning(self, *partitions: tuple[str, int], timeout_s: float | None = None) -> None:
        """Seek to the log start of ``partitions`` (default: all assigned).

        Raises: see :meth:`beginning_offsets`; KeyError for a partition that is not assigned.
        """
        targets = [TopicPartition(*p) for p in partitions] or self.assignment()
        for tp in targets:
            self._part(*tp)
        offsets = await self.beginning_offsets(targets, timeout_s=timeout_s)
        for tp, offset in offsets.items():
            self._set_position(self._part(*tp), offset)

    async def seek_to_end(self, *partitions: tuple[str, int], timeout_s: float | None = None) -> None:
        """Seek to the high watermark of ``partitions`` (default: all assigned): only newer records follow.

        Raises: see :meth:`end_offsets`; KeyError for a partition that is not assigned.
        """
        targets = [TopicPartition(*p) for p in partitions] or self.assignment()
        for tp in targets:
            self._part(*tp)
        offsets = await self.end_offsets(targets, timeout_s=timeout_s)
        for tp, offset in offsets.items():
            self._set_position(self._part(*tp), offset)

    async def position(self, topic: str, partition: int, *, timeout_s: float | None = None) -> int:
        """The offset of the next record ``poll()`` returns; resolves an unset position with
        ``auto_offset_reset`` first.

        Raises:
            KeyError: not assigned. OffsetOutOfRange: no position and policy ``"none"``.
            ClientTimeout / ConnectionFailed / RaftMQError: the offsets lookup failed.
        """
        pf = self._part(topic, partition)
        if pf.position is None:
            generation = pf.generation
            offset = await self._reset_offset(pf, self.auto_offset_reset, timeout_s)
            if pf.generation == generation and pf.position is None:
                self._set_position(pf, offset)
        assert pf.position is not None
        return pf.position

    def _part(self, topic: str, partition: int) -> _PartitionFetch:
        pf = self._parts.get(TopicPartition(topic, partition))
        if pf is None:
            raise KeyError(f"{topic}/{partition} is not assigned")
        return pf

    def _set_position(self, pf: _PartitionFetch, offset: int) -> None:
        pf.position = pf.fetch_offset = offset
        pf.error = None
        pf.error_raised = False
        pf.above_end_since = None
        self._clear_buffer(pf)
        if self._started:
            self._start_fetcher(pf)

    # --- offsets endpoint -----------------------------------------------------------------------------

    async def beginning_offsets(self, partitions: Iterable[tuple[str, int]], *,
                                timeout_s: float | None = None) -> dict[TopicPartition, int]:
        """Log start offsets (``at=earliest``). Raises: see :meth:`offsets_for_times`."""
        infos = await self._offsets({TopicPartition(*p): "earliest" for p in partitions}, timeout_s)
        return {tp: _required_offset(info) for tp, info in infos.items()}

    async def end_offsets(self, partitions: Iterable[tuple[str, int]], *,
                          timeout_s: float | None = None) -> dict[TopicPartition, int]:
        """High watermarks (``at=latest``): the offset the next committed record will get.

        Raises: see :meth:`offsets_for_times`.
        """
        infos = await self._offsets({TopicPartition(*p): "latest" for p in partitions}, timeout_s)
        return {tp: _required_offset(info) for tp, info in infos.items()}

    async def offsets_for_times(self, timestamps_ms: Mapping[tuple[str, int], int], *,
                                timeout_s: float | None = None) -> dict[TopicPartition, int | None]:
        """For each partition, the first offset whose record timestamp is >= the given one (None: none is).

        Args:
            timestamps_ms: ``{(topic, partition): timestamp_ms}``.
            timeout_s: deadline for all lookups (default ``request_timeout_ms``); retriable errors and
                ``NOT_LEADER`` are retried within it.

        Raises:
            ClientTimeout / ConnectionFailed: the deadline passed. UnknownTopicOrPartition, InvalidOffset,
            other non-retriable RaftMQErrors as answered. UnexpectedResponse: a malformed answer.
        """
        for ts in timestamps_ms.values():
            if type(ts) is not int or ts < 0:
                raise ValueError("timestamps must be ints >= 0")
        queries = {TopicPartition(*tp): str(ts) for tp, ts in timestamps_ms.items()}
        infos = await self._offsets(queries, timeout_s)
        return {tp: info.offset for tp, info in infos.items()}

    async def watermarks(self, topic: str, partition: int, *, timeout_s: float | None = None) -> tuple[int, int]:
        """(log start offset, high watermark) of a partition, from its leader. Raises: see ``end_offsets``."""
        info = (await self._offsets({TopicPartition(topic, partition): "latest"}, timeout_s))[
            TopicPartition(topic, partition)]
        if info.log_start_offset is None or info.high_watermark is None:
            raise UnexpectedResponse("offsets answer without log_start_offset / high_watermark", topic=topic,
                                     partition=partition)
        return info.log_start_offset, info.high_watermark

    async def read_records(self, topic: str, partition: int, offset: int, *, timeout_s: float | None = None
                           ) -> list[ConsumerRecord]:
        """One fetch from the partition's leader at ``offset``, outside any assignment or position: the
        records at or after ``offset`` in what it returned (at least one batch when there is a record there;
        CRCs checked with ``check_crcs``). Follows NOT_LEADER and retries retriable errors until the deadline.

        Raises: OffsetOutOfRange, CorruptBatch, ClientTimeout / ConnectionFailed, other RaftMQErrors."""
        deadline = time.monotonic() + (self.request_timeout_s if timeout_s is None else timeout_s)
        path = f"/v1/topics/{quote(topic, safe='')}/partitions/{partition}/records"
        response = await self._leader_request(topic, partition, path,
                                              {"offset": offset, "max_bytes": self.fetch_max_bytes, "max_wait_ms": 0},
                                              deadline)
        data = response.get("batches", b"")
        if not isinstance(data, bytes | bytearray):
            raise UnexpectedResponse("fetch answer without binary 'batches'", topic=topic, partition=partition)
        records: list[ConsumerRecord] = []
        for header, view in iter_batches(bytes(data)):
            if self.check_crcs:
                check_batch_crc(view, header)
            records.extend(ConsumerRecord(topic, partition, *r) for r in decode_records(view, header)
                           if r.offset >= offset)
        return records

    async def _offsets(self, queries: Mapping[TopicPartition, str],
                       timeout_s: float | None) -> dict[TopicPartition, OffsetInfo]:
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        results = await asyncio.gather(*(self._list_offset(tp.topic, tp.partition, at, deadline)
                                         for tp, at in queries.items()))
        return dict(zip(queries, results, strict=True))

    async def _list_offset(self, topic: str, partition: int, at: str, deadline_s: float) -> OffsetInfo:
        path = f"/v1/topics/{quote(topic, safe='')}/partitions/{partition}/offsets"
        response = await self._leader_request(topic, partition, path, {"at": at}, deadline_s)
        offset = response.get("offset")
        if offset is not None and (type(offset) is not int or offset < 0):
            raise UnexpectedResponse("offsets answer with a bad offset", topic=topic, partition=partition)
        lso, hw = response.get("log_start_offset"), response.get("high_watermark")
        return OffsetInfo(topic, partition, offset, lso if type(lso) is int else None,
                          hw if type(hw) is int else None)

    async def _leader_request(self, topic: str, partition: int, path: str, params: Mapping[str, Any],
                              deadline_s: float) -> dict[str, Any]:
        """GET from the partition leader, following NOT_LEADER and retrying retriable errors until
        ``deadline_s``. Raises the last error when the deadline passes."""
        retry = 0
        reroute: str | None = None
        last_error: RaftMQError | None = None
        while True:
            remaining = deadline_s - time.monotonic()
            if remaining <= 0:
                raise last_error or ClientTimeout(f"{path}: deadline passed", sent=False)
            url = reroute or await self._leader_url(topic, partition, remaining)
            reroute = None
            if url is not None:
                try:
                    return await self._conn.request("GET", url + path, params=params,
                                                    timeout_s=min(remaining, self.request_timeout_s))
                except NotLeader as exc:
                    last_error = exc
                    reroute = self._view.apply_not_leader(topic, partition, exc.details, failed_url=url)
                    if reroute is not None and reroute != url and retry == 0:
                        retry += 1
                        continue
                except RaftMQError as exc:
                    last_error = exc
                    if not exc.retriable:
                        raise
                    if exc.refresh_metadata:
                        self._view.mark_stale()
            else:
                last_error = LeaderNotAvailable(f"no known leader for {topic}/{partition}",
                                                topic=topic, partition=partition)
            retry += 1
            await self._backoff(retry, deadline_s)

    async def _leader_url(self, topic: str, partition: int, remaining_s: float) -> str | None:
        url = self._view.leader_url(topic, partition)
        if url is None or self._view.is_stale(time.monotonic()):
            with contextlib.suppress(RaftMQError):
                await self._fetcher.refresh(timeout_s=min(remaining_s, self.request_timeout_s),
                                            force=url is None)
            url = self._view.leader_url(topic, partition)
        return url

    async def _backoff(self, retry: int, deadline_s: float | None = None) -> None:
        pause = backoff_s(retry, base_ms=self.retry_backoff_ms, max_ms=self.retry_backoff_ms_max,
                          rng=self._rng)
        if deadline_s is not None:
            pause = min(pause, max(0.0, deadline_s - time.monotonic()))
        if pause > 0:
            await asyncio.sleep(pause)  # retry backoff, not synchronisation

    async def _reset_offset(self, pf: _PartitionFetch, policy: OffsetReset, timeout_s: float | None,
                            error: OffsetOutOfRange | None = None) -> int:
        if policy == "none":
            if error is not None:
                raise error
            raise OffsetOutOfRange(f"{pf.topic}/{pf.partition} has no position and auto_offset_reset='none';"
                                   " seek first", topic=pf.topic, partition=pf.partition)
        if policy == "earliest" and error is not None and type(error.details.get("log_start_offset")) is int:
            return int(error.details["log_start_offset"])
        infos = await self._offsets({TopicPartition(pf.topic, pf.partition): policy}, timeout_s)
        return _required_offset(next(iter(infos.values())))

    # --- polling ----------------------------------------------------------------------------------------

    async def poll(self, timeout_ms: int = 1000, max_records: int = limits.client_poll_records_max_default
                   ) -> list[ConsumerRecord]:
        """Return up to ``max_records`` records (in offset order per partition), waiting up to
        ``timeout_ms`` for the first; ``[]`` when none arrived in time. Advances positions.

        Raises:
            a paused partition's error (once): CorruptBatch, OffsetOutOfRange (policy ``"none"``), or a
            non-retriable RaftMQError. RuntimeError: the consumer is not running.
        """
        if not self._started:
            raise RuntimeError("consumer is not running (call start() or use 'async with')")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        while True:
            records = self._drain(max_records)
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._started:
                return []
            self._data.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._data.wait()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ConsumerRecord:
        """Follow mode: yield records as they arrive until the consumer is stopped. Positions advance a
        poll ahead of what was yielded. Raises what ``poll()`` raises."""
        while not self._iter_buffer:
            if not self._started:
                raise StopAsyncIteration
            self._iter_buffer.extend(await self.poll(timeout_ms=max(self.max_wait_ms, 100)))
        return self._iter_buffer.popleft()

    def _drain(self, max_records: int) -> list[ConsumerRecord]:
        out: list[ConsumerRecord] = []
        parts = self._order
        count = len(parts)
        if not count:
            return out
        start = self._rotation % count
        self._rotation += 1
        error: RaftMQError | None = None
        for step in range(count):
            pf = parts[(start + step) % count]
            if pf.chunks and len(out) < max_records:
                self._take(pf, out, max_records)
            if not pf.chunks and pf.error is not None and not pf.error_raised and error is None:
                error = pf.error
                if not out:
                    pf.error_raised = True
        if error is not None and not out:
            raise error
        return out

    def _take(self, pf: _PartitionFetch, out: list[ConsumerRecord], max_records: int) -> None:
        topic, partition = pf.topic, pf.partition
        position = pf.position if pf.position is not None else 0
        while pf.chunks and len(out) < max_records:
            chunk = pf.chunks[0]
            if chunk.records is None:
                try:
                    chunk.records = decode_records(chunk.data, chunk.header)
                except CorruptBatch as exc:
                    # Undecodable (possible with check_crcs off): pause here, raised by the next poll.
                    exc.details.update(topic=topic, partition=partition, offset=position)
                    self._stop_fetcher(pf)
                    self._clear_buffer(pf)
                    self._pause(pf, exc)
                    break
            records = chunk.records
            index = chunk.index
            while index < len(records) and records[index].offset < position:
                index += 1  # a fetch may start mid-batch: skip records below the position
            take = min(len(records) - index, max_records - len(out))
            for record in records[index:index + take]:
                out.append(ConsumerRecord(topic, partition, *record))
            index += take
            if take:
                position = records[index - 1].offset + 1
            chunk.index = index
            if index >= len(records):
                pf.chunks.popleft()
                self._budget.release(chunk.size_bytes)
        pf.position = position

    # --- fetching -----------------------------------------------------------------------------------------

    def _start_fetcher(self, pf: _PartitionFetch) -> None:
        self._stop_fetcher(pf)
        pf.generation += 1
        task = asyncio.get_running_loop().create_task(
            self._fetch_loop(pf, pf.generation), name=f"raftmq-fetch-{pf.topic}-{pf.partition}")
        pf.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _stop_fetcher(pf: _PartitionFetch) -> None:
        # The cancelled task stays in self._tasks until done; stop() awaits it.
        if pf.task is not None and not pf.task.done():
            pf.task.cancel()
        pf.task = None

    def _clear_buffer(self, pf: _PartitionFetch) -> None:
        released = sum(c.size_bytes for c in pf.chunks)
        pf.chunks.clear()
        if released:
            self._budget.release(released)

    def _pause(self, pf: _PartitionFetch, error: RaftMQError) -> None:
        pf.error = error
        pf.error_raised = False
        self._data.set()

    async def _fetch_loop(self, pf: _PartitionFetch, generation: int) -> None:
        """Fetch ``pf`` ahead of poll() while this assignment lasts: within the prefetch budget, following
        NOT_LEADER, resetting out-of-range positions by policy, pausing on errors that retrying cannot fix."""
        state = _FetchState(f"/v1/topics/{quote(pf.topic, safe='')}/partitions/{pf.partition}/records")
        while pf.generation == generation and pf.error is None:
            if pf.position is None or pf.fetch_offset is None:
                step = await self._start_position(pf, generation, state)
                if step is not _Step.FETCH:
                    if step is _Step.STOP:
                        return
                    continue
            reserved = await self._reserve_prefetch()
            stored = 0
            try:
                started = time.monotonic()
                step, stored = await self._fetch_once(pf, generation, state)
            finally:
                if reserved - stored:
                    self._budget.release(reserved - stored)
            if step is _Step.STOP:
                return
            if step is _Step.FETCH and stored == 0 and (self.max_wait_ms == 0 or
                                                        time.monotonic() - started < self.max_wait_ms / 2000.0):
                # Nothing new, and the broker did not hold the request (no long-poll asked for, or its
                # long-poll waiters are full): back off instead of spinning.
                await self._backoff(1)

    async def _start_position(self, pf: _PartitionFetch, generation: int, state: _FetchState) -> _Step:
        """Give ``pf`` a position by the reset policy (none was set, or it was reset)."""
        try:
            offset = await self._reset_offset(pf, self.auto_offset_reset, None)
        except OffsetOutOfRange as exc:
            self._pause(pf, exc)
            return _Step.STOP
        except RaftMQError as exc:
            if not exc.retriable:
                self._pause(pf, exc)
                return _Step.STOP
            state.retry += 1
            await self._backoff(state.retry)
            return _Step.AGAIN
        if pf.generation != generation:
            return _Step.STOP
        pf.position = pf.fetch_offset = offset
        state.retry = 0
        return _Step.FETCH

    async def _reserve_prefetch(self) -> int:
        while True:
            try:
                await self._budget.acquire(self._reserve_bytes, limits.client_prefetch_wait_s)
                return self._reserve_bytes
            except TimeoutError:
                continue  # the application has not polled yet; keep waiting (stop() cancels)

    async def _fetch_once(self, pf: _PartitionFetch, generation: int, state: _FetchState) -> tuple[_Step, int]:
        """One fetch request: (FETCH, bytes stored) after an answer, (AGAIN, 0) to try again, (STOP, 0)."""
        url = state.reroute or await self._fetch_url(pf)
        state.reroute = None
        if url is None:
            state.retry += 1
            await self._backoff(state.retry)
            return _Step.AGAIN, 0
        params: dict[str, Any] = {"offset": pf.fetch_offset, "max_bytes": self.fetch_max_bytes,
                                  "max_wait_ms": self.max_wait_ms}
        if self.read_from_any_replica:
            params["replica"] = "any"
        try:
            response = await self._conn.request("GET", url + state.path, params=params,
                                                timeout_s=self.request_timeout_s + self.max_wait_ms / 1000.0)
        except RaftMQError as exc:
            return await self._fetch_failed(pf, generation, state, url, exc), 0
        if pf.generation != generation or pf.error is not None:
            return _Step.STOP, 0
        state.retry = 0
        pf.above_end_since = None
        try:
            return _Step.FETCH, self._accept(pf, response)
        except RaftMQError as exc:
            if isinstance(exc, CorruptBatch) or not exc.retriable:
                self._pause(pf, exc)
                return _Step.STOP, 0
            state.retry += 1
            await self._backoff(state.retry)
            return _Step.AGAIN, 0

    async def _fetch_failed(self, pf: _PartitionFetch, generation: int, state: _FetchState, url: str,
                            error: RaftMQError) -> _Step:
        if isinstance(error, NotLeader):
            state.reroute = self._view.apply_not_leader(pf.topic, pf.partition, error.details, failed_url=url)
            if state.reroute is None or state.reroute == url or state.retry > 0:
                state.retry += 1
                await self._backoff(state.retry)
            else:
                state.retry += 1  # re-route at once the first time
            return _Step.AGAIN
        if isinstance(error, OffsetOutOfRange):
            return _Step.AGAIN if await self._handle_out_of_range(pf, generation, error) else _Step.STOP
        if not error.retriable:
            self._pause(pf, error)
            return _Step.STOP
        if error.refresh_metadata:
            self._view.mark_stale()
        state.retry += 1
        await self._backoff(state.retry)
        return _Step.AGAIN

    async def _fetch_url(self, pf: _PartitionFetch) -> str | None:
        if not self.read_from_any_replica:
            return await self._leader_url(pf.topic, pf.partition, self.request_timeout_s)
        if self._view.partition(pf.topic, pf.partition) is None or self._view.is_stale(time.monotonic()):
            with contextlib.suppress(RaftMQError):
                await self._fetcher.refresh(timeout_s=self.request_timeout_s, force=False)
        urls = self._view.replica_urls(pf.topic, pf.partition)
        preferred = [u for u in urls if u in self._view.bootstrap_urls]
        candidates = preferred or urls
        return candidates[0] if candidates else None

    async def _handle_out_of_range(self, pf: _PartitionFetch, generation: int,
                                   error: OffsetOutOfRange) -> bool:
        """Apply ``auto_offset_reset``. Returns False when the partition got paused."""
        log_end = error.details.get("log_end_offset")
        now = time.monotonic()
        above_end = type(log_end) is int and pf.fetch_offset is not None and pf.fetch_offset > log_end
        if above_end:
            if pf.above_end_since is None:
                pf.above_end_since = now
            if now - pf.above_end_since < self.request_timeout_s:
                self._view.mark_stale()
                await self._backoff(2)
                return True
        pf.above_end_since = None
        try:
            offset = await self._reset_offset(pf, self.auto_offset_reset, None, error)
        except OffsetOutOfRange as exc:
            self._pause(pf, exc)
            return False
        except RaftMQError as exc:
            if not exc.retriable:
                self._pause(pf, exc)
                return False
            await self._backoff(1)
            return True
        if pf.generation != generation:
            return False
        log.info("%s/%s: offset %s out of range; reset to %s (%s)", pf.topic, pf.partition, pf.fetch_offset,
                 offset, self.auto_offset_reset)
        assert pf.fetch_offset is not None
        if offset >= pf.fetch_offset and pf.chunks:
            # Forward (the usual case: retention passed us): records already buffered below the new
            # offset stay readable; the position jumps when poll() reaches the next fetched batch.
            pf.fetch_offset = offset
        else:
            self._clear_buffer(pf)
            pf.position = pf.fetch_offset = offset
        return True

    def _accept(self, pf: _PartitionFetch, response: dict[str, Any]) -> int:
        """Split, check and buffer a fetch answer; returns the bytes buffered.

        Batches before a corrupt one are buffered; the corruption pauses the partition once poll() has
        returned them. Raises CorruptBatch (nothing valid before it), UnexpectedResponse."""
        data = response.get("batches", b"")
        if isinstance(data, bytearray):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise UnexpectedResponse("fetch answer without binary 'batches'", topic=pf.topic,
                                     partition=pf.partition)
        hw, lso = response.get("high_watermark"), response.get("log_start_offset")
        pf.high_watermark = hw if type(hw) is int else pf.high_watermark
        pf.log_start_offset = lso if type(lso) is int else pf.log_start_offset
        assert pf.fetch_offset is not None
        fetch_offset = pf.fetch_offset
        chunks: list[_Chunk] = []
        corrupt: CorruptBatch | None = None
        next_offset = fetch_offset
        try:
            for header, view in iter_batches(data):
                if self.check_crcs:
                    check_batch_crc(view, header)
                if header.next_offset <= next_offset:
                    continue  # entirely below the position
                chunks.append(_Chunk(header, view))
                next_offset = header.next_offset
        except CorruptBatch as exc:
            exc.details.setdefault("topic", pf.topic)
            exc.details.setdefault("partition", pf.partition)
            exc.details.setdefault("offset", next_offset)
            corrupt = exc
        if corrupt is not None and not chunks:
            raise corrupt
        if not chunks and data:
            raise UnexpectedResponse("fetch answer holds no record at or after the requested offset",
                                     offset=fetch_offset, topic=pf.topic, partition=pf.partition)
        size = sum(c.size_bytes for c in chunks)
        if chunks:
            pf.chunks.extend(chunks)
            pf.fetch_offset = next_offset
            self._data.set()
        if corrupt is not None:
            self._pause(pf, corrupt)
        return size


def _required_offset(info: OffsetInfo) -> int:
    if info.offset is None:
        raise UnexpectedResponse("offsets answer without an offset", topic=info.topic,
                                 partition=info.partition)
    return info.offset

