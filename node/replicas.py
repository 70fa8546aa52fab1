"""The partition replicas this broker hosts: opened, closed and deleted to match the metadata, and kept.

The replica manager owns every ``PartitionHandle`` (a partition's state machine, its replication group and
the produce in-flight budget). ``reconcile`` compares the topics in the metadata with what is open and
opens, reopens (a re-created topic is a new incarnation, with a new topic id) or closes and deletes
replicas; it runs whenever the topics change and at least every ``reconcile_interval_s``. A broker hosts
a partition when it is one of its replicas or in the target of a move (``Topic.hosted_by``): a replica being
added opens its group with the current voters plus itself and waits for the leader to add it; a replica
that is in neither (the move removed it from the group, and the controller recorded that) is deleted. Housekeeping
(time and size retention) runs where the state machines run (``ReplicationEngine.add_housekeeping``).

Lookups for the service: ``handle(topic, partition)`` answers the coded errors a client needs
(UNKNOWN_TOPIC_OR_PARTITION, BROKER_NOT_READY while a replica opens).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import BrokerNotReady, LeaderNotAvailable, NotLeader, UnknownTopicOrPartition
from raftmq.cluster.metadata import Topic
from raftmq.node.config import Durability
from raftmq.node.fsutil import make_directories, write_file_atomically
from raftmq.node.groups import GroupSpec, ReplicationEngine, ReplicationGroup
from raftmq.node.log import LogConfig
from raftmq.node.metadata import MetadataGroup
from raftmq.node.partition import PartitionStateMachine
from raftmq.node.tasks import cancel

log = logging.getLogger(__name__)

_MARKER = "partition.json"


@dataclass
class PartitionHandle:
    """A local partition replica as the event loop sees it."""

    topic: Topic
    partition: int
    group: ReplicationGroup
    state_machine: PartitionStateMachine
    uncommitted_bytes: int = 0  # proposed here as leader, not yet committed (the BUFFER_FULL budget)
    uncommitted_entries: int = 0
    produced_batches: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic.name, self.partition)

    @property
    def name(self) -> str:
        return f"{self.topic.name}-{self.partition}"


def partition_group_id(topic: Topic, partition: int) -> str:
    # The topic id makes a re-created topic a different group: stale messages cannot reach it.
    return f"p/{topic.topic_id}/{partition}"


class ReplicaManager:
    def __init__(self, *, broker_id: int, data_dir: Path, durability: Durability, engine: ReplicationEngine,
                 metadata: MetadataGroup) -> None:
        self.broker_id = broker_id
        self.data_dir = data_dir
        self.durability = durability
        self.engine = engine
        self.metadata = metadata
        self.partitions: dict[tuple[str, int], PartitionHandle] = {}
        self._lock = asyncio.Lock()
        self._requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The state machine of a topic's replicas: the internal group-state topic gets its own (broker wiring).
        self.state_machine_class: Callable[[Topic], type[PartitionStateMachine]] = lambda _topic: PartitionStateMachine
        # Where a partition this broker does not host is led (the controller's leaders table), and URLs.
        self.leader_of: Callable[[str, int], int | None] = lambda _topic, _partition: None
        self.url_of: Callable[[int | None], str | None] = lambda _broker: None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.engine.add_housekeeping(self._housekeeping)
        self._task = asyncio.get_running_loop().create_task(self._reconcile_forever())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self.partitions.clear()  # the engine closes the groups (and their state machines) when it stops

    # --- lookups (event loop) -------------------------------------------------------------------

    def handle(self, topic_name: str, partition: int) -> PartitionHandle:
        topic = self.metadata.topic(topic_name)
        if not 0 <= partition < topic.partitions:
            raise UnknownTopicOrPartition(f"topic {topic_name!r} has no partition {partition} "
                                          f"(it has {topic.partitions})", topic=topic_name, partition=partition)
        handle = self.partitions.get((topic_name, partition))
        if not topic.hosted_by(partition, self.broker_id):
            leader_id = self.leader_of(topic_name, partition)
            if leader_id is None or leader_id == self.broker_id:
                raise LeaderNotAvailable(f"broker {self.broker_id} does not host {topic_name}-{partition} and "
                                         "knows no leader for it yet", topic=topic_name, partition=partition)
            raise NotLeader(f"broker {self.broker_id} does not host {topic_name}-{partition}", topic=topic_name,
                            partition=partition, leader_id=leader_id, leader_url=self.url_of(leader_id))
        if handle is None or handle.topic.topic_id != topic.topic_id:
            raise BrokerNotReady(f"partition {topic_name}-{partition} is still opening on this broker",
                                 topic=topic_name, partition=partition)
        return handle

    def local(self, topic: Topic, partition: int) -> PartitionHandle | None:
        """This broker's replica of the current incarnation of ``topic``'s partition, if it is open."""
        handle = self.partitions.get((topic.name, partition))
        return handle if handle is not None and handle.topic.topic_id == topic.topic_id else None

    def leader_id(self, topic: Topic, partition: int) -> int | None:
        handle = self.local(topic, partition)
        if handle is not None:
            return handle.group.status.leader_id
        return self.leader_of(topic.name, partition)

    def led_partitions(self) -> list[list[Any]]:
        """[topic, partition, term] of every partition this broker leads with a quorum (for heartbeats)."""
        led = []
        for handle in self.partitions.values():
            status = handle.group.status
            if status.is_leader and status.quorum:
                led.append([handle.topic.name, handle.partition, status.term])
        return led

    async def wait_for_leaders(self, topic: Topic, timeout_s: float) -> bool:
        """Best effort: a new topic is more useful once its partitions have leaders."""
        deadline = time.monotonic() + timeout_s
        self.request_reconcile()
        while time.monotonic() < deadline:
            if all(self.leader_id(topic, p) is not None for p in range(topic.partitions)):
                return True
            await asyncio.sleep(0.05)  # polling leadership with a deadline
        return False

    # --- reconcile ------------------------------------------------------------------------------

    def request_reconcile(self) -> None:
        self._requested.set()

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(limits.reconcile_interval_s):
                    await self._requested.wait()
            except TimeoutError:
                pass
            self._requested.clear()
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - retried on the next round; must not kill the loop
                log.exception("reconcile failed; retrying")

    async def reconcile(self) -> None:
        async with self._lock:
            wanted: dict[tuple[str, int], Topic] = {}
            for topic in self.metadata.view.values():
                for partition in range(topic.partitions):
                    if topic.hosted_by(partition, self.broker_id):
                        wanted[(topic.name, partition)] = topic
            ready = self.metadata.ready
            for key, topic in wanted.items():
                handle = self.partitions.get(key)
                if handle is not None and handle.topic.topic_id == topic.topic_id:
                    self._follow(handle, topic)
                    continue
                if handle is not None:
                    if not ready:
                        continue
                    await self._close(handle, delete=True)
                await self._open(topic, key[1])
            if ready:  # only a replayed view may delete: an older view could still lack a new topic
                for key, handle in list(self.partitions.items()):
                    if key not in wanted:
                        await self._close(handle, delete=True)

    def _directory(self, topic_name: str, partition: int) -> Path:
        return self.data_dir / "partitions" / f"{topic_name}-{partition}"

    async def _open(self, topic: Topic, partition: int) -> None:
        directory = self._directory(topic.name, partition)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, _claim_directory, directory, topic, partition):
            return  # a newer incarnation than the metadata we have replayed so far: wait
        config = LogConfig(segment_bytes=topic.config.segment_bytes, segment_ms=topic.config.segment_ms,
                           retention_ms=topic.config.retention_ms, retention_bytes=topic.config.retention_bytes)
        durable = self.durability is not Durability.NEVER
        # Opening the log (recovery) may read a lot: do it off the event loop and the replication thread.
        state_machine_class = self.state_machine_class(topic)
        state_machine = await loop.run_in_executor(None, lambda: state_machine_class(
            topic=topic.name, partition=partition, topic_id=topic.topic_id, directory=directory, config=config,
            durable=durable))
        replica_ids = tuple(topic.replicas[partition])
        if self.broker_id not in replica_ids:  # being added by a move: the leader adds it to the group
            replica_ids += (self.broker_id,)
        spec = GroupSpec(partition_group_id(topic, partition), directory, replica_ids,
                         preferred_replica=topic.replicas[partition][0])
        try:
            group = await self.engine.open_group(spec, state_machine)
        except BaseException:
            state_machine.close()
            raise
        self.partitions[(topic.name, partition)] = PartitionHandle(topic, partition, group, state_machine)
        log.info("opened partition %s-%d (topic id %d, replicas %s, log %d..%d)", topic.name, partition,
                 topic.topic_id, list(replica_ids), state_machine.log.log_start_offset,
                 state_machine.log.log_end_offset)

    @staticmethod
    def _follow(handle: PartitionHandle, topic: Topic) -> None:
        """The partition's replica set changed (a move): keep the newest topic record and preferred leader."""
        if handle.topic is topic:
            return
        handle.topic = topic
        preferred = topic.replicas[handle.partition][0]
        if getattr(handle.group, "preferred_replica", preferred) != preferred:
            handle.group.preferred_replica = preferred  # type: ignore[attr-defined]

    async def _close(self, handle: PartitionHandle, *, delete: bool) -> None:
        self.partitions.pop(handle.key, None)
        await self.engine.close_group(handle.group.group_id)
        if delete:
            await asyncio.get_running_loop().run_in_executor(
                None, _remove_tree, self._directory(handle.topic.name, handle.partition))
            log.info("deleted partition %s", handle.name)

    # --- housekeeping (the engine's thread) -----------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        now_ms = int(time.time() * 1000)
        for handle in list(self.partitions.values()):  # a copy: the event loop opens and closes replicas
            try:
                deleted = handle.state_machine.log.apply_retention(now_ms)
            except Exception:  # noqa: BLE001 - e.g. closed meanwhile; the other partitions still get theirs
                log.warning("%s: retention failed", handle.name, exc_info=True)
                continue
            if deleted:
                log.info("%s: retention deleted segments %s", handle.name, deleted)


def _claim_directory(directory: Path, topic: Topic, partition: int) -> bool:
    """Make ``directory`` hold this incarnation of the partition; False when it holds a newer one."""
    marker = directory / _MARKER
    if marker.exists():
        found: Any = json.loads(marker.read_text())
        found_id = int(found.get("topic_id", -1)) if isinstance(found, dict) else -1
        if found_id > topic.topic_id:
            return False
        if found_id < topic.topic_id:
            log.info("%s: removing the replica of an older topic incarnation (id %d)", directory, found_id)
            _remove_tree(directory)
    # Durable (directory names and the marker's bytes): the log's directory fsync would otherwise make the
    # marker's name survive a power cut without its bytes, and an empty marker stops the broker's start.
    make_directories(directory)
    marker_text = json.dumps({"topic": topic.name, "partition": partition, "topic_id": topic.topic_id}) + "\n"
    write_file_atomically(marker, marker_text.encode())
    return True


def _remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    trash = directory.with_name(directory.name + f".deleted-{time.time_ns()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


__all__ = ["PartitionHandle", "ReplicaManager", "partition_group_id"]
