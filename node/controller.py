"""The controller: decisions only the metadata group's leader makes (KRaft's controller).

* Topics: where a new topic's (or new partitions') replicas go (``cluster/placement.py``, on the live
  brokers, balancing what they host already), alter (partition count, replication factor).
* Brokers: registration and liveness. Every broker heartbeats here (``node/session.py``); a new broker,
  a new incarnation or a broker that comes back is (re)registered by a metadata command; one silent for
  the session timeout is fenced; a fenced or drained broker that hosts nothing is marked removed.
  A stale incarnation or a foreign cluster id is refused (the broker stops).
* Moves: heal, drain, replication factor and rebalance moves (``cluster/reassignment.py``), started within
  the ``moves_max`` throttle and driven by ``node/reassignment.py``.
* The leaders table: partition leaders report what they lead in their heartbeats; the answer carries the
  table, so a broker can name the leader of a partition it does not host.

A broker that is not the controller forwards requests to the controller's client URL (marked as forwarded
so they are never forwarded twice). The controller acts only while it leads the metadata group with a
quorum and has applied its own term's first entry, so its decisions see everything committed before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import (
    ClusterIdMismatch,
    InvalidPartitions,
    InvalidRequest,
    LeaderNotAvailable,
    NotController,
    NotEnoughBrokers,
    RaftMQError,
    RequestTimedOut,
    StaleBrokerIncarnation,
    TopicAlreadyExists,
    UnknownBroker,
)
from raftmq.cluster.metadata import AlterTopicRequest, BrokerRecord, BrokerState, CreateTopicRequest, Topic
from raftmq.cluster.placement import (
    BrokerSlot,
    Load,
    assign_replicas,
    default_replication_factor,
    plan_create_topic,
    replacement,
)
from raftmq.cluster.reassignment import Cluster, choose_moves
from raftmq.node.config import Liveness
from raftmq.node.metadata import MetadataGroup
from raftmq.node.tasks import cancel

log = logging.getLogger(__name__)

# (controller URL, the request, deadline in seconds from now) -> the topic's name, once the controller made it
Forward = Callable[[str, CreateTopicRequest, float], Awaitable[Any]]
# (url, method, path, body, timeout) -> the decoded answer (ControllerForwarder.call)
Call = Callable[[str, str, str, Any, float], Awaitable[Any]]
LeaderKey = tuple[str, int]  # (topic, partition)


class Controller:
    def __init__(self, *, broker_id: int, cluster_id: str, metadata: MetadataGroup,
                 url_of: Callable[[int | None], str | None], forward: Forward | None, call: Call | None = None,
                 liveness: Liveness | None = None, tick_s: float = limits.controller_tick_s) -> None:
        self.broker_id = broker_id
        self.cluster_id = cluster_id
        self.metadata = metadata
        self.url_of = url_of
        self.forward = forward
        self.call = call
        self.liveness = liveness or Liveness()
        self.tick_s = tick_s
        self.last_seen: dict[int, float] = {}
        self.leaders: dict[LeaderKey, tuple[int, int]] = {}  # -> (leader broker, term)
        self._active_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_tick: Callable[[], Awaitable[None]] | None = None  # the reassigner drives moves here

    @property
    def active(self) -> bool:
        return self.metadata.is_controller

    def not_controller(self) -> NotController:
        controller_id = self.metadata.controller_id
        return NotController(f"broker {self.broker_id} is not the controller", controller_id=controller_id,
                             controller_url=self.url_of(controller_id))

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # the controller's clock: liveness and moves are checked this often
            if not self.active:
                self._active_since = None
                continue
            if self._active_since is None:
                # A new controller has seen no heartbeat yet: every broker gets a full session from now.
                self._active_since = time.monotonic()
                self.last_seen = dict.fromkeys(self.metadata.brokers, self._active_since)
            try:
                await self.check_liveness()
                await self.start_moves()
                if self.on_tick is not None:
                    await self.on_tick()
            except RaftMQError as exc:
                log.info("controller: %s (retrying)", exc)
            except Exception:  # noqa: BLE001 - the next tick retries; must not kill the loop
                log.exception("controller tick failed")

    # --- proposals at the controller ------------------------------------------------------------

    async def propose(self, op: MetadataOp, payload: dict[str, Any],
                      timeout_s: float = limits.metadata_request_timeout_s) -> Any:
        """Commit a metadata command from any broker: a voter proposes itself (the group takes it to its
        leader); a learner asks the controller over HTTP."""
        if self.metadata.voter:
            return await self.metadata.propose(op, payload, timeout_s=timeout_s)
        return await self.at_controller("POST", "/v1/internal/metadata/propose", {"op": int(op), "payload": payload},
                                        timeout_s)

    async def at_controller(self, method: str, path: str, body: Any, timeout_s: float) -> Any:
        """One request to the controller, retried while none is known or it changes (both definite)."""
        deadline = time.monotonic() + timeout_s
        while True:
            url = self.url_of(self.metadata.controller_id)
            if url is not None and self.call is not None:
                try:
                    return await self.call(url, method, path, body, max(0.1, deadline - time.monotonic()))
                except (NotController, LeaderNotAvailable):
                    pass
            if time.monotonic() + limits.metadata_retry_s >= deadline:
                raise LeaderNotAvailable("no controller could be reached; nothing was changed")
            await asyncio.sleep(limits.metadata_retry_s)  # a controller election is running

    # --- topics ---------------------------------------------------------------------------------

    def live_slots(self) -> list[BrokerSlot]:
        return [BrokerSlot(b.broker_id, b.rack) for b in self.metadata.brokers.values()
                if b.state is BrokerState.ALIVE]

    def load(self) -> Load:
        return Load.of(t.replicas for t in self.metadata.view.values())

    async def create_topic(self, request: CreateTopicRequest, *, forwarded: bool = False,
                           timeout_s: float = limits.metadata_request_timeout_s) -> Topic:
        """Place and commit a new topic here if this broker is the controller, else at the controller.
        Returns the topic as this broker's metadata has applied it."""
        deadline = time.monotonic() + timeout_s
        last: RaftMQError = LeaderNotAvailable("no controller is elected right now; nothing was created")
        while True:
            if not self.active and (forwarded or self.forward is None):
                raise self.not_controller()
            try:
                if self.active:
                    return await self._create_here(request, deadline)
                url = self.url_of(self.metadata.controller_id)
                if url is not None and self.forward is not None:
                    await self.forward(url, request, max(0.1, deadline - time.monotonic()))
                    return await self._wait_applied(request.name, deadline)
            except (NotController, LeaderNotAvailable, RequestTimedOut) as exc:
                # The controller changed or did not answer: ask again. A retried create of a topic the
                # first attempt made is answered as created (see _create_here), so the caller gets a
                # definite answer whenever the deadline allows one.
                last = exc
            if time.monotonic() + limits.metadata_retry_s >= deadline:
                raise last
            await asyncio.sleep(limits.metadata_retry_s)  # a controller election is running

    async def _create_here(self, request: CreateTopicRequest, deadline: float) -> Topic:
        live = self.live_slots()
        # The default replication factor counts the brokers the cluster has (the metadata voters at least),
        # not only those that have registered with this controller yet.
        known = sum(1 for b in self.metadata.brokers.values() if b.state is not BrokerState.REMOVED)
        wanted = request.replication_factor or default_replication_factor(max(known, len(self.metadata.replica_ids)))
        settling = self._active_since is None or time.monotonic() - self._active_since < self.liveness.session_timeout_s
        if not live or settling and len(live) < wanted:
            # A new controller hears every live broker within a heartbeat: wait for them (retried by the caller).
            raise LeaderNotAvailable(f"{len(live)} brokers have registered with the new controller so far; retry")
        if request.replication_factor is None:
            request = replace(request, replication_factor=min(wanted, len(live)))
        payload = plan_create_topic(request, live, load=self.load())
        try:
            result = await self.metadata.propose(MetadataOp.CREATE_TOPIC, payload,
                                                 timeout_s=max(0.1, deadline - time.monotonic()))
        except TopicAlreadyExists:
            # A retry of a create whose first answer was lost: the same topic is a success, not an error.
            existing = self.metadata.view.get(request.name)
            if existing is not None and _same_request(existing, payload):
                return existing
            raise
        return result if isinstance(result, Topic) else self.metadata.topic(request.name)

    async def _wait_applied(self, name: str, deadline: float) -> Topic:
        """The controller committed the topic; wait until this broker's copy of the metadata has it."""
        while True:
            event = self.metadata.applied_event()
            topic = self.metadata.view.get(name)
            if topic is not None:
                return topic
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimedOut(f"topic {name!r} was created by the controller but this broker has not "
                                      "learned of it yet", topic=name)
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                pass

    async def alter_topic(self, name: str, request: AlterTopicRequest) -> Topic:
        """Controller only: raise the partition count and/or set a new replication factor (moves follow)."""
        if not self.active:
            raise self.not_controller()
        topic = self.metadata.topic(name)
        live = self.live_slots()
        if request.replication_factor is not None and request.replication_factor != topic.replication_factor:
            if request.replication_factor > len(live):
                raise NotEnoughBrokers(f"replication_factor {request.replication_factor} needs that many live "
                                       f"brokers; {len(live)} are alive", brokers=len(live))
            topic = await self.metadata.propose(MetadataOp.SET_REPLICATION_FACTOR, {
                "name": name, "topic_id": topic.topic_id, "replication_factor": request.replication_factor})
        if request.partitions is not None and request.partitions != topic.partitions:
            if request.partitions < topic.partitions:
                raise InvalidPartitions(f"topic {name!r} has {topic.partitions} partitions; a partition count "
                                        "can only be raised (records are routed by key over the count)",
                                        partitions=topic.partitions)
            replicas = assign_replicas(request.partitions - topic.partitions, topic.replication_factor, live,
                                       load=self.load(), first_partition=topic.partitions)
            topic = await self.metadata.propose(MetadataOp.CREATE_PARTITIONS, {
                "name": name, "topic_id": topic.topic_id, "from": topic.partitions,
                "replicas": [list(r) for r in replicas]})
        return topic

    # --- brokers --------------------------------------------------------------------------------

    async def heartbeat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Controller only: a broker's heartbeat (registration on the first one). Returns its state, the
        metadata index (learners pull when behind) and the leaders table."""
        if not self.active:
            raise self.not_controller()
        broker_id = int(body["broker_id"])
        if body["cluster_id"] != self.cluster_id:
            raise ClusterIdMismatch(f"broker {broker_id} belongs to cluster {body['cluster_id']!r}, this is "
                                    f"{self.cluster_id!r}", cluster_id=self.cluster_id)
        known = self.metadata.brokers.get(broker_id)
        wanted = {"id": broker_id, "url": body["url"], "peer": body["peer"], "rack": body.get("rack"),
                  "incarnation": int(body["incarnation"]), "kafka": body.get("kafka")}
        if known is not None and known.incarnation > wanted["incarnation"]:
            raise StaleBrokerIncarnation(
                f"broker {broker_id} started again (incarnation {known.incarnation}); this process is incarnation "
                f"{wanted['incarnation']} and must stop", broker_id=broker_id, incarnation=known.incarnation)
        if known is None or _registration_changed(known, wanted):
            known = await self.metadata.propose(MetadataOp.REGISTER_BROKER, wanted)
            log.info("controller: broker %d registered (incarnation %d, %s)", broker_id, wanted["incarnation"],
                     known.state.value)
        self.last_seen[broker_id] = time.monotonic()
        for topic, partition, term in body.get("leads", ())[:limits.heartbeat_partitions_max]:
            key = (str(topic), int(partition))
            current = self.leaders.get(key)
            if current is None or current[1] <= int(term):
                self.leaders[key] = (broker_id, int(term))
        return {"state": known.state.value, "metadata_index": self.metadata.status.applied_index,
                "controller_id": self.broker_id, "leaders": self.leaders_wire()}

    def leaders_wire(self) -> list[list[Any]]:
        topics = self.metadata.view
        return [[t, p, b, term] for (t, p), (b, term) in self.leaders.items() if t in topics]

    def _prune_leaders(self) -> None:
        """Forget leaders of partitions that no longer exist (deleted topics, a re-created topic's old ones)."""
        topics = self.metadata.view
        for key in [k for k in self.leaders if k[0] not in topics or k[1] >= topics[k[0]].partitions]:
            del self.leaders[key]

    async def check_liveness(self) -> None:
        self._prune_leaders()
        now = time.monotonic()
        for record in list(self.metadata.brokers.values()):
            seen = self.last_seen.get(record.broker_id, self._active_since or now)
            silent = now - seen >= self.liveness.session_timeout_s
            if silent and record.state in (BrokerState.ALIVE, BrokerState.DRAINING):
                log.warning("controller: broker %d missed heartbeats for %.1f s: fenced", record.broker_id, now - seen)
                await self._set_state(record, BrokerState.FENCED)
                self._forget_leader(record.broker_id)
            elif record.state in (BrokerState.FENCED, BrokerState.DRAINING) and not self._hosts_any(record.broker_id):
                if record.state is BrokerState.FENCED or silent:
                    log.info("controller: broker %d hosts nothing and is gone: removed", record.broker_id)
                    await self._set_state(record, BrokerState.REMOVED)

    def _forget_leader(self, broker_id: int) -> None:
        for key in [k for k, (b, _t) in self.leaders.items() if b == broker_id]:
            del self.leaders[key]

    def _hosts_any(self, broker_id: int) -> bool:
        return any(topic.hosted_by(p, broker_id) for topic in self.metadata.view.values()
                   for p in range(topic.partitions))

    async def _set_state(self, record: BrokerRecord, state: BrokerState) -> BrokerRecord:
        result: BrokerRecord = await self.metadata.propose(MetadataOp.SET_BROKER_STATE, {
            "id": record.broker_id, "state": state.value, "expect": record.state.value})
        return result

    async def set_draining(self, broker_id: int, draining: bool) -> BrokerRecord:
        """Controller only: start (or cancel) moving every replica off a broker."""
        if not self.active:
            raise self.not_controller()
        record = self.metadata.brokers.get(broker_id)
        if record is None:
            raise UnknownBroker(f"no broker {broker_id} is registered", broker_id=broker_id)
        if not draining:
            if record.state is not BrokerState.DRAINING:
                raise InvalidRequest(f"broker {broker_id} is {record.state.value}, not draining", broker_id=broker_id)
            return await self._set_state(record, BrokerState.ALIVE)
        if record.state is BrokerState.DRAINING:
            return record
        if record.state is not BrokerState.ALIVE:
            raise InvalidRequest(f"broker {broker_id} is {record.state.value}; only an alive broker can be drained",
                                 broker_id=broker_id, state=record.state.value)
        self._check_drainable(broker_id)
        log.info("controller: draining broker %d", broker_id)
        return await self._set_state(record, BrokerState.DRAINING)

    def _check_drainable(self, broker_id: int) -> None:
        """Refuse a drain that could never finish: a partition on the broker with nowhere else to go."""
        others = [s for s in self.live_slots() if s.broker_id != broker_id]
        stuck = []
        for topic in self.metadata.view.values():
            for partition, replicas in enumerate(topic.replicas):
                if broker_id in replicas and replacement(replicas, others, Load(), leaving=[broker_id]) is None:
                    stuck.append(f"{topic.name}-{partition}")
        if stuck:
            raise NotEnoughBrokers(
                f"broker {broker_id} cannot be drained: {len(stuck)} partitions (e.g. {', '.join(stuck[:3])}) would "
                f"have nowhere to go among the {len(others)} other live brokers", partitions=stuck[:20],
                brokers=len(others))

    # --- moves ----------------------------------------------------------------------------------

    async def start_moves(self) -> None:
        cluster = Cluster(list(self.metadata.view.values()), self.metadata.brokers, int(time.time() * 1000),
                          int(self.liveness.heal_grace_s * 1000), self.liveness.moves_max)
        for move in choose_moves(cluster):
            log.info("controller: moving %s-%d to %s (%s)", move.topic, move.partition, list(move.target),
                     move.reason)
            await self.metadata.propose(MetadataOp.BEGIN_REASSIGNMENT, {
                "name": move.topic, "topic_id": move.topic_id, "partition": move.partition,
                "target": list(move.target), "reason": move.reason})

    def alive_ids(self) -> frozenset[int]:
        return frozenset(b.broker_id for b in self.metadata.brokers.values()
                         if b.state in (BrokerState.ALIVE, BrokerState.DRAINING))


def _registration_changed(known: BrokerRecord, wanted: Mapping[str, Any]) -> bool:
    if known.state in (BrokerState.FENCED, BrokerState.REMOVED):
        return True  # it is back
    return (known.url, known.peer, known.rack, known.incarnation, known.kafka) != (
        wanted["url"], wanted["peer"], wanted["rack"], wanted["incarnation"], wanted.get("kafka"))


def _same_request(topic: Topic, payload: Mapping[str, Any]) -> bool:
    return (topic.partitions, topic.replication_factor) == (payload["partitions"], payload["replication_factor"])


__all__ = ["Call", "Controller", "Forward"]
