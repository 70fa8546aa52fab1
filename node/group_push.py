"""Push consumers of consumer groups on the group's coordinator: the session is the group member (it joins,
heartbeats and leaves for the consumer), streams each assigned partition in offset order under the commit
window, and stores the consumer's offset commits. The rules are cluster/group_push.py's.

Bounds: the broker keeps no record for a session (records are read from the log when there is room and sent
at once); the window caps what is sent and not committed; a consumer that stops reading its socket blocks
the send and is disconnected after ``push_send_timeout_s``. Heartbeats run in the same loop on purpose: a
consumer that does not read for longer than its session timeout loses its partitions to the other members,
as a Kafka consumer that stops polling does. An idle session reads its partitions'
watermarks every ``push_idle_poll_s`` (no Raft entry); heartbeats are Raft entries only when something
changed (the coordinator's rule for unchanged heartbeats).

The end: the session leaves the group (its partitions go to the other members at once). If the group's
coordinator moves, the session closes the socket (code 1012): the consumer reconnects to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from itertools import count
from typing import Any

from aiohttp import WSMsgType, web
from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import Subscription
from raftmq.cluster.errors import (
    CoordinatorNotAvailable,
    FencedMemberEpoch,
    NotCoordinator,
    OffsetOutOfRange,
    RaftMQError,
    UnknownMemberId,
)
from raftmq.cluster.group_push import (
    CommitWindow,
    GroupPushSubscription,
    OffsetReset,
    Partition,
    assignment_frame,
    commit_answer_frame,
    parse_commit_frame,
)
from raftmq.cluster.group_requests import GroupHeartbeat, OffsetCommit
from raftmq.cluster.push import delivery_frame

log = logging.getLogger(__name__)

# The member epochs KIP-848 gives meaning to: join, and leave.
_JOIN_EPOCH = 0
_LEAVE_EPOCH = -1


class CoordinatorMoved(Exception):
    """The group's coordinator is another broker now: the consumer must reconnect."""


class GroupPushSession:
    """``sessions`` is node/push.py's PushSessions (the service, the task keeper)."""

    def __init__(self, sessions: Any, ws: web.WebSocketResponse, subscription: GroupPushSubscription) -> None:
        self.sessions = sessions
        self.service = sessions.service
        self.ws = ws
        self.sub = subscription
        self.member_id = ""
        self.member_epoch = _JOIN_EPOCH
        self.window = CommitWindow(subscription.prefetch)
        # Assigned, start position not known yet (the committed offset or a watermark could not be read, say
        # while a leader is elected): owned all the same, sent from once known.
        self.starting: set[Partition] = set()
        self.wake = asyncio.Event()
        self.heartbeat_due = 0.0  # monotonic time of the next heartbeat
        self.commit_sequence = count(1)

    @property
    def records_held(self) -> int:
        return 0  # records are read from the log and sent at once, never kept

    async def run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read_commits())
        try:
            while not self.ws.closed and not reader.done():
                if time.monotonic() >= self.heartbeat_due:
                    await self._heartbeat()
                if self.window.room > 0 and await self._fill():
                    continue
                self.wake.clear()
                wait_s = min(limits.push_idle_poll_s, max(0.0, self.heartbeat_due - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self.wake.wait()  # a commit made room, or time to look again
        except CoordinatorMoved as exc:
            log.info("group push %s of %s: %s", self.member_id, self.sub.group_id, exc)
            with contextlib.suppress(Exception):
                await self.ws.close(code=1012, message=str(exc).encode()[:120])
        except (ConnectionResetError, TimeoutError) as exc:
            log.info("group push %s of %s: disconnected (%r)", self.member_id, self.sub.group_id, exc)
        finally:
            reader.cancel()
            # Leave as its own task: aiohttp cancels the handler when the client goes away, and the group
            # should not wait a session timeout to give the partitions to the other members.
            leave = self.sessions.keep(asyncio.get_running_loop().create_task(self._leave()))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(leave)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.ws.close()

    # --- membership -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        joining = self.member_epoch == _JOIN_EPOCH
        request = GroupHeartbeat(self.sub.group_id, self.member_id, self.member_epoch,
                                 client_id="push", subscription=Subscription(self.sub.topics) if joining else None,
                                 owned=tuple(sorted(self.owned)),
                                 session_timeout_ms=self.sub.session_timeout_ms)
        try:
            answer = await self.service.group_heartbeat(request)
        except (NotCoordinator, CoordinatorNotAvailable) as exc:
            raise CoordinatorMoved(f"the group's coordinator moved ({exc.code}); reconnect") from exc
        except (FencedMemberEpoch, UnknownMemberId) as exc:
            # The group dropped this member (its session expired): join again, owning nothing.
            log.info("group push %s of %s: %s; joining again", self.member_id, self.sub.group_id, exc.code)
            await self._assign(set(), _JOIN_EPOCH)
            self.member_id = ""
            self.heartbeat_due = time.monotonic()
            return
        except RaftMQError as exc:  # a commit of the group-state partition failed: try again soon
            log.info("group push %s of %s: heartbeat failed: %s", self.member_id, self.sub.group_id, exc)
            self.heartbeat_due = time.monotonic() + limits.push_idle_poll_s
            return
        self.member_id = answer.result.member_id
        self.heartbeat_due = time.monotonic() + answer.heartbeat_interval_ms / 1000
        await self._assign(set(answer.result.assignment), answer.result.member_epoch)

    @property
    def owned(self) -> set[Partition]:
        return set(self.window.positions) | self.starting

    async def _assign(self, assignment: set[Partition], member_epoch: int) -> None:
        owned = self.owned
        self.member_epoch = member_epoch
        if assignment == owned:
            return
        for partition in owned - assignment:
            self.window.drop(partition)  # its uncommitted records go to its next owner
            self.starting.discard(partition)
        self.starting |= assignment - owned
        await self._start()
        await self._send(assignment_frame(self.owned, member_epoch))
        if owned - assignment:
            self.heartbeat_due = time.monotonic()  # report the release at once: the next owner waits for it

    async def _start(self) -> None:
        """Find where each partition in ``starting`` begins; those that cannot be read now wait for the
        next pass."""
        for partition in sorted(self.starting):
            try:
                position = await self._start_position(partition)
            except RaftMQError as exc:
                log.debug("group push %s: start of %s-%d unknown yet: %s", self.member_id, *partition, exc)
                continue
            self.starting.discard(partition)
            self.window.own(partition, position)

    async def _start_position(self, partition: Partition) -> int:
        topic, number = partition
        committed = await self.service.fetch_offsets(self.sub.group_id, (partition,))
        log_start, log_end = await self.service.reader.watermarks(topic, number)
        if committed:
            return max(committed[0].offset, log_start)  # retention may have removed the committed position
        return log_end if self.sub.reset is OffsetReset.LATEST else log_start

    async def _leave(self) -> None:
        owned = tuple(sorted(self.owned))
        self.window = CommitWindow(self.sub.prefetch)
        self.starting = set()
        if not self.member_id:
            return
        with contextlib.suppress(RaftMQError):
            await self.service.group_heartbeat(GroupHeartbeat(self.sub.group_id, self.member_id, _LEAVE_EPOCH,
                                                              owned=owned))

    # --- delivering -------------------------------------------------------------------------------

    async def _fill(self) -> bool:
        """Send records until the window is full or every owned partition is read to its end; True if any
        was sent. Partitions take turns (one read each per pass), so one busy partition cannot starve the
        others."""
        if self.starting:
            await self._start()
        sent = False
        for partition in sorted(self.window.positions):
            if self.window.room <= 0:
                break
            try:
                sent = await self._fill_from(partition) or sent
            except OffsetOutOfRange:  # retention removed the position: find the start again
                self.window.drop(partition)
                self.starting.add(partition)
            except RaftMQError as exc:  # that partition's leader is moving: the next pass retries
                log.debug("group push %s: %s-%d: %s", self.member_id, partition[0], partition[1], exc)
        return sent

    async def _fill_from(self, partition: Partition) -> bool:
        topic, number = partition
        position = self.window.positions[partition]
        _start, log_end = await self.service.reader.watermarks(topic, number)
        if position >= log_end:
            return False
        records = await self.service.reader.read_from(topic, number, position)
        frames = []
        for record in records:
            if self.window.room <= 0 or record.offset >= log_end:
                break
            if partition not in self.window.positions:
                return False  # a heartbeat took it away while the read ran
            self.window.deliver(partition, record.offset)
            frames.append(delivery_frame(topic, number, record, None))
        for frame in frames:
            async with asyncio.timeout(limits.push_send_timeout_s):
                await self.ws.send_bytes(frame)
        return bool(frames)

    # --- commits ----------------------------------------------------------------------------------

    async def _read_commits(self) -> None:
        async for message in self.ws:
            if message.type is not WSMsgType.BINARY:
                continue  # text frames are not part of the protocol; closing frames end the loop
            try:
                commits = [(p, o) for p, o in parse_commit_frame(message.data) if self.window.check_commit(p, o)]
            except RaftMQError as exc:
                await self.ws.close(code=1003, message=str(exc).encode()[:120])
                return
            await self._commit(commits)  # answered even when every entry was ignored (partitions not owned)
            self.wake.set()

    async def _commit(self, commits: list[tuple[Partition, int]]) -> None:
        if not commits:
            await self._send(commit_answer_frame(commits, None))
            return
        request = OffsetCommit(self.sub.group_id, self.member_id, self.member_epoch,
                               tuple((t, p, offset, "") for (t, p), offset in commits), next(self.commit_sequence))
        try:
            await self.service.commit_offsets(request)
        except RaftMQError as exc:  # fenced by a rebalance, or the coordinator is moving: the records stay out
            log.info("group push %s: commit failed: %s", self.member_id, exc)
            await self._send(commit_answer_frame(commits, exc))
            return
        for partition, offset in commits:
            self.window.committed(partition, offset)
        await self._send(commit_answer_frame(commits, None))

    async def _send(self, frame: bytes) -> None:
        if not self.ws.closed:
            async with asyncio.timeout(limits.push_send_timeout_s):
                await self.ws.send_bytes(frame)
