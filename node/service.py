"""The broker's service: every operation a client can ask for, independent of the protocol it came in.

Listeners (``node/api.py`` for HTTP; a Kafka-protocol listener next) decode a request into the values of
``node/operations.py``, call a method here, and encode the result; failures are the coded ``RaftMQError``s
of ``cluster/errors.py``. The rules live here: only the leader with a quorum takes writes (NOT_LEADER with
the leader's URL otherwise), batches are validated before they are proposed, acks=all checks the in-sync
replicas against ``min_insync_replicas``, each partition has an in-flight budget (BUFFER_FULL), producer
ids are checked against the metadata, and reads see only committed records. Disk reads run on the I/O
pool, never on the event loop.

Produce, in order (README "Architecture" draws it): validate → command envelope (cluster/commands.py) →
the partition's replication group (node/groups.py) → commit on a majority → every replica applies it
(node/partition.py) into its log (node/log.py) → the leader's apply result answers acks=all; acks=1
answers when the leader's own log has the entry, acks=0 as soon as it is handed to the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from raftmq.cluster import batch as batches
from raftmq.cluster import commands, limits
from raftmq.cluster.commands import MetadataOp, PartitionOp
from raftmq.cluster.compression import CODEC_NONE
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC
from raftmq.cluster.errors import (
    BrokerShuttingDown,
    BufferFull,
    InvalidAcks,
    InvalidRequest,
    InvalidTopic,
    LeaderNotAvailable,
    NotEnoughReplicas,
    NotEnoughReplicasAfterAppend,
    NotLeader,
    OffsetOutOfRange,
    ProducerFenced,
    RaftMQError,
    RequestTimedOut,
    UnknownProducerId,
    UnknownTopicOrPartition,
)
from raftmq.cluster.exchanges import Exchange
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
from raftmq.cluster.metadata import (
    AlterTopicRequest,
    BrokerRecord,
    CreateTopicRequest,
    ProducerCheck,
    Topic,
    majority,
    validate_topic_name,
)
from raftmq.cluster.producer_state import is_publish_producer_id
from raftmq.cluster.routing import partition_for
from raftmq.cluster.wire import Acks
from raftmq.node import stages
from raftmq.node.config import NodeConfig
from raftmq.node.controller import Call, Controller
from raftmq.node.dead_lettering import DeadLetters
from raftmq.node.exchanges import Exchanges
from raftmq.node.group_coordinator import GroupCoordinator
from raftmq.node.groups import AppendInfo, ReplicationEngine
from raftmq.node.log import PartitionLog
from raftmq.node.metadata import MetadataGroup
from raftmq.node.operations import (
    BrokerDescription,
    ClusterDescription,
    DeletedTopic,
    FetchRequest,
    FetchResult,
    Health,
    OffsetRequest,
    OffsetResult,
    PartitionDescription,
    ProduceRequest,
    ProduceResult,
    ProducerIdentity,
    TopicDescription,
)
from raftmq.node.partition import AppendResult
from raftmq.node.partition_reader import PartitionReader
from raftmq.node.push import PushSessions
from raftmq.node.reassignment import perform_step
from raftmq.node.replicas import PartitionHandle, ReplicaManager
from raftmq.node.stages import StageTimes, StageTrace

log = logging.getLogger(__name__)


def _read_served(partition_log: PartitionLog, offset: int, max_bytes: int) -> bytes:
    """What a fetch serves from ``offset``: the stored batches read (on the I/O pool) as bare RecordBatch v2
    batches, the broker's prefixes dropped."""
    return batches.served(partition_log.read(offset, max_bytes))


class BrokerService:
    def __init__(self, *, config: NodeConfig, engine: ReplicationEngine, metadata: MetadataGroup,
                 replicas: ReplicaManager, controller: Controller,
                 describe_moves: Callable[[], dict[tuple[str, int], dict[str, Any]]] = dict,
                 groups: GroupCoordinator | None = None, call: Call | None = None) -> None:
        self.config = config
        self.broker_id = config.broker_id
        self.engine = engine
        self.metadata = metadata
        self.replicas = replicas
        self.controller = controller
        self.describe_moves = describe_moves
        self.groups = groups
        self.stopping = False
        self.started_at = time.monotonic()
        self.stage_times = StageTimes()  # acks=all produce requests led here (GET /v1/debug/stages)
        self.exchanges = Exchanges(metadata=metadata, propose=self._propose_metadata, produce_here=self.produce,
                                   call=call, wait_for=self._wait_for)
        self.reader = PartitionReader(self, call)
        self.dead_letters = DeadLetters(self, self.reader, propose=self._propose_metadata, wait_for=self._wait_for)
        self.push = PushSessions(self)

    # --- leadership -----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.stopping:
            raise BrokerShuttingDown("the broker is stopping")

    def _handle(self, topic: str, partition: int) -> PartitionHandle:
        self._check_running()
        return self.replicas.handle(topic, partition)

    def _not_leader(self, handle: PartitionHandle) -> RaftMQError:
        status = handle.group.status
        if status.is_leader and not status.quorum:
            return LeaderNotAvailable(
                f"broker {self.broker_id} leads {handle.name} but cannot reach a majority of its replicas; nothing "
                "was appended (another broker is probably being elected)", topic=handle.topic.name,
                partition=handle.partition, leader_epoch=status.term)
        if status.leader_id is None or status.role == "candidate":
            return LeaderNotAvailable(f"partition {handle.name} has no leader right now", topic=handle.topic.name,
                                      partition=handle.partition, leader_epoch=status.term)
        return NotLeader(f"broker {self.broker_id} is not the leader of {handle.name}", topic=handle.topic.name,
                         partition=handle.partition, leader_id=status.leader_id,
                         leader_url=self.config.url_of(status.leader_id), leader_epoch=status.term)

    def _leader_with_quorum(self, handle: PartitionHandle) -> None:
        """CheckQuorum: a leader cut off from the majority could not commit, and acks=0/1 writes it took
        would be lost when the majority elects another leader; refuse them and send clients elsewhere."""
        status = handle.group.status
        if not status.is_leader or not status.quorum:
            raise self._not_leader(handle)

    # --- produce --------------------------------------------------------------------------------

    def partition_for_key(self, topic: str, key: bytes) -> int:
        return partition_for(key, self.metadata.topic(topic).partitions)

    async def produce(self, request: ProduceRequest) -> ProduceResult:
        if request.topic == GROUP_STATE_TOPIC:
            raise InvalidTopic(f"{GROUP_STATE_TOPIC} is internal: consumer groups write it, clients only read it",
                               topic=request.topic)
        handle = self._handle(request.topic, request.partition)
        self._leader_with_quorum(handle)
        header = batches.validate_produced(request.batch, check_records=False)
        if header.codec != CODEC_NONE and len(request.batch) > limits.compressed_batch_check_inline_bytes_max:
            await asyncio.get_running_loop().run_in_executor(None, batches.check_records_of, request.batch, header)
        else:
            batches.check_records_of(request.batch, header)
        if header.producer_id != batches.NO_PRODUCER_ID:
            if request.acks is not Acks.ALL:
                # The append/duplicate/gap decision is made at apply time, after commit: an acks=0/1 answer
                # could not carry it, and a batch acknowledged that way might still be refused, never stored.
                raise InvalidAcks("an idempotent batch (producer_id set) needs acks=all", acks=request.acks.wire,
                                  producer_id=header.producer_id)
            await self._check_producer(header.producer_id, request.timeout_ms / 1000)
            self._leader_with_quorum(handle)  # the wait may have taken a while
        if request.acks is Acks.ALL:
            self._check_in_sync(handle)
        self._check_budget(handle, len(request.batch))
        now_ms = int(time.time() * 1000)
        command = commands.encode(PartitionOp.APPEND, self.metadata.proposals.next(), now_ms, request.batch)
        future, release = self._propose(handle, command, len(request.batch), request.acks, request.trace)
        result = ProduceResult(request.topic, request.partition, self.broker_id, request.acks, None,
                               header.record_count, handle.group.status.term, None, False, now_ms)
        if request.acks is Acks.NONE:
            return result
        outcome = await self._await_outcome(handle, command, future, release, request)
        if isinstance(outcome, AppendInfo):
            return replace(result, raft_index=outcome.raft_index, leader_epoch=outcome.leader_epoch)
        result = replace(result, base_offset=outcome.base_offset, leader_epoch=outcome.leader_epoch,
                          raft_index=outcome.raft_index, duplicate=outcome.duplicate,
                          log_append_time_ms=outcome.log_append_time_ms)
        required = handle.topic.config.min_insync_replicas
        if required > majority(len(handle.group.replica_ids)):
            await self._wait_for_replicas(handle, outcome.raft_index, required,
                                          time.monotonic() + request.timeout_ms / 1000)
        return result

    async def _check_producer(self, producer_id: int, timeout_s: float) -> None:
        """Refuse ids the cluster never allocated, and ids fenced by a newer instance of the same named
        producer. An id this replica's metadata has not learned yet may have just been allocated on the
        metadata leader: wait for it, briefly. Ids in the range reserved for exchange publishes are derived by
        the routing broker from the publish (cluster/publish.py), never allocated: they pass (a client forging
        one gains nothing: it can write records to the partition anyway)."""
        if is_publish_producer_id(producer_id):
            return
        deadline = time.monotonic() + min(timeout_s, limits.producer_metadata_wait_ms / 1000)
        while True:
            event = self.metadata.applied_event()
            verdict = self.metadata.check_producer(producer_id)
            if verdict is ProducerCheck.CURRENT:
                return
            if verdict is ProducerCheck.FENCED:
                raise ProducerFenced(f"producer {producer_id} was fenced: a newer instance with the same name "
                                     "has started", producer_id=producer_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnknownProducerId(f"producer id {producer_id} was not allocated by this cluster",
                                        producer_id=producer_id, allocated=False)
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                pass

    def _check_in_sync(self, handle: PartitionHandle) -> None:
        status = handle.group.status
        required = handle.topic.config.min_insync_replicas
        if len(status.in_sync) < required:
            raise NotEnoughReplicas(
                f"{len(status.in_sync)} in-sync replicas ({list(status.in_sync)}), min_insync_replicas is "
                f"{required}; nothing was appended", in_sync=list(status.in_sync), min_insync_replicas=required)

    def _check_budget(self, handle: PartitionHandle, size: int) -> None:
        if handle.uncommitted_bytes + size > limits.raft_uncommitted_bytes_max \
                or handle.uncommitted_entries >= limits.raft_uncommitted_entries_max:
            raise BufferFull(f"{handle.uncommitted_bytes} bytes in {handle.uncommitted_entries} entries are waiting "
                             f"for replication on {handle.name}; nothing was appended",
                             uncommitted_bytes=handle.uncommitted_bytes)

    def _propose(self, handle: PartitionHandle, command: bytes, size: int, acks: Acks,
                 trace: StageTrace | None = None) -> tuple[asyncio.Future[Any], Callable[[], None]]:
        """Hand ``command`` to the group, counted in the partition's in-flight budget until it resolves (or
        its waiter gives up: ``release``)."""
        handle.uncommitted_bytes += size
        handle.uncommitted_entries += 1
        handle.produced_batches += 1
        released = False

        def release(_future: Any = None) -> None:
            nonlocal released
            if not released:
                released = True
                handle.uncommitted_bytes -= size
                handle.uncommitted_entries -= 1

        if trace is not None:
            trace.stamp(stages.SUBMITTED)
        future = handle.group.submit(command, resolve_on_append=acks is Acks.LEADER, trace=trace)
        future.add_done_callback(release)
        future.add_done_callback(_consume_exception)
        return future, release

    async def _await_outcome(self, handle: PartitionHandle, command: bytes, future: asyncio.Future[Any],
                             release: Callable[[], None], request: ProduceRequest) -> AppendInfo | AppendResult:
        try:
            async with asyncio.timeout(request.timeout_ms / 1000):
                result = await asyncio.shield(future)
            if request.trace is not None:
                request.trace.stamp(stages.ON_ASYNCIO)
        except TimeoutError:
            release()
            handle.group.forget_append_waiter(command)
            what = "commit" if request.acks is Acks.ALL else "append"
            raise RequestTimedOut(f"no {what} within {request.timeout_ms} ms; the batch may or may not be stored",
                                  timeout_ms=request.timeout_ms) from None
        if isinstance(result, RaftMQError):
            raise result
        if not isinstance(result, AppendInfo | AppendResult):
            raise RaftMQError(f"unexpected apply result {result!r}")
        return result

    async def _wait_for_replicas(self, handle: PartitionHandle, raft_index: int, required: int,
                                 deadline: float) -> None:
        """min_insync_replicas above a majority: Raft committed with a majority; wait until enough replicas
        hold the entry, or say so (the batch IS stored: NOT_ENOUGH_REPLICAS_AFTER_APPEND, not definite)."""
        while True:
            status = handle.group.status
            holding = 1 + sum(1 for index in status.match_index.values() if index >= raft_index)
            if holding >= required:
                return
            if time.monotonic() >= deadline or not status.is_leader:
                raise NotEnoughReplicasAfterAppend(
                    f"committed, but only {holding} of the required {required} replicas confirmed it",
                    replicas_confirmed=holding, min_insync_replicas=required)
            await asyncio.sleep(0.005)  # polling match indexes with a deadline

    # --- fetch and offsets ----------------------------------------------------------------------

    async def fetch(self, request: FetchRequest) -> FetchResult:
        handle = self._handle(request.topic, request.partition)
        if not request.any_replica and not handle.group.status.is_leader:
            raise self._not_leader(handle)
        partition_log = handle.state_machine.log
        deadline = time.monotonic() + request.max_wait_ms / 1000
        offset = request.offset
        while True:
            start, end = partition_log.log_start_offset, partition_log.log_end_offset
            if offset > end and not request.any_replica and not handle.group.status.caught_up:
                # A new leader applies the entries of earlier terms only once its own first entry commits;
                # until then its high watermark can be below what the previous leader served.
                raise LeaderNotAvailable(f"the new leader of {handle.name} is still catching up",
                                         topic=request.topic, partition=request.partition)
            if offset < start or offset > end:
                raise OffsetOutOfRange(f"offset {offset} is outside [{start}, {end}]", offset=offset,
                                       log_start_offset=start, log_end_offset=end)
            if offset < end:
                data = await asyncio.get_running_loop().run_in_executor(None, _read_served, partition_log, offset,
                                                                        request.max_bytes)
                return self._fetched(request, handle, data)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping:
                return self._fetched(request, handle, b"")
            event = handle.state_machine.data_event()
            if partition_log.log_end_offset != end:
                continue
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return self._fetched(request, handle, b"")

    @staticmethod
    def _fetched(request: FetchRequest, handle: PartitionHandle, data: bytes) -> FetchResult:
        partition_log = handle.state_machine.log
        return FetchResult(request.topic, request.partition, data, partition_log.log_end_offset,
                           partition_log.log_start_offset)

    async def list_offset(self, request: OffsetRequest) -> OffsetResult:
        handle = self._handle(request.topic, request.partition)
        if not request.any_replica:
            status = handle.group.status
            if not status.is_leader:
                raise self._not_leader(handle)
            if not status.caught_up:
                raise LeaderNotAvailable(f"the new leader of {handle.name} is still catching up",
                                         topic=request.topic, partition=request.partition)
        partition_log = handle.state_machine.log
        if request.at == "earliest":
            offset: int | None = partition_log.log_start_offset
        elif request.at == "latest":
            offset = partition_log.log_end_offset
        else:
            offset = await asyncio.get_running_loop().run_in_executor(
                None, partition_log.offset_for_timestamp, int(request.at))
        return OffsetResult(request.topic, request.partition, offset, partition_log.log_start_offset,
                            partition_log.log_end_offset)

    # --- topics and producers ---------------------------------------------------------------------

    async def create_topic(self, request: CreateTopicRequest, *, forwarded: bool = False) -> TopicDescription:
        self._check_running()
        if request.name == GROUP_STATE_TOPIC and not forwarded:
            raise InvalidTopic(f"{GROUP_STATE_TOPIC} is internal: the brokers create it for consumer groups",
                               topic=request.name)
        topic = await self.controller.create_topic(request, forwarded=forwarded)
        if not forwarded:  # the broker that forwarded waits for leaders itself
            await self.replicas.wait_for_leaders(topic, limits.topic_leaders_wait_s)
        return self.describe_topic(topic.name)

    async def delete_topic(self, name: str) -> DeletedTopic:
        self._check_running()
        validate_topic_name(name)
        if name == GROUP_STATE_TOPIC:
            raise InvalidTopic(f"{GROUP_STATE_TOPIC} holds every consumer group's state and offsets: it cannot be "
                               "deleted", topic=name)
        self.metadata.topic(name)
        result: dict[str, Any] = await self.controller.propose(MetadataOp.DELETE_TOPIC, {"name": name})
        self.replicas.request_reconcile()
        return DeletedTopic(str(result["deleted"]), int(result["topic_id"]))

    async def _propose_metadata(self, op: MetadataOp, payload: dict[str, Any]) -> Any:
        self._check_running()
        return await self.controller.propose(op, payload)

    async def init_producer(self, name: str | None) -> ProducerIdentity:
        """Kafka's InitProducerId (see cluster/metadata.py MetadataState for names and fencing)."""
        self._check_running()
        result = await self.controller.propose(MetadataOp.ALLOCATE_PRODUCER_ID, {"name": name} if name else {})
        return ProducerIdentity(int(result["producer_id"]), int(result.get("producer_epoch", 0)))

    async def alter_topic(self, name: str, request: AlterTopicRequest, *, forwarded: bool = False) -> TopicDescription:
        """Raise the partition count / change the replication factor (at the controller)."""
        self._check_running()
        validate_topic_name(name)
        if name == GROUP_STATE_TOPIC and request.partitions is not None:
            # Groups are hashed over the partition count: another count would look for them elsewhere.
            raise InvalidTopic(f"the partition count of {GROUP_STATE_TOPIC} is fixed (groups are hashed over it); "
                               "only its replication factor can change", topic=name)
        self.metadata.topic(name)
        if self.controller.active:
            topic = await self.controller.alter_topic(name, request)
        elif forwarded:
            raise self.controller.not_controller()
        else:
            body = {k: v for k, v in (("partitions", request.partitions),
                                       ("replication_factor", request.replication_factor)) if v is not None}
            await self.controller.at_controller("PATCH", f"/v1/topics/{name}", body,
                                                limits.metadata_request_timeout_s)
            topic = await self._wait_for(lambda: self._altered(name, request))
        return self.describe_topic(topic.name)

    def _altered(self, name: str, request: AlterTopicRequest) -> Topic | None:
        topic = self.metadata.view.get(name)
        if topic is None:
            return None
        if request.partitions is not None and topic.partitions < request.partitions:
            return None
        if request.replication_factor is not None and topic.replication_factor != request.replication_factor:
            return None
        return topic

    async def _wait_for(self, found: Callable[[], Any], timeout_s: float = limits.metadata_request_timeout_s) -> Any:
        """Wait until this broker's metadata shows what the controller committed."""
        deadline = time.monotonic() + timeout_s
        while (result := found()) is None:
            event = self.metadata.applied_event()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimedOut("the controller made the change but this broker has not learned of it yet")
            try:
                async with asyncio.timeout(min(remaining, 0.5)):  # a learner is told by its heartbeat, not an event
                    await event.wait()
            except TimeoutError:
                pass
        return result

    async def set_draining(self, broker_id: int, draining: bool, *, forwarded: bool = False) -> BrokerDescription:
        self._check_running()
        if self.controller.active:
            record = await self.controller.set_draining(broker_id, draining)
        elif forwarded:
            raise self.controller.not_controller()
        else:
            await self.controller.at_controller("POST" if draining else "DELETE", f"/v1/brokers/{broker_id}/drain",
                                                None, limits.metadata_request_timeout_s)
            wanted = ("draining",) if draining else ("alive", "fenced", "removed")
            record = await self._wait_for(lambda: (r if (r := self.metadata.brokers.get(broker_id)) is not None
                                                   and r.state.value in wanted else None))
        return self._describe_broker(record)

    # --- consumer groups (node/group_coordinator.py) -------------------------------------------------

    def _coordinator(self) -> GroupCoordinator:
        self._check_running()
        if self.groups is None:
            raise BrokerShuttingDown("this broker has no group coordinator")
        return self.groups

    async def group_heartbeat(self, request: GroupHeartbeat) -> HeartbeatAnswer:
        """Join, heartbeat or leave a group; the answer carries the member's epoch and assignment."""
        return await self._coordinator().heartbeat(request)

    async def commit_offsets(self, request: OffsetCommit) -> int:
        return await self._coordinator().commit_offsets(request)

    # Kafka's classic group protocol (node/kafka_groups.py): the same coordinator and replicated state.

    async def find_coordinator(self, group_id: str) -> int:
        return await self._coordinator().find(group_id)

    async def classic_join(self, request: GroupHeartbeat) -> HeartbeatAnswer:
        return await self._coordinator().heartbeat(request, classic=True)

    async def classic_view(self, group_id: str, *, keep_alive: Iterable[str] = ()) -> tuple[int, dict[str, int]]:
        return await self._coordinator().classic_view(group_id, keep_alive=keep_alive)

    async def install_assignment(self, group_id: str, generation: int,
                                 target: dict[str, frozenset[tuple[str, int]]]) -> None:
        await self._coordinator().install_assignment(group_id, generation, target)

    async def fetch_offsets(self, group_id: str, partitions: tuple[tuple[str, int], ...] | None
                            ) -> tuple[CommittedOffsetView, ...]:
        return await self._coordinator().fetch_offsets(group_id, partitions)

    async def delete_offsets(self, group_id: str, partitions: tuple[tuple[str, int], ...] | None) -> int:
        return await self._coordinator().delete_offsets(group_id, partitions)

    async def describe_group(self, group_id: str) -> GroupDescription:
        return await self._coordinator().describe(group_id)

    def list_groups(self) -> GroupListing:
        return self._coordinator().list_groups()

    async def share_acquire(self, request: ShareAcquire) -> ShareAcquired:
        """Queue mode: lock records of a partition for one consumer of a share group."""
        return await self._coordinator().share_acquire(request)

    async def share_acknowledge(self, request: ShareAcknowledge) -> ShareAcknowledged:
        return await self._coordinator().share_acknowledge(request)

    async def share_locked(self, request: ShareAcknowledge) -> dict[int, int]:
        return await self._coordinator().share_locked(request)

    async def describe_share_group(self, group_id: str) -> list[dict[str, Any]]:
        return await self._coordinator().describe_share_group(group_id)

    # --- the controller's internal calls --------------------------------------------------------

    async def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_running()
        return await self.controller.heartbeat(body)

    def metadata_state(self) -> dict[str, Any]:
        if not self.controller.active:
            raise self.controller.not_controller()
        index, state = self.metadata.export_state()
        return {"applied_index": index, "state": state}

    async def propose_here(self, op: int, payload: dict[str, Any]) -> Any:
        """A learner's metadata command, at the controller."""
        if not self.controller.active:
            raise self.controller.not_controller()
        if op not in _FORWARDABLE_OPS:
            raise InvalidRequest(f"metadata operation {op} cannot be forwarded")
        result = await self.metadata.propose(MetadataOp(op), payload)
        return result.to_wire() if isinstance(result, (Topic, BrokerRecord, Exchange)) else result

    async def partition_step(self, body: dict[str, Any]) -> dict[str, Any]:
        """On a partition's leader: one membership step of a move the controller drives."""
        self._check_running()
        handle = self._handle(str(body["topic"]), int(body["partition"]))
        if handle.topic.topic_id != int(body["topic_id"]):
            raise UnknownTopicOrPartition("the topic was re-created", topic=body["topic"])
        if not handle.group.status.is_leader:
            raise self._not_leader(handle)
        return await perform_step(handle, self.broker_id, tuple(int(b) for b in body["target"]),
                                  frozenset(int(b) for b in body["alive"]))

    # --- descriptions ---------------------------------------------------------------------------

    def describe_partition(self, topic: Topic, partition: int) -> PartitionDescription:
        replicas = tuple(topic.replicas[partition])
        handle = self.replicas.local(topic, partition)
        target, epoch = topic.targets[partition], topic.epochs[partition]
        if handle is None:
            return PartitionDescription(partition, replicas, leader_id=self.replicas.leader_of(topic.name, partition),
                                        target=target, partition_epoch=epoch)
        status = handle.group.status
        partition_log = handle.state_machine.log
        # A leader that cannot reach a majority does not advertise itself: clients look elsewhere.
        leader_id = None if status.is_leader and not status.quorum else status.leader_id
        return PartitionDescription(
            partition, replicas, hosted=True, leader_id=leader_id, target=target, partition_epoch=epoch,
            voters=status.voters,
            leader_epoch=status.term, role=status.role,
            quorum=status.quorum, isr=status.in_sync, commit_index=status.commit_index,
            applied_index=status.applied_index, last_index=status.last_index,
            match_index=tuple(sorted(status.match_index.items())), log_start_offset=partition_log.log_start_offset,
            high_watermark=partition_log.log_end_offset, size_bytes=partition_log.size_bytes)

    def describe_topic(self, name: str) -> TopicDescription:
        topic = self.metadata.topic(name)
        return TopicDescription(topic.name, topic.topic_id, topic.replication_factor, topic.config.to_wire(),
                                topic.created_ms, tuple(self.describe_partition(topic, p)
                                                        for p in range(topic.partitions)))

    def list_topics(self) -> tuple[TopicDescription, ...]:
        return tuple(self.describe_topic(name) for name in sorted(self.metadata.view))

    def _describe_broker(self, record: BrokerRecord) -> BrokerDescription:
        broker_id = record.broker_id
        topics = self.metadata.view.values()
        replicas = sum(1 for t in topics for r in t.replicas if broker_id in r)
        leaders = sum(1 for t in topics for p in range(t.partitions) if self.replicas.leader_id(t, p) == broker_id)
        seen = self.controller.last_seen.get(broker_id) if self.controller.active else None
        return BrokerDescription(broker_id, record.url, record.peer,
                                 broker_id == self.broker_id or self.engine.is_peer_up(broker_id),
                                 record.state.value, record.rack, record.incarnation,
                                 broker_id in self.config.voters, replicas, leaders,
                                 round(time.monotonic() - seen, 2) if seen is not None else None,
                                 kafka=self.kafka_address_of(broker_id))

    def kafka_address_of(self, broker_id: int) -> str | None:
        """A broker's advertised Kafka address (host:port; node/kafka_api.py lists the same in Kafka Metadata):
        ours from our config; another's as it registered it with the controller (so a broker added after
        the others started is listed too), else as our [[brokers]] config has it."""
        if broker_id == self.broker_id:
            address = self.config.kafka_address
            return str(address) if address is not None else None
        record = self.metadata.brokers.get(broker_id)
        if record is not None and record.kafka is not None:
            return record.kafka
        entry = self.config.broker(broker_id)
        return str(entry.kafka) if entry is not None and entry.kafka is not None else None

    def describe_cluster(self) -> ClusterDescription:
        status = self.metadata.status
        registered = dict(self.metadata.brokers)
        brokers = [self._describe_broker(registered.pop(e.broker_id)) if e.broker_id in registered
                   else BrokerDescription(e.broker_id, e.url, str(e.peer),
                                          e.broker_id == self.broker_id or self.engine.is_peer_up(e.broker_id),
                                          metadata_voter=e.broker_id in self.config.voters,
                                          kafka=self.kafka_address_of(e.broker_id))
                   for e in self.config.brokers]
        brokers += [self._describe_broker(r) for r in registered.values()]
        return ClusterDescription(
            self.config.cluster_id, self.broker_id, self.metadata.controller_id, status.term, status.commit_index,
            status.applied_index, self.metadata.ready, tuple(self.engine.peer_links()),
            tuple(sorted(brokers, key=lambda b: b.broker_id)), self.list_topics(),
            controller_url=self.controller.url_of(self.metadata.controller_id), metadata_voter=self.metadata.voter,
            moves=tuple(self._moves()))

    def _moves(self) -> list[dict[str, Any]]:
        progress = self.describe_moves() if self.controller.active else {}
        moves = []
        for topic in self.metadata.view.values():
            for partition, target in enumerate(topic.targets):
                if target is None:
                    continue
                replicas = topic.replicas[partition]
                known = progress.get((topic.name, partition), {})
                moves.append({"topic": topic.name, "partition": partition, "replicas": list(replicas),
                              "target": list(target), "reason": topic.move_reasons[partition],
                              "adding": next((b for b in target if b not in replicas), None),
                              "removing": next((b for b in replicas if b not in target), None),
                              "running_s": known.get("running_s"),
                              "progress": {k: known[k] for k in ("broker", "match_index", "leader_last_index")
                                           if k in known} or None,
                              "step": known.get("step"), "why": known.get("why")})
        return moves

    def record_stages(self, trace: StageTrace) -> None:
        """A traced produce request's response is written: add it to the per-stage aggregates."""
        trace.stamp(stages.RESPONDED)
        self.stage_times.record(trace)

    def debug_stages(self) -> dict[str, Any]:
        """Per-stage latency of acks=all produce requests this broker led (node/stages.py)."""
        return {"broker_id": self.broker_id, **self.stage_times.snapshot()}

    def health(self) -> Health:
        ok = self.engine.failure is None and not self.stopping
        return Health(ok, self.broker_id, self.config.cluster_id, self.metadata.ready, len(self.replicas.partitions),
                      time.monotonic() - self.started_at, self.config.durability.value)


# Metadata commands a learner may ask the controller to propose (their payloads are built by brokers).
_FORWARDABLE_OPS = frozenset({MetadataOp.DELETE_TOPIC, MetadataOp.ALLOCATE_PRODUCER_ID, MetadataOp.CREATE_EXCHANGE,
                              MetadataOp.DELETE_EXCHANGE, MetadataOp.BIND_EXCHANGE, MetadataOp.UNBIND_EXCHANGE,
                              MetadataOp.SET_GROUP_DEAD_LETTER})


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # acks=0 requests never await the future: retrieve its exception so asyncio does not warn.
    if not future.cancelled():
        future.exception()


__all__ = ["BrokerService"]
