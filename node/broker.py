"""The broker: the composition root. It builds the rooms of one broker, starts them in order and stops them.

* the data directory lock and identity (``node.json``: a data directory cannot be mixed up with another
  broker's or another cluster's);
* the replication engine (``node/groups.py``): pysyncobj over the peer port (``node/replication.py``) unless
  the caller passes another one (the in-process test cluster passes ``node/memory_groups.py``'s);
* the metadata group (``node/metadata.py``), the controller (``node/controller.py``), the replica manager
  (``node/replicas.py``) and the service (``node/service.py``) every listener calls.

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

from raftmq.cluster.errors import InvalidConfig
from raftmq.node.config import NodeConfig
from raftmq.node.controller import Controller
from raftmq.node.forwarding import ControllerForwarder
from raftmq.node.fsutil import write_file_atomically
from raftmq.node.groups import ReplicationEngine
from raftmq.node.metadata import MetadataGroup, ProposalIds
from raftmq.node.replicas import ReplicaManager
from raftmq.node.service import BrokerService

log = logging.getLogger(__name__)

_NODE_FILE = "node.json"
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
    def __init__(self, config: NodeConfig, *, engine_factory: EngineFactory = pysyncobj_engine) -> None:
        self.config = config
        self.broker_id = config.broker_id
        self.data_dir = config.data_dir
        self._engine_factory = engine_factory
        self.engine: ReplicationEngine | None = None
        self.metadata: MetadataGroup | None = None
        self.replicas: ReplicaManager | None = None
        self.controller: Controller | None = None
        self._service: BrokerService | None = None
        self._forwarder = ControllerForwarder(config.broker_id)
        self._lock_fd: int | None = None
        self._stopping = False

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
        self.metadata = MetadataGroup(broker_id=self.broker_id, replica_ids=self.config.broker_ids,
                                      directory=self.data_dir / "metadata", engine=engine, proposals=proposals)
        self.replicas = ReplicaManager(broker_id=self.broker_id, data_dir=self.data_dir,
                                       durability=self.config.durability, engine=engine, metadata=self.metadata)
        self.controller = Controller(broker_id=self.broker_id, broker_ids=self.config.broker_ids,
                                     metadata=self.metadata, url_of=self.config.url_of, forward=self._forwarder)
        self._service = BrokerService(config=self.config, engine=engine, metadata=self.metadata,
                                      replicas=self.replicas, controller=self.controller)
        await self.metadata.open(on_topics_changed=self.replicas.request_reconcile)
        self.replicas.start()
        log.info("broker %d started: peers %s, durability %s", self.broker_id,
                 {e.broker_id: str(e.dial_address) for e in self.config.brokers if e.broker_id != self.broker_id},
                 self.config.durability.value)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._service is not None:
            self._service.stopping = True
        if self.replicas is not None:
            await self.replicas.stop()
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)
        await self._forwarder.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("broker %d stopped", self.broker_id)

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
        identity = {"broker_id": self.broker_id, "cluster_id": self.config.cluster_id, "format": 1}
        if not identity_path.exists():
            write_file_atomically(identity_path, (json.dumps(identity) + "\n").encode(), durable=True)
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


def _listen_error(exc: OSError, config: NodeConfig) -> InvalidConfig:
    in_use = " (another process uses the port)" if exc.errno == errno.EADDRINUSE else ""
    return InvalidConfig(f"cannot listen on peer_listen {config.peer_listen}: {exc.strerror or exc}{in_use}",
                         key="peer_listen")


__all__ = ["Broker", "EngineFactory", "pysyncobj_engine"]
