"""Run a scenario once per ack level with the same seed-derived fault schedule, and judge each run.

One run (``run_once``):

1. A fresh ``ChaosCluster`` (proxy server first, then brokers) under ``<report dir>/<scenario>/acks-<a>/cluster``
   (kept for post-mortem: every broker's data directory and log, the proxy server's log); wiring verified.
2. The topic (the scenario's partitions and replication factor, 3 and 3 by default; min.insync.replicas 2)
   is created and every partition has a leader. The run clock starts (t = 0).
3. Concurrently: the workload (producers + consumer through the client proxies), the nemesis (the schedule's
   steps applied and undone at their offsets; live targets such as "the leader of partition 0" resolved when
   the step starts, the resolution logged), and a metadata poller (every ~200 ms, straight to each broker's
   client port) that records leader changes and terms per partition.
4. After ``duration``: stop sending, let outstanding sends resolve, heal everything (a broker killed for good
   stays dead), wait (bounded) until the cluster converged (one leader per partition, replicas agree, every
   partition at its replication factor with no move running), drain (leaders and every final replica).
   Heal / balance / drain times come from the placement the metadata poller saw (chaos/placement.py).
5. ``chaos.checker.check(history, acks=..., majority_alive=True)`` (every shipped scenario brings a majority
   back before the drain, and durability "always" keeps logs across SIGKILL). Extra checks from the
   timeline: at most one leader per term per partition. Failover time for every step that takes the leader
   away: from the fault to the first ok send on that partition acknowledged by a DIFFERENT leader (with
   ``client="kafka"``, whose delivery reports do not name the broker: see ``compute_failovers``).

``RunSettings.client``: the producers' client, raftmq's own (HTTP API) or ``"kafka"``: confluent-kafka on
the brokers' Kafka-protocol listeners, which then sit behind fault proxies too and advertise them in Kafka
Metadata (chaos/harness.py). Same history, same checker, same verdicts.

``run_matrix`` runs scenarios x ack levels and writes the report after every run (``chaos.report``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import random
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from raftmq.chaos import limits
from raftmq.chaos.checker import CheckResult, check
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.group_workload import GroupWorkload
from raftmq.chaos.harness import BrokerExited, ChaosCluster, FaultEvent, FaultHandle, PlacementGoal
from raftmq.chaos.history import History, SendOp
from raftmq.chaos.nemesis import Step, generate
from raftmq.chaos.placement import PlacementSnapshot, controller_view, placement_times, snapshot
from raftmq.chaos.scenario import DISK_KINDS, Scenario, liveness_of
from raftmq.chaos.workload import Workload, WorkloadConfig
from raftmq.cluster import limits as cluster_limits

log = logging.getLogger("raftmq.chaos.runner")

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunSettings:
    duration_s: float = limits.run_duration_s_default
    seed: int = 1
    nodes: int | None = None  # None: the scenario's `nodes`
    rate: float = limits.send_rate_per_s_default
    durability: str = "always"
    converge_timeout_s: float = limits.converge_deadline_s
    processes: int = limits.producer_processes_default
    request_timeout_ms: int = limits.request_timeout_ms_default
    delivery_timeout_ms: int = limits.delivery_timeout_ms_default
    proxy_executable: str | None = None
    client: str = "raftmq"  # the producers' client: "raftmq" or "kafka" (chaos/workload.py)


@dataclass
class Failover:
    step: int
    kind: str
    partition: int
    old_leader: int
    old_term: int | None
    fault_ms: float
    failover_ms: float | None  # to the first ok send acknowledged by another leader (see compute_failovers)
    new_leader: int | None
    new_term: int | None
    election_ms: float | None  # to the first poll that showed another broker leading (informational)
    also_led: list[int] = field(default_factory=list)  # other partitions the victim led at the fault

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "partition": self.partition, "old_leader": self.old_leader,
                "old_term": self.old_term, "fault_ms": round(self.fault_ms, 1),
                "failover_ms": None if self.failover_ms is None else round(self.failover_ms, 1),
                "new_leader": self.new_leader, "new_term": self.new_term,
                "election_ms": None if self.election_ms is None else round(self.election_ms, 1),
                "also_led": self.also_led}


@dataclass
class RunResult:
    scenario: str
    acks: str
    seed: int
    duration_s: float
    schedule: list[Step]
    run_dir: Path
    client: str = "raftmq"  # the producers' client (RunSettings.client)
    verdict: str = "ERROR"  # PASS | FAIL | ERROR
    check: CheckResult | None = None
    error: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    leader_changes: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    extra_findings: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    # One row per permanent fault (kill-for-good, add-broker, drain): how long the cluster took to heal,
    # balance or drain after it (chaos/placement.py); value None: it never did within the run.
    placement: list[dict[str, Any]] = field(default_factory=list)

    def placement_ms(self, metric: str) -> float | None:
        """The longest heal_ms / balance_ms / drain_ms of the run (None: no such fault or never reached)."""
        values = [row["value"] for row in self.placement if row["metric"] == metric and row["value"] is not None]
        return max(values) if values else None

    @property
    def failover_max_ms(self) -> float | None:
        values = [f.failover_ms for f in self.failovers if f.failover_ms is not None]
        return max(values) if values else None

    def to_json(self, *, with_check: bool = True) -> dict[str, Any]:
        return {"scenario": self.scenario, "acks": self.acks, "seed": self.seed, "duration_s": self.duration_s,
                "client": self.client, "verdict": self.verdict, "error": self.error, "run_dir": str(self.run_dir),
                "wall_s": round(self.wall_s, 1),
                "summary": self.check.summary_row() if self.check else None,
                "failover_max_ms": self.failover_max_ms, "placement": self.placement,
                "failovers": [f.to_json() for f in self.failovers],
                "extra_findings": self.extra_findings, "stats": self.stats,
                "leader_changes": self.leader_changes, "timeline": self.timeline,
                "check": self.check.to_json() if (self.check and with_check) else None}


# --- the leader timeline ----------------------------------------------------------------------------


class LeaderTimeline:
    """Polls every running broker's metadata (direct client ports) and records, per partition, who claims the
    leadership in which term. Also flags two brokers claiming one term (a Raft safety violation)."""

    def __init__(self, harness: ChaosCluster, topic: str, clock: Callable[[], float]) -> None:
        self.harness = harness
        self.topic = topic
        self.clock = clock
        self.changes: list[dict[str, Any]] = []
        self.current: dict[int, tuple[int | None, int | None]] = {}  # partition -> (leader, term)
        self.claimants: dict[int, list[tuple[int, int]]] = {}  # partition -> [(broker, term)] last seen
        self.term_leaders: dict[tuple[int, int], set[int]] = {}
        self.violations: list[dict[str, Any]] = []
        self.polls = 0
        # The topic's placement (replica sets, moves, broker states) each time it changed: heal, balance and
        # drain times are measured on it (chaos/placement.py).
        self.placement: list[PlacementSnapshot] = []
        # The largest resident memory seen per broker (sampled with every poll) and the samples taken.
        self.rss_max_bytes: dict[int, int] = {}
        self.rss_samples = 0

    def record_placement(self, bodies: dict[int, dict[str, Any] | None], t_ms: float) -> None:
        body = controller_view(bodies)
        snap = snapshot(body, self.topic, t_ms) if body is not None else None
        if snap is None or len(self.placement) >= limits.placement_snapshots_max:
            return
        if not self.placement or self.placement[-1].key() != snap.key():
            self.placement.append(snap)

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=limits.leader_poll_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.monotonic()
                await self.poll_once(session)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, limits.leader_poll_interval_s - (time.monotonic() - started))):
                        await stop.wait()

    async def _fetch(self, session: aiohttp.ClientSession, node: int) -> tuple[int, dict[str, Any] | None]:
        state = self.harness.cluster.nodes[node]
        if not state.running or state.paused:
            return node, None
        try:
            async with session.get(f"{state.url}/v1/metadata", headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    return node, None
                return node, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return node, None

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        self.harness.check_crashes()
        for node, rss in self.harness.rss_bytes().items():
            self.rss_max_bytes[node] = max(rss, self.rss_max_bytes.get(node, 0))
        self.rss_samples += 1
        answers = await asyncio.gather(*(self._fetch(session, n) for n in self.harness.node_ids))
        t_ms = self.clock()
        self.polls += 1
        self.record_placement(dict(answers), t_ms)
        claims: dict[int, list[tuple[int, int]]] = {}
        for node, body in answers:
            if body is None:
                continue
            for item in body.get("topics") or []:
                if item.get("name") != self.topic:
                    continue
                for part in item.get("partitions") or []:
                    p = int(part["partition"])
                    claims.setdefault(p, [])
                    if part.get("role") == "leader":
                        term = int(part.get("leader_epoch") or 0)
                        claims[p].append((node, term))
                        holders = self.term_leaders.setdefault((p, term), set())
                        holders.add(node)
                        if len(holders) > 1 and not any(v["partition"] == p and v["term"] == term
                                                        for v in self.violations):
                            self.violations.append({"t_ms": round(t_ms, 1), "partition": p, "term": term,
                                                    "leaders": sorted(holders)})
        for p, claimed in sorted(claims.items()):
            claimed = sorted(claimed)
            best = max(claimed, key=lambda c: c[1]) if claimed else (None, None)
            if self.current.get(p) != best or self.claimants.get(p) != claimed:
                previous = self.current.get(p)
                self.current[p] = best
                self.claimants[p] = claimed
                self.changes.append({"t_ms": round(t_ms, 1), "partition": p, "leader": best[0], "term": best[1],
                                     "previous": list(previous) if previous else None,
                                     "claimants": [list(c) for c in claimed]})


# --- executing the schedule ---------------------------------------------------------------------------


@dataclass
class _Target:
    """A step's target resolved to brokers (``link`` for link faults), and the leader of its partition as
    claimed when a live selector was resolved (None for selectors that do not look at the leader)."""

    nodes: list[int]
    link: tuple[int, int] | None = None
    leader: int | None = None
    term: int | None = None
    claims: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    how: str = ""


def _resolve_fixed(selector: str, ids: list[int]) -> _Target:
    """"node:N", "nodes:A,B", "all" or "link:A-B" (the nemesis resolved the seeded selectors to these)."""
    if selector.startswith("node:"):
        return _Target([int(selector[5:])])
    if selector.startswith("nodes:"):
        return _Target([int(x) for x in selector[6:].split(",")])
    if selector == "all":
        return _Target(list(ids))
    if selector.startswith("link:"):
        a, b = (int(x) for x in selector[5:].split("-"))
        return _Target([a, b], (a, b))
    raise ValueError(f"unknown target {selector!r}")


class NemesisExecutor:
    """Applies and undoes the schedule's steps at their offsets from ``t0`` (monotonic s)."""

    def __init__(self, harness: ChaosCluster, schedule: list[Step], topic: str, clock: Callable[[], float]) -> None:
        self.harness = harness
        self.schedule = schedule
        self.topic = topic
        self.clock = clock
        self.handles: dict[int, list[FaultHandle]] = {}
        self.resolutions: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.active: dict[int, str] = {}

    async def run(self, t0: float) -> None:
        actions: list[tuple[float, int, int, str, Step]] = []
        for step in self.schedule:
            actions.append((step.at_s, 1, step.index, "apply", step))
            actions.append((step.end_s, 0, step.index, "undo", step))
        actions.sort(key=lambda a: (a[0], a[1], a[2]))
        for at_s, _order, _index, what, step in actions:
            delay = t0 + at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule is time-based by design
            if what == "apply":
                try:
                    self.handles[step.index] = await asyncio.to_thread(self._apply, step)
                    self.active[step.index] = step.describe()
                except Exception as exc:  # noqa: BLE001 - report, keep executing the rest of the schedule
                    log.exception("step %s failed", step.index)
                    self.errors.append({"t_ms": round(self.clock(), 1), "step": step.index, "action": "apply",
                                        "error": f"{type(exc).__name__}: {exc}"})
            else:
                self.active.pop(step.index, None)
                for handle in self.handles.pop(step.index, []):
                    try:
                        await asyncio.to_thread(self.harness.undo, handle)
                    except Exception as exc:  # noqa: BLE001 - the final heal resets everything anyway
                        log.exception("undo of step %s failed", step.index)
                        self.errors.append({"t_ms": round(self.clock(), 1), "step": step.index, "action": "undo",
                                            "error": f"{type(exc).__name__}: {exc}"})

    # -- live target resolution (worker thread) --

    def _leader(self, partition: int, pick: float) -> tuple[int, int | None, dict[int, list[tuple[int, int]]], str]:
        deadline = time.monotonic() + limits.leader_resolve_deadline_s
        while True:
            claims = self.harness.leader_claims(self.topic)
            if claims.get(partition):
                node, term = max(claims[partition], key=lambda c: c[1])
                return node, term, claims, "leader"
            if time.monotonic() >= deadline:
                ids = self.harness.node_ids
                return ids[int(pick * len(ids)) % len(ids)], None, claims, "no leader found; node drawn from the pick"
            time.sleep(limits.leader_resolve_poll_interval_s)  # polling for a condition with a deadline

    def _apply(self, step: Step) -> list[FaultHandle]:
        rng = random.Random(step.pick)
        target = self._resolve(step)
        handles = self._inject(step, target, rng)
        self._probe_failover(step, target, handles)
        return handles

    def _resolve(self, step: Step) -> _Target:
        """The brokers (or link) the step acts on, live selectors resolved now; the resolution is logged."""
        resolution: dict[str, Any] = {"t_ms": round(self.clock(), 1), "step": step.index, "selector": step.target,
                                      "partition": step.partition}
        if step.target in ("leader", "follower", "leader-link"):
            target = self._resolve_live(step)
            resolution.update(leader=target.leader, term=target.term, how=target.how)
        else:
            target = _resolve_fixed(step.target, self.harness.node_ids)
        link = target.link
        resolution["resolved"] = target.nodes if link is None else f"link {link[0]}-{link[1]}"
        self.resolutions.append(resolution)
        return target

    def _resolve_live(self, step: Step) -> _Target:
        """"leader", "follower" or "leader-link" of the step's partition, as the brokers claim it right now."""
        leader, term, claims, how = self._leader(step.partition, step.pick)
        # With a replication factor below the broker count only the partition's replicas are its followers.
        replicas = self.harness.replicas_of(self.topic, step.partition) or self.harness.node_ids
        followers = [n for n in replicas if n != leader and n not in self.harness.retired]
        follower = followers[int(step.pick * len(followers)) % len(followers)] if followers else leader
        if step.target == "leader":
            return _Target([leader], None, leader, term, claims, how)
        if step.target == "follower":
            return _Target([follower], None, leader, term, claims, how)
        return _Target([leader, follower], (leader, follower), leader, term, claims, how)

    def _inject(self, step: Step, target: _Target, rng: random.Random) -> list[FaultHandle]:
        """Apply the step's fault to its resolved target; the handles undo it."""
        h = self.harness
        kind = step.kind
        node = target.nodes[0]
        if kind in ("isolate", "partition", "bridge", "one-way"):
            return self._cut_off(step, node, target.leader, rng)
        if kind == "cut-link":
            assert target.link is not None, "cut-link needs a link target"
            return [h.cut_link(*target.link, mode=step.param("mode", "refuse"))]
        if kind in ("slow", "bandwidth", "reset"):
            return [self._degrade(step, target.link if target.link is not None else node)]
        if kind == "kill":
            return [h.kill(target.nodes)]
        if kind == "kill-for-good":
            return [h.kill_for_good(node)]
        if kind == "add-broker":
            return [h.add_broker()]
        if kind == "drain":
            return [h.drain(node)]
        if kind == "pause":
            return [h.pause(target.nodes)]
        if kind == "restart":
            return [h.shutdown(target.nodes)]
        if kind in DISK_KINDS:
            return [self._disk_fault(step, target.nodes)]
        if kind == "hostile":
            return [h.hostile(node, duration_s=step.duration_s, seed=int(step.pick * 1_000_000))]
        raise ValueError(f"unknown fault kind {kind!r}")

    def _cut_off(self, step: Step, node: int, leader: int | None, rng: random.Random) -> list[FaultHandle]:
        """isolate, partition, bridge or one-way around ``node`` (the others drawn from ``rng``)."""
        h = self.harness
        ids = h.node_ids
        kind = step.kind
        if kind == "isolate":
            return [h.isolate(node, step.param("mode", "refuse"))]
        if kind == "partition":
            size = max(1, (len(ids) - 1) // 2)
            rest = [n for n in ids if n != node]
            minority = {node, *rng.sample(rest, size - 1)}
            return [h.partition([minority, set(ids) - minority], step.param("mode", "refuse"))]
        if kind == "bridge":
            rest = [n for n in ids if n != node]
            if leader is not None and leader != node and leader in rest:
                a = leader
                b = next(n for n in rest if n != leader)
            else:
                a, b = sorted(rng.sample(rest, 2))
            return [h.bridge(a, node, b, step.param("mode", "refuse"))]
        peers = [n for n in ids if n != node]  # one-way
        if step.param("direction", "out") == "out":
            return [h.one_way(node, peers)]
        return [h.one_way(peer, node) for peer in peers]

    def _degrade(self, step: Step, target: int | tuple[int, int]) -> FaultHandle:
        """slow, bandwidth or reset on a node's peer links or on one link."""
        h = self.harness
        if step.kind == "slow":
            return h.slow(target, int(step.param("latency_ms", 200)), int(step.param("jitter_ms", 0)))
        if step.kind == "bandwidth":
            return h.bandwidth(target, int(step.param("kb_s", 64)))
        return h.reset_peer(target)

    def _disk_fault(self, step: Step, nodes: list[int]) -> FaultHandle:
        """power-loss, disk-full, disk-errors or slow-disk through the fault file system (chaos/faultfs/)."""
        h = self.harness
        pattern = str(step.param("pattern", "*"))
        if step.kind == "power-loss":
            return h.power_loss(nodes, torn=bool(step.param("torn", 0)))
        if step.kind == "disk-full":
            # A full disk refuses new bytes and new names; reads, fsyncs of what was written, and deletes go on.
            return h.disk_fault("disk-full", nodes[0], ops=("write", "create", "mkdir"), errno="ENOSPC",
                                pattern=pattern)
        if step.kind == "disk-errors":
            ops = str(step.param("ops", "write")).split(",")
            return h.disk_fault("disk-errors", nodes[0], ops=ops, errno="EIO", pattern=pattern)
        return h.disk_fault("slow-disk", nodes[0], ops=("fsync",), delay_ms=int(step.param("latency_ms", 200)),
                            pattern=pattern)

    def _probe_failover(self, step: Step, target: _Target, handles: list[FaultHandle]) -> None:
        """Remember when a step that took the leader away (alone in its group) hit, to time the failover."""
        leader, term = target.leader, target.term
        alone = sum(1 for other in self.schedule if other.group == step.group) == 1
        if step.takes_leader_away and alone and leader is not None and term is not None:
            event = next(e for e in reversed(self.harness.events) if e.handle == handles[0].id)
            fault_ms = self._ms(event.started_mono_s or event.mono_s)
            also = sorted(p for p, claimed in target.claims.items() if p != step.partition and claimed
                          and max(claimed, key=lambda c: c[1])[0] == leader)
            self.probes.append({"step": step.index, "kind": step.kind, "partition": step.partition,
                                "old_leader": leader, "old_term": term, "fault_ms": fault_ms, "also_led": also})

    def _ms(self, mono_s: float) -> float:
        return self.clock() - (time.monotonic() - mono_s) * 1000


# --- one run --------------------------------------------------------------------------------------


def run_dir_for(report_dir: Path, scenario: str, acks: str) -> Path:
    return report_dir / scenario / f"acks-{acks}"


def compute_failovers(probes: list[dict[str, Any]], history: History,
                      changes: list[dict[str, Any]], *, reports_name_leader: bool = True) -> list[Failover]:
    """Per probe, the time from the fault to the first ok send on the partition acknowledged by another
    leader. ``reports_name_leader=False`` (a Kafka client's delivery reports carry no broker id): to the first
    ok send on the partition that started after the fault and was answered after the metadata poller first
    saw another broker lead it (the election), whose leader and term it then names. The old leader may
    still commit what reached its followers just before a cut took effect (seen: an ack 50 ms after an
    isolation), but not once a majority has moved to a newer term, so such a send is the new leader's; the
    poller's period (about 200 ms) can only make the figure later, never earlier."""
    result = []
    for probe in probes:
        p, old, fault_ms = probe["partition"], probe["old_leader"], probe["fault_ms"]
        election = next((c for c in changes if c["partition"] == p and c["t_ms"] >= fault_ms
                         and c["leader"] is not None and c["leader"] != old), None)
        if reports_name_leader:
            firsts = [op for op in history.sends if op.outcome == "ok" and op.partition == p
                      and op.end_ms >= fault_ms and op.leader_id is not None and op.leader_id != old]
        else:
            firsts = [op for op in history.sends if op.outcome == "ok" and op.partition == p
                      and op.start_ms >= fault_ms and election is not None and op.end_ms >= election["t_ms"]]
        first = min(firsts, key=lambda op: op.end_ms) if firsts else None
        new_leader = None if first is None else first.leader_id
        new_term = None if first is None else first.leader_epoch
        if first is not None and not reports_name_leader and election is not None:
            new_leader, new_term = election["leader"], election["term"]
        result.append(Failover(step=probe["step"], kind=probe["kind"], partition=p, old_leader=old,
                               old_term=probe["old_term"], fault_ms=fault_ms,
                               failover_ms=None if first is None else first.end_ms - fault_ms,
                               new_leader=new_leader, new_term=new_term,
                               election_ms=None if election is None else election["t_ms"] - fault_ms,
                               also_led=probe["also_led"]))
    return result


def lost_by_ack(history: History) -> list[dict[str, Any]]:
    """Exact counts of acknowledged-but-not-drained sends per (partition, acknowledging broker, term), with the
    time span of their acks: where the checker's capped examples come from."""
    drained = {r.value for r in history.reads}
    groups: dict[tuple[int | None, int | None, int | None], list[float]] = {}
    for op in history.sends:
        if op.outcome == "ok" and op.value not in drained:
            groups.setdefault((op.partition, op.leader_id, op.leader_epoch), []).append(op.end_ms)
    return [{"partition": p, "leader": leader, "term": term, "count": len(times),
             "first_ack_ms": round(min(times), 1), "last_ack_ms": round(max(times), 1)}
            for (p, leader, term), times in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def lost_before_a_kept_record(history: History, acks_levels: tuple[str, ...] = ("1", "all"), *,
                              witnesses_min: int = limits.kept_record_witnesses_min) -> list[dict[str, Any]]:
    """Acknowledged sends that Raft cannot have lost by failover: send e1 was acknowledged by leader L in term T,
    and a send e2 on the same partition, started after e1's ack and acknowledged by the same L in the same T,
    is in the drained log. Within one term a leader only appends, so e2 committed implies e1 committed (log
    matching); e1 missing means it was committed and then not stored (rejected at apply time), not truncated.

    By default only sends whose ack means "in the leader's log" qualify (acks=1 and acks=all); for acks=0 an ok
    only means "handed to the leader" (queued in order), so the same evidence is weaker. A witness's drained
    copy could in principle come from an earlier attempt of it at another leader (its report names the attempt
    that answered ok), so ``witnesses_min`` independent witnesses are required. Returns one row per lost send
    with its first witness."""
    drained = {r.value for r in history.reads}
    kept: dict[tuple[int | None, int | None, int | None], list[tuple[float, SendOp]]] = {}
    for op in history.sends:
        if op.outcome == "ok" and op.acks in acks_levels and op.value in drained and op.leader_id is not None:
            kept.setdefault((op.partition, op.leader_id, op.leader_epoch), []).append((op.start_ms, op))
    for rows in kept.values():
        rows.sort(key=lambda row: row[0])
    starts = {key: [start for start, _ in rows] for key, rows in kept.items()}
    found = []
    for op in history.sends:
        if op.outcome != "ok" or op.acks not in acks_levels or op.value in drained or op.leader_id is None:
            continue
        key = (op.partition, op.leader_id, op.leader_epoch)
        rows = kept.get(key, [])
        index = bisect.bisect_right(starts.get(key, []), op.end_ms)
        if len(rows) - index >= witnesses_min:
            witness = rows[index][1]
            found.append({"op_id": op.op_id, "value": op.value, "process": op.process, "idempotent": op.idempotent,
                          "partition": op.partition, "leader": op.leader_id, "term": op.leader_epoch,
                          "acked_ms": round(op.end_ms, 1), "witness_value": witness.value,
                          "witness_process": witness.process, "witness_started_ms": round(witness.start_ms, 1),
                          "witnesses": len(rows) - index})
    return found


def _event_row(event: FaultEvent, t0: float) -> dict[str, Any]:
    row = {"t_ms": round((event.mono_s - t0) * 1000, 1), "type": "fault", "action": event.action,
           "target": event.target, "detail": event.detail, "handle": event.handle, "wall": event.wall}
    if event.started_mono_s is not None:
        row["started_t_ms"] = round((event.started_mono_s - t0) * 1000, 1)
    return row


async def run_once(scenario: Scenario, acks: str, settings: RunSettings, report_dir: Path,
                   progress: ProgressCallback | None = None) -> RunResult:
    """One run of ``scenario`` at one ack level (see the module docstring). Never raises for a failed run:
    the result's verdict is ERROR and ``error`` says why."""
    run = _Run(scenario, acks, settings, report_dir, progress)
    await run.execute()
    return run.finish()


class _Run:
    """The state of one ``run_once``: the phases in order (set up, faults under load, heal, drain, check),
    then the findings, timeline and statistics that complete the result."""

    def __init__(self, scenario: Scenario, acks: str, settings: RunSettings, report_dir: Path,
                 progress: ProgressCallback | None) -> None:
        self.scenario = scenario
        self.acks = acks
        self.settings = settings
        self.progress = progress
        self.nodes = settings.nodes or scenario.nodes
        schedule = generate(scenario, duration_s=settings.duration_s, seed=settings.seed, nodes=self.nodes)
        self.run_dir = run_dir_for(report_dir, scenario.name, acks)
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        self.result = RunResult(scenario=scenario.name, acks=acks, seed=settings.seed,
                                duration_s=settings.duration_s, schedule=schedule, run_dir=self.run_dir,
                                client=settings.client)
        self.wall_start = time.monotonic()
        self.status: dict[str, Any] = {"scenario": scenario.name, "acks": acks, "phase": "starting", "t_s": 0.0,
                                       "duration_s": settings.duration_s, "last_event": ""}
        # The run clock: restarted when the workload starts (t = 0 in the timeline and the history).
        self.t0 = time.monotonic()
        liveness = liveness_of(scenario.liveness) if scenario.liveness else None
        self.harness = ChaosCluster(self.run_dir / "cluster", nodes=self.nodes, durability=settings.durability,
                                    seed=settings.seed, proxy_executable=settings.proxy_executable,
                                    on_event=self._on_event, liveness=liveness, faultfs=scenario.needs_faultfs,
                                    kafka=settings.client == "kafka")
        self.config = WorkloadConfig(acks=acks, rate=settings.rate, processes=settings.processes,
                                     partitions=scenario.partitions, replication_factor=scenario.replication_factor,
                                     seed=settings.seed, request_timeout_ms=settings.request_timeout_ms,
                                     delivery_timeout_ms=settings.delivery_timeout_ms, client=settings.client)
        self.workload: Workload | None = None
        self.timeline: LeaderTimeline | None = None
        self.executor: NemesisExecutor | None = None
        self.stop_polling = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []  # timeline, nemesis, consumer, group members
        self.group: GroupWorkload | None = None
        self.group_stop = asyncio.Event()
        self._final_disks: dict[int, dict[str, Any]] = {}  # the fault file systems' status before the stop
        self.progress_task: asyncio.Task[None] | None = None

    def clock(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    def _on_event(self, event: FaultEvent) -> None:
        self.status["last_event"] = f"{event.action} {event.target}"

    async def _report_progress(self) -> None:
        while True:
            if self.progress is not None:
                if self.status["phase"] == "running":
                    self.status["t_s"] = round(self.clock() / 1000, 1)
                snapshot = dict(self.status)
                if self.workload is not None:
                    snapshot["counts"] = dict(self.workload.counts)
                if self.timeline is not None:
                    snapshot["leaders"] = {p: list(v) for p, v in sorted(self.timeline.current.items())}
                if self.executor is not None:
                    snapshot["active"] = list(self.executor.active.values())
                with contextlib.suppress(Exception):
                    self.progress(snapshot)
            await asyncio.sleep(limits.progress_interval_s)  # display refresh period

    # --- the phases ---------------------------------------------------------------------------------

    async def execute(self) -> None:
        """Every phase; a phase that fails ends the run with verdict ERROR, and the cluster is always stopped."""
        if self.scenario.needs_faultfs:
            reason = unavailable_reason()
            if reason is not None:  # never a silent pass: the run is SKIP and says why
                self.result.verdict = "SKIP"
                self.result.error = f"skipped: this scenario needs the fault file system (FUSE): {reason}"
                return
        try:
            self.progress_task = asyncio.create_task(self._report_progress())
            workload = await self._set_up()
            timeline, executor = await self._run_under_faults(workload)
            converged = await self._heal()
            if converged is not None:
                await self._drain(workload, converged)
            else:
                await self._stop_reading(workload)
            await self._check(workload, timeline, executor)
        except Exception as exc:  # noqa: BLE001 - a run that breaks is reported, the matrix goes on
            log.exception("run %s acks=%s failed", self.scenario.name, self.acks)
            self.result.error = f"{type(exc).__name__}: {exc}"
            (self.run_dir / "error.txt").write_text(traceback.format_exc())
            self.result.verdict = "ERROR"
        finally:
            await self._tear_down()

    async def _set_up(self) -> Workload:
        """Cluster started with its wiring verified, the topic created, every partition led."""
        harness = self.harness
        await asyncio.to_thread(harness.start)
        await asyncio.to_thread(harness.wait_ready, limits.broker_ready_deadline_s)
        wiring = await asyncio.to_thread(harness.verify_wiring)
        self.result.stats["wiring"] = wiring
        self.status["phase"] = "setup"
        self.workload = workload = Workload(self.config, harness.client_urls, self.clock,
                                            kafka_bootstrap=harness.kafka_bootstrap)
        await workload.create_topic()
        await asyncio.to_thread(harness.wait_converged, [self.config.topic],
                                timeout_s=limits.topic_converge_deadline_s)
        return workload

    async def _run_under_faults(self, workload: Workload) -> tuple[LeaderTimeline, NemesisExecutor]:
        """t = 0: the leader timeline, the nemesis and the consumer start; the producers run for the duration."""
        self.t0 = time.monotonic()
        self.status["phase"] = "running"
        self.timeline = timeline = LeaderTimeline(self.harness, self.config.topic, self.clock)
        self.executor = executor = NemesisExecutor(self.harness, self.result.schedule, self.config.topic,
                                                   self.clock)
        self.tasks = [asyncio.create_task(timeline.run(self.stop_polling), name="chaos-timeline"),
                      asyncio.create_task(executor.run(self.t0), name="chaos-nemesis")]
        self.tasks.append(asyncio.create_task(workload.run_consumer(), name="chaos-consumer"))
        # Consumer-group members crashing and rejoining under the same faults (chaos/group_workload.py). Not in
        # the scenarios that time placement (heal, balance, drain of the chaos topic): the group-state topic's
        # own partitions would be moved too, and the controller balances all topics together, so the chaos
        # topic alone need not end within one replica per broker.
        if not self._measures_placement():
            self.group = GroupWorkload(self.harness.client_urls, self.config.topic, seed=self.config.seed)
            self.tasks.append(asyncio.create_task(self.group.run(self.group_stop), name="chaos-group"))
        await workload.run_producers(self.settings.duration_s)
        return timeline, executor

    async def _heal(self) -> dict[str, Any] | None:
        """The nemesis finishes (bounded), everything is healed, and the cluster converges (bounded)."""
        self.status["phase"] = "healing"
        nemesis_task = self.tasks[1]
        if not nemesis_task.done():
            try:
                async with asyncio.timeout(limits.nemesis_finish_deadline_s):
                    await asyncio.shield(nemesis_task)
            except TimeoutError:
                nemesis_task.cancel()
        await asyncio.to_thread(self.harness.heal)
        goal = PlacementGoal(self.config.topic, self.config.partitions, self.config.replication_factor)
        try:
            converged: dict[str, Any] = await asyncio.to_thread(
                self.harness.wait_converged, [self.config.topic], timeout_s=self.settings.converge_timeout_s,
                placement=goal)
        except (TimeoutError, BrokerExited) as exc:
            allowed = self._loss_allowed()
            if allowed is not None and isinstance(exc, TimeoutError) and "is not in the metadata" in str(exc):
                # Without fsync a power cut of every broker can take the cluster's metadata, the topic with it:
                # nothing is left to drain, so every acknowledged send counts as lost (expected here).
                self.result.extra_findings.append({"kind": "topic_lost", "expected": True, "count": 1,
                                                   "explanation": f"{allowed}; the cut took the cluster metadata "
                                                                  f"and the topic with it ({exc})"})
                self.result.stats["drain"] = "skipped: the topic is gone"
                return None
            self.result.extra_findings.append({"kind": "no_convergence", "expected": False, "count": 1,
                                               "explanation": f"after healing: {exc}"})
            raise
        if self.timeline is not None:  # the converged placement, in case the last poll came just before it
            bodies = await asyncio.to_thread(self.harness.live_metadata)
            self.timeline.record_placement(bodies, self.clock())
        return converged

    async def _stop_reading(self, workload: Workload) -> None:
        """The consumer (bounded) and the metadata poller stop."""
        workload.stop_consumer()
        self.group_stop.set()  # no more churn; the members keep consuming until _check's settle
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limits.consumer_stop_deadline_s):
                await asyncio.gather(*self.tasks[2:], return_exceptions=True)
        self.stop_polling.set()

    async def _drain(self, workload: Workload, converged: dict[str, Any]) -> None:
        """The consumer and the timeline stop; every partition is read from its leader and every replica."""
        self.status["phase"] = "draining"
        await self._stop_reading(workload)
        harness, topic = self.harness, self.config.topic
        leaders = {int(v["partition"]): int(v["leader"]) for v in converged.values()}

        def leader_url(partition: int) -> str:
            claims = harness.leader_claims(topic).get(partition)
            if claims:
                leaders[partition] = max(claims, key=lambda c: c[1])[0]
            return harness.direct_url(leaders[partition])

        # Every final replica of every partition is read back directly (fetch with replica=any, docs/api.md
        # "Fetch"): with a replication factor below the broker count that is a subset of the brokers.
        hosts = {int(v["partition"]): [int(n) for n in v["replicas"]] for v in converged.values()}
        replicas = {n: harness.direct_url(n) for n in harness.node_ids if n not in harness.retired}
        self.result.stats["drain"] = await asyncio.to_thread(workload.drain, leader_url, replicas, hosts=hosts)
        self.result.stats["converged"] = {k: {"leader": v["leader"], "term": v["term"],
                                              "high_watermark": v["high_watermark"]} for k, v in converged.items()}

    async def _check(self, workload: Workload, timeline: LeaderTimeline, executor: NemesisExecutor) -> None:
        """The history is saved and judged; failovers are timed; the verdict is the checker's."""
        result = self.result
        self.status["phase"] = "checking"
        history = workload.build()
        (self.run_dir / "history.json").write_text(history.dumps())
        if self.group is not None:
            final = {(r.partition, r.offset, r.value) for r in history.reads if r.topic == self.config.topic}
            await self.group.settle(final, limits.group_settle_deadline_s)
            result.stats["group"] = self.group.summary()
            result.extra_findings += self.group.findings(final)
        checked = await asyncio.to_thread(check, history, acks=self.acks, majority_alive=True,
                                          loss_allowed=self._loss_allowed())
        result.check = checked
        result.failovers = compute_failovers(executor.probes, history, timeline.changes,
                                             reports_name_leader=self.config.client != "kafka")
        result.placement = placement_times(timeline.placement, self._permanent_events(),
                                           replication_factor=self.config.replication_factor)
        result.stats["lost_by_ack"] = lost_by_ack(history)
        if self.scenario.hostile:
            windows = [(step.at_s * 1000.0, step.end_s * 1000.0) for step in result.schedule if step.kind == "hostile"]
            result.stats["hostile_latency"] = send_latency(history, windows)
        impossible = lost_before_a_kept_record(history, ("0", "1", "all"))
        if impossible:
            result.stats["lost_before_a_kept_record"] = impossible[: limits.kept_record_rows_max]
            result.extra_findings.append(_kept_record_finding(impossible, self.acks))
        result.verdict = checked.verdict

    def _measures_placement(self) -> bool:
        return any(step.kind in ("kill-for-good", "add-broker", "drain") for step in self.result.schedule)

    def _loss_allowed(self) -> str | None:
        """Why acknowledged writes may be lost at every ack level in this run, or None (see chaos/checker.py)."""
        durability = self.settings.durability
        if self.scenario.power_loss and durability != "always":
            return (f"power cut with durability={durability}: brokers acknowledge before they fsync, so what the "
                    "cut takes is outside the promise (only durability=always survives power loss)")
        return None

    def _permanent_events(self) -> list[dict[str, Any]]:
        """kill-for-good, add-broker and drain as they happened (run clock), for placement_times."""
        rows = []
        for event in self.harness.events:
            if event.action in ("kill-for-good", "add-broker", "drain") and event.target.startswith("n"):
                at = event.started_mono_s or event.mono_s
                rows.append({"action": event.action, "node": int(event.target[1:]),
                             "t_ms": (at - self.t0) * 1000.0})
        return rows

    async def _tear_down(self) -> None:
        """Always: stop sending and polling, cancel the run's tasks, stop the cluster and the progress display."""
        self.stop_polling.set()
        if self.workload is not None:
            self.workload.stop()
            self.workload.stop_consumer()
        self.group_stop.set()
        if self.group is not None:
            await self.group.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.status["phase"] = "stopping"
        if self.harness.mounts:
            self._final_disks = await asyncio.to_thread(self.harness.disk_status)
        await asyncio.to_thread(self.harness.stop)
        if self.progress_task is not None:
            self.progress_task.cancel()
            await asyncio.gather(self.progress_task, return_exceptions=True)

    # --- the result ---------------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """The runner's own findings, the timeline and the statistics added to the result; run.json written."""
        result = self.result
        if self.timeline is not None:
            result.leader_changes = self.timeline.changes
        if self.timeline is not None:
            result.stats["rss_max_bytes"] = dict(sorted(self.timeline.rss_max_bytes.items()))
            result.stats["rss_samples"] = self.timeline.rss_samples
        result.extra_findings += self._crash_findings() + self._two_leader_findings() + self._nemesis_findings()
        if self.harness.mounts and result.verdict != "SKIP":
            result.extra_findings += storage_fault_findings(
                {n: node.log_path for n, node in self.harness.cluster.nodes.items()})
        if self.scenario.hostile and result.verdict != "SKIP":
            result.stats["hostile"] = self.harness.hostile_reports
            result.extra_findings += hostile_findings(self.harness.hostile_reports, result.stats)
        if any(not f["expected"] for f in result.extra_findings) and result.verdict == "PASS":
            result.verdict = "FAIL"
        rows = [_event_row(e, self.t0) for e in self.harness.events]
        if self.executor is not None:
            rows += [{**r, "type": "resolve"} for r in self.executor.resolutions]
        rows += [{**c, "type": "leader"} for c in result.leader_changes]
        result.timeline = sorted(rows, key=lambda r: r["t_ms"])
        if self.workload is not None:
            workload = self.workload
            result.stats.update(counts=dict(workload.counts), errors=dict(workload.errors), polled=workload.polled,
                                poll_errors=dict(workload.poll_errors))
        if self.timeline is not None:
            result.stats["metadata_polls"] = self.timeline.polls
        if self.harness.mounts:
            result.stats["disks"] = self._disk_stats()
        result.wall_s = time.monotonic() - self.wall_start
        (self.run_dir / "run.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
        if self.progress is not None:
            with contextlib.suppress(Exception):
                self.progress({**self.status, "phase": "done", "verdict": result.verdict, "result": result})
        return result

    def _disk_stats(self) -> dict[str, Any]:
        """What the disk faults did: per power cut, what each broker lost; faults injected per broker."""
        cuts = [{"t_ms": round((e.mono_s - self.t0) * 1000, 1), "nodes": e.detail.get("nodes"),
                 "lost": e.detail.get("lost")} for e in self.harness.events if e.action == "power-loss"]
        injected = {node: sum((status.get("injected") or {}).values()) for node, status in self._final_disks.items()}
        return {"power_cuts": cuts, "faults_injected": injected}

    def _crash_findings(self) -> list[dict[str, Any]]:
        found = []
        for crash in self.harness.crashes:
            tail = " | ".join(line.strip()
                              for line in crash["log_tail"].splitlines()[-limits.crash_finding_log_lines_max:])
            if _stopped_on_disk_error(crash):
                found.append({"kind": "broker_stopped_on_disk_error", "expected": False, "count": 1,
                              "explanation": f"broker {crash['node']} exited (code {crash['returncode']}) on a "
                                             f"STORAGE_ERROR during the {crash['disk_fault']} fault: a replica whose "
                                             "disk refuses writes must leave its Raft group and the broker stay up "
                                             f"(see {crash['log']}): {tail}"})
                continue
            found.append({"kind": "broker_crashed", "expected": False, "count": 1,
                          "explanation": f"broker {crash['node']} exited on its own with code "
                                         f"{crash['returncode']} (see {crash['log']}): {tail}"})
        return found

    def _two_leader_findings(self) -> list[dict[str, Any]]:
        violations = self.timeline.violations if self.timeline is not None else []
        return [{"kind": "two_leaders_in_term", "expected": False, "count": 1,
                 "explanation": f"partition {violation['partition']}: brokers {violation['leaders']} all claimed "
                                f"leadership in term {violation['term']} (Raft allows one leader per term)"}
                for violation in violations]

    def _nemesis_findings(self) -> list[dict[str, Any]]:
        errors = self.executor.errors if self.executor is not None else []
        return [{"kind": "nemesis_error", "expected": True, "count": 1,
                 "explanation": f"step {error['step']} {error['action']} at {error['t_ms']} ms: {error['error']}"}
                for error in errors]


def send_latency(history: History, windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Latency (ms, start to answer) of the ok sends that started inside ``windows``: count, p50, p99, max."""
    latencies = sorted(op.end_ms - op.start_ms for op in history.sends
                       if op.outcome == "ok" and any(low <= op.start_ms < high for low, high in windows))
    if not latencies:
        return {"sends": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def percentile(fraction: float) -> float:
        return round(latencies[max(0, math.ceil(fraction * len(latencies)) - 1)], 1)

    return {"sends": len(latencies), "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
            "max_ms": round(latencies[-1], 1)}


def hostile_findings(reports: list[dict[str, Any]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The hostile-neighbour verdict (cluster/limits.py "hostile neighbour"): what it threw, counted per class
    (informational); a garbage peer connection the broker kept, a producer p99 over the bound, a broker's
    memory over the bound, or a neighbour that did not run are failures."""
    found: list[dict[str, Any]] = []
    if not reports or any("error" in report for report in reports):
        errors = [report.get("error") for report in reports] or ["it never ran"]
        return [{"kind": "hostile_neighbour_failed", "expected": False, "count": 1,
                 "explanation": f"the hostile neighbour did not report: {errors}"}]
    totals: dict[str, dict[str, int]] = {}
    for report in reports:
        for kind, outcomes in (report.get("classes") or {}).items():
            for outcome, count in outcomes.items():
                totals.setdefault(kind, {})[outcome] = totals.setdefault(kind, {}).get(outcome, 0) + count
    stats["hostile_totals"] = totals
    shown = "; ".join(f"{kind}: " + ", ".join(f"{o} {c}" for o, c in sorted(outcomes.items()))
                      for kind, outcomes in sorted(totals.items()))
    found.append({"kind": "hostile_neighbour", "expected": True, "count": sum(sum(v.values()) for v in totals.values()),
                  "explanation": f"hostile cases thrown at the cluster, per class and outcome: {shown}"})
    held = totals.get("peer_garbage", {}).get("held", 0)
    if held:
        found.append({"kind": "hostile_peer_connection_held", "expected": False, "count": held,
                      "explanation": f"{held} peer connections sending garbage were still open "
                                     f"{cluster_limits.hostile_peer_wait_s:g} s later (the handshake deadline is "
                                     f"{cluster_limits.peer_handshake_timeout_s:g} s)"})
    latency = stats.get("hostile_latency") or {}
    p99 = latency.get("p99_ms")
    if p99 is not None and p99 > cluster_limits.hostile_producer_p99_ms_max:
        found.append({"kind": "producer_p99_over_bound", "expected": False, "count": 1,
                      "explanation": f"well-behaved producers' p99 was {p99:.0f} ms while the neighbour ran "
                                     f"(bound {cluster_limits.hostile_producer_p99_ms_max:.0f} ms): {latency}"})
    rss = stats.get("rss_max_bytes") or {}
    over = {node: value for node, value in rss.items() if value > cluster_limits.hostile_broker_rss_bytes_max}
    if over:
        found.append({"kind": "broker_rss_over_bound", "expected": False, "count": len(over),
                      "explanation": f"brokers' resident memory over {cluster_limits.hostile_broker_rss_bytes_max} "
                                     f"bytes: {over}"})
    return found


# The broker's exit code when its replication thread fails (node/replication.py).
_REPLICATION_STOPPED_EXIT = 70
# What node/replication.py logs when a replica leaves its group on a storage fault, and when it rejoins.
_FENCED_LOG = "out of the group on broker"
_REJOINED_LOG = "the disk takes writes again"


def storage_fault_findings(logs: dict[int, Path]) -> list[dict[str, Any]]:
    """How the brokers met the disk faults, from their logs (informational): replicas taken out of their Raft
    groups (they refuse writes with STORAGE_ERROR and hand leadership over) and brought back once the disk
    took writes again. A replica still out at the end would have kept the run from converging."""
    fenced: dict[int, int] = {}
    rejoined: dict[int, int] = {}
    for node, path in sorted(logs.items()):
        try:
            with open(path, errors="replace") as stream:
                for line in stream:
                    if _FENCED_LOG in line:
                        fenced[node] = fenced.get(node, 0) + 1
                    elif _REJOINED_LOG in line:
                        rejoined[node] = rejoined.get(node, 0) + 1
        except OSError:
            continue
    if not fenced:
        return []
    shown = ", ".join(f"broker {node}: {count} out, {rejoined.get(node, 0)} back" for node, count in fenced.items())
    return [{"kind": "replicas_out_on_storage_fault", "expected": True, "count": sum(fenced.values()),
             "explanation": f"replicas that left their Raft group when their disk refused a write or fsync (they "
                            f"answered STORAGE_ERROR, handed leadership over, acknowledged nothing unsynced) and "
                            f"rejoined once it took writes again: {shown}"}]


def _stopped_on_disk_error(crash: dict[str, Any]) -> bool:
    """The broker exited with the replication thread's code, naming a STORAGE_ERROR, while a disk fault (ENOSPC,
    EIO) was active on it. It should not: such a replica leaves its group and the broker stays up."""
    return (crash.get("disk_fault") in ("disk-full", "disk-errors") and crash["returncode"] == _REPLICATION_STOPPED_EXIT
            and "STORAGE_ERROR" in crash["log_tail"])


def _kept_record_finding(impossible: list[dict[str, Any]], acks: str) -> dict[str, Any]:
    """The finding for acknowledged sends lost although a later send of the same leader and term survived."""
    idempotent = sum(1 for row in impossible if row["idempotent"])
    first = impossible[0]
    weak = " (acks=0: an ok only means queued at the leader, so this is a strong hint, not proof)"
    return {
        "kind": "lost_before_a_kept_record", "expected": acks == "0", "count": len(impossible),
        "explanation": (
            f"{len(impossible)} acknowledged sends ({idempotent} from idempotent producers) are missing "
            "although a later send acknowledged by the same leader in the same term survived: not failover "
            "truncation (a leader only appends within a term), so they were committed and then not stored"
            f"{weak if acks == '0' else ''}. E.g. "
            f"{first['value']!r} acked by broker {first['leader']} in term {first['term']} on partition "
            f"{first['partition']} at {first['acked_ms'] / 1000:.2f} s, while {first['witness_value']!r} "
            f"(started {first['witness_started_ms'] / 1000:.2f} s, same leader and term) is in the log")}


# --- the matrix -----------------------------------------------------------------------------------


async def run_matrix(scenarios: Sequence[Scenario], acks_levels: Sequence[str], settings: RunSettings,
                     report_dir: Path, progress: ProgressCallback | None = None,
                     on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every scenario at every ack level, one fresh cluster per run, the report rewritten after each run."""
    from raftmq.chaos.report import write_reports

    await asyncio.to_thread(report_dir.mkdir, parents=True, exist_ok=True)
    schedules = {s.name: generate(s, duration_s=settings.duration_s, seed=settings.seed,
                                  nodes=settings.nodes or s.nodes)
                 for s in scenarios}  # fail fast on a duration too short for any scenario
    del schedules
    results: list[RunResult] = []
    started = time.time()
    for scenario in scenarios:
        for acks in acks_levels:
            result = await run_once(scenario, acks, settings, report_dir, progress)
            results.append(result)
            write_reports(report_dir, scenarios, acks_levels, settings, results, started_at=started)
            if on_result is not None:
                on_result(result)
    return results
