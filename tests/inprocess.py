"""An in-process raftmq cluster for tests: the real Broker, service and HTTP API of N nodes, on in-memory
replication groups (node/memory_groups.py) with a manual clock and a seed, in one event loop.

What the brokers run is the production code: produce/fetch rules, CheckQuorum, min in-sync replicas,
buffer limits, producer dedup (cluster/producer_state.py), the controller, snapshots and their install.
Only Raft's message machinery is replaced by the deterministic model of ``MemoryNetwork``; the HTTP API is
served on loopback port 0, so clients talk real HTTP.

For client tests it adds, at the HTTP edge only, what a test needs to provoke the client's paths:
``inject(kind, Fault)`` (errors, hangs, dropped connections, corrupt or garbage answers, optionally AFTER
the broker did the work), ``hold_produce`` / ``release_produce``, a log of every request
(``requests``), and helpers that act on the cluster (``set_leader``, ``append_records``, ``stored``,
``truncate_before``, ``partition``/``heal``/``advance``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import msgpack
from aiohttp import web
from raftmq.cluster.batch import decode_records, encode_batch
from raftmq.cluster.errors import RaftMQError, error_class_for
from raftmq.cluster.metadata import parse_create_topic
from raftmq.cluster.wire import Acks
from raftmq.node.api import build_app
from raftmq.node.broker import Broker
from raftmq.node.config import BrokerEntry, Liveness, NodeConfig, PeerAddress, RaftTimers
from raftmq.node.http_server import GuardedAppRunner
from raftmq.node.memory_groups import ManualClock, MemoryNetwork
from raftmq.node.operations import ProduceRequest
from raftmq.node.replicas import PartitionHandle, partition_group_id

MSGPACK: Final = "application/msgpack"
HOST: Final = "127.0.0.1"
# A hung request never outlives this, even if a test forgets to stop the cluster.
hang_s_max: Final = 10.0

# Brokers heartbeat in real time on the event loop: short periods keep registration and healing fast.
TEST_LIVENESS: Final = Liveness(heartbeat_s=0.05, session_timeout_s=1.0, heal_grace_s=1.0, moves_max=2)

FaultKind = Literal["produce", "fetch", "offsets", "metadata", "producers", "topics", "health"]


@dataclass
class RequestLog:
    broker_id: int
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Fault:
    """One injected misbehaviour at the HTTP edge; ``times`` requests are affected (FIFO per kind).

    ``error``: answer ``code`` (with ``apply``: the broker handles the request first, so the outcome is
    "done, but the client was told an error"). ``hang``: hold the request until the cluster stops (or
    ``hang_s_max``). ``drop``: close the connection without an answer (``apply``: after handling it).
    ``corrupt``: (fetch) flip a byte of the returned batches. ``garbage``: answer 200 with a body that is
    not msgpack."""

    action: Literal["error", "hang", "drop", "corrupt", "garbage"]
    code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    apply: bool = False
    times: int = 1
    broker_id: int | None = None  # None: any broker
    corrupt_index: int = -1  # ``corrupt``: index of the flipped byte in the returned batches
    match: Callable[[RequestLog], bool] | None = None  # applies only to requests it returns True for


def _kind(request: web.Request) -> FaultKind:
    path = request.path
    if path.endswith("/offsets"):
        return "offsets"
    if path.endswith("/records"):
        return "produce" if request.method == "POST" else "fetch"
    if path == "/v1/metadata":
        return "metadata"
    if path == "/v1/producers":
        return "producers"
    if path == "/v1/health":
        return "health"
    return "topics"


class InProcessNode:
    def __init__(self, cluster: InProcessCluster, broker_id: int, config: NodeConfig,
                 client_socket: socket.socket) -> None:
        self.cluster = cluster
        self.broker_id = broker_id
        self.config = config
        self.url = config.advertised_url
        self._socket: socket.socket | None = client_socket
        self.broker = Broker(config, engine_factory=lambda c, loop: cluster.network.engine(broker_id),
                             controller_tick_s=0.05)
        self._runner: GuardedAppRunner | None = None

    async def start(self) -> None:
        await self.broker.start()
        app = build_app(self.broker)
        app.middlewares.insert(0, self.cluster._middleware(self.broker_id))
        self._runner = GuardedAppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        sock = self._socket or _bind(self.config.client_listen.port)
        self._socket = None
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stop serving HTTP (clients are refused); the broker itself keeps running."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def shutdown(self) -> None:
        await self.stop()
        await self.broker.stop()


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class InProcessCluster:
    """``async with InProcessCluster(tmp_path, brokers=3) as cluster``: every broker started and ready."""

    def __init__(self, root: Path, brokers: int = 3, *, seed: int = 0, timers: RaftTimers | None = None,
                 liveness: Liveness = TEST_LIVENESS) -> None:
        self.root = root
        self.clock = ManualClock()
        self.network = MemoryNetwork(timers=timers, clock=self.clock, seed=seed)
        sockets = [_bind() for _ in range(brokers)]
        ports = [sock.getsockname()[1] for sock in sockets]
        entries = tuple(BrokerEntry(b, PeerAddress(HOST, 1), f"http://{HOST}:{port}")
                        for b, port in zip(range(1, brokers + 1), ports, strict=True))
        self.nodes: dict[int, InProcessNode] = {}
        for (broker_id, port), sock in zip(zip(range(1, brokers + 1), ports, strict=True), sockets, strict=True):
            config = NodeConfig(broker_id=broker_id, cluster_id="raftmq-inprocess", data_dir=root / f"n{broker_id}",
                                client_listen=PeerAddress(HOST, port), peer_listen=PeerAddress(HOST, 1),
                                advertised_url=f"http://{HOST}:{port}", brokers=entries, liveness=liveness)
            self.nodes[broker_id] = InProcessNode(self, broker_id, config, sock)
        self.liveness = liveness
        self.requests: list[RequestLog] = []
        self._faults: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        self._release = asyncio.Event()
        self._produce_gate = asyncio.Event()
        self._produce_gate.set()

    async def __aenter__(self) -> InProcessCluster:
        for node in self.nodes.values():
            await node.start()
        await self.wait_ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        self._produce_gate.set()
        for node in self.nodes.values():
            await node.shutdown()

    async def wait_ready(self, timeout_s: float = 5.0) -> None:
        await wait_until(lambda: all(n.broker._service is not None and n.broker.service.metadata.ready
                                     for n in self.nodes.values()), timeout_s=timeout_s, what="brokers ready")

    # --- views ----------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    @property
    def brokers(self) -> list[InProcessNode]:
        return list(self.nodes.values())

    def service(self, broker_id: int = 1) -> Any:
        return self.nodes[broker_id].broker.service

    def handles(self, topic: str, partition: int) -> list[PartitionHandle]:
        """Every open replica of the partition."""
        out = []
        for node in self.nodes.values():
            replicas = node.broker.replicas
            if replicas is not None and (topic, partition) in replicas.partitions:
                out.append(replicas.partitions[(topic, partition)])
        return out

    def leader(self, topic: str, partition: int) -> PartitionHandle:
        for handle in self.handles(topic, partition):
            if handle.group.status.is_leader:
                return handle
        raise AssertionError(f"{topic}-{partition} has no leader")

    def stored(self, topic: str, partition: int) -> list[tuple[int, bytes | None, bytes | None]]:
        """(offset, key, value) of every record in the leader's log."""
        log = self.leader(topic, partition).state_machine.log
        data = log.read(log.log_start_offset, 1 << 30) if log.log_end_offset > log.log_start_offset else b""
        from raftmq.cluster.batch import iter_stored

        return [(r.offset, r.key, r.value) for header, chunk in iter_stored(data)
                for r in decode_records(chunk, header)]

    def produce_requests(self, topic: str | None = None) -> list[RequestLog]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/records")
                and (topic is None or r.path.startswith(f"/v1/topics/{topic}/"))]

    def requests_for(self, suffix: str, method: str = "POST") -> list[RequestLog]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    # --- acting on the cluster ------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int = 1, *, config: dict[str, Any] | None = None,
                           leaders: list[int] | None = None) -> None:
        request = parse_create_topic({"name": name, "partitions": partitions, "config": config or {}})
        await self.service(1).create_topic(request)
        topic = self.service(1).metadata.topic(name)
        await wait_until(lambda: all(len(self.handles(name, p)) == len(topic.replicas[p]) for p in range(partitions)),
                         what=f"every replica of {name} to open")
        for partition, leader in enumerate(leaders or []):
            self.set_leader(name, partition, leader)

    def set_leader(self, topic: str, partition: int, broker_id: int) -> None:
        topic_meta = self.service(1).metadata.topic(topic)
        self.network.transfer(partition_group_id(topic_meta, partition), broker_id)

    async def append_records(self, topic: str, partition: int, values: list[bytes], *,
                             timestamp_ms: int = 1_000) -> None:
        """Store ``values`` as one batch (acks=all through the leader) and start a new segment after it on
        every replica, so that ``truncate_before`` can drop whole batches."""
        leader = self.leader(topic, partition)
        broker_id = next(b for b, n in self.nodes.items() if n.broker.replicas
                         and n.broker.replicas.partitions.get((topic, partition)) is leader)
        batch = encode_batch([(None, v, (), timestamp_ms + i) for i, v in enumerate(values)])
        result = await self.service(broker_id).produce(ProduceRequest(topic, partition, batch, Acks.ALL, 5000))
        end = (result.base_offset or 0) + len(values)
        await wait_until(lambda: all(h.state_machine.log.log_end_offset >= end for h in self.handles(topic, partition)),
                         what="every replica to hold the batch")
        for handle in self.handles(topic, partition):
            handle.state_machine.log.roll()

    def truncate_before(self, topic: str, partition: int, offset: int) -> None:
        """Retention as an operator would force it: every replica drops its whole segments below ``offset``."""
        for handle in self.handles(topic, partition):
            handle.state_machine.log.delete_segments_before(offset)

    def partition(self, *sides: set[int] | list[int]) -> None:
        self.network.partition(*sides)

    def heal(self) -> None:
        self.network.heal()

    def advance(self, seconds: float) -> None:
        self.network.advance(seconds)

    async def pass_time_until(self, condition: Callable[[], bool], *, timeout_s: float, what: str,
                              raft_step_s: float = 0.05) -> None:
        """Let real time (heartbeats, the controller) and the Raft clock run together until ``condition``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            self.network.advance(raft_step_s)
            await asyncio.sleep(0.02)  # real time for heartbeats and the controller's ticks

    async def add_broker(self) -> InProcessNode:
        """Start one more broker (id = highest + 1) whose config lists every broker; the others' configs stay
        as they are: it registers with the controller by heartbeat, as `raftmq cluster add-broker` does."""
        broker_id = max(self.nodes) + 1
        sock = _bind()
        port = sock.getsockname()[1]
        first = next(iter(self.nodes.values())).config
        entries = (*first.brokers, BrokerEntry(broker_id, PeerAddress(HOST, 1), f"http://{HOST}:{port}"))
        config = replace(first, broker_id=broker_id, data_dir=self.root / f"n{broker_id}",
                         client_listen=PeerAddress(HOST, port), advertised_url=f"http://{HOST}:{port}", brokers=entries)
        node = self.nodes[broker_id] = InProcessNode(self, broker_id, config, sock)
        await node.start()
        return node

    def running(self) -> list[InProcessNode]:
        return [n for n in self.nodes.values() if n.broker._service is not None and not n.broker._stopping]

    # --- faults at the HTTP edge ----------------------------------------------------------------

    def inject(self, kind: FaultKind, fault: Fault) -> Fault:
        self._faults[kind].append(fault)
        return fault

    def hold_produce(self) -> None:
        """Produce requests wait (before the broker sees them) until release_produce() (or hang_s_max)."""
        self._produce_gate.clear()

    def release_produce(self) -> None:
        self._produce_gate.set()

    def _take_fault(self, kind: str, broker_id: int, entry: RequestLog) -> Fault | None:
        queue = self._faults.get(kind)
        for fault in list(queue or ()):
            if fault.broker_id not in (None, broker_id) or (fault.match is not None and not fault.match(entry)):
                continue
            fault.times -= 1
            if fault.times <= 0:
                queue.remove(fault)  # type: ignore[union-attr]
            return fault
        return None

    def _middleware(self, broker_id: int) -> Any:
        @web.middleware
        async def faults(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
            if request.path.startswith("/v1/internal/"):
                return await handler(request)  # broker-to-broker (heartbeats, moves): not what tests inspect
            body: Any = None
            if request.can_read_body:
                raw = await request.read()
                with contextlib.suppress(Exception):
                    body = msgpack.unpackb(raw, raw=False) if raw else None
            entry = RequestLog(broker_id, request.method, request.path, dict(request.query), body)
            self.requests.append(entry)
            kind = _kind(request)
            fault = self._take_fault(kind, broker_id, entry)
            if kind == "produce":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(hang_s_max):
                        await self._produce_gate.wait()
            if fault is None:
                return await handler(request)
            return await self._misbehave(request, handler, fault)

        return faults

    async def _misbehave(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         fault: Fault) -> web.StreamResponse:
        if fault.action == "corrupt":
            return _corrupt(await handler(request), fault.corrupt_index)
        if fault.apply:
            await handler(request)
        if fault.action == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hang_s_max):
                    await self._release.wait()
            return _error(error_class_for("REQUEST_TIMED_OUT")("the test hung this request"))
        if fault.action == "garbage":
            return web.Response(status=200, body=b"\xc1 not msgpack", content_type=MSGPACK)
        if fault.action == "drop":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp closes the connection without an answer
        assert fault.code is not None
        return _error(error_class_for(fault.code)(f"injected {fault.code}", **fault.details))


def _corrupt(response: web.StreamResponse, index: int) -> web.StreamResponse:
    assert isinstance(response, web.Response) and response.body is not None
    payload = msgpack.unpackb(bytes(response.body), raw=False)  # type: ignore[arg-type]
    if payload.get("batches"):
        data = bytearray(payload["batches"])
        data[index] ^= 0xFF
        payload["batches"] = bytes(data)
    return web.Response(status=response.status, body=msgpack.packb(payload, use_bin_type=True),
                        content_type=MSGPACK)


def _error(error: RaftMQError) -> web.Response:
    body = msgpack.packb({"error": error.to_wire()}, use_bin_type=True)
    return web.Response(status=error.http_status, body=body, content_type=MSGPACK)


async def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` (every few ms) until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)  # polling a condition with a deadline, not sleeping as synchronisation


__all__ = ["Fault", "FaultKind", "InProcessCluster", "InProcessNode", "RequestLog", "hang_s_max", "wait_until"]
