"""``raftmq cluster status``: what it asks every broker, and how the answers are shown.

It asks EVERY broker it can find (the bootstrap URLs plus the brokers and controller they list) for
``/v1/health`` and ``/v1/metadata``. Partition fields other than the replica list are each broker's local
Raft view, so a partition row shows the view of the broker that says it leads the partition (the newest
leader epoch wins if two claim it); a partition no reachable broker leads is shown in red. Broker states and
moves are cluster-wide facts: they come from the controller's answer (docs/api.md "Health and metadata":
only it fills in heartbeat ages and move progress).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from raftmq.cli.common import fmt_bytes, fmt_ids, fmt_int, safe
from raftmq.client.connection import Connection
from raftmq.client.metadata import BrokerInfo, ClusterMetadata, MoveInfo, normalize_url, parse_metadata
from raftmq.cluster.errors import RaftMQError

# Deadline of each status request: a broker that does not answer within it is shown as unreachable.
STATUS_TIMEOUT_S = 3.0
# `status` asks the bootstrap brokers, then the brokers they list: two rounds find every broker of a cluster
# whose members all know each other, and a broker that lists unknown URLs cannot make it probe forever.
_DISCOVERY_ROUNDS = 2
# Broker states as shown: fenced brokers lead nothing (red), draining ones are leaving (yellow), removed
# ones hold nothing (dim). docs/api.md "Health and metadata" defines the states.
_STATE_STYLE = {"alive": "green", "fenced": "bold red", "draining": "yellow", "removed": "dim"}
# Width of the catch-up bar in the moves table.
_BAR_WIDTH = 10


# --- collection (shared with `topic describe` and the demo) ----------------------------------------------


@dataclass
class BrokerState:
    url: str
    broker_id: int | None = None
    reachable: bool = False
    ready: bool | None = None
    error: RaftMQError | None = None
    metadata: dict[str, Any] | None = None

    @property
    def controller_id(self) -> int | None:
        value = (self.metadata or {}).get("controller_id")
        return value if type(value) is int else None


@dataclass
class PartitionRow:
    topic: str
    partition: int
    view: dict[str, Any]  # the raw partition object chosen
    source_id: int | None  # broker whose view it is
    has_leader: bool  # some reachable broker says it leads the partition
    last_known_leader: int | None = None


@dataclass
class ClusterSnapshot:
    brokers: list[BrokerState] = field(default_factory=list)
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> raw topic (config etc.)
    partitions: dict[str, list[PartitionRow]] = field(default_factory=dict)
    # The cluster-wide facts (broker states, moves): the controller's answer when it was reachable (only it
    # knows heartbeat ages and move progress), else the first reachable broker's; None when none answered.
    cluster: ClusterMetadata | None = None

    @property
    def reachable(self) -> list[BrokerState]:
        return [b for b in self.brokers if b.reachable]


async def _probe(conn: Connection, state: BrokerState, timeout_s: float) -> None:
    answers: tuple[dict[str, Any] | BaseException, dict[str, Any] | BaseException] = await asyncio.gather(
        conn.request("GET", state.url + "/v1/health", timeout_s=timeout_s),
        conn.request("GET", state.url + "/v1/metadata", timeout_s=timeout_s),
        return_exceptions=True)
    health, metadata = answers
    if isinstance(health, BaseException) and not isinstance(health, Exception):
        raise health
    if isinstance(metadata, BaseException) and not isinstance(metadata, Exception):
        raise metadata
    if isinstance(health, dict):
        state.reachable = True
        state.ready = bool(health.get("ready"))
        if type(health.get("broker_id")) is int:
            state.broker_id = health["broker_id"]
    elif isinstance(health, RaftMQError):
        state.error = health
    if isinstance(metadata, dict):
        state.reachable = True
        state.metadata = metadata
        if type(metadata.get("broker_id")) is int:
            state.broker_id = metadata["broker_id"]
    elif isinstance(metadata, RaftMQError) and state.error is None:
        state.error = metadata


def _pick_partitions(brokers: Sequence[BrokerState]) -> tuple[dict[str, dict[str, Any]],
                                                               dict[str, list[PartitionRow]]]:
    topics: dict[str, dict[str, Any]] = {}
    views: dict[tuple[str, int], list[tuple[int | None, dict[str, Any]]]] = {}
    for broker in brokers:
        for topic in (broker.metadata or {}).get("topics") or []:
            name = topic.get("name")
            if not isinstance(name, str):
                continue
            topics.setdefault(name, topic)
            for part in topic.get("partitions") or []:
                if type(part.get("partition")) is int:
                    views.setdefault((name, part["partition"]), []).append((broker.broker_id, part))

    def epoch(item: tuple[int | None, dict[str, Any]]) -> int:
        value = item[1].get("leader_epoch")
        return value if type(value) is int else -1

    rows: dict[str, list[PartitionRow]] = {name: [] for name in sorted(topics)}
    for (name, index), candidates in sorted(views.items()):
        leaders = [c for c in candidates if c[1].get("role") == "leader"]
        if leaders:
            source, view = max(leaders, key=epoch)
            rows[name].append(PartitionRow(name, index, view, source, True))
        else:
            source, view = max(candidates, key=epoch)
            last = view.get("leader_id")
            rows[name].append(PartitionRow(name, index, view, source, False,
                                           last if type(last) is int else None))
    return topics, rows


async def collect(bootstrap: Sequence[str], *, timeout_s: float = STATUS_TIMEOUT_S) -> ClusterSnapshot:
    """Probe the bootstrap brokers, then any broker they list that was not probed yet."""
    conn = Connection(request_timeout_ms=int(timeout_s * 1000), connect_timeout_ms=int(timeout_s * 1000))
    states: dict[str, BrokerState] = {}
    try:
        pending = [normalize_url(u) for u in bootstrap]
        for _round in range(_DISCOVERY_ROUNDS):
            new = [BrokerState(url) for url in dict.fromkeys(pending) if url not in states]
            if not new:
                break
            for state in new:
                states[state.url] = state
            await asyncio.gather(*(_probe(conn, s, timeout_s) for s in new))
            pending = _listed_urls(states.values())
    finally:
        await conn.close()
    # Name unreachable brokers by the id other brokers list for their URL.
    ids_by_url: dict[str, int] = {}
    for state in states.values():
        for entry in (state.metadata or {}).get("brokers") or []:
            if isinstance(entry.get("url"), str) and type(entry.get("id")) is int:
                ids_by_url[entry["url"].rstrip("/")] = entry["id"]
    for state in states.values():
        if state.broker_id is None:
            state.broker_id = ids_by_url.get(state.url)
    brokers = sorted(states.values(), key=lambda s: (s.broker_id is None, s.broker_id or 0, s.url))
    topics, rows = _pick_partitions(brokers)
    return ClusterSnapshot(brokers, topics, rows, cluster_view(brokers))


def _listed_urls(states: Iterable[BrokerState]) -> list[str]:
    """The broker URLs (and the controller URL) the answers name: the next discovery round probes them."""
    urls: list[str] = []
    for state in states:
        meta = state.metadata or {}
        listed = [entry.get("url") for entry in meta.get("brokers") or [] if isinstance(entry, dict)]
        for url in [*listed, meta.get("controller_url")]:
            if isinstance(url, str):
                with contextlib.suppress(ValueError):
                    urls.append(normalize_url(url))
    return urls


def cluster_view(brokers: Sequence[BrokerState]) -> ClusterMetadata | None:
    """The answer that speaks for the cluster: the controller's own, else the first one that parses."""
    parsed: list[ClusterMetadata] = []
    for broker in brokers:
        if broker.metadata is not None:
            with contextlib.suppress(RaftMQError):
                parsed.append(parse_metadata(broker.metadata))
    return next((m for m in parsed if m.from_controller), parsed[0] if parsed else None)



# --- rendering ------------------------------------------------------------------------------------------


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def state_cell(info: BrokerInfo | None) -> str:
    """The broker's state, coloured; ``?`` when no answer listed the broker."""
    if info is None:
        return "?"
    return f"[{_STATE_STYLE.get(info.state, 'magenta')}]{safe(info.state)}[/]"


def _metadata_role(broker: BrokerState, info: BrokerInfo | None) -> str:
    controller = broker.controller_id
    if controller is None:
        return "[yellow]no controller known[/]"
    if controller == broker.broker_id:
        return "[bold]controller (leader)[/]"
    voter = info.metadata_voter if info is not None else None
    if voter is None:
        return "follower"  # a broker without the controller's fields: it does not say
    return "voter" if voter else "learner"


def _broker_rows(snapshot: ClusterSnapshot) -> list[tuple[BrokerState, BrokerInfo | None]]:
    """Every probed broker, plus those the cluster lists that no probe reached (e.g. a removed broker
    whose URL was never asked), each with the cluster's entry for it."""
    listed = {b.broker_id: b for b in snapshot.cluster.brokers} if snapshot.cluster is not None else {}
    rows = [(state, listed.get(state.broker_id) if state.broker_id is not None else None)
            for state in snapshot.brokers]
    probed = {state.broker_id for state in snapshot.brokers}
    rows.extend((BrokerState(info.url, info.broker_id), info) for bid, info in sorted(listed.items())
                if bid not in probed)
    return rows


def _reachable_cell(broker: BrokerState) -> str:
    if not broker.reachable:
        reason = broker.error.code if broker.error is not None else "not asked"
        return f"[red]no ({safe(reason)})[/]"
    return "[green]yes[/]" if broker.ready else "[yellow]yes, replaying metadata[/]"


def brokers_table(snapshot: ClusterSnapshot) -> Table:
    controller = snapshot.cluster.controller_id if snapshot.cluster is not None else None
    title = "brokers" + (f" (controller: broker {controller})" if controller is not None else "")
    table = Table(title=title, title_justify="left")
    # The URL, reachability and role must stay whole on one line (people and scripts search for them);
    # numeric columns get two-line headers so that twelve columns fit 160 characters.
    for column in ("id", "state", "rack", "URL", "reachable", "metadata", "term", "commit/\napplied",
                   "replicas", "leaders", "incar-\nnation", "heartbeat\nage"):
        left = column in ("state", "rack", "URL", "reachable", "metadata")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for broker, info in _broker_rows(snapshot):
        bid = str(broker.broker_id) if broker.broker_id is not None else "?"
        kafka = kafka_address(snapshot, broker.broker_id)
        cells = [bid, state_cell(info), safe(info.rack) if info is not None and info.rack else "-",
                 broker.url + (f"\nkafka {safe(kafka)}" if kafka else ""), _reachable_cell(broker)]
        counts = [fmt_int(info.replicas if info is not None else None),
                  fmt_int(info.leaders if info is not None else _local_leads(broker)),
                  fmt_int(info.incarnation if info is not None else None),
                  fmt_age(info.heartbeat_age_s if info is not None else None)]
        if not broker.reachable:
            table.add_row(*cells, "-", "-", "-", *counts)
            continue
        group = (broker.metadata or {}).get("metadata") or {}
        table.add_row(*cells, _metadata_role(broker, info), fmt_int(group.get("term")),
                      f"{fmt_int(group.get('commit_index'))}/{fmt_int(group.get('applied_index'))}", *counts)
    return table


def kafka_address(snapshot: ClusterSnapshot, broker_id: int | None) -> str | None:
    """A broker's Kafka listener (host:port) as any reachable broker lists it (/v1/metadata ``kafka``);
    None when it has none or nobody says."""
    for state in snapshot.reachable:
        for entry in (state.metadata or {}).get("brokers") or []:
            if isinstance(entry, dict) and entry.get("id") == broker_id and isinstance(entry.get("kafka"), str):
                return str(entry["kafka"])
    return None


def _local_leads(broker: BrokerState) -> int | None:
    """Partitions the broker says it leads (for brokers whose metadata has no ``leaders`` count)."""
    if broker.metadata is None:
        return None
    return sum(1 for t in broker.metadata.get("topics") or [] for p in t.get("partitions") or []
               if p.get("role") == "leader")


def replicas_cell(view: dict[str, Any]) -> str:
    """``1,2,3``, or ``1,2,4 → 1,2,5`` while a move heads for another replica set."""
    target = view.get("target")
    if isinstance(target, list) and target != view.get("replicas"):
        return f"{fmt_ids(view.get('replicas'))} [yellow]→ {fmt_ids(target)}[/]"
    return fmt_ids(view.get("replicas"))


def partitions_table(name: str, rows: Iterable[PartitionRow], *, title: str | None = None) -> Table:
    table = Table(title=title if title is not None else f"topic {name}", title_justify="left")
    for column in ("partition", "leader", "replicas", "ISR", "term", "commit index", "applied index",
                   "high watermark", "log start", "size"):
        table.add_column(column, justify="left" if column in ("leader", "replicas", "ISR") else "right")
    for row in rows:
        view = row.view
        numbers = [fmt_int(view.get("leader_epoch")), fmt_int(view.get("commit_index")),
                   fmt_int(view.get("applied_index")), fmt_int(view.get("high_watermark")),
                   fmt_int(view.get("log_start_offset")), fmt_bytes(view.get("size_bytes"))]
        if row.has_leader:
            isr = fmt_ids(view.get("isr"))
            replicas = set(view.get("replicas") or [])
            if replicas and set(view.get("isr") or []) != replicas:
                isr = f"[yellow]{isr}[/]"
            table.add_row(str(row.partition), str(row.source_id), replicas_cell(view), isr, *numbers)
        else:
            last = f" (last known {row.last_known_leader})" if row.last_known_leader is not None else ""
            table.add_row(f"[red]{row.partition}[/]", f"[red]none{last}[/]", replicas_cell(view), "[red]-[/]",
                          *(f"[red]{cell}[/]" for cell in numbers))
    return table


def progress_bar(move: MoveInfo) -> str:
    """``██████░░░░  60% 900/1200``: how far the added replica has caught up with the leader's log."""
    progress = move.progress
    fraction = progress.fraction if progress is not None else None
    if progress is None or fraction is None:
        return "-"
    filled = round(fraction * _BAR_WIDTH)
    bar = "█" * filled + "░" * (_BAR_WIDTH - filled)
    return (f"[cyan]{bar}[/] {fraction * 100:3.0f}% "
            f"{fmt_int(progress.match_index)}/{fmt_int(progress.leader_last_index)}")


def moves_table(moves: Sequence[MoveInfo], *, from_controller: bool = True,
                title: str | None = None) -> Table:
    """One row per partition whose replica set is changing."""
    note = "" if from_controller else " (progress unknown: the controller did not answer)"
    table = Table(title=(title or f"moves ({len(moves)} running)") + note, title_justify="left")
    for column in ("partition", "replicas → target", "adding", "removing", "reason", "catch-up", "running"):
        table.add_column(column, justify="right" if column in ("adding", "removing", "running") else "left")
    for move in sorted(moves, key=lambda m: (m.topic, m.partition)):
        table.add_row(f"{safe(move.topic)}/{move.partition}",
                      f"{fmt_ids(move.replicas)} → {fmt_ids(move.target)}",
                      fmt_int(move.adding), fmt_int(move.removing), safe(move.reason or "-"),
                      progress_bar(move), fmt_age(move.running_s))
    return table


def under_replicated(snapshot: ClusterSnapshot) -> list[str]:
    """Partitions with a leader whose in-sync set lacks a replica, or with replicas on fenced/removed brokers."""
    down = {b.broker_id for b in snapshot.cluster.brokers if b.state in ("fenced", "removed")} \
        if snapshot.cluster is not None else set()
    found = []
    for rows in snapshot.partitions.values():
        for row in rows:
            replicas = set(row.view.get("replicas") or [])
            lagging = row.has_leader and replicas and set(row.view.get("isr") or []) != replicas
            if lagging or replicas & down:
                found.append(f"{row.topic}/{row.partition}")
    return found


def _health_notes(snapshot: ClusterSnapshot) -> list[Text]:
    notes = []
    lacking = under_replicated(snapshot)
    if lacking:
        notes.append(Text(f"{len(lacking)} under-replicated partition(s): {', '.join(lacking)} (a replica is "
                          "behind, or on a fenced or removed broker: the controller moves those after the heal grace "
                          "period)",
                          style="yellow"))
    leaderless = [f"{r.topic}/{r.partition}" for rows in snapshot.partitions.values() for r in rows
                  if not r.has_leader]
    if leaderless:
        notes.append(Text(f"{len(leaderless)} partition(s) without a reachable leader: "
                          f"{', '.join(leaderless)} (an election may be running; a majority of each "
                          "partition's replicas must be up)", style="red"))
    return notes


def render_status(snapshot: ClusterSnapshot) -> Group:
    parts: list[Any] = [brokers_table(snapshot)]
    cluster = snapshot.cluster
    if cluster is not None and cluster.moves:
        parts.append(moves_table(cluster.moves, from_controller=cluster.from_controller))
    if not snapshot.partitions:
        parts.append(Text("no topics yet (create one with: raftmq topic create NAME --partitions 3)"))
    for name, rows in snapshot.partitions.items():
        parts.append(partitions_table(name, rows))
    parts.extend(_health_notes(snapshot))
    return Group(*parts)
