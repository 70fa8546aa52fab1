"""The group consumer: a ``Consumer`` whose partitions come from a consumer group's coordinator.

    async with GroupConsumer(urls, "billing", topics=["orders"]) as consumer:
        async for record in consumer:                  # or: records = await consumer.poll()
            handle(record)                              # at-least-once: committed after you return

How it works (KIP-848, the broker side is ``cluster/consumer_groups.py``):

* ``start()`` joins (member epoch 0) with the subscription (topic names and/or one glob such as
  ``order.*``); a heartbeat task then beats every ``heartbeat_interval_ms`` the coordinator asks for,
  reporting the partitions this member still owns, and learns its assignment and epoch from each answer.
  Every heartbeat has a deadline; a member that cannot reach its coordinator for a whole session timeout
  assumes its partitions were given away, stops reading them (``on_lost``) and joins again.
* Changes are incremental and applied inside ``poll()`` (so the records an earlier poll returned were
  handled first, as Kafka runs its rebalance callbacks in poll): revoked partitions have their positions
  committed (unless ``auto_commit`` is off), ``on_revoked`` runs, and they are dropped; the next heartbeat
  reports the release, which lets the coordinator give them to their new owner. Newly assigned partitions
  start at the group's committed offset, else by ``auto_offset_reset`` (earliest / latest / none), then
  ``on_assigned`` runs. ``seek`` works inside a group as on a plain consumer.
* Commits carry the member id and epoch; the coordinator refuses a commit for a partition this member no
  longer owns (``STALE_MEMBER_EPOCH``) or from a member that left the group (``UNKNOWN_MEMBER_ID``).

Delivery modes (``delivery``):

* ``"at_least_once"`` (default): a record's offset is committed only after the application returned to
  ``poll()`` (auto-commit every ``auto_commit_interval_ms``, on revocation and on ``stop()``; or by hand
  with ``commit()`` / ``commit_async()`` and ``auto_commit=False``). A crash between processing and the
  next commit re-delivers those records to the next owner: duplicates, never a loss.
* ``"at_most_once"``: ``poll()`` commits the positions after the records it returns *before* returning
  them. A crash while processing loses the rest of that batch (the next owner starts after it): never a
  duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, Self

from raftmq.client.connection import AsyncLifecycle, backoff_s
from raftmq.client.consumer import Consumer, OffsetReset
from raftmq.client.group_coordinator import CoordinatorClient
from raftmq.client.types import ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    FencedMemberEpoch,
    RaftMQError,
    StaleMemberEpoch,
    UnexpectedResponse,
    UnknownMemberId,
)

__all__ = ["Delivery", "GroupConsumer", "PartitionsCallback"]

log = logging.getLogger("raftmq.client.group")

Delivery = Literal["at_least_once", "at_most_once"]
PartitionsCallback = Callable[[list[TopicPartition]], Awaitable[None] | None]
# How often poll() looks for an assignment change while it waits for records (not a network wait).
_RECONCILE_CHECK_S = 0.05


class GroupConsumer(AsyncLifecycle):
    """A member of consumer group ``group_id``. ``async with GroupConsumer(...) as c``.

    Args:
        bootstrap_urls: one or more broker client URLs.
        group_id: the group ([a-zA-Z0-9._-]).
        topics / pattern: the subscription: topic names, and/or one glob over topic names (``*``, ``?``;
            internal topics never match).
        instance_id: static membership: a restart with the same id within the session timeout keeps its
            partitions without a reassignment (``stop()`` then leaves statically).
        session_timeout_ms: the coordinator removes a member it has not heard from for this long.
        rebalance_timeout_ms: how long this member may take to release revoked partitions.
        auto_commit / auto_commit_interval_ms: commit positions periodically in ``poll()`` (at-least-once).
        delivery: ``"at_least_once"`` (default) or ``"at_most_once"`` (see the module docstring).
        on_assigned / on_revoked / on_lost: called (and awaited if coroutines) from ``poll()`` with the
            partitions gained, given up (after their commit), or lost without a chance to commit.
        consumer_options: passed to :class:`Consumer` (``fetch_max_bytes``, ``max_wait_ms``, ...).
    """

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, *, topics: Iterable[str] = (),
                 pattern: str | None = None, instance_id: str | None = None, client_id: str = "raftmq",
                 session_timeout_ms: int = limits.group_session_timeout_ms_default,
                 rebalance_timeout_ms: int = limits.group_rebalance_timeout_ms_default,
                 auto_commit: bool = True,
                 auto_commit_interval_ms: int = limits.client_auto_commit_interval_ms_default,
                 delivery: Delivery = "at_least_once", auto_offset_reset: OffsetReset = "earliest",
                 on_assigned: PartitionsCallback | None = None, on_revoked: PartitionsCallback | None = None,
                 on_lost: PartitionsCallback | None = None, rng: random.Random | None = None,
                 **consumer_options: Any) -> None:
        self.topics = sorted(set(topics))
        if not self.topics and pattern is None:
            raise ValueError("subscribe to topics, a pattern, or both")
        if delivery not in ("at_least_once", "at_most_once"):
            raise ValueError("delivery must be 'at_least_once' or 'at_most_once'")
        if not limits.group_session_timeout_ms_min <= session_timeout_ms <= limits.group_session_timeout_ms_max:
            raise ValueError(f"session_timeout_ms must be in [{limits.group_session_timeout_ms_min}, "
                             f"{limits.group_session_timeout_ms_max}]")
        if auto_commit_interval_ms <= 0:
            raise ValueError("auto_commit_interval_ms must be > 0")
        self.group_id = group_id
        self.pattern = pattern
        self.instance_id = instance_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.auto_commit = auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.delivery: Delivery = delivery
        self.on_assigned, self.on_revoked, self.on_lost = on_assigned, on_revoked, on_lost
        self._rng = rng if rng is not None else random.Random()
        self.consumer = Consumer(bootstrap_urls, auto_offset_reset=auto_offset_reset, rng=self._rng,
                                 **consumer_options)
        self._coordinator = CoordinatorClient(self.consumer.connection, self.consumer.cluster,
                                              self.consumer.metadata_fetcher,
                                              request_timeout_s=self.consumer.request_timeout_s, rng=self._rng)
        self.member_id = uuid.uuid4().hex  # chosen here, so a join retried after a lost answer is the same member
        self.member_epoch = 0
        self._owned: set[TopicPartition] = set()  # what the consumer reads now
        self._target: set[TopicPartition] = set()  # what the coordinator last said this member owns
        self._lost: list[TopicPartition] = []  # dropped by the heartbeat task; on_lost runs in poll()
        self._answered = asyncio.Event()  # set after each heartbeat answer
        self._wake = asyncio.Event()  # poll() released partitions: report it now
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[int]] = set()
        self._commit_sequence = -1
        self._last_commit = time.monotonic()
        self._reconcile_lock = asyncio.Lock()
        self._iter_buffer: list[ConsumerRecord] = []
        self._running = False

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group (within the consumer's request timeout, retried while the coordinator moves) and
        start heartbeating. Raises what the join raises when the deadline passes."""
        await self.consumer.start()
        try:
            await self._heartbeat_once(time.monotonic() + max(self.consumer.request_timeout_s,
                                                              self.session_timeout_ms / 1000))
        except BaseException:
            await self.consumer.stop()
            raise
        self._running = True
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat_forever(),
                                                                      name=f"raftmq-group-{self.group_id}")

    async def stop(self, *, commit: bool = True, leave: bool = True) -> None:
        """Commit positions (with ``auto_commit``, at-least-once), leave the group (statically with an
        ``instance_id``: the partitions wait for it for a session timeout) and stop. ``commit=False,
        leave=False`` is what a crash looks like to the group (tests, processes that must exit at once).
        Idempotent."""
        if not self._running:
            await self.consumer.stop()
            return
        self._running = False
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        deadline = time.monotonic() + self.consumer.request_timeout_s
        if commit and self.auto_commit and self.delivery == "at_least_once" and self._owned:
            with contextlib.suppress(RaftMQError):
                await self._commit(self.positions(), deadline)
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)
        if leave and self.member_epoch > 0:
            epoch = -2 if self.instance_id is not None else -1
            with contextlib.suppress(RaftMQError):
                await self._coordinator.call(self.group_id, "POST", "/heartbeat",
                                             {"member_id": self.member_id, "member_epoch": epoch},
                                             deadline_s=deadline)
        await self.consumer.stop()

    # --- heartbeats ----------------------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"member_id": self.member_id, "member_epoch": self.member_epoch,
                                "owned": [[tp.topic, tp.partition] for tp in sorted(self._owned)],
                                "session_timeout_ms": self.session_timeout_ms,
                                "rebalance_timeout_ms": self.rebalance_timeout_ms}
        if self.member_epoch == 0:
            body.update(subscription={"topics": self.topics, "pattern": self.pattern},
                        instance_id=self.instance_id, client_id=self.client_id)
        return body

    async def _heartbeat_once(self, deadline_s: float) -> float:
        """One heartbeat; returns the interval until the next. Raises what the coordinator answers."""
        answer = await self._coordinator.call(self.group_id, "POST", "/heartbeat", self._body(),
                                              deadline_s=deadline_s)
        epoch, assignment, interval = answer.get("member_epoch"), answer.get("assignment"), \
            answer.get("heartbeat_interval_ms")
        if type(epoch) is not int or not isinstance(assignment, list) or type(interval) is not int:
            raise UnexpectedResponse("heartbeat answer without member_epoch, assignment, heartbeat_interval_ms")
        target = {TopicPartition(str(t), int(p)) for t, p in assignment}
        self.member_epoch = epoch
        self._target = target
        self._answered.set()
        self._answered = asyncio.Event()
        return interval / 1000

    async def _heartbeat_forever(self) -> None:
        interval_s = self.session_timeout_ms / 1000 / limits.group_heartbeats_per_session
        last_ok = time.monotonic()
        retry = 0
        while self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s if retry == 0 else
                                           backoff_s(retry, base_ms=self.consumer.retry_backoff_ms,
                                                     max_ms=self.consumer.retry_backoff_ms_max, rng=self._rng)):
                    await self._wake.wait()  # the interval, cut short when poll() released partitions
            self._wake.clear()
            # Give up on this coordinator exchange before the session could have ended without us noticing.
            deadline = min(last_ok + self.session_timeout_ms / 1000, time.monotonic() + interval_s)
            try:
                interval_s = await self._heartbeat_once(max(deadline, time.monotonic() + 0.05))
                last_ok = time.monotonic()
                retry = 0
            except (UnknownMemberId, FencedMemberEpoch) as exc:
                log.warning("group %s: %s; joining again", self.group_id, exc)
                self._lose_everything()
                retry = 1
            except Exception as exc:  # noqa: BLE001 - RaftMQErrors and malformed answers: retried, never fatal
                if not isinstance(exc, RaftMQError):
                    log.error("group %s: heartbeat failed", self.group_id, exc_info=exc)
                retry += 1
                if time.monotonic() - last_ok >= self.session_timeout_ms / 1000 and self.member_epoch > 0:
                    log.warning("group %s: no heartbeat answered for a whole session (%s); joining again",
                                self.group_id, exc)
                    self._lose_everything()
                    last_ok = time.monotonic()

    def _lose_everything(self) -> None:
        """This member is out of the group: another member may own its partitions already, so stop reading
        them at once and do not commit them."""
        self._lost.extend(sorted(self._owned))
        self._owned.clear()
        self._target.clear()
        self.consumer.assign([])
        self.member_epoch = 0

    # --- reconciliation (inside poll) ------------------------------------------------------------------

    async def _reconcile(self) -> None:
        async with self._reconcile_lock:
            if self._lost:
                lost, self._lost = self._lost, []
                await _call(self.on_lost, lost)
            revoked = sorted(self._owned - self._target)
            if revoked:
                if self.auto_commit and self.delivery == "at_least_once":
                    positions = {tp: o for tp, o in self.positions().items() if tp in revoked}
                    try:
                        await self._commit(positions, time.monotonic() + self.consumer.request_timeout_s)
                    except RaftMQError as exc:
                        log.warning("group %s: commit before revoking %s failed: %s", self.group_id, revoked, exc)
                await _call(self.on_revoked, revoked)
                self._owned -= set(revoked)
                self.consumer.assign(sorted(self._owned))
                self._wake.set()
            added = sorted(self._target - self._owned)
            if added:
                committed = await self.committed(added)
                added = [tp for tp in added if tp in self._target]  # the heartbeat task may have lost them meanwhile
                self._owned |= set(added)
                self.consumer.assign(sorted(self._owned))
                for tp in added:
                    if tp in committed:
                        self.consumer.seek(tp.topic, tp.partition, committed[tp])
                await _call(self.on_assigned, added)

    # --- polling -------------------------------------------------------------------------------------------

    async def poll(self, timeout_ms: int = 1000, max_records: int = limits.client_poll_records_max_default
                   ) -> list[ConsumerRecord]:
        """Records of the partitions this member owns (see ``Consumer.poll``). Applies assignment changes
        and auto-commits first; at-most-once commits the returned records' offsets before returning them."""
        if not self._running:
            raise RuntimeError("group consumer is not running (call start() or use 'async with')")
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            await self._reconcile()
            await self._maybe_auto_commit()
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            records = await self.consumer.poll(timeout_ms=max(0, min(remaining_ms, int(_RECONCILE_CHECK_S * 1000))),
                                               max_records=max_records)
            if records or remaining_ms <= 0:
                break
        if records and self.delivery == "at_most_once":
            after: dict[TopicPartition, int] = {}
            for record in records:
                after[TopicPartition(record.topic, record.partition)] = record.offset + 1
            await self._commit(after, time.monotonic() + self.consumer.request_timeout_s)
        return records

    async def run(self, handler: Callable[[ConsumerRecord], Awaitable[Any] | Any], *,
                  stop: asyncio.Event | None = None, poll_timeout_ms: int = 500) -> None:
        """Hand every record to ``handler`` (awaited when it returns an awaitable), in order per partition,
        until ``stop`` is set or the task is cancelled. At-least-once: a record's offset is committed only
        after ``handler`` returned for it (e.g. a ``RetryingHandler`` that parked it in ``<topic>.DLT``); an
        exception from ``handler`` propagates and nothing past that record is committed by this call."""
        while stop is None or not stop.is_set():
            records = await self.poll(timeout_ms=poll_timeout_ms)
            for index, record in enumerate(records):
                try:
                    result = handler(record)
                    if inspect.isawaitable(result):
                        await result
                except BaseException:
                    self._rewind(records[index:])  # what was not handled is not committed, and is read again
                    raise

    def _rewind(self, unhandled: list[ConsumerRecord]) -> None:
        first: dict[TopicPartition, int] = {}
        for record in unhandled:
            first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        for tp, offset in first.items():
            if tp in self._owned:
                self.consumer.seek(tp.topic, tp.partition, offset)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ConsumerRecord:
        while not self._iter_buffer:
            if not self._running:
                raise StopAsyncIteration
            self._iter_buffer = list(reversed(await self.poll(timeout_ms=500)))
        return self._iter_buffer.pop()

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._owned)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """As ``Consumer.seek``, for a partition this member owns (KeyError otherwise)."""
        self.consumer.seek(topic, partition, offset)

    def positions(self) -> dict[TopicPartition, int]:
        return self.consumer.positions()

    # --- offsets ---------------------------------------------------------------------------------------------

    async def _maybe_auto_commit(self) -> None:
        if not self.auto_commit or self.delivery != "at_least_once" or not self._owned:
            return
        if time.monotonic() - self._last_commit < self.auto_commit_interval_s:
            return
        self._last_commit = time.monotonic()
        self.commit_async()

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "",
                     timeout_s: float | None = None) -> int:
        """Commit ``offsets`` (default: the position of every owned partition: the records returned so far)
        and wait. Returns how many were committed.

        Raises: StaleMemberEpoch (a partition is no longer this member's), UnknownMemberId (out of the
        group), ClientTimeout / ConnectionFailed, other RaftMQErrors as answered."""
        deadline = time.monotonic() + (self.consumer.request_timeout_s if timeout_s is None else timeout_s)
        return await self._commit(self.positions() if offsets is None else offsets, deadline, metadata)

    def commit_async(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "",
                     callback: Callable[[int | None, RaftMQError | None], None] | None = None
                     ) -> asyncio.Task[int]:
        """Commit in the background; ``callback(committed, error)`` runs when it is done. ``stop()`` waits
        for commits in flight."""
        snapshot = dict(self.positions() if offsets is None else offsets)
        task = asyncio.get_running_loop().create_task(
            self._commit(snapshot, time.monotonic() + self.consumer.request_timeout_s, metadata,
                         self._next_sequence()))
        self._commits.add(task)

        def done(finished: asyncio.Task[int]) -> None:
            self._commits.discard(finished)
            raised = finished.exception() if not finished.cancelled() else None
            error = raised if isinstance(raised, RaftMQError) or raised is None else RaftMQError(str(raised))
            if error is not None:
                log.warning("group %s: commit failed: %s", self.group_id, error)
            if callback is not None:
                callback(None if error is not None or finished.cancelled() else finished.result(), error)

        task.add_done_callback(done)
        return task

    def _next_sequence(self) -> int:
        self._commit_sequence += 1
        return self._commit_sequence

    async def _commit(self, offsets: Mapping[TopicPartition, int], deadline_s: float, metadata: str = "",
                      sequence: int | None = None) -> int:
        if not offsets:
            return 0
        # Numbered when the commit is made (its positions are then this member's newest): the coordinator
        # ignores a commit that arrives after a later one, so concurrent and retried commits never move the
        # group's offsets back.
        sequence = self._next_sequence() if sequence is None else sequence
        for attempt in range(2):
            body = {"member_id": self.member_id, "member_epoch": self.member_epoch, "sequence": sequence,
                    "offsets": [{"topic": tp.topic, "partition": tp.partition, "offset": offset, "metadata": metadata}
                                for tp, offset in sorted(offsets.items())]}
            try:
                answer = await self._coordinator.call(self.group_id, "POST", "/offsets", body, deadline_s=deadline_s)
            except StaleMemberEpoch:
                if attempt or not self._running:
                    raise
                # Our epoch moved with an answer we have not seen yet: wait for the next heartbeat, once.
                answered = self._answered
                self._wake.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
                        await answered.wait()
                continue
            committed = answer.get("committed")
            return committed if type(committed) is int else 0
        raise AssertionError("unreachable")

    async def committed(self, partitions: Iterable[TopicPartition] | None = None, *,
                        timeout_s: float | None = None) -> dict[TopicPartition, int]:
        """The group's committed offsets (of ``partitions``, default all)."""
        found = await self.committed_with_metadata(partitions, timeout_s=timeout_s)
        return {tp: offset for tp, (offset, _metadata) in found.items()}

    async def committed_with_metadata(self, partitions: Iterable[TopicPartition] | None = None, *,
                                      timeout_s: float | None = None) -> dict[TopicPartition, tuple[int, str]]:
        """The group's committed offsets with the metadata string of each commit."""
        deadline = time.monotonic() + (self.consumer.request_timeout_s if timeout_s is None else timeout_s)
        answer = await self._coordinator.call(self.group_id, "GET", "/offsets", None, deadline_s=deadline)
        wanted = set(partitions) if partitions is not None else None
        found: dict[TopicPartition, tuple[int, str]] = {}
        for item in answer.get("offsets") or []:
            tp = TopicPartition(str(item["topic"]), int(item["partition"]))
            if wanted is None or tp in wanted:
                found[tp] = (int(item["offset"]), str(item.get("metadata") or ""))
        return found


async def _call(callback: PartitionsCallback | None, partitions: list[TopicPartition]) -> None:
    if callback is None or not partitions:
        return
    result = callback(list(partitions))
    if inspect.isawaitable(result):
        await result
