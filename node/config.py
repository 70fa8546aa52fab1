"""Node configuration: a TOML file (deploy/node.example.toml documents every key), validated once.

A bad file fails at start with INVALID_CONFIG and a sentence naming the key, never later under load.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidConfig
from raftmq.node.raft_transport import PeerAddress
from raftmq.node.replication import Durability, RaftTimers


@dataclass(frozen=True)
class BrokerEntry:
    broker_id: int
    peer: PeerAddress        # canonical peer address (identity of the link, where it listens)
    url: str                 # client URL advertised to clients
    dial: PeerAddress | None = None  # where THIS node dials that peer (a chaos proxy); default: peer

    @property
    def dial_address(self) -> PeerAddress:
        return self.dial or self.peer


@dataclass(frozen=True)
class NodeConfig:
    broker_id: int
    cluster_id: str
    data_dir: Path
    client_listen: PeerAddress
    peer_listen: PeerAddress
    advertised_url: str
    brokers: tuple[BrokerEntry, ...]
    durability: Durability = Durability.ALWAYS
    flush_interval_ms: int = 100
    cluster_secret: str = ""
    # Alternative to cluster_secret: a file holding it (read at start, surrounding whitespace ignored).
    cluster_secret_file: Path | None = None
    # Run with a peer port reachable from other hosts and no secret (anyone who reaches it joins the Raft
    # conversation). Off: such a node refuses to start.
    allow_insecure_peers: bool = False
    log_level: str = "info"
    leader_rebalance: bool = True
    http_connections_max: int = limits.http_connections_max
    timers: RaftTimers = field(default_factory=RaftTimers)

    @property
    def broker_ids(self) -> list[int]:
        return sorted(b.broker_id for b in self.brokers)

    def broker(self, broker_id: int) -> BrokerEntry | None:
        for entry in self.brokers:
            if entry.broker_id == broker_id:
                return entry
        return None

    def url_of(self, broker_id: int | None) -> str | None:
        entry = self.broker(broker_id) if broker_id is not None else None
        return entry.url if entry is not None else None


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise InvalidConfig(f"missing required key {key!r}", key=key)
        return default
    value = table[key]
    if kind is int and type(value) is not int or kind is not int and not isinstance(value, kind):
        raise InvalidConfig(f"{key!r} must be {kind.__name__}, got {type(value).__name__}", key=key)
    return value


def _address(text: str, key: str) -> PeerAddress:
    try:
        return PeerAddress.parse(text)
    except ValueError as exc:
        raise InvalidConfig(f"{key!r}: {exc}", key=key) from None


def parse_config(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> NodeConfig:
    """Build and validate a NodeConfig from a parsed TOML document."""
    known = {"broker_id", "cluster_id", "data_dir", "client_listen", "peer_listen", "advertised_url", "durability",
             "flush_interval_ms", "cluster_secret", "cluster_secret_file", "allow_insecure_peers", "log_level",
             "leader_rebalance", "http_connections_max", "brokers", "raft"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidConfig(f"unknown keys: {', '.join(unknown)}", keys=unknown)
    broker_id = _get(raw, "broker_id", int)
    if broker_id < 1:
        raise InvalidConfig("broker_id must be a positive integer", key="broker_id")
    cluster_id = _get(raw, "cluster_id", str)
    if not cluster_id:
        raise InvalidConfig("cluster_id must not be empty", key="cluster_id")
    data_dir = Path(_get(raw, "data_dir", str))
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = base_dir / data_dir
    client_listen = _address(_get(raw, "client_listen", str), "client_listen")
    peer_listen = _address(_get(raw, "peer_listen", str), "peer_listen")
    advertised_url = _get(raw, "advertised_url", str, f"http://{client_listen}")
    durability_text = _get(raw, "durability", str, "always")
    try:
        durability = Durability(durability_text)
    except ValueError:
        raise InvalidConfig("durability must be one of always, interval, never", key="durability") from None
    flush_interval_ms = _get(raw, "flush_interval_ms", int, 100)
    if not 1 <= flush_interval_ms <= 60_000:
        raise InvalidConfig("flush_interval_ms must be between 1 and 60000", key="flush_interval_ms")
    log_level = _get(raw, "log_level", str, "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise InvalidConfig("log_level must be debug, info, warning or error", key="log_level")

    brokers_raw = _get(raw, "brokers", list)
    brokers = []
    for index, entry in enumerate(brokers_raw):
        if not isinstance(entry, Mapping):
            raise InvalidConfig(f"brokers[{index}] must be a table", key=f"brokers[{index}]")
        entry_id = _get(entry, "id", int)
        dial_text = entry.get("dial")
        brokers.append(BrokerEntry(
            broker_id=entry_id,
            peer=_address(_get(entry, "peer", str), f"brokers[{index}].peer"),
            url=_get(entry, "url", str),
            dial=_address(dial_text, f"brokers[{index}].dial") if dial_text else None))
    ids = [b.broker_id for b in brokers]
    if len(set(ids)) != len(ids):
        raise InvalidConfig("broker ids in [[brokers]] must be unique", key="brokers")
    if broker_id not in ids:
        raise InvalidConfig(f"broker_id {broker_id} is not listed in [[brokers]]", key="brokers")
    if any(b < 1 for b in ids):
        raise InvalidConfig("broker ids must be positive", key="brokers")

    raft = raw.get("raft", {})
    if not isinstance(raft, Mapping):
        raise InvalidConfig("[raft] must be a table", key="raft")
    defaults = RaftTimers()
    timers = RaftTimers(
        election_timeout_min_s=_get(raft, "election_timeout_min_ms", int,
                                    int(defaults.election_timeout_min_s * 1000)) / 1000,
        election_timeout_max_s=_get(raft, "election_timeout_max_ms", int,
                                    int(defaults.election_timeout_max_s * 1000)) / 1000,
        heartbeat_period_s=_get(raft, "heartbeat_ms", int, int(defaults.heartbeat_period_s * 1000)) / 1000,
        connection_timeout_s=_get(raft, "connection_timeout_ms", int,
                                  int(defaults.connection_timeout_s * 1000)) / 1000,
        leader_fallback_timeout_s=_get(raft, "leader_fallback_timeout_ms", int,
                                       int(defaults.leader_fallback_timeout_s * 1000)) / 1000)
    problems = timers.validate()
    if problems:
        raise InvalidConfig("[raft] " + "; ".join(problems), key="raft")
    cluster_secret = _get(raw, "cluster_secret", str, "")
    secret_file_text = _get(raw, "cluster_secret_file", str, "")
    if cluster_secret and secret_file_text:
        raise InvalidConfig("set cluster_secret or cluster_secret_file, not both", key="cluster_secret_file")
    secret_file = Path(secret_file_text) if secret_file_text else None
    if secret_file is not None and not secret_file.is_absolute() and base_dir is not None:
        secret_file = base_dir / secret_file
    allow_insecure_peers = _get(raw, "allow_insecure_peers", bool, False)
    leader_rebalance = _get(raw, "leader_rebalance", bool, True)
    http_connections_max = _get(raw, "http_connections_max", int, limits.http_connections_max)
    if not 16 <= http_connections_max <= 1_000_000:
        raise InvalidConfig("http_connections_max must be between 16 and 1000000", key="http_connections_max")
    return NodeConfig(broker_id=broker_id, cluster_id=cluster_id, data_dir=data_dir, client_listen=client_listen,
                      peer_listen=peer_listen, advertised_url=advertised_url, brokers=tuple(brokers),
                      durability=durability, flush_interval_ms=flush_interval_ms, cluster_secret=cluster_secret,
                      cluster_secret_file=secret_file, allow_insecure_peers=allow_insecure_peers,
                      log_level=log_level, leader_rebalance=leader_rebalance,
                      http_connections_max=http_connections_max, timers=timers)


def load_config(path: Path) -> NodeConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidConfig(f"config file {path} does not exist", path=str(path)) from None
    except UnicodeDecodeError:
        raise InvalidConfig(f"{path} is not UTF-8 text (TOML files are UTF-8)", path=str(path)) from None
    except OSError as exc:
        raise InvalidConfig(f"cannot read config file {path}: {exc.strerror or exc}", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{path} is not valid TOML: {exc}", path=str(path)) from None
    return parse_config(raw, base_dir=path.parent)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may be reachable from anywhere


def prepare_for_start(config: NodeConfig) -> NodeConfig:
    """What can only be checked on the host, at start: the secret file is read into ``cluster_secret``, and
    a peer port that other hosts can reach must have a secret (unless ``allow_insecure_peers``)."""
    secret = config.cluster_secret
    if config.cluster_secret_file is not None:
        path = config.cluster_secret_file
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidConfig(f"cluster_secret_file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}",
                                key="cluster_secret_file") from None
        if not secret:
            raise InvalidConfig(f"cluster_secret_file {path} is empty", key="cluster_secret_file")
    if not secret and not _is_loopback(config.peer_listen.host) and not config.allow_insecure_peers:
        raise InvalidConfig(
            f"peer_listen {config.peer_listen} can be reached from other hosts and no cluster secret is set: any "
            "process that reaches it could join the Raft conversation. Set the same cluster_secret (or "
            "cluster_secret_file) on every broker, e.g. the output of `openssl rand -hex 32`, or set "
            "allow_insecure_peers = true to run without one", key="cluster_secret")
    return replace(config, cluster_secret=secret)


def render_config(config: NodeConfig) -> str:
    """The TOML text of a config (used by `raftmq cluster up` to write each node's file)."""
    lines = [
        f"broker_id = {config.broker_id}",
        f"cluster_id = {_toml_str(config.cluster_id)}",
        f"data_dir = {_toml_str(str(config.data_dir))}",
        f"client_listen = {_toml_str(str(config.client_listen))}",
        f"peer_listen = {_toml_str(str(config.peer_listen))}",
        f"advertised_url = {_toml_str(config.advertised_url)}",
        f"durability = {_toml_str(config.durability.value)}",
        f"flush_interval_ms = {config.flush_interval_ms}",
        f"log_level = {_toml_str(config.log_level)}",
        f"leader_rebalance = {'true' if config.leader_rebalance else 'false'}",
        f"http_connections_max = {config.http_connections_max}",
    ]
    if config.cluster_secret:
        lines.append(f"cluster_secret = {_toml_str(config.cluster_secret)}")
    if config.cluster_secret_file is not None:
        lines.append(f"cluster_secret_file = {_toml_str(str(config.cluster_secret_file))}")
    if config.allow_insecure_peers:
        lines.append("allow_insecure_peers = true")
    timers = config.timers
    lines += ["", "[raft]",
              f"election_timeout_min_ms = {round(timers.election_timeout_min_s * 1000)}",
              f"election_timeout_max_ms = {round(timers.election_timeout_max_s * 1000)}",
              f"heartbeat_ms = {round(timers.heartbeat_period_s * 1000)}",
              f"connection_timeout_ms = {round(timers.connection_timeout_s * 1000)}",
              f"leader_fallback_timeout_ms = {round(timers.leader_fallback_timeout_s * 1000)}"]
    for entry in config.brokers:
        lines += ["", "[[brokers]]", f"id = {entry.broker_id}", f"peer = {_toml_str(str(entry.peer))}",
                  f"url = {_toml_str(entry.url)}"]
        if entry.dial is not None:
            lines.append(f"dial = {_toml_str(str(entry.dial))}")
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes), so quotes and backslashes cannot break out.
    return json.dumps(text)


__all__ = ["BrokerEntry", "NodeConfig", "load_config", "parse_config", "prepare_for_start", "render_config"]
