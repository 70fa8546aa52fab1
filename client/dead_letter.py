"""Retries with backoff, dead letters, and their replay (the I/O side of ``cluster/dead_letters.py``).

    producer = Producer(urls, acks="all")
    handler = RetryingHandler(handle, producer, Admin(urls), attempts=3)
    await group_consumer.run(handler)           # or: for r in await consumer.poll(): await handler(r)

``RetryingHandler(record)`` runs ``handle(record)`` up to ``attempts`` times, pausing ``backoff_ms * 2**(n-1)``
(capped) after failure n. If every attempt fails, the record is copied to ``<topic>.DLT`` (created on first
use with the source's partition count; same partition, key, value and headers, plus the ``dlt.*`` headers
saying why) with ``acks="all"``; only once that write is acknowledged does the call return, so the record's
offset is committed only after it is either handled or parked: at-least-once holds across the detour. A
DLT write that fails raises ``DeadLetterFailed`` and nothing is committed past the record.

``replay_dead_letters`` sends parked records back to where they came from (or to ``to_topic``), with their
own headers and ``dlt.replayed_from``, and remembers how far it got as the committed offsets of the group
``<dlt topic>.replay`` (resumable; a second replay sends only what was parked since).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.producer import Producer
from raftmq.client.types import ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.dead_letters import (
    REPLAYED_HEADER,
    DeadLetter,
    dead_letter_topic,
    original_headers,
    parse_dead_letter,
    retry_backoff_ms,
)
from raftmq.cluster.errors import DeadLetterFailed, RaftMQError, TopicAlreadyExists, UnknownTopicOrPartition

__all__ = ["DeadLetterFailed", "DeadLetterWriter", "ReplayReport", "RetryingHandler", "replay_dead_letters"]

log = logging.getLogger("raftmq.client.dead_letter")

RecordHandler = Callable[[ConsumerRecord], Awaitable[None] | None]


class RetryingHandler:
    """Wraps a record handler: retries with exponential backoff, then parks the record in ``<topic>.DLT``.

    Args:
        handler: called with each record; an exception is a failed attempt.
        producer: a started producer (``acks="all"``) for the dead-letter writes.
        admin: creates the dead-letter topic when it is missing.
        attempts: handler runs per record (>= 1).
        backoff_ms / backoff_ms_max: pause after the first failure, doubling up to the cap.
    """

    def __init__(self, handler: RecordHandler, producer: Producer, admin: Admin, *,
                 attempts: int = limits.client_retry_attempts_default,
                 backoff_ms: int = limits.client_retry_backoff_ms_base_default,
                 backoff_ms_max: int = limits.client_retry_backoff_ms_cap_default,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if attempts < 1 or backoff_ms < 0 or backoff_ms_max < backoff_ms:
            raise ValueError("attempts >= 1 and 0 <= backoff_ms <= backoff_ms_max")
        self.handler, self.producer, self.admin = handler, producer, admin
        self.attempts, self.backoff_ms, self.backoff_ms_max = attempts, backoff_ms, backoff_ms_max
        self._sleep = sleep
        self._parker = DeadLetterWriter(producer, admin)
        self.parked = 0

    async def __call__(self, record: ConsumerRecord) -> bool:
        """Handle ``record``: True when the handler succeeded, False when the record was parked."""
        error: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                result = self.handler(record)
                if inspect.isawaitable(result):
                    await result
                return True
            except Exception as exc:  # noqa: BLE001 - any handler failure is a failed attempt
                error = exc
                if attempt < self.attempts:
                    await self._sleep(retry_backoff_ms(attempt, base_ms=self.backoff_ms,
                                                       max_ms=self.backoff_ms_max) / 1000)
        assert error is not None
        await self._park(record, error)
        return False

    async def _park(self, record: ConsumerRecord, error: BaseException) -> None:
        await self._parker.park(record, self.attempts, f"{type(error).__name__}: {error}")
        self.parked += 1


class DeadLetterWriter:
    """Copies records to their ``<topic>.DLT`` (created on first use with the source's partition count) with
    the ``dlt.*`` headers, acks=all; raises ``DeadLetterFailed`` when the write is not acknowledged."""

    def __init__(self, producer: Producer, admin: Admin) -> None:
        self.producer, self.admin = producer, admin
        self._ready_topics: set[str] = set()

    async def park(self, record: ConsumerRecord, attempts: int, why: str) -> None:
        target = dead_letter_topic(record.topic)
        await self._ensure_topic(record.topic, target)
        letter = DeadLetter(record.topic, record.partition, record.offset, record.timestamp_ms, attempts, why,
                            int(time.time() * 1000))
        report = await self.producer.send_and_wait(target, record.value, key=record.key,
                                                   headers=[*record.headers, *letter.headers()],
                                                   partition=record.partition)
        if not report.ok:
            raise DeadLetterFailed(f"{record.topic}/{record.partition}@{record.offset} could not be parked in "
                                   f"{target}: {report.error}", topic=record.topic, partition=record.partition,
                                   offset=record.offset)
        log.warning("%s/%d@%d parked in %s after %d attempts: %s", record.topic, record.partition, record.offset,
                    target, attempts, letter.error)

    async def _ensure_topic(self, source: str, target: str) -> None:
        if target in self._ready_topics:
            return
        try:
            await self.admin.describe_topic(target)
        except UnknownTopicOrPartition:
            partitions = (await self.admin.describe_topic(source)).partition_count
            try:
                await self.admin.create_topic(target, partitions)
            except TopicAlreadyExists:
                pass
            await self.admin.wait_for_topic(target)
        self._ready_topics.add(target)


@dataclass(frozen=True)
class ReplayReport:
    replayed: int
    skipped: int  # records without dead-letter headers (not written by RetryingHandler)


async def replay_dead_letters(bootstrap: list[str], dlt_topic: str, *, to_topic: str | None = None,
                              group_id: str | None = None, dry_run: bool = False,
                              timeout_s: float = 30.0) -> ReplayReport:
    """Send every record parked in ``dlt_topic`` since the last replay back to its original topic (or
    ``to_topic``), then commit how far it got under ``group_id`` (default ``<dlt_topic>.replay``)."""
    group = group_id or f"{dlt_topic}.replay"
    replayed = skipped = 0
    async with Admin(bootstrap) as admin, Consumer(bootstrap, max_wait_ms=100) as consumer, \
            Producer(bootstrap, acks="all") as producer:
        info = await admin.describe_topic(dlt_topic)
        partitions = [TopicPartition(dlt_topic, p) for p in range(info.partition_count)]
        consumer.assign(partitions)
        committed = await admin.group_offsets(group)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        pending = set()
        for tp in partitions:
            start = max(committed.get(tp, starts[tp]), starts[tp])
            consumer.seek(tp.topic, tp.partition, start)
            if start < ends[tp]:
                pending.add(tp)
        done: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise RaftMQError(f"replay of {dlt_topic} did not finish within {timeout_s:.0f} s")
            for record in await consumer.poll(timeout_ms=200):
                tp = TopicPartition(record.topic, record.partition)
                if record.offset >= ends[tp]:
                    continue
                letter = parse_dead_letter(record.headers)
                if letter is None:
                    skipped += 1
                elif not dry_run:
                    headers = [*original_headers(record.headers),
                               (REPLAYED_HEADER, f"{dlt_topic}/{record.partition}/{record.offset}".encode())]
                    report = await producer.send_and_wait(to_topic or letter.topic, record.value, key=record.key,
                                                          headers=headers)
                    if not report.ok:
                        raise DeadLetterFailed(f"replay of {dlt_topic}/{record.partition}@{record.offset} failed: "
                                               f"{report.error}")
                    replayed += 1
                else:
                    replayed += 1
                done[tp] = record.offset + 1
            for tp in list(pending):
                if done.get(tp, -1) >= ends[tp]:
                    pending.discard(tp)
        if done and not dry_run:
            await admin.commit_group_offsets(group, done, metadata="dlt replay")
    return ReplayReport(replayed, skipped)
