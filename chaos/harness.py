"""A local cluster wired through fault proxies (Toxiproxy's API: proxies and toxics), with named fault primitives.

Wiring (``ChaosCluster.start``): the proxy server starts FIRST; then one proxy per broker pair on the pair's
single peer connection (``link_A_B`` with A < B; upstream = the dialer B -> the acceptor A's peer port, since
the broker with the larger id dials), and one proxy in front of every broker's client port (``http_nX``)
and, when the brokers open Kafka-protocol listeners (``kafka=True``), one in front of each of those
(``kafka_nX``). Each dialer is configured to dial its peer through the pair's proxy (``LocalCluster.set_dial``)
and each broker advertises its client proxy URL (``set_advertised_url``) and its Kafka proxy's address (node
key ``kafka_advertised``, what Kafka Metadata returns), so clients that follow metadata or NOT_LEADER
redirects (raftmq's or a Kafka client) stay behind the proxies. Only then do the brokers start. Proxy ports
are fixed ports outside the kernel's ephemeral range, so a disabled proxy's port is not handed to an
outgoing connection. ``verify_wiring`` proves nothing leaks around a proxy.

Fault primitives return a ``FaultHandle``; ``undo(handle)`` reverts exactly that fault (proxies disabled by
two overlapping faults come back only when both are undone), ``heal()`` reverts everything (``POST /reset``,
SIGCONT, start whatever is down). Every fault and undo is logged with a timestamp (``events``) and confirmed
through the proxy API (``ProxyClient`` re-reads each change). Peer-link faults never touch the client
proxies unless asked (``clients=True``): Jepsen partitions nodes from each other, not from their clients.

Refused vs silent: ``mode="refuse"`` disables the link proxies (connects refused, live connections closed:
both brokers see the link drop at once); ``mode="blackhole"`` adds a ``timeout`` toxic with timeout 0 on both
directions (connections stay open and every byte is dropped: the brokers notice only after their 3 s link
timeout, and redials never complete their handshake). Removing a black hole closes its connections.

What the primitives rely on the proxy server to do (a disabled proxy refuses connects and closes its live
connections; a ``timeout`` toxic with timeout 0 keeps connections open and drops every byte, and removing it
closes them; toxics reach connections that are already open; ``POST /reset`` enables every proxy and removes
every toxic) is checked by tests/chaos/test_toxiproxy_conformance.py, against raftmq's own server
(chaos/toxiproxy/) or a real ``toxiproxy-server``.

Thread-safe (one lock around every primitive): the runner calls it from worker threads. All calls block;
every wait has a deadline (chaos/limits.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from raftmq.chaos import limits
from raftmq.chaos import placement as placing
from raftmq.chaos.faultfs.control import ControlError
from raftmq.chaos.faultfs.process import FaultFsMount
from raftmq.chaos.proxy_client import ProxyClient, ServerError, ToxiproxyError, ToxiproxyServerProcess
from raftmq.deploy.local_cluster import HOST, LocalCluster, find_free_ports, http_json, wait_until
from raftmq.node import PeerAddress

log = logging.getLogger("raftmq.chaos.harness")

# The state column of /proc/net/tcp for an established connection.
_TCP_ESTABLISHED: Final = "01"


@dataclasses.dataclass(frozen=True)
class ProxyInfo:
    """One proxy of the wiring. ``kind`` "link": ``nodes`` = (acceptor, dialer); "client" (the HTTP client port)
    and "kafka" (the Kafka-protocol listener): ``nodes`` = (broker,)."""

    name: str
    kind: str
    listen: str
    upstream: str
    nodes: tuple[int, ...]

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclasses.dataclass(frozen=True)
class FaultEvent:
    """One logged action: a fault applied, undone, a heal, a process signal."""

    seq: int
    mono_s: float  # time.monotonic() when the action completed (confirmed)
    wall: str  # ISO-8601 UTC
    action: str
    target: str
    detail: dict[str, Any]
    handle: int | None = None
    started_mono_s: float | None = None  # when the action began (proxy calls and signals take a moment)

    def to_json(self, t0_mono_s: float | None = None) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        if t0_mono_s is not None:
            row["t_ms"] = round((self.mono_s - t0_mono_s) * 1000, 1)
            if self.started_mono_s is not None:
                row["started_t_ms"] = round((self.started_mono_s - t0_mono_s) * 1000, 1)
        return row


@dataclasses.dataclass
class FaultHandle:
    """What one fault changed, so that ``undo`` reverts exactly that."""

    id: int
    kind: str
    target: str
    disabled: list[str] = dataclasses.field(default_factory=list)
    toxics: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (proxy, toxic name)
    killed: list[int] = dataclasses.field(default_factory=list)
    paused: list[int] = dataclasses.field(default_factory=list)
    stopped: list[int] = dataclasses.field(default_factory=list)
    retired: list[int] = dataclasses.field(default_factory=list)  # killed for good: never started again
    disk_rules: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (broker, fault file system rule)
    neighbours: list[HostileNeighbour] = dataclasses.field(default_factory=list)
    applied_mono_s: float = 0.0
    undone: bool = False


@dataclasses.dataclass
class HostileNeighbour:
    """One running chaos/hostile.py process and where its report goes."""

    process: subprocess.Popen[bytes]
    report_path: Path
    target: int

    def finish(self) -> dict[str, Any]:
        """SIGTERM, wait (bounded), the report (``{"error": ...}`` when it wrote none)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=limits.hostile_finish_deadline_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=limits.hostile_finish_deadline_s)
        try:
            report: dict[str, Any] = json.loads(self.report_path.read_text())
        except (OSError, ValueError) as exc:
            return {"error": f"no report from the hostile neighbour (exit {self.process.returncode}): {exc}",
                    "target": self.target}
        return {**report, "target": self.target}


class BrokerExited(RuntimeError):
    """A broker process ended on its own (a crash) while the harness waited for the cluster."""


def _wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str,
              interval_s: float = limits.condition_poll_interval_s) -> None:
    """Poll ``condition`` until true; TimeoutError naming ``what``. Unlike ``wait_until`` it lets the
    condition's exceptions (BrokerExited) out at once."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        time.sleep(interval_s)


@dataclasses.dataclass(frozen=True)
class PlacementGoal:
    """What converged placement means for the workload's topic (chaos/placement.py)."""

    topic: str
    partitions: int
    replication_factor: int


class WiringError(AssertionError):
    """The proxies are not where every byte goes (a leak around a proxy, or a link that never came up)."""


class ChaosCluster:
    """N real brokers (``LocalCluster``) whose peer links and client ports all go through fault proxies."""

    def __init__(self, root: Path, *, nodes: int = 3, base_port: int | None = None, durability: str = "always",
                 seed: int | None = None, proxy_executable: str | None = None,
                 on_event: Callable[[FaultEvent], None] | None = None, faultfs: bool = False,
                 **local_cluster_kwargs: Any) -> None:
        self.root = Path(root).resolve()
        # With ``faultfs`` every broker's data directory is a fault file system mount (chaos/faultfs/):
        # power cuts and disk faults act on it.
        self.faultfs = faultfs
        self.mounts: dict[int, FaultFsMount] = {}
        self.seed = seed
        self.cluster = LocalCluster(self.root, nodes=nodes, base_port=base_port, durability=durability,
                                    **local_cluster_kwargs)
        self.proxy_executable = proxy_executable
        self.on_event = on_event
        self.proxies: dict[str, ProxyInfo] = {}
        self.events: list[FaultEvent] = []
        self._server: ToxiproxyServerProcess | None = None
        self._client: ProxyClient | None = None
        self._handles: dict[int, FaultHandle] = {}
        self._handle_ids = itertools.count(1)
        self._disabled: Counter[str] = Counter()
        # Processes the harness itself stopped or killed, and crashes already reported (by id; the dicts keep
        # the Popen objects alive so an id cannot be reused).
        self._expected_exits: dict[int, Any] = {}
        self._reported_exits: dict[int, Any] = {}
        self.crashes: list[dict[str, Any]] = []
        self._crash_lock = threading.Lock()  # not the main lock: the metadata poller calls check_crashes
        self._lock = threading.RLock()
        # Brokers killed for good (kill-for-good): heal and undo never start them again, and convergence
        # expects the cluster to have moved their replicas elsewhere.
        self.retired: set[int] = set()
        # Reports of the hostile neighbours that ran (chaos/hostile.py), in the order they finished.
        self.hostile_reports: list[dict[str, Any]] = []
        self._started = False
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.cluster.nodes)

    @property
    def toxiproxy_url(self) -> str:
        assert self._server is not None, "start() first"
        return self._server.url

    @property
    def proxy_client(self) -> ProxyClient:
        assert self._client is not None, "start() first"
        return self._client

    @property
    def client_urls(self) -> list[str]:
        """The brokers' client proxy URLs (what clients should bootstrap from)."""
        return [self.cluster.nodes[n].advertised_url for n in self.node_ids]

    @property
    def kafka_bootstrap(self) -> str:
        """The brokers' Kafka proxy addresses, comma-separated (Kafka clients' bootstrap.servers); "" when the
        brokers have no Kafka listeners."""
        return self.cluster.kafka_bootstrap

    @property
    def direct_urls(self) -> list[str]:
        """The brokers' own client ports (the control plane: metadata polling, drains)."""
        return [self.cluster.nodes[n].url for n in self.node_ids]

    def direct_url(self, broker_id: int) -> str:
        return self.cluster.nodes[broker_id].url

    def start(self) -> Self:
        """Start the proxy server, create every proxy, point the brokers at them, start the brokers."""
        assert not self._started, "already started"
        self._started = True
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._server = ToxiproxyServerProcess(executable=self.proxy_executable, seed=self.seed,
                                                  log_path=self.root / "toxiproxy.log")
            self._server.start()
            self._client = self._server.client()
            self._create_proxies()
            self._record("wire", "cluster", {"proxies": {name: p.listen for name, p in self.proxies.items()},
                                             "proxy_server": self._server.kind})
            for node in self.node_ids:
                self._mount(node)
            self.cluster.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_proxies(self) -> None:
        ids = self.node_ids
        wanted = [self._link_wanted(a, b) for a in ids for b in ids if a < b]  # b (the larger id) dials a
        wanted += [proxy for n in ids for proxy in self._client_wanted(n)]
        self._create(wanted)

    def _link_wanted(self, a: int, b: int) -> tuple[str, str, str, tuple[int, ...]]:
        return (f"link_{a}_{b}", "link", f"{HOST}:{self.cluster.nodes[a].peer_port}", (a, b))

    def _client_wanted(self, n: int) -> list[tuple[str, str, str, tuple[int, ...]]]:
        """The proxies before broker ``n``'s client-facing ports: HTTP, and Kafka when it listens."""
        node = self.cluster.nodes[n]
        wanted: list[tuple[str, str, str, tuple[int, ...]]] = [
            (f"http_n{n}", "client", f"{HOST}:{node.client_port}", (n,))]
        if node.kafka_port:
            wanted.append((f"kafka_n{n}", "kafka", f"{HOST}:{node.kafka_port}", (n,)))
        return wanted

    def _create(self, wanted: list[tuple[str, str, str, tuple[int, ...]]]) -> None:
        """Create each proxy on a free port, and point its dialer (or the broker's advertised URL) at it."""
        assert self._client is not None
        taken = {port for n in self.cluster.nodes.values() for port in (n.client_port, n.peer_port, n.kafka_port)
                 if port}
        taken |= {p.listen_port for p in self.proxies.values()}
        for name, kind, upstream, nodes in wanted:
            state = None
            for _attempt in range(limits.proxy_create_attempts_max):
                port = find_free_ports(1, avoid=taken)[0]
                taken.add(port)
                try:
                    state = self._client.create(name, upstream, listen=f"{HOST}:{port}")
                    break
                except ServerError as exc:  # lost the race for the port: try another one
                    log.warning("proxy %s could not listen on %s: %s", name, port, exc)
            if state is None:
                raise ToxiproxyError(f"could not create proxy {name} after {limits.proxy_create_attempts_max} ports")
            info = ProxyInfo(name, kind, state.listen, upstream, nodes)
            self.proxies[name] = info
            if kind == "link":
                acceptor, dialer = nodes
                self.cluster.set_dial(dialer, acceptor, PeerAddress(HOST, info.listen_port))
            elif kind == "kafka":
                self.cluster.set_kafka_advertised(nodes[0], PeerAddress(HOST, info.listen_port))
            else:
                self.cluster.set_advertised_url(nodes[0], f"http://{HOST}:{info.listen_port}")

    def wait_ready(self, timeout_s: float = limits.broker_ready_deadline_s) -> None:
        self.cluster.wait_ready(timeout_s=timeout_s)

    def stop(self) -> None:
        """Always: reset the proxies, stop the brokers, stop the proxy server (each step even if one fails)."""
        if self._stopped:
            return
        self._stopped = True
        with self._lock:
            self.check_crashes()
            for handle in self._handles.values():
                for neighbour in handle.neighbours:
                    self._finish_neighbour(neighbour)
                handle.neighbours.clear()
            for node in self.cluster.nodes:
                self._expect_exit(node)
            try:
                if self._client is not None and self._server is not None and self._server.running:
                    with contextlib.suppress(ToxiproxyError, OSError):
                        self._client.reset()
            finally:
                try:
                    self.cluster.stop()
                finally:
                    for mount in self.mounts.values():
                        mount.stop()
                    if self._server is not None:
                        self._server.stop()

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- the event log ------------------------------------------------------------------------------

    def _record(self, action: str, target: str, detail: dict[str, Any] | None = None, handle: int | None = None,
                started: float | None = None) -> FaultEvent:
        event = FaultEvent(seq=len(self.events), mono_s=time.monotonic(),
                           wall=datetime.now(UTC).isoformat(timespec="milliseconds"), action=action,
                           target=target, detail=dict(detail or {}), handle=handle, started_mono_s=started)
        self.events.append(event)
        log.info("chaos %s %s %s", action, target, event.detail)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a progress display must not break the fault log
                log.exception("on_event callback failed")
        return event

    # --- wiring checks ------------------------------------------------------------------------------

    def link_proxy(self, a: int, b: int) -> ProxyInfo:
        if a == b:
            raise ValueError(f"no link from broker {a} to itself")
        name = f"link_{min(a, b)}_{max(a, b)}"
        if name not in self.proxies:
            raise ValueError(f"no link proxy {name} (brokers are {self.node_ids})")
        return self.proxies[name]

    def links_of(self, node: int) -> list[str]:
        self._check_node(node)
        return [name for name, p in self.proxies.items() if p.kind == "link" and node in p.nodes]

    def _check_node(self, node: int) -> None:
        if node not in self.cluster.nodes:
            raise ValueError(f"no broker {node} (brokers are {self.node_ids})")

    def _metadata(self, node: int, timeout_s: float = limits.control_timeout_s) -> dict[str, Any] | None:
        try:
            status, body = http_json(f"{self.direct_url(node)}/v1/metadata", timeout_s=timeout_s)
        except OSError:
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def peer_links(self, node: int) -> list[dict[str, Any]] | None:
        """The node's published peer links (None if it does not answer)."""
        body = self._metadata(node)
        return None if body is None else list(body.get("peer_links") or [])

    def wiring_problems(self) -> list[str]:
        """Everything that is wrong with the wiring right now (empty = every link up, through its proxy)."""
        problems: list[str] = []
        links = {n: self.peer_links(n) for n in self.node_ids}
        for n, rows in links.items():
            if rows is None:
                problems.append(f"broker {n} does not answer /v1/metadata")
                continue
            for row in rows:
                if row.get("dialer"):
                    expected = self.link_proxy(n, int(row["peer_id"])).listen
                    if row.get("remote") != expected:
                        problems.append(f"broker {n} dialed broker {row['peer_id']} at {row.get('remote')}, "
                                        f"not through its proxy {expected}")
        for name, proxy in self.proxies.items():
            if proxy.kind != "link":
                continue
            acceptor, dialer = proxy.nodes
            dial_rows = [r for r in links.get(dialer) or [] if r.get("peer_id") == acceptor and r.get("dialer")]
            accept_rows = [r for r in links.get(acceptor) or [] if r.get("peer_id") == dialer]
            if not dial_rows:
                problems.append(f"{name}: broker {dialer} has no link up to broker {acceptor}")
            if not accept_rows:
                problems.append(f"{name}: broker {acceptor} has no link up from broker {dialer}")
            elif any(r.get("dialer") for r in accept_rows):
                problems.append(f"{name}: broker {acceptor} dialed broker {dialer}; the larger id must dial")
        socket_problems = self.socket_leaks()
        if socket_problems:
            problems.extend(socket_problems)
        return problems

    def verify_wiring(self, timeout_s: float = limits.wiring_deadline_s) -> dict[str, Any]:
        """Assert (waiting up to ``timeout_s`` for the once-a-second metadata) that every pair has its link up,
        every dialer dialed its pair's proxy, and (where /proc is readable) no broker socket talks to another
        broker's port directly and every accepted peer connection comes from the proxy server."""
        last: list[str] = []

        def clean() -> bool:
            nonlocal last
            last = self.wiring_problems()
            return not last

        try:
            wait_until(clean, timeout_s=timeout_s, what="every peer link up through its proxy",
                       interval_s=limits.condition_poll_interval_s)
        except TimeoutError:
            raise WiringError("wiring check failed: " + "; ".join(last)) from None
        report = {"links": {name: p.listen for name, p in self.proxies.items() if p.kind == "link"},
                  "clients": {name: p.listen for name, p in self.proxies.items() if p.kind in ("client", "kafka")},
                  "socket_check": "skipped (no /proc)" if self.socket_leaks() is None else "ok"}
        self._record("verify-wiring", "cluster", report)
        return report

    def socket_leaks(self) -> list[str] | None:
        """Leaks seen in the kernel's socket table: a broker connected straight to another broker's peer or
        client port, or an accepted peer connection that does not come from the proxy server. None when
        /proc cannot be read (not Linux, or another user's processes)."""
        if self._server is None or self._server.pid is None or not Path("/proc/net/tcp").exists():
            return None
        brokers = {n: node.pid for n, node in self.cluster.nodes.items() if node.pid is not None}
        try:
            owner = {inode: ("proxy", 0) for inode in _socket_inodes(self._server.pid)}
            for n, pid in brokers.items():
                owner.update({inode: ("broker", n) for inode in _socket_inodes(pid)})
            connections = _tcp_connections()
        except OSError:
            return None
        peer_ports = {node.peer_port: n for n, node in self.cluster.nodes.items()}
        client_ports = {node.client_port: n for n, node in self.cluster.nodes.items()}
        # Keyed by the whole 4-tuple: Linux reuses one local port for connections to different remotes, so
        # (host, port) alone can name a connection of another process (a false "not from the proxy").
        by_ends = {(c[0], c[1], c[2], c[3]): c for c in connections}
        problems = []
        for local_host, local_port, remote_host, remote_port, inode in connections:
            who = owner.get(inode)
            if who is None or who[0] != "broker":
                continue
            me = who[1]
            if remote_port in peer_ports and peer_ports[remote_port] != me:
                problems.append(f"broker {me} is connected straight to broker {peer_ports[remote_port]}'s peer port")
            if remote_port in client_ports and client_ports[remote_port] != me:
                problems.append(f"broker {me} is connected straight to broker {client_ports[remote_port]}'s "
                                "client port")
            if local_port == self.cluster.nodes[me].peer_port:
                other = by_ends.get((remote_host, remote_port, local_host, local_port))
                if other is not None and owner.get(other[4], ("?", 0))[0] != "proxy":
                    source = owner.get(other[4])
                    problems.append(f"broker {me} accepted a peer connection from {source or 'an unknown process'},"
                                    " not from the proxy server")
        return problems

    # --- fault primitives: network --------------------------------------------------------------------

    def _new_handle(self, kind: str, target: str) -> FaultHandle:
        handle = FaultHandle(id=next(self._handle_ids), kind=kind, target=target)
        self._handles[handle.id] = handle
        return handle

    def _disable(self, handle: FaultHandle, proxy: str) -> None:
        assert self._client is not None
        if self._disabled[proxy] == 0:
            self._client.disable(proxy)
        self._disabled[proxy] += 1
        handle.disabled.append(proxy)

    def _add_toxic(self, handle: FaultHandle, proxy: str, kind: str, stream: str, attributes: dict[str, int]) -> None:
        assert self._client is not None
        name = f"{kind}_{stream}_f{handle.id}"
        self._client.add_toxic(proxy, kind, stream=stream, name=name, attributes=attributes)
        handle.toxics.append((proxy, name))

    def _cut(self, handle: FaultHandle, proxies: Iterable[str], mode: str) -> None:
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {mode!r}")
        for proxy in proxies:
            if mode == "refuse":
                self._disable(handle, proxy)
            else:
                for stream in ("upstream", "downstream"):
                    self._add_toxic(handle, proxy, "timeout", stream, {"timeout": 0})

    def _network_fault(self, kind: str, target: str, detail: dict[str, Any],
                       apply: Callable[[FaultHandle], None]) -> FaultHandle:
        with self._lock:
            started = time.monotonic()
            handle = self._new_handle(kind, target)
            try:
                apply(handle)
            except BaseException:
                self._undo_locked(handle, log_it=False)
                raise
            handle.applied_mono_s = time.monotonic()
            self._record(kind, target, {**detail, "disabled": list(handle.disabled),
                                        "toxics": [f"{p}/{t}" for p, t in handle.toxics]},
                         handle=handle.id, started=started)
            return handle

    def isolate(self, node: int, mode: str = "refuse", *, clients: bool = False) -> FaultHandle:
        """Cut every peer link of ``node`` (and its client proxies too, HTTP and Kafka, if ``clients``)."""
        proxies = self.links_of(node) + ([name for name, p in self.proxies.items()
                                          if p.kind in ("client", "kafka") and p.nodes == (node,)] if clients else [])
        return self._network_fault("isolate", f"n{node}", {"mode": mode, "clients": clients},
                                   lambda h: self._cut(h, proxies, mode))

    def partition(self, groups: Sequence[Iterable[int]], mode: str = "refuse") -> FaultHandle:
        """Cut every link between nodes of different groups, e.g. ``[{1}, {2, 3}]``; groups must cover every node."""
        sets = [set(g) for g in groups]
        seen: set[int] = set()
        for group in sets:
            for node in group:
                self._check_node(node)
            if group & seen:
                raise ValueError(f"groups overlap: {groups!r}")
            seen |= group
        if seen != set(self.node_ids):
            raise ValueError(f"groups {groups!r} must cover every broker {self.node_ids}")
        side = {node: index for index, group in enumerate(sets) for node in group}
        cut = [name for name, p in self.proxies.items() if p.kind == "link" and side[p.nodes[0]] != side[p.nodes[1]]]
        shape = " | ".join(",".join(f"n{n}" for n in sorted(g)) for g in sets)
        return self._network_fault("partition", shape, {"mode": mode, "groups": [sorted(g) for g in sets]},
                                   lambda h: self._cut(h, cut, mode))

    def bridge(self, a: int, middle: int, b: int, mode: str = "refuse") -> FaultHandle:
        """Cut ``a`` <-> ``b``; ``middle`` keeps its links to both (Jepsen's bridge)."""
        if len({a, middle, b}) != 3:
            raise ValueError(f"bridge needs three distinct brokers, got {a}, {middle}, {b}")
        self._check_node(middle)
        proxy = self.link_proxy(a, b).name
        return self._network_fault("bridge", f"n{a} x n{b} (n{middle} bridges)",
                                   {"mode": mode, "middle": middle, "cut": [a, b]},
                                   lambda h: self._cut(h, [proxy], mode))

    def cut_link(self, a: int, b: int, mode: str = "refuse") -> FaultHandle:
        proxy = self.link_proxy(a, b).name
        return self._network_fault("cut-link", proxy, {"mode": mode}, lambda h: self._cut(h, [proxy], mode))

    def _stream(self, src: int, dst: int) -> tuple[str, str]:
        """(proxy, stream) carrying src -> dst bytes: the proxy's upstream is dialer (larger id) -> acceptor."""
        proxy = self.link_proxy(src, dst).name
        return proxy, ("upstream" if src > dst else "downstream")

    def one_way(self, src: int, dst: int | Iterable[int]) -> FaultHandle:
        """Black-hole the ``src`` -> ``dst`` direction (of one link, or of several if ``dst`` is a list)."""
        dsts = [dst] if isinstance(dst, int) else list(dst)
        streams = [self._stream(src, d) for d in dsts]

        def apply(handle: FaultHandle) -> None:
            for proxy, stream in streams:
                self._add_toxic(handle, proxy, "timeout", stream, {"timeout": 0})

        return self._network_fault("one-way", f"n{src} -> " + ",".join(f"n{d}" for d in dsts),
                                   {"src": src, "dst": dsts, "streams": [f"{p}/{s}" for p, s in streams]}, apply)

    def _target_links(self, target: int | str | tuple[int, int]) -> list[str]:
        if isinstance(target, int):
            return self.links_of(target)
        if isinstance(target, tuple):
            return [self.link_proxy(*target).name]
        if target in self.proxies and self.proxies[target].kind == "link":
            return [target]
        if target.startswith("link:"):
            a, b = (int(x) for x in target[5:].split("-"))
            return [self.link_proxy(a, b).name]
        raise ValueError(f"not a node or a link: {target!r}")

    def slow(self, target: int | str | tuple[int, int], latency_ms: int, jitter_ms: int = 0) -> FaultHandle:
        """Latency (+- jitter) on both directions of a node's peer links or of one link."""
        proxies = self._target_links(target)

        def apply(handle: FaultHandle) -> None:
            for proxy in proxies:
                for stream in ("upstream", "downstream"):
                    self._add_toxic(handle, proxy, "latency", stream, {"latency": latency_ms, "jitter": jitter_ms})

        return self._network_fault("slow", ",".join(proxies), {"latency_ms": latency_ms, "jitter_ms": jitter_ms},
                                   apply)

    def bandwidth(self, target: int | str | tuple[int, int], kb_s: int) -> FaultHandle:
        """Cap both directions of a node's peer links (or of one link) at ``kb_s`` KB/s."""
        if kb_s <= 0:
            raise ValueError("kb_s must be > 0")
        proxies = self._target_links(target)

        def apply(handle: FaultHandle) -> None:
            for proxy in proxies:
                for stream in ("upstream", "downstream"):
                    self._add_toxic(handle, proxy, "bandwidth", stream, {"rate": kb_s})

        return self._network_fault("bandwidth", ",".join(proxies), {"kb_s": kb_s}, apply)

    def reset_peer(self, target: int | str | tuple[int, int], timeout_ms: int = 0) -> FaultHandle:
        """TCP RST on the first bytes of every connection of the link(s) until undone (a reset storm)."""
        proxies = self._target_links(target)

        def apply(handle: FaultHandle) -> None:
            for proxy in proxies:
                for stream in ("upstream", "downstream"):
                    self._add_toxic(handle, proxy, "reset_peer", stream, {"timeout": timeout_ms})

        return self._network_fault("reset", ",".join(proxies), {"timeout_ms": timeout_ms}, apply)

    # --- fault primitives: processes ------------------------------------------------------------------

    def _process_fault(self, kind: str, nodes: Iterable[int], action: Callable[[int], None],
                       field: str) -> FaultHandle:
        targets = sorted(set(nodes))
        for node in targets:
            self._check_node(node)
        with self._lock:
            started = time.monotonic()
            handle = self._new_handle(kind, ",".join(f"n{n}" for n in targets))
            done: list[int] = getattr(handle, field)
            pids = {}
            for node in targets:
                if self.cluster.nodes[node].running:
                    pids[node] = self.cluster.nodes[node].pid
                    action(node)
                    done.append(node)
            handle.applied_mono_s = time.monotonic()
            skipped = [n for n in targets if n not in done]
            self._record(kind, handle.target, {"nodes": done, "pids": pids, "not_running": skipped},
                         handle=handle.id, started=started)
            return handle

    def _expect_exit(self, node: int) -> None:
        process = self.cluster.nodes[node].process
        if process is not None:
            self._expected_exits[id(process)] = process

    def kill(self, node: int | Iterable[int]) -> FaultHandle:
        """SIGKILL (no shutdown code runs; the page cache keeps what was written)."""
        nodes = [node] if isinstance(node, int) else list(node)

        def kill_one(n: int) -> None:
            self._expect_exit(n)
            self.cluster.kill(n)

        return self._process_fault("kill", nodes, kill_one, "killed")

    def pause(self, node: int | Iterable[int]) -> FaultHandle:
        """SIGSTOP; undo (or ``resume``) sends SIGCONT."""
        nodes = [node] if isinstance(node, int) else list(node)
        return self._process_fault("pause", nodes, self.cluster.pause, "paused")

    def shutdown(self, node: int | Iterable[int]) -> FaultHandle:
        """Graceful stop (SIGTERM, bounded wait); undo starts it again."""
        nodes = [node] if isinstance(node, int) else list(node)
        def stop_one(n: int) -> None:
            self._expect_exit(n)
            self.cluster.stop([n])

        return self._process_fault("shutdown", nodes, stop_one, "stopped")

    # --- fault primitives: membership (permanent: undo changes nothing) ---------------------------------

    def kill_for_good(self, node: int) -> FaultHandle:
        """SIGKILL ``node`` and never start it again (heal and undo skip it): a dead disk or host."""
        def retire(n: int) -> None:
            self._expect_exit(n)
            self.retired.add(n)
            self.cluster.kill(n)

        return self._process_fault("kill-for-good", [node], retire, "retired")

    def add_broker(self, ready_timeout_s: float = limits.broker_ready_deadline_s) -> FaultHandle:
        """Start a new broker (id = highest + 1) wired like the others: a link proxy to every existing broker
        (it has the larger id, so it dials) and the client proxies it advertises. Waits (bounded) until it is
        ready. Existing brokers' configs are not touched: it registers with the controller by heartbeat."""
        with self._lock:
            started = time.monotonic()
            new = self.cluster.add_node(start=False)
            self._create([self._link_wanted(a, new) for a in self.node_ids if a != new] + self._client_wanted(new))
            self._mount(new)
            self.cluster.start([new])
            handle = self._new_handle("add-broker", f"n{new}")
            handle.applied_mono_s = time.monotonic()
            self._record("add-broker", f"n{new}", {"node": new, "pid": self.cluster.nodes[new].pid,
                                                   "url": self.cluster.nodes[new].advertised_url},
                         handle=handle.id, started=started)
        self.cluster.wait_ready([new], timeout_s=ready_timeout_s)
        return handle

    def drain(self, node: int, *, timeout_s: float = limits.drain_request_deadline_s) -> FaultHandle:
        """``POST /v1/brokers/{node}/drain`` (to each live broker in turn until one accepts; bounded). The
        drain is not cancelled by undo: it runs until the broker hosts nothing."""
        self._check_node(node)
        started = time.monotonic()
        status, answer = self._post_drain(node, timeout_s)
        with self._lock:
            handle = self._new_handle("drain", f"n{node}")
            handle.applied_mono_s = time.monotonic()
            self._record("drain", f"n{node}", {"node": node, "status": status, "answer": answer},
                         handle=handle.id, started=started)
        if status != 200:
            raise RuntimeError(f"drain of broker {node} refused: HTTP {status} {answer}")
        return handle

    def _post_drain(self, node: int, timeout_s: float) -> tuple[int, Any]:
        """The first definite answer to the drain request; retried while brokers are down or electing."""
        deadline = time.monotonic() + timeout_s
        last: tuple[int, Any] = (0, "no broker answered")
        while time.monotonic() < deadline:
            for n in self.node_ids:
                if not self.cluster.nodes[n].running or self.cluster.nodes[n].paused:
                    continue
                try:
                    last = http_json(f"{self.direct_url(n)}/v1/brokers/{node}/drain", method="POST", body={},
                                     timeout_s=limits.control_timeout_s)
                except OSError as exc:
                    last = (0, f"{type(exc).__name__}: {exc}")
                    continue
                if last[0] < 500 and last[0] != 421:  # 421 NOT_CONTROLLER, 5xx: ask another broker
                    return last
            time.sleep(limits.condition_poll_interval_s)  # retry backoff while the controller is elected
        return last

    # --- fault primitives: disks (the fault file system; ``faultfs=True``) ----------------------------------

    def _mount(self, node: int) -> None:
        """Mount broker ``node``'s data directory through a fault file system (once; ``faultfs`` only)."""
        if self.faultfs and node not in self.mounts:
            mount = FaultFsMount(self.cluster.nodes[node].data_dir, seed=(self.seed or 0) * 100 + node)
            mount.start()
            self.mounts[node] = mount

    def _disk(self, node: int) -> FaultFsMount:
        self._check_node(node)
        if node not in self.mounts:
            raise ValueError(f"broker {node}'s data directory is not a fault file system (ChaosCluster(faultfs=True))")
        return self.mounts[node]

    def power_loss(self, node: int | Iterable[int], *, torn: bool = False) -> FaultHandle:
        """Cut the power: SIGKILL, then drop everything the broker had not fsynced (file data; creates,
        renames and unlinks whose directory was not fsynced), optionally with torn tails. Undo starts it."""
        nodes = sorted({node} if isinstance(node, int) else set(node))
        mounts = {n: self._disk(n) for n in nodes}
        with self._lock:
            started = time.monotonic()
            handle = self._new_handle("power-loss", ",".join(f"n{n}" for n in nodes))
            for n in nodes:
                if self.cluster.nodes[n].running:
                    self._expect_exit(n)
                    self.cluster.kill(n)
                    handle.killed.append(n)
            lost = {}
            for n, mount in mounts.items():
                summary = mount.lose_unsynced(torn=torn)
                lost[n] = {key: summary.get(key) for key in ("bytes_dropped", "bytes_restored", "files_rolled_back",
                                                             "directory_ops_undone", "torn_files", "open_handles",
                                                             "problems")}
            handle.applied_mono_s = time.monotonic()
            self._record("power-loss", handle.target, {"nodes": nodes, "killed": list(handle.killed), "torn": torn,
                                                       "lost": lost}, handle=handle.id, started=started)
            return handle

    def disk_fault(self, kind: str, node: int, *, ops: Sequence[str], errno: str | None = None, delay_ms: int = 0,
                   pattern: str = "*") -> FaultHandle:
        """A fault file system rule on broker ``node``'s data directory (EIO / ENOSPC on ``ops``, or a delay);
        undo removes it."""
        mount = self._disk(node)
        with self._lock:
            started = time.monotonic()
            handle = self._new_handle(kind, f"n{node}")
            rule = mount.add_rule(ops=list(ops), pattern=pattern, errno=errno, delay_ms=delay_ms)
            handle.disk_rules.append((node, rule))
            handle.applied_mono_s = time.monotonic()
            self._record(kind, f"n{node}", {"ops": list(ops), "errno": errno, "delay_ms": delay_ms,
                                            "pattern": pattern, "rule": rule}, handle=handle.id, started=started)
            return handle

    # --- fault primitives: a hostile neighbour (chaos/hostile.py) -------------------------------------------

    def hostile(self, node: int, *, duration_s: float, seed: int = 0) -> FaultHandle:
        """Start a hostile neighbour process aimed at ``node``'s peer port and every broker's client port
        (direct: the proxies are for the cluster's own traffic); undo stops it and keeps its report."""
        self._check_node(node)
        with self._lock:
            started = time.monotonic()
            handle = self._new_handle("hostile", f"n{node}")
            report_path = self.root / f"hostile-{handle.id}.json"
            urls = ",".join(self.direct_url(n) for n in self.node_ids if n not in self.retired)
            with open(self.root / "hostile.log", "ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "raftmq.chaos.hostile", "--peer",
                     f"{HOST}:{self.cluster.nodes[node].peer_port}", "--http", urls, "--duration",
                     f"{duration_s + limits.hostile_overrun_s:g}", "--seed", str(seed), "--report", str(report_path)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            handle.neighbours.append(HostileNeighbour(process, report_path, node))
            handle.applied_mono_s = time.monotonic()
            self._record("hostile", f"n{node}", {"pid": process.pid, "report": str(report_path)}, handle=handle.id,
                         started=started)
            return handle

    def _finish_neighbour(self, neighbour: HostileNeighbour) -> None:
        report = neighbour.finish()
        self.hostile_reports.append(report)
        self._record("hostile-report", f"n{neighbour.target}", {"classes": report.get("classes"),
                                                                "error": report.get("error")})

    def rss_bytes(self) -> dict[int, int]:
        """Every running broker's resident memory (from /proc; empty where it cannot be read)."""
        found = {}
        for n, node in self.cluster.nodes.items():
            pid = node.pid
            if pid is None:
                continue
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        found[n] = int(line.split()[1]) * 1024
                        break
            except (OSError, ValueError, IndexError):
                continue
        return found

    def disk_status(self) -> dict[int, dict[str, Any]]:
        """Every mount's status (faults injected per rule, what a power cut would take now)."""
        found = {}
        for node, mount in self.mounts.items():
            try:
                found[node] = mount.control().status()
            except (ControlError, RuntimeError) as exc:
                found[node] = {"error": str(exc)}
        return found

    def resume(self, node: int) -> None:
        self._check_node(node)
        with self._lock:
            self.cluster.resume(node)
            for handle in self._handles.values():
                if node in handle.paused:
                    handle.paused.remove(node)
            self._record("resume", f"n{node}")

    def restart(self, node: int, *, graceful: bool = True) -> None:
        """Start ``node`` (stopping it first, gracefully or with SIGKILL, if it is running)."""
        self._check_node(node)
        with self._lock:
            started = time.monotonic()
            was_running = self.cluster.nodes[node].running
            if was_running:
                self._expect_exit(node)
                if graceful:
                    self.cluster.stop([node])
                else:
                    self.cluster.kill(node)
            self.cluster.start([node])
            for handle in self._handles.values():
                for field in (handle.killed, handle.stopped, handle.paused):
                    if node in field:
                        field.remove(node)
            self._record("restart", f"n{node}", {"was_running": was_running, "graceful": graceful,
                                                 "pid": self.cluster.nodes[node].pid}, started=started)

    def rolling_restart(self, order: Sequence[int] | None = None, *,
                        down_s: float = limits.rolling_restart_down_s_default,
                        ready_timeout_s: float = limits.broker_ready_deadline_s) -> None:
        """Restart every broker in turn: graceful stop, ``down_s`` down, start, then wait (bounded) until it is
        ready and its peer links are up before the next one."""
        for node in order if order is not None else self.node_ids:
            handle = self.shutdown(node)
            time.sleep(down_s)  # the fault's shape (how long the node stays down), not synchronisation
            self.undo(handle)
            self.cluster.wait_ready([node], timeout_s=ready_timeout_s)
            wait_until(functools.partial(self._all_links_up, node), timeout_s=ready_timeout_s,
                       what=f"broker {node}'s peer links after its restart",
                       interval_s=limits.condition_poll_interval_s)

    def _all_links_up(self, node: int) -> bool:
        return len(self.peer_links(node) or []) == len(self.node_ids) - 1

    def check_crashes(self) -> list[dict[str, Any]]:
        """Brokers whose process ended without the harness stopping or killing it (each reported once, as a
        ``crash`` event with its exit code and log tail). Cheap: call it often."""
        found = []
        with self._crash_lock:
            for n, node in self.cluster.nodes.items():
                process = node.process
                if process is None or process.poll() is None:
                    continue
                key = id(process)
                if key in self._expected_exits or key in self._reported_exits:
                    continue
                self._reported_exits[key] = process
                crash = {"node": n, "returncode": process.returncode, "log": str(node.log_path),
                         "log_tail": self.cluster.tail_log(n, limits.crash_log_tail_lines),
                         "disk_fault": self._active_disk_fault(n)}
                self.crashes.append(crash)
                found.append(crash)
                self._record("crash", f"n{n}", {"returncode": process.returncode, "log": str(node.log_path)})
        return found

    def _active_disk_fault(self, node: int) -> str | None:
        """The kind of a disk fault active on ``node`` right now (None: none)."""
        for handle in list(self._handles.values()):
            if not handle.undone and any(n == node for n, _rule in handle.disk_rules):
                return handle.kind
        return None

    # --- undo and heal ----------------------------------------------------------------------------------

    def undo(self, handle: FaultHandle) -> None:
        """Revert exactly what ``handle`` changed (idempotent)."""
        with self._lock:
            self._undo_locked(handle, log_it=True)

    def _undo_locked(self, handle: FaultHandle, *, log_it: bool) -> None:
        if handle.undone:
            return
        assert self._client is not None
        started = time.monotonic()
        errors: list[str] = []
        for proxy, toxic in handle.toxics:
            try:
                self._client.remove_toxic(proxy, toxic)
            except ToxiproxyError as exc:
                errors.append(f"remove {proxy}/{toxic}: {exc}")
        for proxy in handle.disabled:
            self._disabled[proxy] -= 1
            if self._disabled[proxy] <= 0:
                del self._disabled[proxy]
                try:
                    self._client.enable(proxy)
                except ToxiproxyError as exc:
                    errors.append(f"enable {proxy}: {exc}")
        for neighbour in handle.neighbours:
            self._finish_neighbour(neighbour)
        handle.neighbours.clear()
        for node, rule in handle.disk_rules:
            try:
                self.mounts[node].clear_rules(rule)
            except ControlError as exc:
                errors.append(f"clear rule {rule} on broker {node}'s disk: {exc}")
        for node in handle.paused:
            self.cluster.resume(node)
        # A broker that stopped itself on the disk fault (fail-stop) is started again once the disk is
        # healthy, as an operator would after freeing space; its exit is recorded first.
        disk_nodes = sorted({n for n, _rule in handle.disk_rules} - self.retired)
        if disk_nodes:
            self.check_crashes()
        restarted = sorted({n for n in handle.killed + handle.stopped + disk_nodes
                            if not self.cluster.nodes[n].running})
        if restarted:
            self.cluster.start(restarted)
        handle.undone = True
        self._handles.pop(handle.id, None)
        if log_it:
            self._record("undo", handle.target, {"kind": handle.kind, "resumed": list(handle.paused),
                                                 "started": restarted, "errors": errors},
                         handle=handle.id, started=started)
        if errors:
            raise ToxiproxyError(f"undo of fault {handle.id} ({handle.kind}) failed: {'; '.join(errors)}")

    def heal(self) -> None:
        """Everything back: POST /reset (every proxy enabled, every toxic removed; confirmed), SIGCONT every
        paused broker, start every broker that is down. Does not wait for the cluster to converge."""
        with self._lock:
            assert self._client is not None
            started = time.monotonic()
            self._client.reset()
            self._disabled.clear()
            for handle in self._handles.values():
                for neighbour in handle.neighbours:
                    self._finish_neighbour(neighbour)
                handle.neighbours.clear()
            for node, mount in self.mounts.items():
                try:
                    mount.clear_rules()
                except ControlError:
                    log.exception("could not clear the disk faults of broker %s", node)
            self.check_crashes()
            resumed = [n for n, node in self.cluster.nodes.items() if node.paused]
            for node in resumed:
                self.cluster.resume(node)
            down = [n for n, node in self.cluster.nodes.items() if not node.running and n not in self.retired]
            if down:
                self.cluster.start(down)
            for handle in self._handles.values():
                handle.undone = True
            self._handles.clear()
            self._record("heal", "cluster", {"resumed": resumed, "started": down}, started=started)

    @property
    def active_faults(self) -> list[FaultHandle]:
        with self._lock:
            return [h for h in self._handles.values() if not h.undone]

    # --- convergence ------------------------------------------------------------------------------------

    def live_metadata(self) -> dict[int, dict[str, Any] | None]:
        """Every running, unpaused broker's /v1/metadata (None where it did not answer)."""
        return {n: self._metadata(n) for n, node in self.cluster.nodes.items() if node.running and not node.paused}

    def replicas_of(self, topic: str, partition: int) -> list[int] | None:
        """The partition's replica set as the first answering broker's metadata has it (None: unknown)."""
        for n in self.node_ids:
            node = self.cluster.nodes[n]
            body = self._metadata(n) if node.running and not node.paused else None
            snap = placing.snapshot(body, topic, 0.0) if body is not None else None
            if snap is not None and snap.replicas.get(partition):
                return list(snap.replicas[partition])
        return None

    def leader_claims(self, topic: str, *,
                      timeout_s: float = limits.leader_claims_timeout_s) -> dict[int, list[tuple[int, int]]]:
        """partition -> [(broker, term)] of the running, unpaused brokers that say they lead it."""
        claims: dict[int, list[tuple[int, int]]] = {}
        for n, node in self.cluster.nodes.items():
            if not node.running or node.paused:
                continue
            body = self._metadata(n, timeout_s=timeout_s)
            if body is None:
                continue
            for item in body.get("topics") or []:
                if item.get("name") != topic:
                    continue
                for part in item.get("partitions") or []:
                    if part.get("role") == "leader":
                        claims.setdefault(int(part["partition"]), []).append((n, int(part.get("leader_epoch") or 0)))
        return claims

    def convergence_problems(self, topics: Iterable[str] | None = None, *,
                             placement: PlacementGoal | None = None) -> tuple[list[str], dict[str, Any]]:
        """What keeps the cluster from being converged, and the per-partition view when it is. With
        ``placement``, the topic's replica sets must also have converged (chaos/placement.py)."""
        problems, bodies = self._broker_problems()
        if problems:
            return problems, {}
        wanted = set(topics) if topics is not None else None
        partitions: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
        for n, body in bodies.items():
            for item in body.get("topics") or []:
                if wanted is not None and item["name"] not in wanted:
                    continue
                for part in item.get("partitions") or []:
                    if n in (part.get("replicas") or [n]):
                        partitions.setdefault((item["name"], int(part["partition"])), {})[n] = part
        if wanted is not None:
            for name in wanted:
                if not any(t == name for t, _ in partitions):
                    problems.append(f"topic {name} is not in the metadata")
        view: dict[str, Any] = {}
        for (topic, p), copies in sorted(partitions.items()):
            problems += _partition_problems(topic, p, copies, view)
        if placement is not None:
            problems += self._placement_problems(placement, bodies, partitions)
        return problems, view

    def _broker_problems(self) -> tuple[list[str], dict[int, dict[str, Any]]]:
        """Every broker (but those killed for good) running, answering, ready and linked to its live peers."""
        problems: list[str] = []
        bodies: dict[int, dict[str, Any]] = {}
        for n, node in self.cluster.nodes.items():
            if n in self.retired:
                continue
            if not node.running or node.paused:
                problems.append(f"broker {n} is {'paused' if node.paused else 'not running'}")
                continue
            body = self._metadata(n)
            if body is None:
                problems.append(f"broker {n} does not answer")
                continue
            if not (body.get("metadata") or {}).get("ready"):
                problems.append(f"broker {n} is not ready")
            for broker in body.get("brokers") or []:
                # A broker gone for good (fenced, then removed) is rightly unreachable.
                if broker.get("id") in self.retired or broker.get("state") in ("fenced", "removed"):
                    continue
                if "connected" in broker and not broker["connected"]:
                    problems.append(f"broker {n} has no link to broker {broker.get('id')}")
            bodies[n] = body
        return problems, bodies

    def _placement_problems(self, goal: PlacementGoal, bodies: dict[int, dict[str, Any]],
                            partitions: dict[tuple[str, int], dict[int, dict[str, Any]]]) -> list[str]:
        body = placing.controller_view(bodies)
        snap = placing.snapshot(body, goal.topic, 0.0) if body is not None else None
        if snap is None:
            return [f"no broker's metadata lists topic {goal.topic}"]
        problems = placing.placement_problems(snap, partitions=goal.partitions,
                                                replication_factor=goal.replication_factor, gone=self.retired)
        for p, replicas in sorted(snap.replicas.items()):
            reporting = sorted(partitions.get((goal.topic, p), {}))
            if reporting != sorted(replicas):
                problems.append(f"{goal.topic}/{p}: replicas {sorted(replicas)} but {reporting} report hosting it")
        return problems

    def wait_converged(self, topics: Iterable[str] | None = None, *, timeout_s: float = limits.converge_deadline_s,
                       placement: PlacementGoal | None = None) -> dict[str, Any]:
        """Wait (bounded) until every broker is ready and linked to every other, and every partition has exactly
        one leader that all its replicas name in the same term, with equal high watermarks and commit indexes.
        Returns ``{"topic/p": {leader, term, high_watermark, replicas, ...}}``; raises TimeoutError naming what
        was still wrong."""
        topic_list = list(topics) if topics is not None else None
        started = time.monotonic()
        last: list[str] = []
        result: dict[str, Any] = {}

        def converged() -> bool:
            nonlocal last, result
            self.check_crashes()
            for n, node in self.cluster.nodes.items():
                if n not in self.retired and node.process is not None and node.process.poll() is not None:
                    raise BrokerExited(f"broker {n} exited with code {node.process.returncode} while the cluster "
                                       f"was converging; {node.log_path} ends with:\n"
                                       f"{self.cluster.tail_log(n, limits.exit_log_tail_lines)}")
            last, result = self.convergence_problems(topic_list, placement=placement)
            return not last

        try:
            _wait_for(converged, timeout_s=timeout_s, what="the cluster to converge")
        except TimeoutError:
            shown = last[: limits.convergence_problems_shown_max]
            raise TimeoutError(f"cluster did not converge within {timeout_s:.0f} s: " + "; ".join(shown)) from None
        self._record("converged", "cluster", {"after_s": round(time.monotonic() - started, 2),
                                              "partitions": {k: {"leader": v["leader"], "term": v["term"],
                                                                 "high_watermark": v["high_watermark"]}
                                                             for k, v in result.items()}}, started=started)
        return result


def _partition_problems(topic: str, p: int, copies: dict[int, dict[str, Any]], view: dict[str, Any]) -> list[str]:
    """One leader that every replica names in the same term, equal high watermarks and commit indexes; the
    partition's entry of ``view`` is filled in."""
    key = f"{topic}/{p}"
    leaders = [n for n, part in copies.items() if part.get("role") == "leader"]
    if len(leaders) != 1:
        return [f"{key}: {len(leaders)} brokers say they lead it ({leaders})"]
    problems: list[str] = []
    leader = leaders[0]
    term = copies[leader].get("leader_epoch")
    named = {n: (part.get("leader_id"), part.get("leader_epoch")) for n, part in copies.items()}
    if any(v != (leader, term) for v in named.values()):
        problems.append(f"{key}: brokers disagree on (leader, term): {named}")
    hws = {n: part.get("high_watermark") for n, part in copies.items()}
    if len(set(hws.values())) != 1:
        problems.append(f"{key}: high watermarks differ: {hws}")
    commits = {n: (part.get("commit_index"), part.get("applied_index")) for n, part in copies.items()}
    if any(c != a for c, a in commits.values()) or len({c for c, _ in commits.values()}) != 1:
        problems.append(f"{key}: commit/applied indexes differ: {commits}")
    view[key] = {"topic": topic, "partition": p, "leader": leader, "term": term,
                 "high_watermark": hws[leader], "replicas": sorted(copies),
                 "log_start_offsets": {n: part.get("log_start_offset") for n, part in copies.items()}}
    return problems


# --- /proc helpers ------------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _hex_address(text: str) -> tuple[str, int]:
    host_hex, port_hex = text.split(":")
    if len(host_hex) == 8:
        octets = bytes.fromhex(host_hex)[::-1]
        host = ".".join(str(b) for b in octets)
    else:
        host = host_hex  # IPv6: compared as text only
    return host, int(port_hex, 16)


def _tcp_connections() -> list[tuple[str, int, str, int, int]]:
    """Established TCP connections: (local host, local port, remote host, remote port, inode)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_ESTABLISHED:
                continue
            local = _hex_address(fields[1])
            remote = _hex_address(fields[2])
            rows.append((local[0], local[1], remote[0], remote[1], int(fields[9])))
    return rows
