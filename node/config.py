"""Node configuration: a TOML file (deploy/node.example.toml documents every key), validated once.

A bad file fails at start with INVALID_CONFIG and a sentence naming the key, never later under load. This
module also owns the value types a config is made of (addresses, the durability policy, Raft timers), so
that deploy/, chaos/ and the CLI can write and read configs without importing the broker's machinery.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidConfig


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        host, _, port = text.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise ValueError(f"an address must be host:port, got {text[:80]!r}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} is outside 1-65535 in {text[:80]!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Durability(enum.Enum):
    """When journals (and segments) reach the disk. See README "Durability"."""

    ALWAYS = "always"      # fsync (group commit) before a replica acknowledges an append
    INTERVAL = "interval"  # fsync every flush_interval_ms; acks do not wait
    NEVER = "never"        # page cache only: survives a process kill, not a power loss


@dataclass(frozen=True)
class RaftTimers:
    election_timeout_min_s: float = limits.raft_election_timeout_min_s
    election_timeout_max_s: float = limits.raft_election_timeout_max_s
    heartbeat_period_s: float = limits.raft_heartbeat_period_s
    connection_timeout_s: float = limits.raft_connection_timeout_s
    leader_fallback_timeout_s: float = limits.raft_leader_fallback_timeout_s

    def validate(self) -> list[str]:
        """pysyncobj checks these with `assert` (gone under python -O); check them in plain sentences."""
        problems = []
        if not self.election_timeout_min_s > 3 * self.heartbeat_period_s:
            problems.append("election_timeout_min_ms must be more than 3 x heartbeat_ms")
        if not self.election_timeout_max_s > self.election_timeout_min_s:
            problems.append("election_timeout_max_ms must be more than election_timeout_min_ms")
        if not self.connection_timeout_s >= self.election_timeout_max_s:
            problems.append("connection_timeout_ms must be at least election_timeout_max_ms")
        if not self.leader_fallback_timeout_s > self.heartbeat_period_s:
            problems.append("leader_fallback_timeout_ms must be more than heartbeat_ms")
        return problems


@dataclass(frozen=True)
class Liveness:
    """How the controller decides a broker is gone, and how fast it moves replicas (``[controller]``)."""

    heartbeat_s: float = 1.0        # a broker heartbeats to the controller this often
    session_timeout_s: float = 6.0  # no heartbeat for this long: the broker is fenced
    heal_grace_s: float = 300.0     # fenced for this long: its replicas are moved to live brokers
    moves_max: int = 2              # concurrent replica moves the controller runs (the throttle)

    def validate(self) -> list[str]:
        problems = []
        if not 0.01 <= self.heartbeat_s <= 60:
            problems.append("heartbeat_ms must be between 10 and 60000")
        if not self.session_timeout_s >= 2 * self.heartbeat_s:
            problems.append("session_timeout_ms must be at least 2 x heartbeat_ms")
        if not self.heal_grace_s >= 0:
            problems.append("heal_grace_ms must not be negative")
        if not 1 <= self.moves_max <= 64:
            problems.append("moves_max must be between 1 and 64")
        return problems


@dataclass(frozen=True)
class BrokerEntry:
    broker_id: int
    peer: PeerAddress        # canonical peer address (identity of the link, where it listens)
    url: str                 # client URL advertised to clients
    dial: PeerAddress | None = None  # where THIS node dials that peer (a chaos proxy); default: peer
    kafka: PeerAddress | None = None  # its Kafka listener's advertised address (what Kafka Metadata lists)

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
    rack: str | None = None
    # The brokers that vote in the metadata group (its Raft voters); empty: the first three of ``brokers``
    # by id. The others follow the metadata as learners. Fixed for the life of a cluster.
    metadata_voters: tuple[int, ...] = ()
    liveness: Liveness = field(default_factory=Liveness)
    # The Kafka-protocol listener (node/kafka_listener.py): where it listens (None: no listener), and the
    # address Kafka clients are told to dial (Metadata); default kafka_listen. Behind a proxy or NAT,
    # advertise the address clients can reach.
    kafka_listen: PeerAddress | None = None
    kafka_advertised: PeerAddress | None = None

    @property
    def kafka_address(self) -> PeerAddress | None:
        """This broker's advertised Kafka address (None: no Kafka listener)."""
        return self.kafka_advertised or self.kafka_listen

    @property
    def broker_ids(self) -> list[int]:
        return sorted(b.broker_id for b in self.brokers)

    @property
    def voters(self) -> list[int]:
        return sorted(self.metadata_voters) if self.metadata_voters else self.broker_ids[:3]

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


_KNOWN_KEYS = frozenset({
    "broker_id", "cluster_id", "data_dir", "client_listen", "peer_listen", "advertised_url", "durability",
    "flush_interval_ms", "cluster_secret", "cluster_secret_file", "allow_insecure_peers", "log_level",
    "leader_rebalance", "http_connections_max", "brokers", "raft", "rack", "metadata_voters", "controller",
    "kafka_listen", "kafka_advertised"})


def parse_config(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> NodeConfig:
    """Build and validate a NodeConfig from a parsed TOML document."""
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise InvalidConfig(f"unknown keys: {', '.join(unknown)}", keys=unknown)
    broker_id = _get(raw, "broker_id", int)
    if broker_id < 1:
        raise InvalidConfig("broker_id must be a positive integer", key="broker_id")
    cluster_id = _get(raw, "cluster_id", str)
    if not cluster_id:
        raise InvalidConfig("cluster_id must not be empty", key="cluster_id")
    client_listen = _address(_get(raw, "client_listen", str), "client_listen")
    try:
        durability = Durability(_get(raw, "durability", str, "always"))
    except ValueError:
        raise InvalidConfig("durability must be one of always, interval, never", key="durability") from None
    flush_interval_ms = _get(raw, "flush_interval_ms", int, 100)
    if not 1 <= flush_interval_ms <= 60_000:
        raise InvalidConfig("flush_interval_ms must be between 1 and 60000", key="flush_interval_ms")
    log_level = _get(raw, "log_level", str, "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise InvalidConfig("log_level must be debug, info, warning or error", key="log_level")
    http_connections_max = _get(raw, "http_connections_max", int, limits.http_connections_max)
    if not 16 <= http_connections_max <= 1_000_000:
        raise InvalidConfig("http_connections_max must be between 16 and 1000000", key="http_connections_max")
    cluster_secret, secret_file = _parse_secret(raw, base_dir)
    brokers = _parse_brokers(raw, broker_id)
    voters = _parse_voters(raw)
    kafka_listen, kafka_advertised = _parse_kafka(raw)
    missing = sorted(set(voters) - {b.broker_id for b in brokers})
    if missing:
        raise InvalidConfig(f"metadata_voters {missing} are not listed in [[brokers]]: a broker must know where "
                            "the metadata voters are", key="metadata_voters")
    return NodeConfig(broker_id=broker_id, cluster_id=cluster_id, data_dir=_path(raw, "data_dir", base_dir),
                      client_listen=client_listen, peer_listen=_address(_get(raw, "peer_listen", str), "peer_listen"),
                      advertised_url=_get(raw, "advertised_url", str, f"http://{client_listen}"),
                      brokers=brokers, durability=durability,
                      flush_interval_ms=flush_interval_ms, cluster_secret=cluster_secret,
                      cluster_secret_file=secret_file,
                      allow_insecure_peers=_get(raw, "allow_insecure_peers", bool, False), log_level=log_level,
                      leader_rebalance=_get(raw, "leader_rebalance", bool, True),
                      http_connections_max=http_connections_max, timers=_parse_timers(raw),
                      rack=_parse_rack(raw), metadata_voters=voters, liveness=_parse_liveness(raw),
                      kafka_listen=kafka_listen, kafka_advertised=kafka_advertised)


def _parse_kafka(raw: Mapping[str, Any]) -> tuple[PeerAddress | None, PeerAddress | None]:
    listen_text = _get(raw, "kafka_listen", str, "")
    advertised_text = _get(raw, "kafka_advertised", str, "")
    if advertised_text and not listen_text:
        raise InvalidConfig("kafka_advertised needs kafka_listen (the address the Kafka listener binds)",
                            key="kafka_advertised")
    return (_address(listen_text, "kafka_listen") if listen_text else None,
            _address(advertised_text, "kafka_advertised") if advertised_text else None)


def _parse_rack(raw: Mapping[str, Any]) -> str | None:
    rack = _get(raw, "rack", str, "")
    if len(rack) > 64 or not rack.isprintable():
        raise InvalidConfig("rack must be at most 64 printable characters", key="rack")
    return rack or None


def _parse_voters(raw: Mapping[str, Any]) -> tuple[int, ...]:
    voters = _get(raw, "metadata_voters", list, [])
    if any(type(v) is not int or v < 1 for v in voters) or len(set(voters)) != len(voters):
        raise InvalidConfig("metadata_voters must be distinct positive broker ids", key="metadata_voters")
    if len(voters) > 7:
        raise InvalidConfig("metadata_voters lists at most 7 brokers (3 or 5 is usual)", key="metadata_voters")
    return tuple(sorted(voters))


def _parse_liveness(raw: Mapping[str, Any]) -> Liveness:
    table = raw.get("controller", {})
    if not isinstance(table, Mapping):
        raise InvalidConfig("[controller] must be a table", key="controller")
    unknown = sorted(set(table) - {"heartbeat_ms", "session_timeout_ms", "heal_grace_ms", "moves_max"})
    if unknown:
        raise InvalidConfig(f"unknown keys in [controller]: {', '.join(unknown)}", keys=unknown)
    defaults = Liveness()
    liveness = Liveness(
        heartbeat_s=_get(table, "heartbeat_ms", int, int(defaults.heartbeat_s * 1000)) / 1000,
        session_timeout_s=_get(table, "session_timeout_ms", int, int(defaults.session_timeout_s * 1000)) / 1000,
        heal_grace_s=_get(table, "heal_grace_ms", int, int(defaults.heal_grace_s * 1000)) / 1000,
        moves_max=_get(table, "moves_max", int, defaults.moves_max))
    problems = liveness.validate()
    if problems:
        raise InvalidConfig("[controller] " + "; ".join(problems), key="controller")
    return liveness


def _path(raw: Mapping[str, Any], key: str, base_dir: Path | None) -> Path:
    path = Path(_get(raw, key, str))
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _parse_brokers(raw: Mapping[str, Any], broker_id: int) -> tuple[BrokerEntry, ...]:
    brokers = []
    for index, entry in enumerate(_get(raw, "brokers", list)):
        if not isinstance(entry, Mapping):
            raise InvalidConfig(f"brokers[{index}] must be a table", key=f"brokers[{index}]")
        dial_text = entry.get("dial")
        kafka_text = _get(entry, "kafka", str, "")
        brokers.append(BrokerEntry(
            broker_id=_get(entry, "id", int),
            peer=_address(_get(entry, "peer", str), f"brokers[{index}].peer"),
            url=_get(entry, "url", str),
            dial=_address(dial_text, f"brokers[{index}].dial") if dial_text else None,
            kafka=_address(kafka_text, f"brokers[{index}].kafka") if kafka_text else None))
    ids = [b.broker_id for b in brokers]
    if len(set(ids)) != len(ids):
        raise InvalidConfig("broker ids in [[brokers]] must be unique", key="brokers")
    if broker_id not in ids:
        raise InvalidConfig(f"broker_id {broker_id} is not listed in [[brokers]]", key="brokers")
    if any(b < 1 for b in ids):
        raise InvalidConfig("broker ids must be positive", key="brokers")
    return tuple(brokers)


def _parse_timers(raw: Mapping[str, Any]) -> RaftTimers:
    raft = raw.get("raft", {})
    if not isinstance(raft, Mapping):
        raise InvalidConfig("[raft] must be a table", key="raft")
    defaults = RaftTimers()

    def seconds(key: str, default_s: float) -> float:
        return float(_get(raft, key, int, int(default_s * 1000))) / 1000

    timers = RaftTimers(
        election_timeout_min_s=seconds("election_timeout_min_ms", defaults.election_timeout_min_s),
        election_timeout_max_s=seconds("election_timeout_max_ms", defaults.election_timeout_max_s),
        heartbeat_period_s=seconds("heartbeat_ms", defaults.heartbeat_period_s),
        connection_timeout_s=seconds("connection_timeout_ms", defaults.connection_timeout_s),
        leader_fallback_timeout_s=seconds("leader_fallback_timeout_ms", defaults.leader_fallback_timeout_s))
    problems = timers.validate()
    if problems:
        raise InvalidConfig("[raft] " + "; ".join(problems), key="raft")
    return timers


def _parse_secret(raw: Mapping[str, Any], base_dir: Path | None) -> tuple[str, Path | None]:
    cluster_secret = _get(raw, "cluster_secret", str, "")
    secret_file_text = _get(raw, "cluster_secret_file", str, "")
    if cluster_secret and secret_file_text:
        raise InvalidConfig("set cluster_secret or cluster_secret_file, not both", key="cluster_secret_file")
    if not secret_file_text:
        return cluster_secret, None
    return cluster_secret, _path(raw, "cluster_secret_file", base_dir)


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
    if config.kafka_listen is not None:
        lines.append(f"kafka_listen = {_toml_str(str(config.kafka_listen))}")
    if config.kafka_advertised is not None:
        lines.append(f"kafka_advertised = {_toml_str(str(config.kafka_advertised))}")
    timers = config.timers
    lines += ["", "[raft]",
              f"election_timeout_min_ms = {round(timers.election_timeout_min_s * 1000)}",
              f"election_timeout_max_ms = {round(timers.election_timeout_max_s * 1000)}",
              f"heartbeat_ms = {round(timers.heartbeat_period_s * 1000)}",
              f"connection_timeout_ms = {round(timers.connection_timeout_s * 1000)}",
              f"leader_fallback_timeout_ms = {round(timers.leader_fallback_timeout_s * 1000)}"]
    if config.rack is not None:
        lines.insert(1, f"rack = {_toml_str(config.rack)}")
    if config.metadata_voters:
        lines.insert(1, f"metadata_voters = {list(config.metadata_voters)}")
    live = config.liveness
    lines += ["", "[controller]", f"heartbeat_ms = {round(live.heartbeat_s * 1000)}",
              f"session_timeout_ms = {round(live.session_timeout_s * 1000)}",
              f"heal_grace_ms = {round(live.heal_grace_s * 1000)}", f"moves_max = {live.moves_max}"]
    for entry in config.brokers:
        lines += ["", "[[brokers]]", f"id = {entry.broker_id}", f"peer = {_toml_str(str(entry.peer))}",
                  f"url = {_toml_str(entry.url)}"]
        if entry.dial is not None:
            lines.append(f"dial = {_toml_str(str(entry.dial))}")
        if entry.kafka is not None:
            lines.append(f"kafka = {_toml_str(str(entry.kafka))}")
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes), so quotes and backslashes cannot break out.
    return json.dumps(text)


__all__ = ["BrokerEntry", "Durability", "Liveness", "NodeConfig", "PeerAddress", "RaftTimers", "load_config",
           "parse_config",           "prepare_for_start", "render_config"]
