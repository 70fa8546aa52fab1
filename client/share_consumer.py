"""Queue mode: a consumer of a share group (the broker side is ``cluster/share_groups.py``).

    async with ShareConsumer(urls, "jobs", topics=["tasks"], lock_ms=30_000) as consumer:
        for item in await consumer.poll():
            try:
                handle(item.record)
                consumer.acknowledge(item)              # done: never delivered again
            except Exception:
                consumer.release(item)                  # or reject(item): never delivered again

Many share consumers read the same partitions: each ``poll()`` locks records for this consumer for
``lock_ms`` (the visibility timeout) at the group's coordinator, then fetches them from the partitions'
leaders. A record not acknowledged in time is delivered again (to any consumer) with a higher
``delivery_count``; one delivered ``max_deliveries`` times is parked in ``<topic>.DLT`` (headers as
``RetryingHandler`` writes them) and accepted, instead of being returned. Acknowledgements are sent with the
next ``poll()``, ``flush()`` or ``stop()``; ``stop()`` releases what this consumer still holds, so others
get it at once. An acknowledgement for a lock that expired is refused (``flush()`` returns it): the record
went back to the queue, and whoever holds it now decides, so no record is acknowledged twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from raftmq.client.admin import Admin
from raftmq.client.connection import AsyncLifecycle, backoff_s
from raftmq.client.consumer import Consumer
from raftmq.client.dead_letter import DeadLetterWriter
from raftmq.client.group_coordinator import CoordinatorClient
from raftmq.client.producer import Producer
from raftmq.client.types import ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import RaftMQError, UnexpectedResponse
from raftmq.cluster.share_groups import AckKind

__all__ = ["ShareConsumer", "ShareRecord"]

log = logging.getLogger("raftmq.client.share")

# Fetches per acquired range: locked records are fetched from the lowest offset on; sparse ones may need more.
_FETCHES_PER_ACQUIRE_MAX = 8


class ShareRecord(NamedTuple):
    record: ConsumerRecord
    delivery_count: int  # 1 on the first delivery


class ShareConsumer(AsyncLifecycle):
    """A consumer of share group ``group_id`` over ``topics`` (every partition of each).

    Args:
        lock_ms: the visibility timeout of each delivered record.
        max_deliveries: deliveries before a record is parked in ``<topic>.DLT`` instead.
        max_records: records one poll locks at most (per partition it asks).
        consumer_options: passed to the :class:`Consumer` used for fetching.
    """

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, *, topics: Iterable[str],
                 lock_ms: int = limits.share_lock_ms_default,
                 max_deliveries: int = limits.share_max_deliveries_default, max_records: int = 100,
                 rng: random.Random | None = None, **consumer_options: Any) -> None:
        self.topics = sorted(set(topics))
        if not self.topics:
            raise ValueError("a share consumer reads at least one topic")
        if not limits.share_lock_ms_min <= lock_ms <= limits.share_lock_ms_max:
            raise ValueError(f"lock_ms must be in [{limits.share_lock_ms_min}, {limits.share_lock_ms_max}]")
        if not 1 <= max_records <= limits.share_acquire_records_max or max_deliveries < 1:
            raise ValueError(f"max_records must be in [1, {limits.share_acquire_records_max}], max_deliveries >= 1")
        urls = [bootstrap_urls] if isinstance(bootstrap_urls, str) else list(bootstrap_urls)
        self.group_id, self.lock_ms, self.max_deliveries, self.max_records = group_id, lock_ms, max_deliveries, \
            max_records
        self._rng = rng if rng is not None else random.Random()
        self.consumer = Consumer(urls, rng=self._rng, **consumer_options)
        self._coordinator = CoordinatorClient(self.consumer.connection, self.consumer.cluster,
                                              self.consumer.metadata_fetcher,
                                              request_timeout_s=self.consumer.request_timeout_s, rng=self._rng)
        self._admin = Admin(urls)
        self._producer = Producer(urls, acks="all")
        self._dead_letters = DeadLetterWriter(self._producer, self._admin)
        self.member_id = uuid.uuid4().hex
        self._held: dict[TopicPartition, set[int]] = {}  # locked for this consumer, not acknowledged yet
        self._acks: dict[TopicPartition, dict[int, str]] = {}  # waiting to be sent
        self._partitions: list[TopicPartition] = []
        self._rotation = 0
        self._running = False
        self.parked = 0

    async def start(self) -> None:
        await self.consumer.start()
        await self._producer.start()
        try:
            for topic in self.topics:
                info = await self._admin.describe_topic(topic)
                self._partitions += [TopicPartition(topic, p) for p in range(info.partition_count)]
        except BaseException:
            await self._producer.stop()
            await self.consumer.stop()
            raise
        self._running = True

    async def stop(self) -> None:
        """Send pending acknowledgements, release every record still held, and close. Idempotent."""
        if self._running:
            self._running = False
            for tp, offsets in self._held.items():
                for offset in offsets:
                    self._acks.setdefault(tp, {}).setdefault(offset, AckKind.RELEASE)
            try:
                await self.flush()
            except RaftMQError as exc:
                log.warning("share group %s: could not release held records (their locks will expire): %s",
                            self.group_id, exc)
        await self._producer.stop()
        await self._admin.stop()
        await self.consumer.stop()

    # --- acknowledgements ----------------------------------------------------------------------------------

    def acknowledge(self, item: ShareRecord, kind: AckKind | str = AckKind.ACCEPT) -> None:
        """Mark a delivered record ``accept`` (default), ``release`` or ``reject``; sent with the next poll."""
        record = item.record
        tp = TopicPartition(record.topic, record.partition)
        if record.offset not in self._held.get(tp, ()):
            raise KeyError(f"{record.topic}/{record.partition}@{record.offset} is not held by this consumer")
        self._acks.setdefault(tp, {})[record.offset] = AckKind(kind).value

    def release(self, item: ShareRecord) -> None:
        self.acknowledge(item, AckKind.RELEASE)

    def reject(self, item: ShareRecord) -> None:
        self.acknowledge(item, AckKind.REJECT)

    async def flush(self) -> list[tuple[TopicPartition, int]]:
        """Send pending acknowledgements; returns those refused (their lock had expired)."""
        refused: list[tuple[TopicPartition, int]] = []
        deadline = time.monotonic() + self.consumer.request_timeout_s
        for tp, acks in list(self._acks.items()):
            if not acks:
                continue
            body = {"member_id": self.member_id, "topic": tp.topic, "partition": tp.partition,
                    "acks": [[offset, kind] for offset, kind in sorted(acks.items())]}
            answer = await self._coordinator.call(self.group_id, "POST", "/acknowledge", body, deadline_s=deadline,
                                                  kind="share-groups")
            del self._acks[tp]
            held = self._held.get(tp, set())
            held.difference_update(acks)
            refused += [(tp, int(offset)) for offset, _why in answer.get("refused") or []]
        return refused

    # --- polling ---------------------------------------------------------------------------------------------

    async def poll(self, timeout_ms: int = 1000) -> list[ShareRecord]:
        """Records locked for this consumer (from one partition, rotating), waiting up to ``timeout_ms`` for
        some; ``[]`` when none became available in time."""
        if not self._running:
            raise RuntimeError("share consumer is not running (call start() or use 'async with')")
        await self.flush()
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        idle = 0
        while True:
            for _ in range(len(self._partitions)):
                tp = self._partitions[self._rotation % len(self._partitions)]
                self._rotation += 1
                items = await self._acquire_from(tp)
                if items:
                    return items
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            idle += 1
            pause = backoff_s(idle, base_ms=self.consumer.retry_backoff_ms, max_ms=self.consumer.max_wait_ms,
                              rng=self._rng)
            await asyncio.sleep(min(remaining, pause))  # nothing available: ask again (a poll interval)

    async def _acquire_from(self, tp: TopicPartition) -> list[ShareRecord]:
        log_start, log_end = await self.consumer.watermarks(tp.topic, tp.partition)
        body = {"member_id": self.member_id, "topic": tp.topic, "partition": tp.partition, "log_end": log_end,
                "log_start": log_start, "max_records": self.max_records, "lock_ms": self.lock_ms,
                "max_deliveries": self.max_deliveries}
        answer = await self._coordinator.call(self.group_id, "POST", "/acquire", body,
                                              deadline_s=time.monotonic() + self.consumer.request_timeout_s,
                                              kind="share-groups")
        acquired = {int(o): (int(n), bool(dead)) for o, n, dead in answer.get("acquired") or []}
        if not acquired:
            return []
        self._held.setdefault(tp, set()).update(acquired)
        records = await self._fetch(tp, sorted(acquired))
        items: list[ShareRecord] = []
        parked = False
        for record in records:
            count, dead = acquired[record.offset]
            if dead:
                await self._dead_letters.park(record, count - 1, f"delivered {count - 1} times (max_deliveries "
                                                                 f"{self.max_deliveries}) without an acknowledgement")
                self.parked += 1
                self._acks.setdefault(tp, {})[record.offset] = AckKind.ACCEPT.value
                parked = True
            else:
                items.append(ShareRecord(record, count))
        if parked:
            await self.flush()  # accept the parked records while their locks hold (else they are parked again)
        return items

    async def _fetch(self, tp: TopicPartition, offsets: list[int]) -> list[ConsumerRecord]:
        wanted = set(offsets)
        found: dict[int, ConsumerRecord] = {}
        for _ in range(_FETCHES_PER_ACQUIRE_MAX):
            missing = sorted(wanted - set(found))
            if not missing:
                break
            records = await self.consumer.read_records(tp.topic, tp.partition, missing[0])
            if not records:
                raise UnexpectedResponse(f"{tp.topic}/{tp.partition}: no record at locked offset {missing[0]}")
            found.update((r.offset, r) for r in records if r.offset in wanted)
        return [found[o] for o in offsets if o in found]
