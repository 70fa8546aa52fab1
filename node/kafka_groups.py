"""Kafka's classic group protocol on raftmq's group coordinator: FindCoordinator, JoinGroup, SyncGroup,
Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch, answered through the service's group operations.

The split (``cluster/kafka_classic_group.py`` says it in full): the join phases (who has rejoined, the
protocols, the leader, the assignment bytes for followers) are soft state here, on the coordinator; members,
generations, the assignment each member owns and committed offsets are raftmq's replicated group state. A
join phase ends by joining its members there (each one Raft entry, eager: they own nothing), which moves the
group epoch, and that epoch is the generation the JoinGroup answers carry; the leader's SyncGroup installs
its assignment there. So an offset commit is fenced twice: by the generation here, and by ownership in the
replicated apply (a member commits only partitions the installed assignment gave it).

Error semantics as the clients act on them: UNKNOWN_MEMBER_ID (25: forget the member id, join afresh),
ILLEGAL_GENERATION (22: rejoin), REBALANCE_IN_PROGRESS (27: rejoin), NOT_COORDINATOR (16) and
COORDINATOR_NOT_AVAILABLE (15: find the coordinator again and retry). A coordinator that takes over has no
soft state: members of the current generation keep heartbeating and committing against the replicated state,
and the next rebalance starts from its member list.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import JOIN_EPOCH, LEAVE_EPOCH, NO_MEMBER_EPOCH, Subscription, validate_group_id
from raftmq.cluster.errors import (
    CoordinatorNotAvailable,
    IllegalGeneration,
    InvalidRequest,
    RaftMQError,
    RebalanceInProgress,
    StaleMemberEpoch,
    UnknownMemberId,
)
from raftmq.cluster.group_requests import GroupHeartbeat, OffsetCommit
from raftmq.cluster.kafka_classic_group import (
    ClassicGroup,
    Joiner,
    JoinOutcome,
    Phase,
    assignment_partitions,
    subscription_topics,
)
from raftmq.cluster.kafka_errors import KafkaError, kafka_error_for
from raftmq.cluster.kafka_messages import Request
from raftmq.node.service import BrokerService

log = logging.getLogger(__name__)

Body = dict[str, Any]
_CLIENT_ID_CHARS_MAX = 100  # of the client id in a member id Kafka-style (client id + "-" + a uuid)


def _code(error: RaftMQError) -> int:
    return int(kafka_error_for(error))


def _installed(group: ClassicGroup, generation: int) -> bool:
    """Whether ``generation``'s assignment is installed (a separate function: the phase changes while a
    SyncGroup waits, which a type checker's narrowing within one function does not see)."""
    return group.phase is Phase.STABLE and group.generation == generation


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class KafkaGroups:
    """The classic groups this broker coordinates; ``address_of`` gives a broker's advertised Kafka address."""

    def __init__(self, service: BrokerService, address_of: Callable[[int], tuple[str, int] | None]) -> None:
        self.service = service
        self.address_of = address_of
        self._groups: dict[str, ClassicGroup] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._joins: dict[str, dict[str, asyncio.Future[Body]]] = {}  # group -> member -> its JoinGroup answer
        self._changed: dict[str, asyncio.Event] = {}  # wakes a join phase's driver (a join or a leave)
        self._synced: dict[str, asyncio.Event] = {}  # set when the generation's assignment is installed
        self._drivers: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        drivers = list(self._drivers.values())
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)

    def handlers(self) -> dict[str, Callable[[Request], Awaitable[Body]]]:
        return {"find_coordinator": self.find_coordinator, "join_group": self.join_group,
                "sync_group": self.sync_group, "heartbeat": self.heartbeat, "leave_group": self.leave_group,
                "offset_commit": self.offset_commit, "offset_fetch": self.offset_fetch}

    # --- state ------------------------------------------------------------------------------------

    async def _view(self, group_id: str, keep_alive: tuple[str, ...] = (), *, keep: bool = False
                    ) -> tuple[ClassicGroup, int, dict[str, int]]:
        """The group's soft state and the replicated group epoch and members; raises NOT_COORDINATOR and the
        like. A coordinator without soft state for the group (it just took over) makes it from the
        replicated state; it keeps it only while the group has members, or with ``keep`` (a JoinGroup)."""
        validate_group_id(group_id)
        epoch, members = await self.service.classic_view(group_id, keep_alive=keep_alive)
        group = self._groups.get(group_id)
        if group is None:
            group = ClassicGroup(group_id, generation=epoch, members=frozenset(members))
            if members or keep:
                if len(self._groups) >= limits.kafka_classic_groups_max:
                    raise CoordinatorNotAvailable(f"this coordinator holds {len(self._groups)} classic groups, the "
                                                  "most it may", group_id=group_id)
                self._groups[group_id] = group
        return group, epoch, members

    def _forget_if_idle(self, group_id: str, members: dict[str, int]) -> None:
        group = self._groups.get(group_id)
        if group is not None and not members and not group.joining and group_id not in self._drivers:
            for table in (self._groups, self._locks, self._joins, self._changed, self._synced):
                table.pop(group_id, None)

    def _lock(self, group_id: str) -> asyncio.Lock:
        return self._locks.setdefault(group_id, asyncio.Lock())

    def _wake(self, group_id: str) -> None:
        self._changed.setdefault(group_id, asyncio.Event()).set()

    def _new_sync_round(self, group_id: str) -> None:
        """Wake the SyncGroups of the previous round (they answer from the group's phase now)."""
        old = self._synced.get(group_id)
        if old is not None:
            old.set()
        self._synced[group_id] = asyncio.Event()

    # --- FindCoordinator --------------------------------------------------------------------------

    async def find_coordinator(self, request: Request) -> Body:
        body = request.body
        try:
            if body.get("key_type", 0) != 0:
                raise InvalidRequest("only group coordinators (key type 0) are served: raftmq has no transactions")
            broker_id = await self.service.find_coordinator(validate_group_id(body["key"]))
            address = self.address_of(broker_id)
            if address is None:
                raise CoordinatorNotAvailable(f"the coordinator, broker {broker_id}, has no Kafka listener")
        except RaftMQError as error:
            return {"error_code": _code(error), "error_message": error.message}
        return {"error_code": 0, "error_message": None, "node_id": broker_id, "host": address[0], "port": address[1]}

    # --- JoinGroup --------------------------------------------------------------------------------

    async def join_group(self, request: Request) -> Body:
        body = request.body
        group_id, member_id = body["group_id"], body["member_id"]
        session_ms = body["session_timeout_ms"]
        rebalance_ms = body.get("rebalance_timeout_ms", -1)  # v1+; v0's rebalance timeout is the session's
        rebalance_ms = rebalance_ms if rebalance_ms >= 0 else session_ms
        if not limits.group_session_timeout_ms_min <= session_ms <= limits.group_session_timeout_ms_max:
            return {"error_code": 26, "member_id": member_id}  # INVALID_SESSION_TIMEOUT: a client setting
        try:
            async with self._lock(group_id):
                group, _epoch, members = await self._view(group_id, keep=True)
                if member_id and member_id not in members and member_id not in group.joining \
                        and body.get("group_instance_id") is None:
                    raise UnknownMemberId(f"member {member_id} is not in group {group_id}", group_id=group_id)
                client_id = (request.header.client_id or "consumer")[:_CLIENT_ID_CHARS_MAX]
                member_id = member_id or f"{client_id}-{uuid.uuid4()}"
                joiner = Joiner(member_id, body.get("group_instance_id"), client_id, session_ms,
                                min(rebalance_ms, limits.group_rebalance_timeout_ms_max), body["protocol_type"],
                                tuple((p["name"], bytes(p["metadata"])) for p in body["protocols"]))
                for _name, metadata in joiner.protocols:
                    subscription_topics(metadata, count_max=limits.group_subscription_topics_max)
                starting = group.phase is not Phase.JOINING
                group.join(joiner, frozenset(members), _now_ms(), initial_delay_ms=limits.kafka_group_initial_delay_ms,
                           rebalance_wait_ms_max=limits.kafka_group_rebalance_wait_ms_max)
                if starting:
                    self._new_sync_round(group_id)
                waiters = self._joins.setdefault(group_id, {})
                previous = waiters.pop(member_id, None)
                if previous is not None and not previous.done():
                    previous.set_result({"error_code": int(KafkaError.UNKNOWN_MEMBER_ID), "member_id": member_id})
                answer: asyncio.Future[Body] = asyncio.get_running_loop().create_future()
                waiters[member_id] = answer
                self._ensure_driver(group_id)
                self._wake(group_id)
        except RaftMQError as error:
            return {"error_code": _code(error), "member_id": member_id}
        wait_s = (limits.kafka_group_rebalance_wait_ms_max + limits.group_request_timeout_ms) / 1000 \
            + limits.kafka_group_initial_delay_ms / 1000
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(answer)
        except TimeoutError:
            return {"error_code": int(KafkaError.REBALANCE_IN_PROGRESS), "member_id": member_id}

    def _ensure_driver(self, group_id: str) -> None:
        if group_id not in self._drivers:
            task = asyncio.get_running_loop().create_task(self._drive(group_id))
            self._drivers[group_id] = task
            task.add_done_callback(lambda _t: self._drivers.pop(group_id, None))

    async def _drive(self, group_id: str) -> None:
        """Run the join phase of ``group_id`` to its end: wait for the members, then form the generation."""
        changed = self._changed.setdefault(group_id, asyncio.Event())
        try:
            while True:
                group = self._groups.get(group_id)
                if group is None or group.phase is not Phase.JOINING:
                    return
                _epoch, members = await self.service.classic_view(group_id, keep_alive=tuple(group.joining))
                group.awaited = group.awaited & frozenset(members)  # an expired member is not waited for
                now_ms = _now_ms()
                if not group.joining and (not group.awaited or now_ms >= group.phase_ends_ms):
                    group.phase = Phase.STABLE  # nobody rejoined: the next JoinGroup starts afresh
                    return
                if group.ready(now_ms):
                    async with self._lock(group_id):
                        await self._form_generation(group_id, group, members)
                    return
                changed.clear()
                wait_s = min(limits.kafka_group_phase_check_interval_s, max(0, group.phase_ends_ms - now_ms) / 1000)
                try:
                    async with asyncio.timeout(wait_s):
                        await changed.wait()
                except TimeoutError:
                    pass  # recheck the members (expiries) and the phase's end
        except RaftMQError as error:
            self._fail_joins(group_id, error)
        except Exception:
            log.exception("classic group %s: the join phase failed", group_id)
            self._fail_joins(group_id, CoordinatorNotAvailable("the join phase failed on the coordinator"))

    async def _form_generation(self, group_id: str, group: ClassicGroup, members: dict[str, int]) -> None:
        """End the join phase: members that did not rejoin leave the replicated group, the ones that did join
        it (which moves its epoch: the new generation), and every waiting JoinGroup is answered."""
        joiners = list(group.joining.values())
        for gone in set(members) - set(group.joining):
            try:
                await self.service.group_heartbeat(GroupHeartbeat(group_id, gone, LEAVE_EPOCH))
            except UnknownMemberId:
                pass
        outcome = group.complete()
        generation = -1
        for joiner in joiners:
            topics = subscription_topics(outcome.metadata_of(joiner), count_max=limits.group_subscription_topics_max)
            answer = await self.service.classic_join(GroupHeartbeat(
                group_id, joiner.member_id, JOIN_EPOCH, joiner.instance_id, joiner.client_id, Subscription(topics),
                (), joiner.session_timeout_ms, joiner.rebalance_timeout_ms))
            generation = answer.result.group_epoch
        group.generation = generation
        log.info("classic group %s: generation %d, %d members, protocol %s, leader %s", group_id, generation,
                 len(joiners), outcome.protocol, outcome.leader)
        waiters = self._joins.pop(group_id, {})
        for joiner in joiners:
            future = waiters.pop(joiner.member_id, None)
            if future is not None and not future.done():
                future.set_result(self._join_answer(outcome, joiner, generation))
        for future in waiters.values():
            if not future.done():
                future.set_result({"error_code": int(KafkaError.REBALANCE_IN_PROGRESS), "member_id": ""})

    @staticmethod
    def _join_answer(outcome: JoinOutcome, joiner: Joiner, generation: int) -> Body:
        members = [{"member_id": m.member_id, "group_instance_id": m.instance_id, "metadata": outcome.metadata_of(m)}
                   for m in outcome.members] if joiner.member_id == outcome.leader else []
        return {"error_code": 0, "generation_id": generation, "protocol_name": outcome.protocol,
                "leader": outcome.leader, "member_id": joiner.member_id, "members": members}

    def _fail_joins(self, group_id: str, error: RaftMQError) -> None:
        log.info("classic group %s: join phase ended without a generation: %s", group_id, error)
        group = self._groups.pop(group_id, None)  # rebuilt from the replicated state on the next request
        if group is not None:
            group.phase = Phase.STABLE
        for future in self._joins.pop(group_id, {}).values():
            if not future.done():
                future.set_result({"error_code": _code(error), "member_id": ""})
        self._new_sync_round(group_id)

    # --- SyncGroup --------------------------------------------------------------------------------

    async def sync_group(self, request: Request) -> Body:
        body = request.body
        group_id, member_id, generation = body["group_id"], body["member_id"], body["generation_id"]
        try:
            group, _epoch, members = await self._view(group_id, keep_alive=(member_id,))
            self._check_member(group, members, member_id, generation)
            if group.phase is Phase.STABLE:
                return {"error_code": 0, "assignment": group.assignments.get(member_id, b"")}
            if member_id == group.leader:
                await self._install(group_id, group, generation, body["assignments"])
            else:
                synced = self._synced.setdefault(group_id, asyncio.Event())
                async with asyncio.timeout(limits.kafka_group_rebalance_wait_ms_max / 1000):
                    await synced.wait()
            if not _installed(group, generation):
                raise RebalanceInProgress(f"group {group_id} is rebalancing again; rejoin", group_id=group_id)
            return {"error_code": 0, "assignment": group.assignments.get(member_id, b"")}
        except TimeoutError:
            return {"error_code": int(KafkaError.REBALANCE_IN_PROGRESS)}
        except RaftMQError as error:
            return {"error_code": _code(error)}

    async def _install(self, group_id: str, group: ClassicGroup, generation: int, assignments: list[Body]) -> None:
        async with self._lock(group_id):
            if group.phase is not Phase.SYNCING or group.generation != generation:
                raise RebalanceInProgress(f"group {group_id} is rebalancing again; rejoin", group_id=group_id)
            given = {a["member_id"]: bytes(a["assignment"]) for a in assignments if a["member_id"] in group.members}
            target = {member: assignment_partitions(data, count_max=limits.kafka_array_elements_max)
                      for member, data in given.items()}
            try:
                await self.service.install_assignment(group_id, generation, target)
            except StaleMemberEpoch:
                # A member left or expired since the join phase: this generation is over.
                _epoch, members = await self.service.classic_view(group_id)
                group.start_rebalance(frozenset(members), _now_ms(),
                                      rebalance_wait_ms_max=limits.kafka_group_rebalance_wait_ms_max)
                self._new_sync_round(group_id)
                raise RebalanceInProgress(f"group {group_id} changed while it was syncing; rejoin",
                                          group_id=group_id) from None
            group.install(given)
            self._synced.setdefault(group_id, asyncio.Event()).set()

    @staticmethod
    def _check_member(group: ClassicGroup, members: dict[str, int], member_id: str, generation: int) -> None:
        if member_id not in members:
            raise UnknownMemberId(f"member {member_id} is not in group {group.group_id} (it left, or its session "
                                  "expired)", group_id=group.group_id, member_id=member_id)
        if group.phase is Phase.JOINING:
            raise RebalanceInProgress(f"group {group.group_id} is rebalancing; rejoin", group_id=group.group_id)
        if generation != group.generation:
            raise IllegalGeneration(f"generation {generation} is not group {group.group_id}'s current one, "
                                    f"{group.generation}", group_id=group.group_id, generation=generation)

    # --- Heartbeat and LeaveGroup -----------------------------------------------------------------

    async def heartbeat(self, request: Request) -> Body:
        body = request.body
        group_id, member_id = body["group_id"], body["member_id"]
        try:
            group, epoch, members = await self._view(group_id, keep_alive=(member_id,))
            self._check_member(group, members, member_id, body["generation_id"])
            if epoch != group.generation and group.phase is Phase.STABLE:
                # A member left or expired: the others rejoin for a new generation.
                group.start_rebalance(frozenset(members), _now_ms(),
                                      rebalance_wait_ms_max=limits.kafka_group_rebalance_wait_ms_max)
                self._new_sync_round(group_id)
                self._ensure_driver(group_id)
                raise RebalanceInProgress(f"group {group_id} lost a member; rejoin", group_id=group_id)
        except RaftMQError as error:
            return {"error_code": _code(error)}
        return {"error_code": 0}

    async def leave_group(self, request: Request) -> Body:
        body = request.body
        group_id, member_id = body["group_id"], body["member_id"]
        try:
            async with self._lock(group_id):
                group, _epoch, members = await self._view(group_id)
                if member_id not in members and member_id not in group.joining:
                    raise UnknownMemberId(f"member {member_id} is not in group {group_id}", group_id=group_id)
                group.forget(member_id)
                waiting = self._joins.get(group_id, {}).pop(member_id, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result({"error_code": int(KafkaError.UNKNOWN_MEMBER_ID), "member_id": member_id})
                if member_id in members:
                    await self.service.group_heartbeat(GroupHeartbeat(group_id, member_id, LEAVE_EPOCH))
                    del members[member_id]
                if members and group.phase is not Phase.JOINING:
                    group.start_rebalance(frozenset(members), _now_ms(),
                                          rebalance_wait_ms_max=limits.kafka_group_rebalance_wait_ms_max)
                    self._new_sync_round(group_id)
                    self._ensure_driver(group_id)
                self._wake(group_id)
                self._forget_if_idle(group_id, members)
        except RaftMQError as error:
            return {"error_code": _code(error)}
        return {"error_code": 0}

    # --- offsets ----------------------------------------------------------------------------------

    async def offset_commit(self, request: Request) -> Body:
        body = request.body
        group_id, member_id, generation = body["group_id"], body["member_id"], body["generation_id"]
        offsets = tuple((t["name"], p["partition_index"], p["committed_offset"], p["committed_metadata"] or "")
                        for t in body["topics"] for p in t["partitions"])
        try:
            validate_group_id(group_id)
            if generation < 0 and not member_id:
                # A simple commit from outside the group (assign() consumers): refused while it has members.
                member_epoch = NO_MEMBER_EPOCH
            else:
                group, epoch, members = await self._view(group_id)
                self._check_member(group, members, member_id, generation)
                if group.phase is Phase.SYNCING:
                    raise RebalanceInProgress(f"group {group_id} is completing a rebalance", group_id=group_id)
                if epoch != generation:
                    raise IllegalGeneration(f"group {group_id} moved past generation {generation}; rejoin",
                                            group_id=group_id, generation=generation)
                member_epoch = members[member_id]
            await self.service.commit_offsets(OffsetCommit(group_id, member_id, member_epoch, offsets))
            code = 0
        except RaftMQError as error:
            code = _code(error)
        by_topic: dict[str, list[Body]] = {}
        for topic, partition, _, _ in offsets:
            by_topic.setdefault(topic, []).append({"partition_index": partition, "error_code": code})
        return {"topics": [{"name": name, "partitions": parts} for name, parts in by_topic.items()]}

    async def offset_fetch(self, request: Request) -> Body:
        body = request.body
        group_id, topics = body["group_id"], body["topics"]
        wanted = None if topics is None else tuple((t["name"], p) for t in topics for p in t["partition_indexes"])
        try:
            validate_group_id(group_id)
            committed = {(v.topic, v.partition): v
                         for v in await self.service.fetch_offsets(group_id, wanted)}
            code = 0
        except RaftMQError as error:
            committed, code = {}, _code(error)
        by_topic: dict[str, list[Body]] = {}
        for topic, partition in (sorted(committed) if wanted is None else wanted):
            view = committed.get((topic, partition))
            by_topic.setdefault(topic, []).append({
                "partition_index": partition, "committed_offset": view.offset if view is not None else -1,
                "metadata": view.metadata if view is not None else "", "error_code": code})
        return {"topics": [{"name": name, "partitions": parts} for name, parts in by_topic.items()],
                "error_code": code}


__all__ = ["KafkaGroups"]
