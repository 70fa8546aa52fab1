"""The nemesis schedule: a scenario + a run duration + a seed -> the list of timed fault steps.

Pure: no I/O, no clock; the only randomness is ``random.Random(seed)``, so the same scenario, duration, node
count and seed always give the same schedule (the runner executes it once per ack level).

A ``Step`` starts at ``at_s`` seconds after the workload starts and is undone ``duration_s`` later. Steps
started together (one "group": e.g. the faults of a ``pick = "all"`` scenario or a ``combine``d pair) share
``group`` and ``pick``. Selectors that can be drawn from the seed are resolved here ("random" -> "node:2",
"majority" -> "nodes:1,3", "random-link" -> "link:1-3"); selectors that depend on the live cluster
("leader", "follower", "leader-link") are left for the runner, which resolves them when the step starts and
logs the resolution. Where a live choice is needed (which follower, which extra nodes join the leader on the
minority side) the runner uses ``pick``, a number in [0, 1) drawn here, so it too is reproducible given the
same live state.

Rules: at most one group of faults is active at a time (the next group starts at least ``heal_gap`` after
the previous one ended; steps inside a group may overlap), no fault is active in the last ``tail`` seconds,
and a run too short for even one group is refused with the minimum duration in the message.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final

from raftmq.chaos import limits
from raftmq.chaos.scenario import FaultSpec, Scenario, ScenarioError, Span

# Step kinds whose "leader" target takes the leader away from its peers: the runner measures failover for them.
LEADER_FAULT_KINDS: Final = frozenset({"isolate", "partition", "one-way", "kill", "pause", "restart",
                                       "kill-for-good", "power-loss"})


@dataclass(frozen=True)
class Step:
    index: int
    group: int
    at_s: float
    duration_s: float
    kind: str
    target: str
    partition: int
    params: tuple[tuple[str, Any], ...]
    pick: float

    @property
    def end_s(self) -> float:
        return round(self.at_s + self.duration_s, 3)

    @property
    def live_target(self) -> bool:
        return self.target in ("leader", "follower", "leader-link")

    @property
    def takes_leader_away(self) -> bool:
        """The fault cuts off (or stops) the current leader of ``partition``: a new leader must take over."""
        return self.target == "leader" and self.kind in LEADER_FAULT_KINDS

    def param(self, name: str, default: Any = None) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        return default

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.params)
        where = f" of partition {self.partition}" if self.live_target else ""
        return f"{self.kind} {self.target}{where}{extra} for {self.duration_s:g} s"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "group": self.group, "at_s": self.at_s, "duration_s": self.duration_s,
                "end_s": self.end_s, "kind": self.kind, "target": self.target, "partition": self.partition,
                "params": dict(self.params), "pick": self.pick, "description": self.describe()}


def _draw(rng: random.Random, span: Span) -> float:
    low, high = span
    return low if low == high else rng.uniform(low, high)


def _resolve_seeded(fault: FaultSpec, rng: random.Random, nodes: int, label: str) -> str:
    """Resolve the selectors that do not depend on the live cluster; check node and link ids exist."""
    target = fault.target
    ids = list(range(1, nodes + 1))
    if target.startswith("node:"):
        node = int(target[5:])
        if node > nodes:
            raise ScenarioError(f"{label}: target {target!r} names a node the {nodes}-node cluster does not have")
        return target
    if target.startswith("link:"):
        a, b = (int(x) for x in target[5:].split("-"))
        if b > nodes:
            raise ScenarioError(f"{label}: target {target!r} names a node the {nodes}-node cluster does not have")
        return target
    if target == "random":
        return f"node:{rng.choice(ids)}"
    if target == "random-link":
        pairs = [(a, b) for a in ids for b in ids if a < b]
        a, b = rng.choice(pairs)
        return f"link:{a}-{b}"
    if target in ("minority", "majority"):
        size = (nodes - 1) // 2 if target == "minority" else nodes // 2 + 1
        chosen = sorted(rng.sample(ids, max(1, size)))
        return "nodes:" + ",".join(str(n) for n in chosen)
    return target  # leader, follower, leader-link, all


def generate(scenario: Scenario, *, duration_s: float, seed: int,
             nodes: int = limits.cluster_nodes_default) -> list[Step]:
    """The fault schedule of one run of ``scenario`` (see the module docstring)."""
    if nodes < 1:
        raise ScenarioError(f"{scenario.name}: a cluster needs at least one node, got {nodes}")
    single_node_kinds = ("kill", "pause", "restart", "rolling-restart", "power-loss", "disk-full", "disk-errors",
                         "slow-disk", "hostile")
    network = any(f.kind not in single_node_kinds for f in scenario.faults)
    if network and nodes < 2:
        raise ScenarioError(f"{scenario.name}: network faults need at least two nodes")
    if duration_s <= 0 or not math.isfinite(duration_s):
        raise ScenarioError(f"{scenario.name}: the run duration must be > 0 s, got {duration_s!r}")
    rng = random.Random(seed)
    sched = scenario.schedule
    limit = duration_s - sched.tail
    steps: list[Step] = []
    nominal = sched.start
    previous_end: float | None = None
    group = 0
    while len(steps) < limits.schedule_steps_max:
        jitter = rng.uniform(-sched.jitter, sched.jitter) if sched.jitter > 0 else 0.0
        at = nominal + jitter
        if previous_end is not None:
            at = max(at, previous_end + sched.heal_gap)
        at = round(max(at, 0.0), 3)
        duration = round(_draw(rng, sched.fault_duration), 3)
        pick = round(rng.random(), 6)
        faults = _choose(scenario, rng, group)
        expanded: list[Step] = []
        for fault in faults:
            expanded.extend(_expand(scenario, fault, rng, nodes, at=at, duration=duration, pick=pick, group=group,
                                    first_index=len(steps) + len(expanded)))
        end = max(step.end_s for step in expanded)
        if end > limit:
            if not steps:
                needed = math.ceil(end + sched.tail)
                raise ScenarioError(
                    f"{scenario.name}: a {duration_s:g} s run is too short: its first fault lasts until {end:.1f} s "
                    f"and the last {sched.tail:g} s must stay fault-free; use a duration of at least {needed} s")
            break
        steps.extend(expanded)
        previous_end = end
        group += 1
        nominal += _draw(rng, sched.interval)
    return steps


def _choose(scenario: Scenario, rng: random.Random, group: int) -> list[FaultSpec]:
    sched = scenario.schedule
    faults = list(scenario.faults)
    if sched.pick == "all":
        return faults
    if sched.pick == "cycle":
        return [faults[group % len(faults)]]
    first = rng.choice(faults)
    chosen = [first]
    if sched.combine > 0 and rng.random() < sched.combine:
        others = [f for f in faults if f.kind != first.kind and f.kind != "rolling-restart"]
        if others and first.kind != "rolling-restart":
            chosen.append(rng.choice(others))
    return chosen


def _expand(scenario: Scenario, fault: FaultSpec, rng: random.Random, nodes: int, *, at: float, duration: float,
            pick: float, group: int, first_index: int) -> list[Step]:
    label = f"{scenario.name}: {fault.kind}"
    if fault.kind == "rolling-restart":
        order = list(range(1, nodes + 1))
        rng.shuffle(order)
        settle = float(fault.param("settle_s"))
        return [Step(index=first_index + i, group=group, at_s=round(at + i * (duration + settle), 3),
                     duration_s=duration, kind="restart", target=f"node:{node}", partition=fault.partition,
                     params=(("rolling", True),), pick=pick)
                for i, node in enumerate(order)]
    target = _resolve_seeded(fault, rng, nodes, label)
    return [Step(index=first_index, group=group, at_s=at, duration_s=duration, kind=fault.kind, target=target,
                 partition=fault.partition, params=fault.params, pick=pick)]


def schedule_to_json(steps: list[Step]) -> list[dict[str, Any]]:
    return [step.to_json() for step in steps]


def describe_schedule(steps: list[Step]) -> list[str]:
    return [f"{step.at_s:7.2f} s -> {step.end_s:7.2f} s  {step.describe()}" for step in steps]
