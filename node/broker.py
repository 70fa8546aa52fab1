"""The broker: the composition root. It builds the rooms of one broker, starts them in order and stops them.

* the data directory lock and identity (``node.json``: a data directory cannot be mixed up with another
  broker's or another cluster's);
* the replication engine (``node/groups.py``): pysyncobj over the peer port (``node/replication.py``) unless
  the caller passes another one (the in-process test cluster passes ``node/memory_groups.py``'s);
* the metadata group (``node/metadata.py``), the controller (``node/controller.py``), the replica manager
  (``node/replicas.py``) and the service (``node/service.py``) every listener calls;
* the Kafka-protocol listener (``node/kafka_listener.py``) when ``kafka_listen`` is set (the HTTP listener is
  started by ``node/__main__.py``).

Runs on the event loop; what must happen on the replication thread goes through the engine.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC
from raftmq.cluster.errors import InvalidConfig, RaftMQError, UnsupportedStorageFormat
from raftmq.cluster.metadata import Topic
from raftmq.node.config import NodeConfig, PeerAddress
from raftmq.node.controller import Controller
from raftmq.node.forwarding import ControllerForwarder
from raftmq.node.fsutil import write_file_atomically
from raftmq.node.group_coordinator import GroupCoordinator
from raftmq.node.group_partition import GroupPartitionStateMachine
from raftmq.node.groups import ReplicationEngine
from raftmq.node.internal_api import internal_token
from raftmq.node.kafka_api import KafkaApi
from raftmq.node.kafka_listener import KafkaListener
from raftmq.node.metadata import MetadataGroup, ProposalIds
from raftmq.node.partition import PartitionStateMachine
from raftmq.node.reassignment import Reassigner
from raftmq.node.replicas import ReplicaManager
from raftmq.node.service import BrokerService
from raftmq.node.session import BrokerSession

log = logging.getLogger(__name__)

_NODE_FILE = "node.json"
# The on-disk format of everything under a data directory, recorded in node.json. 2: record batches are
# Kafka RecordBatch v2 behind a 20-byte broker prefix (cluster/batch.py), in segments and in the Raft
# journal alike. 1 (raftmq's own earlier batch format: msgpack records, CRC-32) is refused, never misread.
STORAGE_FORMAT = 2
EngineFactory = Callable[[NodeConfig, asyncio.AbstractEventLoop], ReplicationEngine]


def pysyncobj_engine(config: NodeConfig, loop: asyncio.AbstractEventLoop) -> ReplicationEngine:
    """The engine of a real broker: pysyncobj groups over this broker's one peer port."""
    from raftmq.node.raft_transport import NetworkListener, PeerNetwork
    from raftmq.node.replication import ReplicationLoop

    peers = {entry.broker_id: entry.dial_address for entry in config.brokers if entry.broker_id != config.broker_id}

    def network_factory(listener: NetworkListener) -> PeerNetwork:
        return PeerNetwork(self_id=config.broker_id, cluster_id=config.cluster_id, listen=config.peer_listen,
                           peers=peers, listener=listener, secret=config.cluster_secret,
                           connection_timeout_s=config.timers.connection_timeout_s)

    return ReplicationLoop(self_id=config.broker_id, network_factory=network_factory, durability=config.durability,
                           asyncio_loop=loop, timers=config.timers, flush_interval_s=config.flush_interval_ms / 1000,
                           leader_rebalance=config.leader_rebalance)


class Broker:
    def __init__(self, config: NodeConfig, *, engine_factory: EngineFactory = pysyncobj_engine,
                 on_fatal: Callable[[RaftMQError], None] | None = None,
                 controller_tick_s: float = limits.controller_tick_s) -> None:
        self.config = config
        self.on_fatal = on_fatal
        self.controller_tick_s = controller_tick_s
        self.incarnation = 0
        self.session: BrokerSession | None = None
        self.reassigner: Reassigner | None = None
        self._peers_known: dict[int, str] = {}
        self.broker_id = config.broker_id
        self.data_dir = config.data_dir
        self._engine_factory = engine_factory
        self.engine: ReplicationEngine | None = None
        self.metadata: MetadataGroup | None = None
        self.replicas: ReplicaManager | None = None
        self.controller: Controller | None = None
        self.groups: GroupCoordinator | None = None
        self._service: BrokerService | None = None
        self._forwarder = ControllerForwarder(config.broker_id, internal_token(config.cluster_secret))
        self._lock_fd: int | None = None
        self._stopping = False
        self.kafka: KafkaListener | None = None  # the Kafka-protocol port, when kafka_listen is set

    @property
    def service(self) -> BrokerService:
        if self._service is None:
            raise RuntimeError("the broker is not started")
        return self._service

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._lock_data_dir()
        engine = self._engine_factory(self.config, asyncio.get_running_loop())
        self.engine = engine
        try:
            engine.start()
        except OSError as exc:
            raise _listen_error(exc, self.config) from None
        proposals = ProposalIds(self.broker_id)
        metadata = self.metadata = MetadataGroup(broker_id=self.broker_id, replica_ids=self.config.voters,
                                                 directory=self.data_dir / "metadata", engine=engine,
                                                 proposals=proposals)
        replicas = self.replicas = ReplicaManager(broker_id=self.broker_id, data_dir=self.data_dir,
                                                  durability=self.config.durability, engine=engine, metadata=metadata)
        controller = self.controller = Controller(
            broker_id=self.broker_id, cluster_id=self.config.cluster_id, metadata=metadata, url_of=self.url_of,
            forward=self._forwarder, call=self._forwarder.call, liveness=self.config.liveness,
            tick_s=self.controller_tick_s)
        self.reassigner = Reassigner(controller, self._step)
        controller.on_tick = self.reassigner.drive
        replicas.state_machine_class = _state_machine_class
        groups = self.groups = GroupCoordinator(broker_id=self.broker_id, metadata=metadata, replicas=replicas,
                                                controller=controller, url_of=self.url_of)
        self._service = BrokerService(config=self.config, engine=engine, metadata=metadata, replicas=replicas,
                                      controller=controller, describe_moves=self.reassigner.describe, groups=groups,
                                      call=self._forwarder.call)
        self.session = BrokerSession(config=self.config, incarnation=self.incarnation, metadata=metadata,
                                     controller=controller, call=self._forwarder.call, leads=replicas.led_partitions,
                                     on_fatal=self._fatal)
        replicas.leader_of = self._leader_of
        replicas.url_of = self.url_of
        await metadata.open(on_topics_changed=self._metadata_changed)
        replicas.start()
        controller.start()
        groups.start()
        self.session.start()
        if self.config.kafka_listen is not None:
            self.kafka = KafkaListener(KafkaApi(self._service, self.config), self.config.kafka_listen)
            await self.kafka.start()
        log.info("broker %d started: peers %s, durability %s", self.broker_id,
                 {e.broker_id: str(e.dial_address) for e in self.config.brokers if e.broker_id != self.broker_id},
                 self.config.durability.value)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._service is not None:
            self._service.stopping = True
        if self.kafka is not None:
            await self.kafka.stop()
        for task_owner in (self.session, self.groups, self.controller):
            if task_owner is not None:
                await task_owner.stop()
        if self.replicas is not None:
            await self.replicas.stop()
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)
        await self._forwarder.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("broker %d stopped", self.broker_id)

    # --- wiring ---------------------------------------------------------------------------------

    def url_of(self, broker_id: int | None) -> str | None:
        """A broker's client URL: from the controller's registry (brokers added later), else the config."""
        if broker_id is None:
            return None
        record = self.metadata.brokers.get(broker_id) if self.metadata is not None else None
        return record.url if record is not None else self.config.url_of(broker_id)

    def _leader_of(self, topic: str, partition: int) -> int | None:
        if self.controller is not None and self.controller.active:
            known = self.controller.leaders.get((topic, partition))
        else:
            known = self.session.leaders.get((topic, partition)) if self.session is not None else None
        return known[0] if known is not None else None

    async def _step(self, leader_id: int, body: dict[str, Any]) -> dict[str, Any]:
        if leader_id == self.broker_id:
            return await self.service.partition_step(body)
        url = self.url_of(leader_id)
        if url is None:
            raise RaftMQError(f"no URL known for broker {leader_id}")
        answer: dict[str, Any] = await self._forwarder.call(url, "POST", "/v1/internal/partitions/step", body,
                                                            limits.move_step_timeout_s)
        return answer

    def _metadata_changed(self) -> None:
        """Topics or brokers changed: open/close replicas, and dial brokers the config does not list."""
        assert self.replicas is not None and self.metadata is not None and self.engine is not None
        self.replicas.request_reconcile()
        configured = {e.broker_id for e in self.config.brokers}
        for record in self.metadata.brokers.values():
            if record.broker_id in configured or self._peers_known.get(record.broker_id) == record.peer:
                continue
            try:
                address = PeerAddress.parse(record.peer)
            except ValueError:
                log.warning("broker %d registered an unusable peer address %r", record.broker_id, record.peer)
                continue
            self._peers_known[record.broker_id] = record.peer
            self.engine.set_peer(record.broker_id, (address.host, address.port))

    def _fatal(self, error: RaftMQError) -> None:
        if self.on_fatal is not None:
            self.on_fatal(error)

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
        self._check_identity()

    def _check_identity(self) -> None:
        identity_path = self.data_dir / _NODE_FILE
        identity: dict[str, Any] = {"broker_id": self.broker_id, "cluster_id": self.config.cluster_id,
                                    "format": STORAGE_FORMAT, "incarnation": 1}
        if not identity_path.exists():
            write_file_atomically(identity_path, (json.dumps(identity) + "\n").encode(), durable=True)
            self.incarnation = 1
            return
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
        if found.get("format") != STORAGE_FORMAT:
            raise UnsupportedStorageFormat(
                f"data_dir {self.data_dir} holds storage format {found.get('format')!r}; this broker reads format "
                f"{STORAGE_FORMAT} (Kafka RecordBatch v2 batches) only", key="data_dir", found=found.get("format"),
                expected=STORAGE_FORMAT)
        # Every start is a new incarnation: the controller refuses an older copy of this broker id.
        previous = found.get("incarnation")
        self.incarnation = (previous if type(previous) is int and previous > 0 else 0) + 1
        identity["incarnation"] = self.incarnation
        write_file_atomically(identity_path, (json.dumps(identity) + "\n").encode(), durable=True)


def _state_machine_class(topic: Topic) -> type[PartitionStateMachine]:
    """The internal group-state topic's replicas hold consumer groups; every other topic's hold records."""
    return GroupPartitionStateMachine if topic.name == GROUP_STATE_TOPIC else PartitionStateMachine


def _listen_error(exc: OSError, config: NodeConfig) -> InvalidConfig:
    in_use = " (another process uses the port)" if exc.errno == errno.EADDRINUSE else ""
    return InvalidConfig(f"cannot listen on peer_listen {config.peer_listen}: {exc.strerror or exc}{in_use}",
                         key="peer_listen")


__all__ = ["Broker", "EngineFactory", "pysyncobj_engine"]
