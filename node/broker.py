"""The broker: composition root and the operations the HTTP API exposes.

Owns the lifecycle (``start``/``stop``) of the data directory lock, the replication loop (with its peer
network), the metadata group and one Raft group per local partition replica. Runs on the asyncio thread;
everything that must happen on the replication thread goes through ``ReplicationLoop.call``.

Produce, in order (README "Architecture" draws it):
  1. api.py decodes the request (cluster.wire) and calls ``produce``;
  2. this broker must lead the partition (else NOT_LEADER with the leader's URL), the batch is validated
     (cluster.batch: header, CRC, records), acks=all checks the in-sync replicas against
     min_insync_replicas (else NOT_ENOUGH_REPLICAS, nothing appended), and the partition's in-flight
     budget (else BUFFER_FULL);
  3. the batch goes into a command envelope (cluster.commands) and into the group's Raft log
     (node.replication → pysyncobj → node.journal), replicated over node.raft_transport;
  4. once a majority has it (fsynced under ``always``) it commits; every replica applies it with
     node.partition (offset assigned, producer dedup) into node.log segments;
  5. the leader's apply result resolves the request (acks=all); acks=1 resolves when the leader's own
     journal has the entry, acks=0 as soon as it is handed to Raft.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from raftmq.cluster import batch as batches
from raftmq.cluster import commands, limits
from raftmq.cluster.commands import MetadataOp, PartitionOp
from raftmq.cluster.errors import (
    BrokerNotReady,
    BrokerShuttingDown,
    BufferFull,
    InvalidAcks,
    InvalidConfig,
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
from raftmq.cluster.metadata import ProducerCheck, Topic, majority, parse_create_topic, validate_topic_name
from raftmq.cluster.routing import partition_for
from raftmq.cluster.wire import Acks
from raftmq.node.config import NodeConfig
from raftmq.node.fsutil import write_file_atomically
from raftmq.node.log import LogConfig
from raftmq.node.metadata_sm import METADATA_GROUP_ID, MetadataStateMachine
from raftmq.node.partition import AppendResult, PartitionStateMachine
from raftmq.node.raft_transport import NetworkListener, PeerNetwork
from raftmq.node.replication import AppendInfo, Durability, RaftGroup, ReplicationLoop

log = logging.getLogger(__name__)

_RECONCILE_INTERVAL_S = 1.0
_METADATA_TIMEOUT_S = 10.0
_LEADER_WAIT_TIMEOUT_S = 10.0
_NODE_FILE = "node.json"


@dataclass
class PartitionHandle:
    """A local partition replica as the asyncio side sees it."""

    topic: Topic
    partition: int
    group: RaftGroup
    state_machine: PartitionStateMachine
    uncommitted_bytes: int = 0
    uncommitted_entries: int = 0
    produced_batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic.name, self.partition)


def _partition_group_id(topic: Topic, partition: int) -> str:
    # The topic id makes a re-created topic a different group: stale messages cannot reach it.
    return f"p/{topic.topic_id}/{partition}"


class Broker:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.broker_id = config.broker_id
        self.data_dir = config.data_dir
        self.partitions: dict[tuple[str, int], PartitionHandle] = {}
        self.replication: ReplicationLoop | None = None
        self.meta_group: RaftGroup | None = None
        self.meta_sm = MetadataStateMachine()
        self._proposal_ids = itertools.count(1)
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconcile_lock = asyncio.Lock()
        self._reconcile_requested = asyncio.Event()
        self._stopping = False
        self.started_at = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._lock_data_dir()
        loop = asyncio.get_running_loop()
        peers = {entry.broker_id: entry.dial_address for entry in self.config.brokers
                 if entry.broker_id != self.broker_id}

        def network_factory(listener: NetworkListener) -> PeerNetwork:
            return PeerNetwork(self_id=self.broker_id, cluster_id=self.config.cluster_id,
                               listen=self.config.peer_listen, peers=peers, listener=listener,
                               secret=self.config.cluster_secret,
                               connection_timeout_s=self.config.timers.connection_timeout_s)

        self.replication = ReplicationLoop(network_factory=network_factory, durability=self.config.durability,
                                           asyncio_loop=loop, flush_interval_s=self.config.flush_interval_ms / 1000)
        try:
            self.replication.start()
        except OSError as exc:
            in_use = " (another process uses the port)" if exc.errno == errno.EADDRINUSE else ""
            raise InvalidConfig(f"cannot listen on peer_listen {self.config.peer_listen}: "
                                f"{exc.strerror or exc}{in_use}", key="peer_listen") from None
        self.meta_sm.on_topics_changed = self.request_reconcile
        self.meta_group = await asyncio.wrap_future(self.replication.call(self._open_metadata_group))
        self.replication.add_housekeeping(self._housekeeping)
        self._spawn(self._reconcile_forever())
        log.info("broker %d started: peers %s, durability %s", self.broker_id,
                 {k: str(v) for k, v in peers.items()}, self.config.durability.value)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down; already logged
                pass
        if self.replication is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.replication.stop)
        self.partitions.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("broker %d stopped", self.broker_id)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InvalidConfig(f"data_dir {self.data_dir} cannot be used: {exc.strerror or exc}", key="data_dir",
                                path=str(self.data_dir)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidConfig(f"data_dir {self.data_dir} is in use by another raftmq process", key="data_dir") \
                from None
        self._lock_fd = fd
        identity_path = self.data_dir / _NODE_FILE
        identity = {"broker_id": self.broker_id, "cluster_id": self.config.cluster_id, "format": 1}
        if identity_path.exists():
            try:
                found = json.loads(identity_path.read_text(encoding="utf-8"))
                if not isinstance(found, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                raise InvalidConfig(f"{identity_path} cannot be read ({exc}); if this directory is this broker's, "
                                    "restore the file, else point data_dir elsewhere", key="data_dir") from None
            if found.get("broker_id") != self.broker_id or found.get("cluster_id") != self.config.cluster_id:
                raise InvalidConfig(
                    f"data_dir {self.data_dir} belongs to broker {found.get('broker_id')} of cluster "
                    f"{found.get('cluster_id')!r}, not broker {self.broker_id} of {self.config.cluster_id!r}; "
                    "point data_dir elsewhere", key="data_dir")
        else:
            write_file_atomically(identity_path, (json.dumps(identity) + "\n").encode(), durable=True)

    # --- groups (replication thread) ----------------------------------------------------------

    def _open_metadata_group(self) -> RaftGroup:
        assert self.replication is not None
        group = RaftGroup(group_id=METADATA_GROUP_ID, directory=self.data_dir / "metadata", self_id=self.broker_id,
                          replica_ids=self.config.broker_ids, state_machine=self.meta_sm, loop=self.replication,
                          timers=self.config.timers)
        self.replication.add_group(group)
        return group

    def _housekeeping(self, now: float) -> None:
        assert self.replication is not None
        now_ms = int(time.time() * 1000)
        for group in list(self.replication.groups.values()):
            if self.config.leader_rebalance:
                group.maybe_transfer_to_preferred(now)
            state_machine = group.state_machine
            if isinstance(state_machine, PartitionStateMachine):
                deleted = state_machine.log.apply_retention(now_ms)
                if deleted:
                    log.info("%s-%d: retention deleted segments %s", state_machine.topic, state_machine.partition,
                             deleted)

    # --- reconcile: metadata -> local partition replicas ----------------------------------------

    def request_reconcile(self) -> None:
        self._reconcile_requested.set()

    @property
    def metadata_ready(self) -> bool:
        return self.meta_group is not None and self.meta_group.raft.isReady()

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(_RECONCILE_INTERVAL_S):
                    await self._reconcile_requested.wait()
            except TimeoutError:
                pass
            self._reconcile_requested.clear()
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - retried on the next round; must not kill the loop
                log.exception("reconcile failed; retrying")

    async def reconcile(self) -> None:
        async with self._reconcile_lock:
            view = self.meta_sm.view
            wanted: dict[tuple[str, int], Topic] = {}
            for topic in view.values():
                for partition in range(topic.partitions):
                    if self.broker_id in topic.replicas[partition]:
                        wanted[(topic.name, partition)] = topic
            for key, topic in wanted.items():
                handle = self.partitions.get(key)
                if handle is not None and handle.topic.topic_id == topic.topic_id:
                    continue
                if handle is not None:
                    if not self.metadata_ready:
                        continue
                    await self._close_partition(handle, delete=True)
                await self._open_partition(topic, key[1])
            if self.metadata_ready:
                for key, handle in list(self.partitions.items()):
                    if key not in wanted:
                        await self._close_partition(handle, delete=True)

    def _partition_dir(self, topic_name: str, partition: int) -> Path:
        return self.data_dir / "partitions" / f"{topic_name}-{partition}"

    async def _open_partition(self, topic: Topic, partition: int) -> None:
        assert self.replication is not None
        directory = self._partition_dir(topic.name, partition)
        marker = directory / "partition.json"
        loop = asyncio.get_running_loop()
        if marker.exists():
            found = json.loads(marker.read_text())
            found_id = int(found.get("topic_id", -1))
            if found_id > topic.topic_id:
                return  # a newer incarnation than the metadata we have replayed so far: wait
            if found_id < topic.topic_id:
                log.info("%s: removing the replica of an older topic incarnation (id %d)", directory, found_id)
                await loop.run_in_executor(None, _remove_tree, directory)
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"topic": topic.name, "partition": partition, "topic_id": topic.topic_id}) + "\n")
        config = LogConfig(segment_bytes=topic.config.segment_bytes, segment_ms=topic.config.segment_ms,
                           retention_ms=topic.config.retention_ms, retention_bytes=topic.config.retention_bytes)
        durable = self.config.durability is not Durability.NEVER
        # Opening the log (recovery) may read a lot: do it off both the event loop and the replication thread.
        state_machine = await loop.run_in_executor(None, lambda: PartitionStateMachine(
            topic=topic.name, partition=partition, topic_id=topic.topic_id, directory=directory, config=config,
            durable=durable))
        replica_ids = list(topic.replicas[partition])
        replication = self.replication

        def make_group() -> RaftGroup:
            group = RaftGroup(group_id=_partition_group_id(topic, partition), directory=directory,
                              self_id=self.broker_id, replica_ids=replica_ids, state_machine=state_machine,
                              loop=replication, timers=self.config.timers, preferred_replica=replica_ids[0])
            assert group.transport is not None
            state_machine.transport_annotations = group.transport.local_annotations
            state_machine.on_progress()
            replication.add_group(group)
            return group

        try:
            group = await asyncio.wrap_future(replication.call(make_group))
        except BaseException:
            state_machine.close()
            raise
        self.partitions[(topic.name, partition)] = PartitionHandle(topic, partition, group, state_machine)
        log.info("opened partition %s-%d (topic id %d, replicas %s, log %d..%d)", topic.name, partition,
                 topic.topic_id, replica_ids, state_machine.log.log_start_offset, state_machine.log.log_end_offset)

    async def _close_partition(self, handle: PartitionHandle, *, delete: bool) -> None:
        assert self.replication is not None
        self.partitions.pop(handle.key, None)
        group_id = handle.group.group_id
        await asyncio.wrap_future(self.replication.call(lambda: self.replication.remove_group(group_id)))  # type: ignore[union-attr]
        if delete:
            await asyncio.get_running_loop().run_in_executor(
                None, _remove_tree, self._partition_dir(handle.topic.name, handle.partition))
            log.info("deleted partition %s-%d", handle.topic.name, handle.partition)

    # --- lookups --------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopping:
            raise BrokerShuttingDown("the broker is stopping")

    def topic(self, name: str) -> Topic:
        topic = self.meta_sm.view.get(name)
        if topic is None:
            raise UnknownTopicOrPartition(f"topic {name!r} does not exist", topic=name)
        return topic

    def handle(self, topic_name: str, partition: int) -> PartitionHandle:
        self._check_running()
        topic = self.topic(topic_name)
        if not 0 <= partition < topic.partitions:
            raise UnknownTopicOrPartition(f"topic {topic_name!r} has no partition {partition} "
                                          f"(it has {topic.partitions})", topic=topic_name, partition=partition)
        handle = self.partitions.get((topic_name, partition))
        if handle is None or handle.topic.topic_id != topic.topic_id:
            raise BrokerNotReady(f"partition {topic_name}-{partition} is still opening on this broker",
                                 topic=topic_name, partition=partition)
        return handle

    def _not_leader(self, handle: PartitionHandle) -> RaftMQError:
        status = handle.group.status
        if status.is_leader and not status.quorum:
            return LeaderNotAvailable(
                f"broker {self.broker_id} leads {handle.topic.name}-{handle.partition} but cannot reach a majority "
                "of its replicas; nothing was appended (another broker is probably being elected)",
                topic=handle.topic.name, partition=handle.partition, leader_epoch=status.term)
        if status.leader_id is None or status.role == "candidate":
            return LeaderNotAvailable(f"partition {handle.topic.name}-{handle.partition} has no leader right now",
                                      topic=handle.topic.name, partition=handle.partition, leader_epoch=status.term)
        return NotLeader(f"broker {self.broker_id} is not the leader of {handle.topic.name}-{handle.partition}",
                         topic=handle.topic.name, partition=handle.partition, leader_id=status.leader_id,
                         leader_url=self.config.url_of(status.leader_id), leader_epoch=status.term)

    def _next_proposal_id(self) -> int:
        return (self.broker_id << 48) | (next(self._proposal_ids) & ((1 << 48) - 1))

    # --- metadata operations ------------------------------------------------------------------

    async def _metadata_call(self, op: MetadataOp, payload: dict[str, Any],
                             timeout_s: float = _METADATA_TIMEOUT_S) -> Any:
        self._check_running()
        assert self.meta_group is not None
        command = commands.encode(op, self._next_proposal_id(), int(time.time() * 1000),
                                  msgpack.packb(payload, use_bin_type=True))
        deadline = time.monotonic() + timeout_s
        while True:
            future = self.meta_group.submit(command)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    result = await asyncio.shield(future)
            except TimeoutError:
                raise RequestTimedOut(f"the metadata group did not commit within {timeout_s:.0f} s; the change may "
                                      "or may not have happened") from None
            except LeaderNotAvailable:
                # Definite: nothing was appended. Wait for an election, within the deadline.
                if time.monotonic() + 0.1 >= deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            if isinstance(result, RaftMQError):
                raise result
            return result

    async def create_topic(self, body: Any) -> Topic:
        payload = parse_create_topic(body, self.config.broker_ids)
        result = await self._metadata_call(MetadataOp.CREATE_TOPIC, payload)
        topic = result if isinstance(result, Topic) else self.topic(payload["name"])
        await self._wait_for_leaders(topic, _LEADER_WAIT_TIMEOUT_S)
        return topic

    async def _wait_for_leaders(self, topic: Topic, timeout_s: float) -> bool:
        """Best effort: a new topic is more useful once its partitions have leaders."""
        deadline = time.monotonic() + timeout_s
        self.request_reconcile()
        while time.monotonic() < deadline:
            handles = [self.partitions.get((topic.name, p)) for p in range(topic.partitions)]
            if all(h is not None and h.group.status.leader_id is not None and h.topic.topic_id == topic.topic_id
                   for h in handles):
                return True
            await asyncio.sleep(0.05)
        return False

    async def delete_topic(self, name: str) -> dict[str, Any]:
        validate_topic_name(name)
        self.topic(name)
        result: dict[str, Any] = await self._metadata_call(MetadataOp.DELETE_TOPIC, {"name": name})
        self.request_reconcile()
        return result

    async def init_producer(self, name: str | None) -> dict[str, int]:
        """Kafka's InitProducerId: ``{"producer_id", "producer_epoch"}`` (a known name: same id, next epoch)."""
        payload = {"name": name} if name is not None else {}
        result = await self._metadata_call(MetadataOp.ALLOCATE_PRODUCER_ID, payload)
        return {"producer_id": int(result["producer_id"]), "producer_epoch": int(result.get("producer_epoch", 0))}

    async def _check_producer(self, producer_id: int, timeout_s: float) -> None:
        """Refuse ids the cluster never allocated, and ids fenced by a newer instance of the same named
        producer. An id this replica's metadata has not learned yet may have just been allocated on the
        metadata leader: wait for it, briefly."""
        deadline = time.monotonic() + min(timeout_s, limits.producer_metadata_wait_ms / 1000)
        while True:
            event = self.meta_sm.applied_event()
            verdict = self.meta_sm.state.check_producer(producer_id)
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

    # --- produce --------------------------------------------------------------------------------

    def partition_for_key(self, topic_name: str, key: bytes) -> int:
        return partition_for(key, self.topic(topic_name).partitions)

    async def produce(self, topic_name: str, partition: int, batch: bytes, *, acks: Acks,
                      timeout_ms: int) -> dict[str, Any]:
        handle = self.handle(topic_name, partition)
        status = handle.group.status
        if not status.is_leader or not status.quorum:
            # CheckQuorum: a leader cut off from the majority could not commit, and acks=0/1 writes it took
            # would be lost when the majority elects another leader; refuse them and send clients elsewhere.
            raise self._not_leader(handle)
        header = batches.validate_produced(batch)
        if header.producer_id != batches.NO_PRODUCER_ID and acks is not Acks.ALL:
            # The append/duplicate/gap decision is made at apply time, after commit: an acks=0/1 answer could
            # not carry it, and a batch acknowledged that way might still be refused and never stored.
            raise InvalidAcks("an idempotent batch (producer_id set) needs acks=all", acks=acks.wire,
                              producer_id=header.producer_id)
        if header.producer_id != batches.NO_PRODUCER_ID:
            await self._check_producer(header.producer_id, timeout_ms / 1000)
            status = handle.group.status  # the wait may have taken a while
            if not status.is_leader or not status.quorum:
                raise self._not_leader(handle)
        if acks is Acks.ALL:
            required = handle.topic.config.min_insync_replicas
            if len(status.in_sync) < required:
                raise NotEnoughReplicas(
                    f"{len(status.in_sync)} in-sync replicas ({list(status.in_sync)}), min_insync_replicas is "
                    f"{required}; nothing was appended", in_sync=list(status.in_sync), min_insync_replicas=required)
        if handle.uncommitted_bytes + len(batch) > limits.raft_uncommitted_bytes_max \
                or handle.uncommitted_entries >= limits.raft_uncommitted_entries_max:
            raise BufferFull(f"{handle.uncommitted_bytes} bytes in {handle.uncommitted_entries} entries are waiting "
                             f"for replication on {topic_name}-{partition}; nothing was appended",
                             uncommitted_bytes=handle.uncommitted_bytes)
        now_ms = int(time.time() * 1000)
        command = commands.encode(PartitionOp.APPEND, self._next_proposal_id(), now_ms, batch)
        handle.uncommitted_bytes += len(batch)
        handle.uncommitted_entries += 1
        handle.produced_batches += 1
        released = False

        def release(_future: Any = None) -> None:
            nonlocal released
            if not released:
                released = True
                handle.uncommitted_bytes -= len(batch)
                handle.uncommitted_entries -= 1

        future = handle.group.submit(command, resolve_on_append=acks is Acks.LEADER)
        future.add_done_callback(release)
        future.add_done_callback(_consume_exception)
        response: dict[str, Any] = {"topic": topic_name, "partition": partition, "broker_id": self.broker_id,
                                    "acks": acks.wire,
                                    "base_offset": None, "record_count": header.record_count,
                                    "leader_epoch": status.term, "raft_index": None, "duplicate": False,
                                    "log_append_time_ms": now_ms}
        if acks is Acks.NONE:
            return response
        timeout_s = timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout_s):
                result = await asyncio.shield(future)
        except TimeoutError:
            release()
            handle.group.forget_append_waiter(command)
            raise RequestTimedOut(f"no {'commit' if acks is Acks.ALL else 'append'} within {timeout_ms} ms; the "
                                  "batch may or may not be stored", timeout_ms=timeout_ms) from None
        if isinstance(result, RaftMQError):
            raise result
        if isinstance(result, AppendInfo):
            response.update(raft_index=result.raft_index, leader_epoch=result.leader_epoch)
            return response
        if not isinstance(result, AppendResult):
            raise RaftMQError(f"unexpected apply result {result!r}")
        response.update(base_offset=result.base_offset, leader_epoch=result.leader_epoch, raft_index=result.raft_index,
                        duplicate=result.duplicate, log_append_time_ms=result.log_append_time_ms)
        if acks is Acks.ALL and handle.topic.config.min_insync_replicas > majority(len(handle.group.replica_ids)):
            await self._wait_for_replicas(handle, result.raft_index, handle.topic.config.min_insync_replicas,
                                          time.monotonic() + timeout_s)
        return response

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
            await asyncio.sleep(0.005)

    # --- fetch and offsets ----------------------------------------------------------------------

    async def fetch(self, topic_name: str, partition: int, offset: int, *, max_bytes: int, max_wait_ms: int,
                    any_replica: bool) -> tuple[PartitionHandle, bytes]:
        handle = self.handle(topic_name, partition)
        if not any_replica and not handle.group.status.is_leader:
            raise self._not_leader(handle)
        partition_log = handle.state_machine.log
        deadline = time.monotonic() + max_wait_ms / 1000
        while True:
            start, end = partition_log.log_start_offset, partition_log.log_end_offset
            if offset > end and not any_replica and not handle.group.status.caught_up:
                # A new leader applies the entries of earlier terms only once its own first entry commits;
                # until then its high watermark can be below what the previous leader served.
                raise LeaderNotAvailable(f"the new leader of {topic_name}-{partition} is still catching up",
                                         topic=topic_name, partition=partition)
            if offset < start or offset > end:
                raise OffsetOutOfRange(f"offset {offset} is outside [{start}, {end}]", offset=offset,
                                       log_start_offset=start, log_end_offset=end)
            if offset < end:
                return handle, partition_log.read(offset, max_bytes)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                return handle, b""
            event = handle.state_machine.data_event()
            if partition_log.log_end_offset != end:
                continue
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return handle, b""

    def list_offset(self, topic_name: str, partition: int, at: str, *, any_replica: bool) -> dict[str, Any]:
        handle = self.handle(topic_name, partition)
        if not any_replica:
            status = handle.group.status
            if not status.is_leader:
                raise self._not_leader(handle)
            if not status.caught_up:
                raise LeaderNotAvailable(f"the new leader of {topic_name}-{partition} is still catching up",
                                         topic=topic_name, partition=partition)
        partition_log = handle.state_machine.log
        if at == "earliest":
            offset: int | None = partition_log.log_start_offset
        elif at == "latest":
            offset = partition_log.log_end_offset
        else:
            offset = partition_log.offset_for_timestamp(int(at))
        return {"topic": topic_name, "partition": partition, "offset": offset,
                "log_start_offset": partition_log.log_start_offset, "high_watermark": partition_log.log_end_offset}

    # --- descriptions ---------------------------------------------------------------------------

    def describe_partition(self, topic: Topic, partition: int) -> dict[str, Any]:
        info: dict[str, Any] = {"partition": partition, "replicas": list(topic.replicas[partition]),
                                "leader_id": None, "leader_epoch": None, "isr": [], "role": None,
                                "commit_index": None, "applied_index": None, "log_start_offset": None,
                                "high_watermark": None}
        handle = self.partitions.get((topic.name, partition))
        if handle is not None and handle.topic.topic_id == topic.topic_id:
            status = handle.group.status
            # A leader that cannot reach a majority does not advertise itself: clients look elsewhere.
            leader_id = None if status.is_leader and not status.quorum else status.leader_id
            info.update(leader_id=leader_id, leader_epoch=status.term, role=status.role, quorum=status.quorum,
                        isr=list(status.in_sync), commit_index=status.commit_index,
                        applied_index=status.applied_index, last_index=status.last_index,
                        match_index={str(k): v for k, v in status.match_index.items()},
                        log_start_offset=handle.state_machine.log.log_start_offset,
                        high_watermark=handle.state_machine.log.log_end_offset,
                        size_bytes=handle.state_machine.log.size_bytes)
        return info

    def describe_topic(self, topic: Topic) -> dict[str, Any]:
        wire = topic.to_wire()
        wire["partitions"] = [self.describe_partition(topic, p) for p in range(topic.partitions)]
        wire["partition_count"] = topic.partitions
        return wire

    def metadata(self) -> dict[str, Any]:
        meta_status = self.meta_group.status if self.meta_group is not None else None
        return {
            "cluster_id": self.config.cluster_id,
            "broker_id": self.broker_id,
            "controller_id": meta_status.leader_id if meta_status else None,
            "metadata": {"term": meta_status.term if meta_status else None,
                         "commit_index": meta_status.commit_index if meta_status else None,
                         "applied_index": meta_status.applied_index if meta_status else None,
                         "ready": self.metadata_ready},
            "peer_links": self.replication.published_links if self.replication is not None else [],
            "brokers": [{"id": entry.broker_id, "url": entry.url, "peer": str(entry.peer),
                         "connected": entry.broker_id == self.broker_id or (
                             self.replication is not None and self.replication.network.is_up(entry.broker_id))}
                        for entry in self.config.brokers],
            "topics": [self.describe_topic(topic)
                       for topic in sorted(self.meta_sm.view.values(), key=lambda t: t.name)],
        }

    def health(self) -> dict[str, Any]:
        replication_ok = self.replication is not None and self.replication.failure is None
        return {"status": "ok" if replication_ok and not self._stopping else "degraded",
                "broker_id": self.broker_id, "cluster_id": self.config.cluster_id, "ready": self.metadata_ready,
                "partitions": len(self.partitions), "uptime_s": round(time.monotonic() - self.started_at, 1),
                "durability": self.config.durability.value}


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # acks=0 requests never await the future: retrieve its exception so asyncio does not warn.
    if not future.cancelled():
        future.exception()


def _remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    trash = directory.with_name(directory.name + f".deleted-{time.time_ns()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)
