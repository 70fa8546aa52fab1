"""Run N broker processes on loopback: configs, data folders, start/stop/kill/pause, readiness.

Used by ``raftmq cluster up``, the integration tests, the benchmark and the chaos harness. Every node is a
real ``python -m raftmq.node`` process with its own data directory and log file under one root folder; nothing is
mocked. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftmq.node import BrokerEntry, Durability, Liveness, NodeConfig, PeerAddress, RaftTimers, render_config

HOST = "127.0.0.1"
SECRET_FILE = "cluster.secret"
# Fixed-range ports stay clear of the kernel's ephemeral range (32768-60999) so a port we picked is not
# handed to some outgoing connection between picking it and binding it.
_PORT_RANGE = (20000, 32000)
# With a fixed base port, broker i (0-based) listens for clients on base+i and for peers on base+100+i.
PEER_PORT_OFFSET = 100


def find_free_ports(count: int, *, host: str = HOST, avoid: Iterable[int] = ()) -> list[int]:
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    chosen: list[int] = []
    taken = set(avoid)
    for _ in range(10_000):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(*_PORT_RANGE)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        chosen.append(port)
    raise RuntimeError(f"could not find {count} free ports on {host}")


def wait_until(condition: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the condition may fail while things start
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}{detail}")
        time.sleep(interval_s)


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout_s: float = 5.0) -> tuple[int, Any]:
    """A small stdlib JSON client for orchestration code (the real client library is client/)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            return error.code, json.loads(payload)
        except ValueError:
            text = payload[:200].decode(errors="replace")
            return error.code, {"error": {"code": "UNEXPECTED_RESPONSE", "message": text}}


@dataclass
class LocalNode:
    broker_id: int
    client_port: int
    peer_port: int
    directory: Path
    advertised_url: str
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    dial: dict[int, PeerAddress] = field(default_factory=dict)
    # The brokers its config lists ([[brokers]]). Fixed when the node is created: a broker added later is
    # found through the controller (it registers by heartbeat), so older nodes' files never change.
    known: tuple[int, ...] = ()
    rack: str | None = None
    kafka_port: int | None = None  # its Kafka-protocol listener (None: none)
    # What Kafka Metadata tells clients to dial for this broker (None: the listener itself). The chaos harness
    # sets a fault proxy here, so that Kafka clients following the metadata stay behind the proxies.
    kafka_advertised: PeerAddress | None = None

    @property
    def kafka_address(self) -> PeerAddress | None:
        """Where Kafka clients reach this broker: its advertised address, else its listener (None: none)."""
        if self.kafka_advertised is not None:
            return self.kafka_advertised
        return PeerAddress(HOST, self.kafka_port) if self.kafka_port else None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None  # type: ignore[union-attr]


class LocalCluster:
    """N brokers on 127.0.0.1 under ``root`` (``root/n1``, ``root/n2`` ...)."""

    def __init__(self, root: Path, *, nodes: int = 3, base_port: int | None = None, durability: str = "always",
                 cluster_id: str = "raftmq-local", log_level: str = "info", timers: RaftTimers | None = None,
                 leader_rebalance: bool = True, python: str = sys.executable, secure: bool = True,
                 liveness: Liveness | None = None, racks: dict[int, str] | None = None,
                 metadata_voters: tuple[int, ...] = (), kafka: bool = False,
                 kafka_base_port: int | None = None) -> None:
        """``secure``: the brokers authenticate each other with a cluster secret, generated once and kept in
        ``root/cluster.secret`` (mode 0600), so the same folder keeps its secret across restarts.
        ``liveness``: the controller's heartbeat/session/heal timings (tests and chaos pass short ones; default
        the node's own defaults). ``racks``: broker id -> rack. ``metadata_voters``: empty = the first three.
        ``kafka``: every broker also opens a Kafka-protocol listener, broker i (1-based) on
        ``kafka_base_port + i - 1`` (``raftmq cluster up``: 9092, 9093, ...) or on free ports."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = root.resolve()
        self.secure = secure
        self.cluster_id = cluster_id
        self.durability = Durability(durability)
        self.log_level = log_level
        self.leader_rebalance = leader_rebalance
        self.timers = timers or RaftTimers()
        self.python = python
        self.base_port = base_port
        self.liveness = liveness or Liveness()
        self.racks = dict(racks or {})
        self.metadata_voters = tuple(metadata_voters)
        self.kafka = kafka or kafka_base_port is not None
        self.kafka_base_port = kafka_base_port
        client_ports, peer_ports = self._ports(range(nodes))
        self.nodes: dict[int, LocalNode] = {}
        everyone = tuple(range(1, nodes + 1))
        for index in range(nodes):
            self._new_node(index + 1, client_ports[index], peer_ports[index], everyone)

    def _ports(self, indexes: range) -> tuple[list[int], list[int]]:
        """Client and peer ports for the nodes at ``indexes`` (0-based): base+i and base+100+i, or free ones."""
        if self.base_port is not None:
            return [self.base_port + i for i in indexes], [self.base_port + PEER_PORT_OFFSET + i for i in indexes]
        taken = [port for node in getattr(self, "nodes", {}).values() for port in (node.client_port, node.peer_port)]
        ports = find_free_ports(2 * len(indexes), avoid=taken)
        return ports[:len(indexes)], ports[len(indexes):]

    def _new_node(self, broker_id: int, client_port: int, peer_port: int, known: tuple[int, ...]) -> LocalNode:
        node = LocalNode(broker_id, client_port, peer_port, self.root / f"n{broker_id}",
                         f"http://{HOST}:{client_port}", known=known, rack=self.racks.get(broker_id))
        if self.kafka:
            taken = [port for other in self.nodes.values() for port in (other.client_port, other.peer_port,
                                                                         other.kafka_port) if port is not None]
            node.kafka_port = (self.kafka_base_port + broker_id - 1 if self.kafka_base_port is not None
                               else find_free_ports(1, avoid=[*taken, client_port, peer_port])[0])
        self.nodes[broker_id] = node
        return node

    def add_node(self, *, start: bool = True, rack: str | None = None) -> int:
        """A new broker with id max+1 whose [[brokers]] lists every existing broker and itself; its config is
        written (and it is started unless ``start`` is false, e.g. so the chaos harness can wire proxies
        first). Existing nodes' configs stay as they are: the new broker registers with the controller by
        heartbeat. Returns its id."""
        broker_id = max(self.nodes) + 1
        if rack is not None:
            self.racks[broker_id] = rack
        client_ports, peer_ports = self._ports(range(broker_id - 1, broker_id))
        self._new_node(broker_id, client_ports[0], peer_ports[0], tuple(sorted([*self.nodes, broker_id])))
        if start:
            self.start([broker_id])
        else:
            self.write_configs()
        return broker_id

    # --- configuration --------------------------------------------------------------------------

    def set_dial(self, from_id: int, to_id: int, address: PeerAddress) -> None:
        """Make ``from_id`` dial ``to_id`` at ``address`` (a proxy) instead of its peer port."""
        self.nodes[from_id].dial[to_id] = address

    def set_advertised_url(self, broker_id: int, url: str) -> None:
        self.nodes[broker_id].advertised_url = url

    def set_kafka_advertised(self, broker_id: int, address: PeerAddress) -> None:
        """Make ``broker_id`` advertise ``address`` (a proxy) as its Kafka address (node key kafka_advertised)."""
        self.nodes[broker_id].kafka_advertised = address

    @property
    def secret_path(self) -> Path:
        return self.root / SECRET_FILE

    def ensure_secret(self) -> Path:
        """The cluster secret's file, created with a fresh random secret the first time."""
        path = self.secret_path
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        return path

    def config_for(self, broker_id: int) -> NodeConfig:
        node = self.nodes[broker_id]
        listed = [self.nodes[b] for b in node.known if b in self.nodes] if node.known else self.nodes.values()
        brokers = tuple(BrokerEntry(broker_id=other.broker_id, peer=PeerAddress(HOST, other.peer_port),
                                    url=other.advertised_url, dial=node.dial.get(other.broker_id),
                                    kafka=other.kafka_address)
                        for other in listed)
        return NodeConfig(broker_id=broker_id, cluster_id=self.cluster_id, data_dir=node.data_dir,
                          client_listen=PeerAddress(HOST, node.client_port),
                          peer_listen=PeerAddress(HOST, node.peer_port),
                          advertised_url=node.advertised_url, brokers=brokers, durability=self.durability,
                          log_level=self.log_level, leader_rebalance=self.leader_rebalance, timers=self.timers,
                          cluster_secret_file=self.secret_path if self.secure else None, rack=node.rack,
                          metadata_voters=self.metadata_voters, liveness=self.liveness,
                          kafka_listen=PeerAddress(HOST, node.kafka_port) if node.kafka_port else None,
                          kafka_advertised=node.kafka_advertised if node.kafka_port else None)

    def write_configs(self) -> None:
        if self.secure:
            self.ensure_secret()
        for broker_id, node in self.nodes.items():
            node.directory.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(render_config(self.config_for(broker_id)))

    # --- processes ------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.advertised_url for node in self.nodes.values()]

    @property
    def kafka_bootstrap(self) -> str:
        """What Kafka clients take as bootstrap servers: the advertised addresses ("" without Kafka listeners)."""
        return ",".join(str(node.kafka_address) for node in self.nodes.values() if node.kafka_address is not None)

    def start(self, broker_ids: Iterable[int] | None = None) -> None:
        self.write_configs()
        for broker_id in (broker_ids if broker_ids is not None else self.nodes):
            node = self.nodes[broker_id]
            if node.running:
                continue
            log_file = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                node.process = subprocess.Popen(
                    [self.python, "-m", "raftmq.node", "--config", str(node.config_path)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
            finally:
                log_file.close()
            node.paused = False

    def stop(self, broker_ids: Iterable[int] | None = None, *, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait (bounded), then SIGKILL."""
        targets = [self.nodes[b] for b in (broker_ids if broker_ids is not None else self.nodes)]
        for node in targets:
            if node.running:
                if node.paused:
                    self.resume(node.broker_id)
                node.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for node in targets:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=5)

    def kill(self, broker_id: int) -> None:
        """SIGKILL: no shutdown code runs, the page cache keeps what was written."""
        node = self.nodes[broker_id]
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=10)
        node.paused = False

    def pause(self, broker_id: int) -> None:
        node = self.nodes[broker_id]
        if node.running:
            os.kill(node.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            node.paused = True

    def resume(self, broker_id: int) -> None:
        node = self.nodes[broker_id]
        if node.running:
            os.kill(node.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        node.paused = False

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    # --- readiness ------------------------------------------------------------------------------

    def health(self, broker_id: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
        try:
            status, body = http_json(f"{self.nodes[broker_id].url}/v1/health", timeout_s=timeout_s)
        except OSError:
            return None
        return body if status == 200 else None

    def wait_ready(self, broker_ids: Iterable[int] | None = None, *, timeout_s: float = 30.0) -> None:
        targets = list(broker_ids if broker_ids is not None else self.nodes)

        def ready() -> bool:
            for broker_id in targets:
                node = self.nodes[broker_id]
                if not node.running:
                    raise RuntimeError(f"broker {broker_id} exited; see {node.log_path}:\n{self.tail_log(broker_id)}")
                health = self.health(broker_id)
                if not health or not health.get("ready"):
                    return False
            return True

        wait_until(ready, timeout_s=timeout_s, what=f"brokers {targets} to be ready")

    def metadata(self, broker_id: int) -> dict[str, Any]:
        status, body = http_json(f"{self.nodes[broker_id].url}/v1/metadata")
        if status != 200:
            raise RuntimeError(f"metadata from broker {broker_id}: HTTP {status} {body}")
        return body

    def partition_view(self, broker_id: int, topic: str, partition: int) -> dict[str, Any] | None:
        for item in self.metadata(broker_id)["topics"]:
            if item["name"] == topic:
                return item["partitions"][partition]
        return None

    def leader_of(self, topic: str, partition: int, *, among: Iterable[int] | None = None) -> int | None:
        """The broker that says it leads the partition (among running brokers), or None."""
        for broker_id in (among if among is not None else self.nodes):
            if not self.nodes[broker_id].running or self.nodes[broker_id].paused:
                continue
            try:
                view = self.partition_view(broker_id, topic, partition)
            except (OSError, RuntimeError):
                continue
            if view is not None and view.get("role") == "leader" and view.get("quorum", True):
                return broker_id
        return None

    def wait_for_leader(self, topic: str, partition: int, *, timeout_s: float = 20.0,
                        among: Iterable[int] | None = None) -> int:
        candidates = list(among) if among is not None else None
        return int(wait_until(lambda: self.leader_of(topic, partition, among=candidates), timeout_s=timeout_s,
                              what=f"a leader for {topic}-{partition}"))

    def tail_log(self, broker_id: int, lines: int = 30) -> str:
        try:
            text = self.nodes[broker_id].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
