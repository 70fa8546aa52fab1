"""Push consumers of share groups on the group's coordinator: one WebSocket per consumer, records sent under
a prefetch window, acks applied as share-group acknowledgements, dead letters published to an exchange.

The rules are cluster/push.py's. What this module adds is the I/O and its bounds:

* Memory: a session holds at most ``prefetch`` records (``push_prefetch_max``), and a broker at most
  ``push_connections_max`` sessions. Acquiring stops while the window is full, so a consumer that stops
  acknowledging stops receiving; one that stops READING its socket blocks the send, and after
  ``push_send_timeout_s`` it is disconnected (aiohttp's writer waits for the socket to drain above its
  buffer limit, so unread frames do not pile up in the broker).
* Raft entries: each acquire is one entry of the group-state partition. An idle session acquires on a
  partition only when its high watermark moved since its last empty acquire, or ``push_rescan_s`` passed
  (to pick up records other consumers released or whose locks expired); it reads watermarks meanwhile.
* The end: when the socket closes, every record still in flight is released to the group at once.

Records and watermarks are read through node/partition_reader.py; dead letters go through
node/dead_lettering.py (shared with the pull API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from raftmq.cluster import limits
from raftmq.cluster.batch import Record
from raftmq.cluster.dead_lettering import DeathReason
from raftmq.cluster.errors import RaftMQError, TooManyConnections
from raftmq.cluster.group_requests import ShareAcknowledge, ShareAcquire
from raftmq.cluster.push import Delivery, PrefetchWindow, PushSubscription, delivery_frame, parse_ack_frame
from raftmq.cluster.share_groups import AckKind

log = logging.getLogger(__name__)


class Session(Protocol):
    """A push session: this module's PushSession (share groups) or node/group_push.py's (consumer groups)."""

    @property
    def records_held(self) -> int: ...

    async def run(self) -> None: ...


class PushSessions:
    """Every push consumer this broker serves. ``service`` is the BrokerService (groups, fetch, offsets,
    exchanges, its partition reader and dead letters)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # sessions and releases that outlive a cancelled handler

    @property
    def active(self) -> int:
        return len(self.sessions)

    @property
    def records_held(self) -> int:
        """Records held in memory for push consumers (each session at most its prefetch)."""
        return sum(session.records_held for session in self.sessions)

    async def check(self, group_id: str, topics: Iterable[str]) -> None:
        """Before the upgrade: refuse (as a coded HTTP answer) what the session could not serve."""
        if self.active >= limits.push_connections_max:
            raise TooManyConnections(f"this broker serves {limits.push_connections_max} push consumers already",
                                     push_connections_max=limits.push_connections_max)
        await self.service.groups.check_coordinator(group_id)
        for topic in topics:
            self.service.metadata.topic(topic)  # UNKNOWN_TOPIC_OR_PARTITION before the upgrade

    def keep(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Hold a reference to ``task`` until it ends (the event loop keeps only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def serve(self, session: Session) -> None:
        """Run one session to its end. aiohttp cancels the handler when the client goes away; the session
        runs as its own task so that a cancellation between an acquire's commit and its bookkeeping cannot
        leave records locked for nobody: it notices the closed socket itself and releases what it holds."""
        self.sessions.add(session)
        task = self.keep(asyncio.get_running_loop().create_task(session.run()))
        task.add_done_callback(lambda _task: self.sessions.discard(session))
        await asyncio.shield(task)


class PushSession:
    def __init__(self, sessions: PushSessions, ws: web.WebSocketResponse, subscription: PushSubscription) -> None:
        self.sessions = sessions
        self.service = sessions.service
        self.ws = ws
        self.sub = subscription
        self.member_id = "push-" + uuid.uuid4().hex
        self.window = PrefetchWindow(subscription.prefetch)
        self.records: dict[Delivery, Record] = {}  # the in-flight records (a reject may dead-letter them)
        self.pending: set[Delivery] = set()  # acquired (locked for this member), not yet in the window
        self.wake = asyncio.Event()
        self.seen_end: dict[tuple[str, int], int] = {}  # high watermark at the last acquire that found nothing
        self.scanned_at: dict[tuple[str, int], float] = {}

    @property
    def records_held(self) -> int:
        return len(self.records)

    async def run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read_acks())
        try:
            while not self.ws.closed and not reader.done():
                if self.window.room > 0 and await self._fill():
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limits.push_idle_poll_s):
                        await self.wake.wait()  # an ack made room, or time to look at the watermarks again
        except (ConnectionResetError, TimeoutError) as exc:
            log.info("push consumer %s of %s: disconnected (%r)", self.member_id, self.sub.group_id, exc)
        finally:
            reader.cancel()
            # aiohttp cancels the handler when the client goes away: the release runs as its own task so a
            # cancellation cannot cut it short (else the records stay locked until lock_ms passes).
            release = self.sessions.keep(asyncio.get_running_loop().create_task(self._release_all()))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(release)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.ws.close()

    # --- delivering -------------------------------------------------------------------------------

    async def _partitions(self) -> list[tuple[str, int]]:
        view = self.service.metadata.view
        return [(t, p) for t in self.sub.topics if t in view for p in range(view[t].partitions)]

    async def _fill(self) -> bool:
        """Acquire and send records until the window is full or nothing is available; True if any was sent."""
        sent = False
        for topic, partition in await self._partitions():
            if self.window.room <= 0:
                break
            try:
                sent = await self._fill_from(topic, partition) or sent
            except RaftMQError as exc:  # that partition's leader or coordinator is moving: the next pass retries
                log.debug("push %s: %s-%d: %s", self.member_id, topic, partition, exc)
        return sent

    async def _fill_from(self, topic: str, partition: int) -> bool:
        key = (topic, partition)
        log_start, log_end = await self.service.reader.watermarks(topic, partition)
        now = time.monotonic()
        if self.seen_end.get(key) == log_end and now - self.scanned_at.get(key, 0.0) < limits.push_rescan_s:
            return False
        self.scanned_at[key] = now
        request = ShareAcquire(self.sub.group_id, self.member_id, topic, partition, log_end, log_start,
                               min(self.window.room, limits.share_acquire_records_max), self.sub.lock_ms,
                               self.sub.max_deliveries)
        acquired = await self.service.share_acquire(request)
        if not acquired.acquired:
            self.seen_end[key] = log_end
            return False
        self.seen_end.pop(key, None)
        self.pending.update((topic, partition, o) for o, _n, _d in acquired.acquired)
        # Expired and over-limit records are dead-lettered (and settled) there instead of being sent.
        kept, records = await self.service.dead_letters.screen(request, acquired.acquired,
                                                               subscription=self.sub.dead_letter, park_over_limit=True)
        kept_offsets = {offset for offset, _count, _over in kept}
        self.pending.difference_update((topic, partition, o) for o, _n, _d in acquired.acquired
                                       if o not in kept_offsets)
        if kept and not records:
            records = await self.service.reader.read(topic, partition, sorted(kept_offsets))
        frames = []
        for offset, count, _over in kept:
            record = records.get(offset)
            self.pending.discard((topic, partition, offset))
            if record is None:
                continue  # gone (retention); its lock expires
            # Into the window before the first send: if the connection breaks mid-way, run() releases them all.
            self.window.deliver((topic, partition, offset), count)
            self.records[(topic, partition, offset)] = record
            frames.append(delivery_frame(topic, partition, record, count))
        for frame in frames:
            async with asyncio.timeout(limits.push_send_timeout_s):
                await self.ws.send_bytes(frame)
        return bool(frames)

    # --- acknowledgements -------------------------------------------------------------------------

    async def _read_acks(self) -> None:
        async for message in self.ws:
            if message.type is not WSMsgType.BINARY:
                continue  # text frames are not part of the protocol; closing frames end the loop
            try:
                acks = parse_ack_frame(message.data)
            except RaftMQError as exc:
                await self.ws.close(code=1003, message=str(exc).encode()[:120])
                return
            await self._settle(acks)
            self.wake.set()

    async def _settle(self, acks: list[tuple[Delivery, AckKind]]) -> None:
        by_partition: dict[tuple[str, int], list[tuple[int, AckKind]]] = {}
        for delivery, kind in acks:
            count = self.window.settle(delivery)
            record = self.records.pop(delivery, None)
            if count is None or record is None:
                continue  # not in flight here (acknowledged twice, or never sent): nothing to do
            topic, partition, offset = delivery
            if kind is AckKind.REJECT:
                target = self.service.dead_letters.target(self.sub.group_id, topic, self.sub.dead_letter)
                kind = await self.service.dead_letters.publish(target, topic, partition, record,
                                                               DeathReason.REJECTED, count)
            by_partition.setdefault((topic, partition), []).append((offset, kind))
        for (topic, partition), done in by_partition.items():
            try:
                await self.service.share_acknowledge(ShareAcknowledge(self.sub.group_id, self.member_id, topic,
                                                                      partition, tuple(done)))
            except RaftMQError as exc:  # the locks expire and the records are delivered again
                log.info("push %s: acknowledging %s-%d failed: %s", self.member_id, topic, partition, exc)

    async def _release_all(self) -> None:
        held = sorted(set(self.window.in_flight) | self.pending)
        self.window.in_flight.clear()
        self.pending.clear()
        self.records.clear()
        with contextlib.suppress(RaftMQError):
            by_partition: dict[tuple[str, int], list[tuple[int, AckKind]]] = {}
            for topic, partition, offset in held:
                by_partition.setdefault((topic, partition), []).append((offset, AckKind.RELEASE))
            for (topic, partition), released in by_partition.items():
                await self.service.share_acknowledge(ShareAcknowledge(self.sub.group_id, self.member_id, topic,
                                                                      partition, tuple(released)))
