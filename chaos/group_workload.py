"""The consumer-group workload of a chaos run: group members crashing and rejoining while the faults run.

Members (``GroupConsumer``, at-least-once with auto-commit, a short session) consume the run's topic as one
group. On a seeded schedule a member crashes (stops without committing or leaving: the coordinator must time
it out and move its partitions) or a new one joins (1 to ``members_max`` at a time). A watcher samples the
group's committed offsets through the Admin API. After the heal and the drain, the members still running
(or a fresh one) catch up with the drained logs, bounded by ``settle_deadline_s``.

What is checked (``findings``), each a bug at every ack level (fetches serve committed records only, so a
record a member processed is never cut from the log):

* ``commit_moved_back``: a committed offset seen lower than one seen before (fencing failed: a member that lost
  a partition committed over its new owner);
* ``skipped_below_commit``: a record of the final log below the group's final committed offset that no member
  processed (a commit went past a record nobody handled);
* ``not_delivered``: a record of the final log no member processed by the end of the settle phase
  (at-least-once broken, or the group stopped making progress).

Duplicates (a record processed more than once) are counted, never a finding: at-least-once allows them after a
crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from raftmq.chaos import limits
from raftmq.client.admin import Admin
from raftmq.client.group_consumer import GroupConsumer
from raftmq.cluster.errors import RaftMQError

Record = tuple[int, int, str | None]  # partition, offset, value


@dataclass
class GroupStats:
    joins: int = 0
    crashes: int = 0
    processed: int = 0
    duplicates: int = 0
    commit_samples: int = 0
    poll_errors: collections.Counter[str] = field(default_factory=collections.Counter)


class _Member:
    def __init__(self, workload: GroupWorkload, index: int) -> None:
        self.workload = workload
        self.consumer = GroupConsumer(workload.urls, workload.group, topics=[workload.topic],
                                      session_timeout_ms=limits.group_session_timeout_ms,
                                      auto_commit_interval_ms=limits.group_auto_commit_interval_ms,
                                      request_timeout_ms=limits.group_request_timeout_ms,
                                      rng=random.Random(f"{workload.seed}:member:{index}"))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        try:
            await self.consumer.start()
        except RaftMQError as exc:
            self.workload.stats.poll_errors[exc.code] += 1
            await self.consumer.stop(commit=False, leave=False)
            return False
        self.task = asyncio.create_task(self._run(), name="chaos-group-member")
        return True

    async def _run(self) -> None:
        processed = self.workload.processed
        stats = self.workload.stats
        while True:
            try:
                records = await self.consumer.poll(timeout_ms=limits.group_poll_timeout_ms)
            except RaftMQError as exc:  # the coordinator or a leader is moving: poll again after a pause
                stats.poll_errors[exc.code] += 1
                await asyncio.sleep(limits.consumer_poll_retry_s)  # retry backoff
                continue
            for record in records:
                value = record.value.decode("utf-8", "replace") if record.value is not None else None
                key = (record.partition, record.offset, value)
                if key in processed:
                    stats.duplicates += 1
                processed[key] += 1
                stats.processed += 1
            if records:
                self.workload.progress.set()

    async def stop(self, *, crash: bool) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        with contextlib.suppress(RaftMQError, TimeoutError):
            async with asyncio.timeout(limits.group_member_stop_deadline_s):
                await self.consumer.stop(commit=not crash, leave=not crash)


class GroupWorkload:
    def __init__(self, urls: list[str], topic: str, *, seed: int, group: str = "chaos-group",
                 members_max: int = limits.group_members_max) -> None:
        self.urls = urls
        self.topic = topic
        self.seed = seed
        self.group = group
        self.members_max = members_max
        self.rng = random.Random(f"{seed}:group")
        self.members: list[_Member] = []
        self.processed: collections.Counter[Record] = collections.Counter()
        self.committed: dict[int, int] = {}  # partition -> highest committed offset seen
        self.moved_back: list[str] = []
        self.stats = GroupStats()
        self.progress = asyncio.Event()  # set whenever a member processed records
        self._next_index = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Members join, crash and rejoin on the seeded schedule until ``stop``; the watcher samples commits."""
        watcher = asyncio.create_task(self._watch_commits(stop), name="chaos-group-commits")
        try:
            for _ in range(2):
                await self._join()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.rng.uniform(*limits.group_churn_interval_s)):
                        await stop.wait()
                if stop.is_set():
                    break
                if len(self.members) > 1 and (len(self.members) >= self.members_max or self.rng.random() < 0.5):
                    await self._crash()
                else:
                    await self._join()
        finally:
            stop.set()
            await asyncio.gather(watcher, return_exceptions=True)

    async def settle(self, final: set[Record], deadline_s: float) -> None:
        """After the drain: keep (or start) a member until every record of the final logs was processed,
        bounded; then stop every member cleanly."""
        if not self.members:
            await self._join()
        deadline = time.monotonic() + deadline_s
        while not final <= set(self.processed) and time.monotonic() < deadline:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):  # woken by a member's progress; bounded by the deadline
                async with asyncio.timeout(min(limits.group_settle_poll_s, max(0.0, deadline - time.monotonic()))):
                    await self.progress.wait()
        with contextlib.suppress(RaftMQError):  # the last sample is a bonus: the watcher sampled all along
            async with Admin(self.urls, request_timeout_ms=limits.group_request_timeout_ms) as admin:
                await self._sample_commits(admin)
        for member in self.members:
            await member.stop(crash=False)
        self.members = []

    def findings(self, final: set[Record]) -> list[dict[str, Any]]:
        processed = set(self.processed)
        out: list[dict[str, Any]] = []
        if self.moved_back:
            out.append({"kind": "commit_moved_back", "expected": False, "count": len(self.moved_back),
                        "explanation": "a committed offset moved backwards: " + "; ".join(self.moved_back[:5])})
        missing = sorted(final - processed)
        below = [r for r in missing if r[1] < self.committed.get(r[0], 0)]
        if below:
            out.append({"kind": "skipped_below_commit", "expected": False, "count": len(below),
                        "explanation": "records below the group's committed offset that no member processed: "
                                       + ", ".join(f"{p}@{o}" for p, o, _v in below[:10])})
        if missing:
            out.append({"kind": "not_delivered", "expected": False, "count": len(missing),
                        "explanation": "records of the final log no group member processed (at-least-once): "
                                       + ", ".join(f"{p}@{o}" for p, o, _v in missing[:10])})
        return out

    def summary(self) -> dict[str, Any]:
        return {"joins": self.stats.joins, "crashes": self.stats.crashes, "processed": self.stats.processed,
                "duplicates": self.stats.duplicates, "commit_samples": self.stats.commit_samples,
                "committed": dict(sorted(self.committed.items())), "poll_errors": dict(self.stats.poll_errors)}

    async def stop(self) -> None:
        """Tear-down after an error: members stop as if crashed."""
        for member in self.members:
            await member.stop(crash=True)
        self.members = []

    # --- internals --------------------------------------------------------------------------------------

    async def _join(self) -> None:
        member = _Member(self, self._next_index)
        self._next_index += 1
        if await member.start():
            self.members.append(member)
            self.stats.joins += 1

    async def _crash(self) -> None:
        victim = self.members.pop(self.rng.randrange(len(self.members)))
        await victim.stop(crash=True)
        self.stats.crashes += 1

    async def _watch_commits(self, stop: asyncio.Event) -> None:
        async with Admin(self.urls, request_timeout_ms=limits.group_request_timeout_ms) as admin:
            while not stop.is_set():
                await self._sample_commits(admin)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limits.group_commit_sample_s):
                        await stop.wait()

    async def _sample_commits(self, admin: Admin) -> None:
        try:
            offsets = await admin.group_offsets(self.group, timeout_s=limits.group_request_timeout_ms / 1000)
        except RaftMQError:
            return  # the coordinator is moving or unreachable under the faults: sample again later
        self.stats.commit_samples += 1
        for tp, offset in offsets.items():
            if tp.topic != self.topic:
                continue
            seen = self.committed.get(tp.partition)
            if seen is not None and offset < seen:
                self.moved_back.append(f"{tp.topic}/{tp.partition} {seen} then {offset}")
            self.committed[tp.partition] = max(offset, seen or 0)
