"""``raftmq cluster up`` (a local cluster in the foreground), ``raftmq cluster status`` (collected and
rendered by raftmq/cli/cluster_status.py) and ``raftmq cluster drain`` (raftmq/cli/cluster_moves.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from raftmq.cli.cluster_local import (
    LAYOUT_FILE,
    answer,
    pending_requests,
    read_layout,
    request_add_broker,
    up_running,
    write_layout,
)
from raftmq.cli.cluster_moves import drain
from raftmq.cli.cluster_status import STATUS_TIMEOUT_S as STATUS_TIMEOUT_S
from raftmq.cli.cluster_status import BrokerState as BrokerState
from raftmq.cli.cluster_status import ClusterSnapshot as ClusterSnapshot
from raftmq.cli.cluster_status import collect as collect
from raftmq.cli.cluster_status import partitions_table as partitions_table
from raftmq.cli.cluster_status import render_status as render_status
from raftmq.cli.common import (
    EXIT_BROKER,
    CommandFailed,
    ConfigProblem,
    RaftMQGroup,
    bootstrap_option,
    err,
    fmt_ids,
    out,
    port_in_use,
    safe,
)
from raftmq.cli.group_cmd import group_summaries, groups_table
from raftmq.cluster.errors import ConnectionFailed, RaftMQError

# `up` defaults; the restart command it prints leaves out options at these values.
DEFAULT_NODES = 3
DEFAULT_BASE_PORT = 9101
# Broker i's Kafka-protocol listener is on kafka_base+i-1: 9092, 9093, 9094 (what Kafka users expect).
DEFAULT_KAFKA_BASE_PORT = 9092
# Broker i listens for peers on base+100+i (deploy/local_cluster.py), for clients on base+i.
_PEER_PORT_OFFSET = 100
_MAX_PORT = 65535
# `up` checks this often (seconds) whether a broker exited; a signal wakes it at once.
_WATCH_INTERVAL_S = 0.5
# Brokers get this long after SIGTERM to stop cleanly before they are killed.
_STOP_TIMEOUT_S = 20.0
# The fault-proxy API answers at once on localhost; `up` must not hang on one that does not.
_PROXY_API_TIMEOUT_S = 5.0


@click.group("cluster", cls=RaftMQGroup)
def cluster() -> None:
    """Run a local cluster, or show the state of one."""


# --- status (collection and rendering: raftmq/cli/cluster_status.py) ------------------------------------


def _print_groups(urls: list[str]) -> None:
    """Consumer groups and their total lag, when there are any (``raftmq group describe G`` for the details)."""
    try:
        groups = asyncio.run(group_summaries(urls))
    except RaftMQError as exc:
        out().print(Text(f"consumer groups unknown: {exc} (retry, or: raftmq group list)", style="yellow"))
        return
    if groups:
        out().print(groups_table(groups))


@cluster.command("status")
@bootstrap_option()
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=STATUS_TIMEOUT_S,
              show_default=True, help="Seconds to wait for each broker's answer.")
def status(bootstrap: list[str], timeout_s: float) -> None:
    """Brokers (state, rack, metadata role, replicas, heartbeat), running moves, and every partition as its
    leader reports it; under-replicated and leaderless partitions are called out."""
    snapshot = asyncio.run(collect(bootstrap, timeout_s=timeout_s))
    out().print(render_status(snapshot))
    if snapshot.reachable:
        _print_groups([state.url for state in snapshot.reachable])
    if not snapshot.reachable:
        raise CommandFailed(ConnectionFailed.code, f"no broker answered at {', '.join(bootstrap)}",
                            "start a cluster (raftmq cluster up) or pass the right --bootstrap / "
                            "RAFTMQ_BOOTSTRAP")


cluster.add_command(drain)


# --- up ----------------------------------------------------------------------------------------------------


def _check_layout(directory: Path, nodes: int | None) -> tuple[dict[str, Any] | None, int]:
    """The folder's previous layout and the node count to start: --nodes, else the layout's (which
    ``add-broker`` raises), else 3. Refuse a folder that holds a cluster of another size."""
    layout = read_layout(directory)
    if layout is None:
        return None, nodes or DEFAULT_NODES
    if up_running(layout):
        raise ConfigProblem(f"{directory} is already in use by a running `raftmq cluster up` (pid "
                            f"{layout['up_pid']})", "stop it with Ctrl-C in its terminal, or use another --dir",
                            code="PORT_IN_USE")
    if nodes is not None and layout.get("nodes") != nodes:
        raise ConfigProblem(f"{directory} holds a {layout.get('nodes')}-node cluster, not {nodes} nodes",
                            f"run with --nodes {layout.get('nodes')} (or without --nodes), or use another --dir "
                            "for a new cluster")
    count = layout.get("nodes")
    return layout, count if type(count) is int and count >= 1 else DEFAULT_NODES


def _check_ports(nodes: int, base_port: int, previous: dict[str, Any] | None, *, only: int | None = None,
                 kafka_base_port: int = 0) -> None:
    """Every broker's ports (or only broker ``only``'s) are free and below 65536."""
    if base_port + _PEER_PORT_OFFSET + nodes - 1 > _MAX_PORT:
        raise ConfigProblem(f"--base-port {base_port} leaves no room for {nodes} peer ports (base+100+i)",
                            "pick a lower --base-port")
    if kafka_base_port and kafka_base_port + nodes - 1 > _MAX_PORT:
        raise ConfigProblem(f"--kafka-base-port {kafka_base_port} leaves no room for {nodes} Kafka ports",
                            "pick a lower --kafka-base-port")
    for index in range(nodes) if only is None else [only - 1]:
        kafka = [(kafka_base_port + index, f"Kafka port of broker {index + 1}")] if kafka_base_port else []
        for port, what in ((base_port + index, f"client port of broker {index + 1}"),
                           (base_port + _PEER_PORT_OFFSET + index, f"peer port of broker {index + 1}"), *kafka):
            if port_in_use(port):
                extra = ""
                if previous is not None and previous.get("base_port") == base_port:
                    extra = " (is this cluster already running? stop it with Ctrl-C in its terminal)"
                raise ConfigProblem(
                    f"port {port} ({what}) is already in use{extra}",
                    f"free the port, or choose other ports with --base-port (needs {base_port}-"
                    f"{base_port + nodes - 1} and {base_port + _PEER_PORT_OFFSET}-"
                    f"{base_port + _PEER_PORT_OFFSET + nodes - 1} free; --kafka-base-port moves the Kafka ports, "
                    "0 turns them off)",
                    code="PORT_IN_USE")


class _Stopper:
    """SIGINT/SIGTERM set an event instead of raising KeyboardInterrupt in the middle of things."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.event.is_set():
            self.signal_name = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> _Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _nodes_table(local: Any, client_urls: Sequence[str]) -> Table:
    proxied = any(url != node.url for url, node in zip(client_urls, local.nodes.values(), strict=True))
    table = Table(title="brokers", title_justify="left")
    kafka = any(getattr(node, "kafka_port", None) for node in local.nodes.values())
    columns = ["broker", "client URL", *(["direct URL"] if proxied else []), *(["Kafka"] if kafka else []),
               *(["direct Kafka"] if kafka and proxied else []), "peer address", "pid", "data dir", "log file"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("broker", "pid") else "left")
    for (broker_id, node), url in zip(local.nodes.items(), client_urls, strict=True):
        # What Kafka clients dial (with --chaos the broker's Kafka proxy), then, behind proxies, the listener.
        advertised = getattr(node, "kafka_address", None) or (f"127.0.0.1:{node.kafka_port}" if node.kafka_port
                                                             else "-")
        listener = f"127.0.0.1:{node.kafka_port}" if node.kafka_port else "-"
        kafka_cell = ([str(advertised)] if kafka else []) + ([listener] if kafka and proxied else [])
        table.add_row(str(broker_id), url, *([node.url] if proxied else []), *kafka_cell,
                      f"127.0.0.1:{node.peer_port}", str(node.pid or "-"), str(node.data_dir), str(node.log_path))
    return table


def _proxies_table(toxiproxy_url: str, known: dict[str, Any]) -> Table:
    from raftmq.deploy.local_cluster import http_json

    table = Table(title=f"fault proxies (API {toxiproxy_url})", title_justify="left")
    for column in ("proxy", "kind", "listen", "upstream", "enabled", "toxics"):
        table.add_column(column)
    try:
        status_code, body = http_json(toxiproxy_url.rstrip("/") + "/proxies", timeout_s=_PROXY_API_TIMEOUT_S)
    except OSError as exc:
        table.add_row(f"[red]proxy API did not answer: {safe(exc)}[/]", "", "", "", "", "")
        return table
    if status_code != 200 or not isinstance(body, dict):
        table.add_row(f"[red]proxy API answered HTTP {status_code}[/]", "", "", "", "", "")
        return table
    for name, proxy in sorted(body.items()):
        if not isinstance(proxy, dict):
            continue
        kind = getattr(known.get(name), "kind", "-")
        table.add_row(safe(name), safe(kind), str(proxy.get("listen", "-")), str(proxy.get("upstream", "-")),
                      "yes" if proxy.get("enabled", True) else "[red]no[/]",
                      str(len(proxy.get("toxics") or [])))
    return table


def _usage_panel(bootstrap: str, directory: Path, restart: str, extra: str = "", kafka: str = "") -> Panel:
    lines = [
        "In another terminal:",
        "",
        f"  export RAFTMQ_BOOTSTRAP={bootstrap}",
        "  raftmq cluster status",
        "  raftmq topic create orders --partitions 3",
        "  seq 1 1000 | raftmq produce orders --acks all",
        "  raftmq consume orders --from-beginning",
        "  raftmq bench produce --bootstrap $RAFTMQ_BOOTSTRAP --records 20000",
    ]
    if kafka:
        lines += ["", f"Kafka clients (kcat, confluent-kafka, kafka-python, aiokafka): bootstrap servers {kafka}",
                  f"  kcat -b {kafka.split(',')[0]} -L"]
    if extra:
        lines += ["", extra]
    lines += ["", f"Data stays in {directory} (run `{restart}` again to reuse it).",
              f"Peer links are authenticated with the secret in {directory / 'cluster.secret'}.",
              "Press Ctrl-C to stop every broker cleanly."]
    return Panel("\n".join(lines), title="cluster is up", title_align="left", border_style="green",
                 expand=False)


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 99), default=None,
              help="Number of brokers [default: as many as the --dir held last time (add-broker adds one), "
                   "else 3]. Topics still default to replication factor 3: the controller places each "
                   "partition on a subset.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".raftmq/cluster"), show_default=True,
              help="Folder for configs, data and logs (reused when it exists).")
@click.option("--base-port", type=click.IntRange(1024, _MAX_PORT - _PEER_PORT_OFFSET), default=DEFAULT_BASE_PORT,
              show_default=True, help="Client ports are base+i, peer ports base+100+i.")
@click.option("--kafka-base-port", type=click.IntRange(0, _MAX_PORT), default=DEFAULT_KAFKA_BASE_PORT,
              show_default=True, help="Kafka-protocol listeners on kafka-base+i (9092, 9093, 9094 ...); 0: none.")
@click.option("--durability", type=click.Choice(["always", "interval", "never"]), default="always",
              show_default=True, help="When brokers fsync their Raft log.")
@click.option("--chaos", is_flag=True, help="Put a fault proxy in front of every link (chaos harness).")
@click.option("--ready-timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True,
              help="Seconds to wait for every broker to be ready.")
def up(nodes: int | None, directory: Path, base_port: int, kafka_base_port: int, durability: str, chaos: bool,
       ready_timeout: float) -> None:
    """Start a local cluster and keep it running in the foreground until Ctrl-C.

    While it runs, `raftmq cluster add-broker --dir DIR` starts one more broker under it."""
    previous, count = _check_layout(directory.resolve(), nodes)
    options = UpOptions(count, directory.resolve(), base_port, durability, chaos, ready_timeout, kafka_base_port)
    _check_ports(count, base_port, previous, kafka_base_port=kafka_base_port)
    local = _LocalRun.create(options)
    _write_layout(options, up_pid=os.getpid())
    console = err()
    reused = previous is not None or any((node.data_dir).exists() for node in local.nodes.values())
    try:
        with _Stopper() as stopper:
            started = time.monotonic()
            _start_or_fail(local, options, reused, console)
            if stopper.event.is_set():
                _shutdown(local, console)
                return
            _print_ready(local, options, time.monotonic() - started)
            _watch_brokers(local, stopper, console, options)
            console.print(f"{stopper.signal_name or 'signal'} received: stopping {len(local.nodes)} broker(s)")
            _shutdown(local, console)
    finally:
        _write_layout(replace(options, nodes=len(local.nodes)), up_pid=None)


@dataclass(frozen=True)
class UpOptions:
    """The options of ``raftmq cluster up`` (``directory`` resolved)."""

    nodes: int
    directory: Path
    base_port: int
    durability: str
    chaos: bool
    ready_timeout: float
    kafka_base_port: int = DEFAULT_KAFKA_BASE_PORT  # 0: no Kafka listeners

    def restart_command(self) -> str:
        """The command that starts this cluster again (options at their defaults left out)."""
        restart = f"raftmq cluster up --dir {self.directory}"
        restart += f" --nodes {self.nodes}" if self.nodes != DEFAULT_NODES else ""
        restart += f" --base-port {self.base_port}" if self.base_port != DEFAULT_BASE_PORT else ""
        restart += (f" --kafka-base-port {self.kafka_base_port}"
                    if self.kafka_base_port != DEFAULT_KAFKA_BASE_PORT else "")
        restart += " --chaos" if self.chaos else ""
        return restart


@dataclass
class _LocalRun:
    """The brokers ``up`` runs (a deploy LocalCluster), and with --chaos the fault-proxy harness that owns
    them and sits in front of every link."""

    cluster: Any
    harness: Any = None

    @classmethod
    def create(cls, options: UpOptions) -> _LocalRun:
        from raftmq.deploy.local_cluster import LocalCluster

        if not options.chaos:
            return cls(LocalCluster(options.directory, nodes=options.nodes, base_port=options.base_port,
                                    durability=options.durability,
                                    kafka_base_port=options.kafka_base_port or None))
        try:
            from raftmq.chaos.harness import ChaosCluster
        except ImportError as exc:
            raise ConfigProblem(f"--chaos needs the chaos harness (chaos.harness): {exc}",
                                "run without --chaos, or update your checkout") from None
        # The Kafka listeners get fault proxies like the client ports, and advertise them in Kafka Metadata.
        harness = ChaosCluster(options.directory, nodes=options.nodes, base_port=options.base_port,
                               durability=options.durability, kafka_base_port=options.kafka_base_port or None)
        return cls(harness.cluster, harness)

    @property
    def nodes(self) -> dict[int, Any]:
        nodes: dict[int, Any] = self.cluster.nodes
        return nodes

    @property
    def client_urls(self) -> list[str]:
        """What clients connect to: the brokers, or with --chaos the proxies in front of them."""
        return list(self.harness.client_urls) if self.harness is not None else list(self.cluster.urls)

    def start(self, ready_timeout: float) -> None:
        if self.harness is not None:
            self.harness.start()
            self.harness.wait_ready(timeout_s=ready_timeout)
        else:
            self.cluster.start()
            self.cluster.wait_ready(timeout_s=ready_timeout)

    def stop(self) -> None:
        if self.harness is not None:
            self.harness.stop()
        self.cluster.stop(timeout_s=_STOP_TIMEOUT_S)

    def add_broker(self, rack: str | None, options: UpOptions) -> int:
        """One more broker (id = highest + 1), started and ready (bounded); with --chaos wired through new
        proxies like the others. Returns its id."""
        new_id = max(self.nodes) + 1
        _check_ports(new_id, options.base_port, None, only=new_id, kafka_base_port=options.kafka_base_port)
        if self.harness is not None:
            handle = self.harness.add_broker(ready_timeout_s=options.ready_timeout)
            return int(handle.target[1:])
        new = self.cluster.add_node(rack=rack)
        self.cluster.wait_ready([new], timeout_s=options.ready_timeout)
        return int(new)


def _write_layout(options: UpOptions, *, up_pid: int | None) -> None:
    """Record the cluster's size and ports so a later ``up`` on the folder can check them, and (while it
    runs) the pid of the ``up`` that manages it, which ``add-broker`` asks."""
    write_layout(options.directory, {"nodes": options.nodes, "base_port": options.base_port,
                                     "kafka_base_port": options.kafka_base_port,
                                     "durability": options.durability, "chaos": options.chaos, "up_pid": up_pid})


def _start_or_fail(local: _LocalRun, options: UpOptions, reused: bool, console: Any) -> None:
    """Start every broker and wait until all are ready; on failure stop them and point at their logs."""
    try:
        with console.status(f"starting {options.nodes} broker(s) in {options.directory}"
                            f"{' (reusing existing data)' if reused else ''} ..."):
            local.start(options.ready_timeout)
    except (TimeoutError, RuntimeError, OSError, RaftMQError) as exc:
        _shutdown(local, console, quiet=True)
        logs = "\n".join(f"  broker {b}: {n.log_path}" for b, n in local.nodes.items())
        raise CommandFailed("CLUSTER_NOT_READY", f"the cluster did not become ready: {exc}",
                            f"read the broker logs:\n{logs}") from None


def _print_ready(local: _LocalRun, options: UpOptions, took_s: float) -> None:
    """The brokers (and proxies) as started, and how to use the cluster."""
    client_urls = local.client_urls
    stdout = out()
    stdout.print(f"[green]{options.nodes} broker(s) ready in {took_s:.1f} s[/] "
                 f"(durability {options.durability}{', through fault proxies' if options.chaos else ''})")
    stdout.print(_nodes_table(local.cluster, client_urls))
    extra = ""
    harness = local.harness
    if harness is not None:
        stdout.print(_proxies_table(harness.toxiproxy_url, dict(getattr(harness, "proxies", {}))))
        extra = f"Fault proxy API: {harness.toxiproxy_url}  (raftmq chaos ... drives it)"
    kafka = local.cluster.kafka_bootstrap  # the advertised addresses: with --chaos, the Kafka proxies
    stdout.print(_usage_panel(",".join(client_urls), options.directory, options.restart_command(), extra, kafka))
    sys.stdout.flush()


def _watch_brokers(local: _LocalRun, stopper: _Stopper, console: Any, options: UpOptions) -> None:
    """Until a signal arrives, report each broker that exits and serve add-broker requests; when every broker
    has exited, stop (exit 1)."""
    reported: set[int] = set()
    while not stopper.event.wait(_WATCH_INTERVAL_S):  # wakes at once on a signal; polls the processes otherwise
        _serve_mailbox(local, options, console)
        for broker_id, node in local.nodes.items():
            if broker_id not in reported and node.process is not None and node.process.poll() is not None:
                reported.add(broker_id)
                console.print(f"[red]broker {broker_id} exited with code {node.process.returncode}[/];"
                              f" see {node.log_path}")
        if len(reported) == len(local.nodes):
            console.print("[red]every broker has exited; stopping[/]")
            _shutdown(local, console)
            raise click.exceptions.Exit(EXIT_BROKER)


def _serve_mailbox(local: _LocalRun, options: UpOptions, console: Any) -> None:
    """Start a broker for each add-broker request (raftmq/cli/cluster_local.py) and record the new size."""
    for claimed, request in pending_requests(options.directory):
        rack = request.get("rack") if isinstance(request.get("rack"), str) else None
        before = len(local.nodes)
        try:
            broker_id = local.add_broker(rack, options)
        except (TimeoutError, RuntimeError, OSError, ConfigProblem) as exc:
            # A broker that started but is not ready stays (supervised, recorded): it may still register.
            kept = f"; broker {max(local.nodes)} was started and is kept" if len(local.nodes) > before else ""
            _write_layout(replace(options, nodes=len(local.nodes)), up_pid=os.getpid())
            console.print(f"[red]add-broker failed: {safe(exc)}{kept}[/]")
            answer(claimed, {"ok": False, "error": f"{exc}{kept}"})
            continue
        node = local.nodes[broker_id]
        _write_layout(replace(options, nodes=len(local.nodes)), up_pid=os.getpid())
        console.print(f"[green]broker {broker_id} added[/] ({node.advertised_url}, pid {node.pid}, log "
                      f"{node.log_path}); {len(local.nodes)} brokers now")
        answer(claimed, {"ok": True, "broker_id": broker_id, "url": node.advertised_url, "pid": node.pid,
                         "log": str(node.log_path), "nodes": len(local.nodes)})


def _shutdown(local: _LocalRun, console: Any, *, quiet: bool = False) -> None:
    nodes = local.nodes
    running = [b for b, n in nodes.items() if n.running]
    started = time.monotonic()
    with console.status(f"stopping brokers (SIGTERM, up to {_STOP_TIMEOUT_S:.0f} s, then SIGKILL) ..."):
        local.stop()
    if quiet:
        return
    killed = [b for b in running if nodes[b].process is not None and nodes[b].process.returncode == -9]
    clean = [b for b in running if b not in killed]
    if clean:
        console.print(f"[green]stopped broker(s) {fmt_ids(clean)} cleanly[/] in "
                      f"{time.monotonic() - started:.1f} s")
    if killed:
        console.print(f"[yellow]broker(s) {fmt_ids(killed)} did not stop within {_STOP_TIMEOUT_S:.0f} s and "
                      "were killed (SIGKILL)[/]")
    console.print("all brokers stopped.")


# --- add-broker --------------------------------------------------------------------------------------------


@cluster.command("add-broker")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".raftmq/cluster"), show_default=True,
              help="The folder of the running `raftmq cluster up`.")
@click.option("--rack", default=None, help="The new broker's rack (config key `rack`).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 600), default=90.0, show_default=True,
              help="Seconds to wait for the new broker to be started and ready.")
def add_broker(directory: Path, rack: str | None, timeout_s: float) -> None:
    """Add one broker to the local cluster a running `raftmq cluster up --dir DIR` manages.

    The running `up` starts it (id = highest + 1; its config lists every broker, the others' configs are not
    changed: it registers with the controller by heartbeat), supervises it like the others and records the new
    size, so the next `raftmq cluster up --dir DIR` starts it again. The controller then moves replicas onto it.
    """
    directory = directory.resolve()
    layout = read_layout(directory)
    if layout is None:
        raise ConfigProblem(f"{directory} holds no local cluster ({LAYOUT_FILE} is missing)",
                            f"start one with: raftmq cluster up --dir {directory}")
    if not up_running(layout):
        raise CommandFailed("CLUSTER_NOT_RUNNING", f"no `raftmq cluster up` is running for {directory}",
                            f"start it (raftmq cluster up --dir {directory}), then run add-broker again: the "
                            "running `up` starts and supervises the new broker")
    console = err()
    with console.status("asking `raftmq cluster up` for a new broker ...") as spinner:
        try:
            reply = request_add_broker(directory, rack=rack, timeout_s=timeout_s,
                                       on_wait=lambda phase: spinner.update(f"{phase} ..."))
        except TimeoutError as exc:
            raise CommandFailed("ADD_BROKER_TIMED_OUT", str(exc),
                                "look at the terminal of `raftmq cluster up` and the new broker's log") from None
    if not reply.get("ok"):
        raise CommandFailed("ADD_BROKER_FAILED", str(reply.get("error")),
                            "look at the terminal of `raftmq cluster up` and the new broker's log")
    out().print(f"[green]broker {reply['broker_id']} is up[/] at {reply['url']} (pid {reply['pid']}, log "
                f"{reply['log']}); the cluster has {reply['nodes']} brokers. `raftmq cluster status` shows "
                "the replicas the controller moves onto it.")
