"""The group coordinator on a broker: consumer-group requests for the groups whose group-state partition
this broker leads.

Where a group lives: partition ``group_partition_for(group_id, partitions)`` of the internal topic
``__consumer_offsets`` (Kafka's hash rule, written out in ``cluster/consumer_groups.py``). Its coordinator is
that partition's Raft leader, so when the leader's broker dies the partition elects another leader and the
group, its members and its committed offsets move with it: nothing is kept only on one broker. The topic is
created through the controller on the first group request (as Kafka creates its offsets topic on the first
FindCoordinator), with ``limits.group_state_partitions`` partitions and no time retention
(``node/group_partition.py`` trims it by snapshot instead).

What this module adds to the replicated state (``node/group_partition.py``):

* routing: a request for a group led elsewhere gets NOT_COORDINATOR with the coordinator's URL; while the
  partition has no leader, or its new leader has not applied its predecessors' entries,
  COORDINATOR_NOT_AVAILABLE (retriable);
* proposals: a heartbeat that changes nothing is answered from the applied state without a Raft entry
  (``GroupsState.peek_heartbeat``); everything else is one entry, and the answer is what ``apply`` returned
  on this leader;
* session timers (soft state, as in Kafka: never replicated): a member silent for its session timeout, or
  slower than its rebalance timeout to release revoked partitions, is expired by an ``EXPIRE_MEMBER`` entry.
  A new coordinator starts every member's timer afresh when it takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
from raftmq.cluster import commands, limits
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC, GroupOp, HeartbeatResult, group_partition_for
from raftmq.cluster.errors import (
    BrokerNotReady,
    CoordinatorNotAvailable,
    GroupIdNotFound,
    InvalidRequest,
    LeaderNotAvailable,
    NotCoordinator,
    NotLeader,
    RaftMQError,
    RequestTimedOut,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from raftmq.cluster.group_requests import (
    CommittedOffsetView,
    GroupDescription,
    GroupHeartbeat,
    GroupListing,
    HeartbeatAnswer,
    OffsetCommit,
    ShareAcknowledge,
    ShareAcknowledged,
    ShareAcquire,
    ShareAcquired,
)
from raftmq.cluster.metadata import Topic, parse_create_topic
from raftmq.node.controller import Controller
from raftmq.node.group_partition import GroupPartitionStateMachine
from raftmq.node.metadata import MetadataGroup
from raftmq.node.replicas import PartitionHandle, ReplicaManager
from raftmq.node.tasks import cancel

log = logging.getLogger(__name__)

_SessionKey = tuple[int, str, str]  # group-state partition, group id, member id


class GroupCoordinator:
    def __init__(self, *, broker_id: int, metadata: MetadataGroup, replicas: ReplicaManager, controller: Controller,
                 url_of: Callable[[int | None], str | None]) -> None:
        self.broker_id = broker_id
        self.metadata = metadata
        self.replicas = replicas
        self.controller = controller
        self.url_of = url_of
        self._deadlines: dict[_SessionKey, float] = {}  # monotonic session deadlines of the members led here
        self._create_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._expire_forever())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    # --- routing --------------------------------------------------------------------------------------

    async def _topic(self, create: bool) -> Topic:
        topic = self.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
        if topic is not None:
            return topic
        if not create:
            raise CoordinatorNotAvailable("no consumer group has been used yet (the group-state topic does not "
                                          "exist)")
        async with self._create_lock:
            topic = self.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
            if topic is None:
                request = parse_create_topic({"name": GROUP_STATE_TOPIC, "partitions": limits.group_state_partitions,
                                              "config": {"retention_ms": -1}})
                try:
                    topic = await self.controller.create_topic(request)
                except TopicAlreadyExists:
                    topic = self.metadata.topic(GROUP_STATE_TOPIC)
                log.info("created the group-state topic %s (%d partitions)", GROUP_STATE_TOPIC, topic.partitions)
            await self.replicas.wait_for_leaders(topic, limits.topic_leaders_wait_s)
        return topic

    async def _coordinator(self, group_id: str, *, create: bool = True
                           ) -> tuple[PartitionHandle, GroupPartitionStateMachine]:
        """The local group-state partition of ``group_id``, if this broker is its leader and may answer."""
        topic = await self._topic(create)
        partition = group_partition_for(group_id, topic.partitions)
        try:
            handle = self.replicas.handle(GROUP_STATE_TOPIC, partition)
        except NotLeader as exc:
            raise self._elsewhere(group_id, exc.details.get("leader_id")) from None
        except (LeaderNotAvailable, BrokerNotReady, UnknownTopicOrPartition):
            raise CoordinatorNotAvailable(f"the coordinator of group {group_id} (group-state partition {partition}) "
                                          "is not available yet", group_id=group_id, partition=partition) from None
        status = handle.group.status
        if not status.is_leader:
            if status.leader_id is None or status.role == "candidate":
                raise CoordinatorNotAvailable(f"group-state partition {partition} has no leader right now",
                                              group_id=group_id, partition=partition)
            raise self._elsewhere(group_id, status.leader_id)
        if not status.quorum or not status.caught_up:
            # No quorum: it cannot commit and will step down. Not caught up: its applied state may lack
            # entries its predecessor committed (members, offsets), so it must not answer from it yet.
            raise CoordinatorNotAvailable(f"the coordinator of group {group_id} is still taking over",
                                          group_id=group_id, partition=partition)
        state_machine = handle.state_machine
        assert isinstance(state_machine, GroupPartitionStateMachine)
        return handle, state_machine

    def _elsewhere(self, group_id: str, leader_id: Any) -> RaftMQError:
        coordinator = leader_id if isinstance(leader_id, int) else None
        if coordinator is None:
            return CoordinatorNotAvailable(f"the coordinator of group {group_id} is not known yet", group_id=group_id)
        return NotCoordinator(f"broker {self.broker_id} is not the coordinator of group {group_id}",
                              group_id=group_id, coordinator_id=coordinator, coordinator_url=self.url_of(coordinator))

    async def _propose(self, handle: PartitionHandle, op: GroupOp, payload: Mapping[str, Any]) -> Any:
        body = msgpack.packb(payload, use_bin_type=True)
        if len(body) > limits.group_command_bytes_max:
            raise InvalidRequest(f"the request is {len(body)} bytes as a group command, more than "
                                 f"{limits.group_command_bytes_max}; send fewer offsets per commit")
        command = commands.encode(op, self.metadata.proposals.next(), int(time.time() * 1000), body)
        future = handle.group.submit(command)
        try:
            async with asyncio.timeout(limits.group_request_timeout_ms / 1000):
                result = await asyncio.shield(future)
        except TimeoutError:
            future.add_done_callback(_retrieve)
            raise RequestTimedOut(f"the group command did not commit within {limits.group_request_timeout_ms} ms; "
                                  "it may or may not have taken effect",
                                  timeout_ms=limits.group_request_timeout_ms) from None
        if isinstance(result, RaftMQError):
            raise result
        return result

    def _topics(self) -> dict[str, int]:
        return {name: topic.partitions for name, topic in self.metadata.state_machine.view.items()
                if not name.startswith("__")}

    # --- requests -------------------------------------------------------------------------------------

    async def heartbeat(self, request: GroupHeartbeat, *, classic: bool = False) -> HeartbeatAnswer:
        """``classic``: a join of Kafka's classic protocol (see cluster/consumer_groups.py)."""
        handle, state_machine = await self._coordinator(request.group_id)
        member_id = request.member_id or uuid.uuid4().hex
        payload = request.payload(member_id, self._topics())
        if classic:
            payload["classic"] = True
        with state_machine.lock:
            answer = state_machine.groups.peek_heartbeat(payload)
        if answer is None:
            answer = await self._propose(handle, GroupOp.HEARTBEAT, payload)
        if isinstance(answer, RaftMQError):
            raise answer
        assert isinstance(answer, HeartbeatResult)
        key = (handle.partition, request.group_id, answer.member_id)
        if answer.member_epoch > 0:
            self._deadlines[key] = time.monotonic() + request.session_timeout_ms / 1000
        else:
            self._deadlines.pop(key, None)
        interval_ms = max(1, request.session_timeout_ms // limits.group_heartbeats_per_session)
        if answer.reconciling:  # its next heartbeats move it on (release acknowledged, partitions granted)
            interval_ms = min(interval_ms, limits.group_reconcile_heartbeat_interval_ms)
        return HeartbeatAnswer(answer, interval_ms, self.broker_id)

    # --- Kafka's classic protocol (node/kafka_groups.py keeps the join phases) -------------------------

    async def find(self, group_id: str) -> int:
        """The broker id of ``group_id``'s coordinator (creating the group-state topic on first use)."""
        topic = await self._topic(create=True)
        partition = group_partition_for(group_id, topic.partitions)
        leader = self.replicas.leader_id(topic, partition)
        if leader is None:
            raise CoordinatorNotAvailable(f"group-state partition {partition} has no leader right now",
                                          group_id=group_id, partition=partition)
        return leader

    async def classic_view(self, group_id: str, *, keep_alive: Iterable[str] = ()) -> tuple[int, dict[str, int]]:
        """(group epoch, member id -> member epoch) of ``group_id`` as applied here, if this broker is its
        coordinator ((-1, {}) for a group it does not hold). ``keep_alive``: members whose sessions this
        restarts (a classic Heartbeat, or a member waiting in a join phase: no Raft entry, as KIP-848's
        unchanged heartbeats)."""
        handle, state_machine = await self._coordinator(group_id)
        with state_machine.lock:
            group = state_machine.groups.groups.get(group_id)
            if group is None:
                return -1, {}
            members = {m.member_id: m.member_epoch for m in group.members.values()}
            sessions = {m: group.members[m].session_timeout_ms for m in keep_alive if m in group.members}
            epoch = group.group_epoch
        now = time.monotonic()
        for member_id, session_ms in sessions.items():
            self._deadlines[(handle.partition, group_id, member_id)] = now + session_ms / 1000
        return epoch, members

    async def install_assignment(self, group_id: str, generation: int,
                                 target: Mapping[str, frozenset[tuple[str, int]]]) -> None:
        """A classic leader's assignment for generation ``generation``: owned at once by the members
        (STALE_MEMBER_EPOCH if the group moved on since)."""
        handle, _state_machine = await self._coordinator(group_id)
        await self._propose(handle, GroupOp.SET_TARGET, {
            "group_id": group_id, "group_epoch": generation, "install": True,
            "target": {member: [list(p) for p in sorted(parts)] for member, parts in target.items()}})

    async def commit_offsets(self, request: OffsetCommit) -> int:
        handle, state_machine = await self._coordinator(request.group_id)
        with state_machine.lock:
            refusal = state_machine.groups.check_commit(request.group_id, request.member_id, request.member_epoch,
                                                        [(t, p) for t, p, _, _ in request.offsets])
        if refusal is not None:
            raise refusal  # the same check runs again at apply: this only answers a certain refusal sooner
        result = await self._propose(handle, GroupOp.COMMIT_OFFSETS, request.payload())
        return int(result["committed"])

    async def fetch_offsets(self, group_id: str, partitions: tuple[tuple[str, int], ...] | None
                            ) -> tuple[CommittedOffsetView, ...]:
        _handle, state_machine = await self._coordinator(group_id)
        with state_machine.lock:
            committed = state_machine.groups.committed(group_id)
        wanted = sorted(committed) if partitions is None else [p for p in partitions if p in committed]
        return tuple(CommittedOffsetView(t, p, committed[(t, p)].offset, committed[(t, p)].metadata,
                                         committed[(t, p)].commit_time_ms) for t, p in wanted)

    async def delete_offsets(self, group_id: str, partitions: tuple[tuple[str, int], ...] | None) -> int:
        handle, _state_machine = await self._coordinator(group_id)
        payload = {"group_id": group_id, "partitions": [list(p) for p in partitions] if partitions else None}
        result = await self._propose(handle, GroupOp.DELETE_OFFSETS, payload)
        return int(result["deleted"])

    async def describe(self, group_id: str) -> GroupDescription:
        handle, state_machine = await self._coordinator(group_id, create=False)
        with state_machine.lock:
            group = state_machine.groups.groups.get(group_id)
            if group is None:
                raise GroupIdNotFound(f"group {group_id} has no members and no committed offsets", group_id=group_id)
            members = tuple(dict(m.to_wire(), state=m.state(group.target.get(m.member_id, frozenset())),
                                 target=[[t, p] for t, p in sorted(group.target.get(m.member_id, frozenset()))])
                            for m in group.members.values())
            offsets = tuple(CommittedOffsetView(t, p, c.offset, c.metadata, c.commit_time_ms)
                            for (t, p), c in sorted(group.offsets.items()))
            return GroupDescription(group_id, group.state(), group.group_epoch, self.broker_id, handle.partition,
                                    members, offsets)

    # --- share groups (queue mode) ------------------------------------------------------------------------

    async def check_coordinator(self, group_id: str) -> None:
        """Raise NOT_COORDINATOR (naming the coordinator) or COORDINATOR_NOT_AVAILABLE unless this broker
        coordinates ``group_id`` now (a push consumer's WebSocket is checked before its upgrade)."""
        await self._coordinator(group_id)

    async def share_acquire(self, request: ShareAcquire) -> ShareAcquired:
        """Lock available records for a member. Every acquire is one Raft entry: a lock must survive the
        coordinator's death."""
        handle, _state_machine = await self._coordinator(request.group_id)
        result = await self._propose(handle, GroupOp.SHARE_ACQUIRE, request.payload())
        return ShareAcquired(tuple((int(o), int(n), bool(d)) for o, n, d in result["acquired"]),
                             int(result["start_offset"]))

    async def share_acknowledge(self, request: ShareAcknowledge) -> ShareAcknowledged:
        handle, _state_machine = await self._coordinator(request.group_id)
        result = await self._propose(handle, GroupOp.SHARE_ACKNOWLEDGE, request.payload())
        return ShareAcknowledged(tuple(int(o) for o in result["done"]),
                                 tuple((int(o), str(why)) for o, why in result["refused"]), int(result["start_offset"]))

    async def share_locked(self, request: ShareAcknowledge) -> dict[int, int]:
        """Of the offsets ``request`` acknowledges, those its member holds locked, with their delivery counts."""
        _handle, state_machine = await self._coordinator(request.group_id, create=False)
        with state_machine.lock:
            return state_machine.groups.shares.locked_by(request.group_id, request.topic, request.partition,
                                                         request.member_id, [offset for offset, _kind in request.acks])

    async def describe_share_group(self, group_id: str) -> list[dict[str, Any]]:
        _handle, state_machine = await self._coordinator(group_id, create=False)
        with state_machine.lock:
            rows = state_machine.groups.shares.describe(group_id)
        if not rows:
            raise GroupIdNotFound(f"share group {group_id} has acquired no record yet", group_id=group_id)
        return rows

    def list_groups(self) -> GroupListing:
        topic = self.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
        if topic is None:
            return GroupListing((), (), 0)
        groups: list[tuple[str, str, int]] = []
        led: list[int] = []
        for handle, state_machine in self._led(topic):
            led.append(handle.partition)
            with state_machine.lock:
                groups += [(g.group_id, g.state(), len(g.members)) for g in state_machine.groups.groups.values()]
        return GroupListing(tuple(sorted(groups)), tuple(led), topic.partitions)

    def _led(self, topic: Topic) -> list[tuple[PartitionHandle, GroupPartitionStateMachine]]:
        led = []
        for partition in range(topic.partitions):
            handle = self.replicas.local(topic, partition)
            if handle is None or not isinstance(handle.state_machine, GroupPartitionStateMachine):
                continue
            status = handle.group.status
            if status.is_leader and status.quorum and status.caught_up:
                led.append((handle, handle.state_machine))
        return led

    # --- session and revocation timers ------------------------------------------------------------------

    async def _expire_forever(self) -> None:
        next_group_check = time.monotonic() + limits.group_offsets_expiry_check_interval_s
        while True:
            await asyncio.sleep(limits.group_session_check_interval_s)  # a periodic timer check, not a wait
            try:
                await self.expire_due(time.monotonic(), int(time.time() * 1000))
                if time.monotonic() >= next_group_check:
                    next_group_check = time.monotonic() + limits.group_offsets_expiry_check_interval_s
                    await self.expire_idle_groups(int(time.time() * 1000))
            except Exception:  # noqa: BLE001 - retried on the next round; must not kill the timer loop
                log.exception("group session check failed; retrying")

    async def expire_idle_groups(self, now_ms: int,
                                 retention_ms: int = limits.group_offsets_retention_ms) -> list[str]:
        """Delete every group led here that has had no member and no commit for ``retention_ms``, with its
        committed offsets (Kafka's offsets retention); returns the groups deleted."""
        topic = self.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
        if topic is None:
            return []
        deleted = []
        for handle, state_machine in self._led(topic):
            with state_machine.lock:
                due = state_machine.groups.expired_groups(now_ms, retention_ms)
            for group_id in due:
                try:
                    result = await self._propose(handle, GroupOp.EXPIRE_GROUP,
                                                 {"group_id": group_id, "retention_ms": retention_ms})
                except RaftMQError as exc:
                    log.info("group %s: deleting it after its retention failed: %s", group_id, exc)
                    continue
                if result.get("expired") == group_id:
                    log.info("group %s: deleted with its %d committed offsets (no member and no commit for "
                             "%.1f days)", group_id, result.get("offsets", 0), retention_ms / 86_400_000)
                    deleted.append(group_id)
        return deleted

    async def expire_due(self, now: float, now_ms: int) -> list[tuple[str, str, str]]:
        """Expire every member led here whose session or revocation ran out; returns (group, member, why)."""
        topic = self.metadata.state_machine.view.get(GROUP_STATE_TOPIC)
        if topic is None:
            self._deadlines.clear()
            return []
        live: set[_SessionKey] = set()
        due: list[tuple[PartitionHandle, str, str, int, str]] = []
        for handle, state_machine in self._led(topic):
            with state_machine.lock:
                members = [(g.group_id, m.member_id, m.member_epoch, m.session_timeout_ms, m.revoking_since_ms,
                            m.rebalance_timeout_ms) for g in state_machine.groups.groups.values()
                           for m in g.members.values()]
            for group_id, member_id, epoch, session_ms, revoking_since_ms, rebalance_ms in members:
                key = (handle.partition, group_id, member_id)
                live.add(key)
                deadline = self._deadlines.setdefault(key, now + session_ms / 1000)  # taking over: a fresh timer
                if now >= deadline:
                    due.append((handle, group_id, member_id, epoch, "session"))
                elif revoking_since_ms is not None and now_ms - revoking_since_ms > rebalance_ms:
                    due.append((handle, group_id, member_id, epoch, "revocation_timeout"))
        for key in set(self._deadlines) - live:
            del self._deadlines[key]
        expired = []
        for handle, group_id, member_id, epoch, why in due:
            try:
                await self._propose(handle, GroupOp.EXPIRE_MEMBER, {"group_id": group_id, "member_id": member_id,
                                                                    "member_epoch": epoch, "reason": why})
            except RaftMQError as exc:
                log.info("group %s: expiring member %s (%s) failed: %s", group_id, member_id, why, exc)
                continue
            log.info("group %s: member %s expired (%s)", group_id, member_id, why)
            self._deadlines.pop((handle.partition, group_id, member_id), None)
            expired.append((group_id, member_id, why))
        return expired


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


__all__ = ["GroupCoordinator"]
