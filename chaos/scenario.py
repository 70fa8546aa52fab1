"""Chaos scenarios as data: the file format, the loader and its validation.

A scenario is one small TOML file in ``chaos/scenarios/`` (shipped with the package). The file name (without
``.toml``) is the scenario's name. ``chaos/nemesis.py`` turns a scenario, a run duration and a seed into the
timed fault schedule; the runner executes that schedule once per ack level.

Format::

    name = "kill-leader"                 # must equal the file name
    description = "SIGKILL the leader of partition 0; ..."   # one or two sentences: what it does, what to expect
    nodes = 3                            # brokers at the start (default 3; `chaos run --nodes` overrides)
    partitions = 3                       # partitions of the workload's topic (default 3)
    replication_factor = 3               # its replication factor (default 3; below `nodes`: a subset per partition)

    [liveness]           # optional: the controller's timings ([controller] of the node config), in ms
    heartbeat_ms = 200
    session_timeout_ms = 1000
    heal_grace_ms = 2000
    moves_max = 2

    [schedule]
    start = 4.0          # s after the workload starts when the first fault begins (before: a quiet warm-up)
    interval = 10.0      # s between the starts of two fault steps: a number, or [min, max] drawn per step
    fault_duration = 4.0 # how long each fault lasts: a number or [min, max] drawn per step
    jitter = 0.5         # each start moves by uniform(-jitter, +jitter) s (default 0)
    heal_gap = 1.0       # at least this many s without faults between two steps (default 1)
    tail = 5.0           # no fault is active during the last `tail` s of the run (recovery inside the run)
    pick = "cycle"       # which [[fault]] a step starts: "cycle" (file order, repeated), "random" (one
                         # drawn per step from the seed) or "all" (every listed fault, together)
    combine = 0.0        # pick = "random" only: probability that a step starts a second, different fault

    [[fault]]            # one or more
    kind = "kill"        # see FAULT_KINDS below
    target = "leader"    # see the target selectors below
    partition = 0        # the partition whose leader/followers "leader"/"follower" refer to (default 0)
    # kind-specific keys, e.g. mode = "blackhole", latency_ms = 200, ...

Fault kinds (keys besides kind/target/partition; defaults in brackets):

* ``isolate``: cut every peer link of the target node. ``mode`` = "refuse" (proxies disabled: connects
  refused, live connections closed) or "blackhole" (``timeout`` toxic 0: connections stay open, bytes are
  dropped) ["refuse"]. Client traffic keeps flowing (Jepsen partitions nodes from each other, not from clients).
* ``partition``: split the cluster in two; the target node is on the minority side (with enough other nodes,
  drawn from the seed, to make a minority of ``(n-1)//2``). ``mode`` as for isolate ["refuse"].
* ``bridge``: the target is the middle node; the link between the two others is cut, the middle one sees both
  (on 3 nodes). ``mode`` ["refuse"].
* ``one-way``: black-hole one direction of every peer link of the target. ``direction`` = "out" (the target's
  bytes to its peers are dropped) or "in" (its peers' bytes to it) ["out"].
* ``cut-link``: cut one peer link (target must be a link selector). ``mode`` ["refuse"].
* ``slow``: ``latency`` toxic on both directions of the target's peer links (or one link). ``latency_ms``
  [200], ``jitter_ms`` [0].
* ``bandwidth``: ``bandwidth`` toxic on both directions of the target's peer links (or one link). ``kb_s`` [64].
* ``reset``: ``reset_peer`` toxic (TCP RST on the first bytes of every connection) on the target's peer
  links (or one link) for the fault's duration.
* ``kill``: SIGKILL the target node(s); restarted when the fault ends.
* ``pause``: SIGSTOP the target node(s); SIGCONT when the fault ends.
* ``restart``: graceful stop (SIGTERM) of the target node(s); started again when the fault ends.
* ``kill-for-good``: SIGKILL the target node and never start it again (not even by the final heal). The
  controller must fence it and, after the heal grace, move its replicas to live brokers.
* ``add-broker``: start a new broker (id = highest + 1, wired through proxies like the others) that stays.
  No target (``"all"``, the default). The controller should rebalance replicas onto it.
* ``drain``: ``POST /v1/brokers/{id}/drain`` for the target node: its replicas are moved off it while it runs.
  Not cancelled when the fault's duration ends (a drain runs to completion).
* ``power-loss``: SIGKILL the target node(s), then the fault file system drops everything they had not
  fsynced (file data, and directory entries whose directory was not fsynced); restarted on what is left when
  the fault ends. ``torn`` = 1 also keeps a random part (up to a page) of each file's unsynced tail [0].
  Needs FUSE (chaos/faultfs/): every broker's data directory is then mounted through the fault file system.
* ``disk-full``: writes, creates and mkdirs on the target's data directory fail with ENOSPC (paths matching
  ``pattern`` ["*"]) until the fault ends. Needs FUSE.
* ``disk-errors``: the operations in ``ops`` (comma-separated: read, write, fsync, create, truncate, rename,
  unlink, mkdir) ["write"] fail with EIO on paths matching ``pattern`` ["*"]. Needs FUSE.
* ``slow-disk``: every fsync on the target's data directory (paths matching ``pattern`` ["*"]) takes
  ``latency_ms`` [200] longer. Needs FUSE.
* ``hostile``: a hostile neighbour (chaos/hostile.py, a separate process) for the fault's duration: random
  bytes at the target's peer port, random and malformed requests at every broker's client port, hundreds of
  idle and slowloris connections, fetches whose answers are never read. The run then also judges the
  well-behaved producers' p99 latency and every broker's memory (bounds in cluster/limits.py).
* ``rolling-restart``: every node in turn (order drawn from the seed): graceful stop for ``fault_duration``,
  start, then ``settle_s`` [4.0] before the next one goes down. Expands into one ``restart`` step per node.

Target selectors: ``"leader"`` (the broker leading ``partition`` when the fault starts, resolved live and
logged), ``"follower"`` (a non-leader replica of ``partition``, resolved live), ``"node:N"`` or an integer N,
``"random"`` (one node drawn from the seed), ``"minority"`` / ``"majority"`` / ``"all"`` (node sets; the
first two drawn from the seed; process faults only), ``"link:A-B"``, ``"random-link"`` (drawn from the seed)
and ``"leader-link"`` (the link between the leader and a follower, resolved live) for link faults.

Errors are ``ScenarioError`` with a sentence naming the file and the key (``kill-leader.toml: [[fault]] 1:
target: ...``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from raftmq.node import Liveness

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"

# kind -> {param: (type, default)}
FAULT_KINDS: Final[dict[str, dict[str, tuple[type, Any]]]] = {
    "isolate": {"mode": (str, "refuse")},
    "partition": {"mode": (str, "refuse")},
    "bridge": {"mode": (str, "refuse")},
    "one-way": {"direction": (str, "out")},
    "cut-link": {"mode": (str, "refuse")},
    "slow": {"latency_ms": (int, 200), "jitter_ms": (int, 0)},
    "bandwidth": {"kb_s": (int, 64)},
    "reset": {},
    "kill": {},
    "pause": {},
    "restart": {},
    "rolling-restart": {"settle_s": (float, 4.0)},
    "kill-for-good": {},
    "add-broker": {},
    "drain": {},
    "power-loss": {"torn": (int, 0)},
    "disk-full": {"pattern": (str, "*")},
    "disk-errors": {"ops": (str, "write"), "pattern": (str, "*")},
    "slow-disk": {"latency_ms": (int, 200), "pattern": (str, "*")},
    "hostile": {},
}
NETWORK_KINDS: Final = frozenset({"isolate", "partition", "bridge", "one-way", "cut-link", "slow", "bandwidth",
                                  "reset"})
PROCESS_KINDS: Final = frozenset({"kill", "pause", "restart", "rolling-restart", "kill-for-good", "add-broker",
                                  "power-loss"})
# Kinds that act on a broker's disk through the fault file system (chaos/faultfs/): a scenario with one of
# them mounts every data directory through it, and is skipped (with the reason) where FUSE is unavailable.
DISK_KINDS: Final = frozenset({"power-loss", "disk-full", "disk-errors", "slow-disk"})
# The operations a disk-errors fault may name (chaos/faultfs/model.py RULE_OPS).
DISK_OPS: Final = ("read", "write", "fsync", "create", "truncate", "rename", "unlink", "mkdir")
# Kinds whose effect outlasts the step: the runner never undoes them (the cluster must heal around them).
PERMANENT_KINDS: Final = frozenset({"kill-for-good", "add-broker", "drain"})
# Kinds whose target is one node (resolved live or from the seed).
_ONE_NODE_KINDS: Final = frozenset({"isolate", "partition", "bridge", "one-way", "kill-for-good", "drain",
                                    "disk-full", "disk-errors", "slow-disk", "hostile"})
# Kinds that take a node or a link.
_NODE_OR_LINK_KINDS: Final = frozenset({"slow", "bandwidth", "reset"})
_MODES: Final = ("refuse", "blackhole")
_DIRECTIONS: Final = ("out", "in")
_PICKS: Final = ("cycle", "random", "all")
# Used with fullmatch ("$" would also accept a trailing newline).
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_NODE_RE: Final = re.compile(r"node:([1-9][0-9]{0,3})")
_LINK_RE: Final = re.compile(r"link:([1-9][0-9]{0,3})-([1-9][0-9]{0,3})")

_TOP_KEYS: Final = {"name", "description", "schedule", "fault", "nodes", "partitions", "replication_factor",
                    "liveness"}
_LIVENESS_KEYS: Final = ("heartbeat_ms", "session_timeout_ms", "heal_grace_ms", "moves_max")
# A scenario's cluster and topic sizes: small enough for one machine.
_NODES_MAX: Final = 9
_PARTITIONS_MAX: Final = 64
_SCHEDULE_KEYS: Final = {"start", "interval", "fault_duration", "jitter", "heal_gap", "tail", "pick", "combine"}
_FAULT_COMMON_KEYS: Final = {"kind", "target", "partition"}


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid; the message names the file and the key."""


Span = tuple[float, float]  # [min, max] seconds; a fixed number is (x, x)


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    target: str  # normalised: "leader", "follower", "node:N", "random", "minority", "majority", "all",
    #               "link:A-B", "random-link", "leader-link"
    partition: int = 0
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        return FAULT_KINDS[self.kind][name][1]

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.params)
        where = f" (partition {self.partition})" if self.target in ("leader", "follower", "leader-link") else ""
        return f"{self.kind} {self.target}{where}{extra}"


@dataclass(frozen=True)
class Schedule:
    start: float = 4.0
    interval: Span = (10.0, 10.0)
    fault_duration: Span = (4.0, 4.0)
    jitter: float = 0.0
    heal_gap: float = 1.0
    tail: float = 5.0
    pick: str = "cycle"
    combine: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    schedule: Schedule
    faults: tuple[FaultSpec, ...]
    path: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    nodes: int = 3
    partitions: int = 3
    replication_factor: int = 3
    # The [liveness] table as given (keys of _LIVENESS_KEYS, milliseconds / a count); empty: node defaults.
    liveness: tuple[tuple[str, int], ...] = ()

    @property
    def needs_faultfs(self) -> bool:
        """Some fault acts on a disk: the brokers' data directories go through the fault file system."""
        return any(f.kind in DISK_KINDS for f in self.faults)

    @property
    def power_loss(self) -> bool:
        """Some fault cuts a broker's power (its unsynced writes are lost)."""
        return any(f.kind == "power-loss" for f in self.faults)

    @property
    def hostile(self) -> bool:
        """A hostile neighbour runs during the scenario (its latency and memory bounds are judged)."""
        return any(f.kind == "hostile" for f in self.faults)

    @property
    def permanent(self) -> bool:
        """Some fault changes the cluster for good: the run must wait for placement to converge."""
        return any(f.kind in PERMANENT_KINDS for f in self.faults)

    def fault_summary(self) -> str:
        kinds = list(dict.fromkeys(f.kind for f in self.faults))
        return ", ".join(kinds)


# --- loading ------------------------------------------------------------------------------------------


def scenario_names() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _shipped_files())


def _shipped_files() -> list[Path]:
    try:
        root = resources.files("chaos").joinpath("scenarios")
        found = [Path(str(item)) for item in root.iterdir() if item.name.endswith(".toml")]
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        found = []
    if not found and SCENARIO_DIR.is_dir():
        found = sorted(SCENARIO_DIR.glob("*.toml"))
    return sorted(found)


def load_all() -> list[Scenario]:
    return [load(name) for name in scenario_names()]


def load(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name, or any scenario file by path."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.parent != Path("."):
        path = text_path
    else:
        file_name = f"{name_or_path}.toml"
        path = next((p for p in _shipped_files() if p.name == file_name), SCENARIO_DIR / file_name)
        if not path.exists():
            known = ", ".join(scenario_names()) or "(none)"
            raise ScenarioError(f"unknown scenario {str(name_or_path)!r}; known: {known}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse(raw.decode("utf-8", errors="replace"), source=path)


def parse(text: str, *, source: str | Path = "<scenario>") -> Scenario:
    """Parse and validate one scenario's TOML text. ``source`` names it in errors (a path or a label)."""
    label = Path(source).name if isinstance(source, Path) else str(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{label}: not valid TOML: {exc}") from None
    return _validate(doc, label, source)


class _Ctx:
    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.label}: {key}: {message}")


def _number(ctx: _Ctx, key: str, value: Any, *, minimum: float = 0.0, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.fail(key, f"must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if number < minimum or (not allow_zero and number == 0):
        bound = f"> {minimum:g}" if not allow_zero else f">= {minimum:g}"
        raise ctx.fail(key, f"must be {bound}, got {value!r}")
    return number


def _span(ctx: _Ctx, key: str, value: Any) -> Span:
    if isinstance(value, list):
        if len(value) != 2:
            raise ctx.fail(key, f"a range must be [min, max], got {value!r}")
        low = _number(ctx, key, value[0], allow_zero=False)
        high = _number(ctx, key, value[1], allow_zero=False)
        if low > high:
            raise ctx.fail(key, f"range [min, max] has min > max: {value!r}")
        return (low, high)
    number = _number(ctx, key, value, allow_zero=False)
    return (number, number)


def _validate(doc: dict[str, Any], label: str, source: str | Path) -> Scenario:
    ctx = _Ctx(label)
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ctx.fail(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ctx.fail("name", f"must be a lower-case name like 'kill-leader', got {name!r}")
    if isinstance(source, Path) and source.suffix == ".toml" and source.stem != name:
        raise ctx.fail("name", f"{name!r} does not match the file name {source.stem!r}")
    description = doc.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ctx.fail("description", "must be a non-empty string saying what the scenario does")
    schedule = _schedule(ctx, doc.get("schedule", {}))
    raw_faults = doc.get("fault")
    if not isinstance(raw_faults, list) or not raw_faults:
        raise ctx.fail("[[fault]]", "at least one [[fault]] table is required")
    faults = tuple(_fault(ctx, index + 1, item) for index, item in enumerate(raw_faults))
    if schedule.combine > 0 and schedule.pick != "random":
        raise ctx.fail("[schedule].combine", "only applies with pick = \"random\"")
    if schedule.combine > 0 and len({f.kind for f in faults}) < 2:
        raise ctx.fail("[schedule].combine", "needs at least two different fault kinds to combine")
    rolling = [f for f in faults if f.kind == "rolling-restart"]
    if rolling and (len(faults) > 1 or schedule.pick == "random"):
        raise ctx.fail("[[fault]]", "a rolling-restart must be the scenario's only fault")
    nodes, partitions, replication_factor = _sizes(ctx, doc)
    return Scenario(name=name, description=" ".join(description.split()), schedule=schedule, faults=faults,
                    path=str(source), nodes=nodes, partitions=partitions, replication_factor=replication_factor,
                    liveness=_liveness(ctx, doc.get("liveness", {})))


def _count(ctx: _Ctx, doc: dict[str, Any], key: str, default: int, maximum: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ctx.fail(key, f"must be an integer from 1 to {maximum}, got {value!r}")
    return value


def _sizes(ctx: _Ctx, doc: dict[str, Any]) -> tuple[int, int, int]:
    nodes = _count(ctx, doc, "nodes", 3, _NODES_MAX)
    partitions = _count(ctx, doc, "partitions", 3, _PARTITIONS_MAX)
    replication_factor = _count(ctx, doc, "replication_factor", 3, _NODES_MAX)
    if replication_factor > nodes:
        raise ctx.fail("replication_factor", f"{replication_factor} is more than the {nodes} nodes")
    return nodes, partitions, replication_factor


def _liveness(ctx: _Ctx, raw: Any) -> tuple[tuple[str, int], ...]:
    """The [liveness] table, checked the way the node checks its [controller] table (node/config.py)."""
    if not isinstance(raw, dict):
        raise ctx.fail("[liveness]", "must be a table")
    unknown = sorted(set(raw) - set(_LIVENESS_KEYS))
    if unknown:
        raise ctx.fail(f"[liveness].{unknown[0]}", f"unknown key (known: {', '.join(_LIVENESS_KEYS)})")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ctx.fail(f"[liveness].{key}", f"must be an integer >= 0, got {value!r}")
    values = tuple((key, raw[key]) for key in _LIVENESS_KEYS if key in raw)
    problems = liveness_of(values).validate()
    if problems:
        raise ctx.fail("[liveness]", "; ".join(problems))
    return values


def liveness_of(values: tuple[tuple[str, int], ...]) -> Liveness:
    """The node's Liveness for a scenario's [liveness] values (missing keys: the node defaults)."""
    given = dict(values)
    defaults = Liveness()

    def seconds(key: str, default_s: float) -> float:
        return given[key] / 1000 if key in given else default_s

    return Liveness(heartbeat_s=seconds("heartbeat_ms", defaults.heartbeat_s),
                    session_timeout_s=seconds("session_timeout_ms", defaults.session_timeout_s),
                    heal_grace_s=seconds("heal_grace_ms", defaults.heal_grace_s),
                    moves_max=int(given.get("moves_max", defaults.moves_max)))


def _schedule(ctx: _Ctx, raw: Any) -> Schedule:
    if not isinstance(raw, dict):
        raise ctx.fail("[schedule]", "must be a table")
    unknown = sorted(set(raw) - _SCHEDULE_KEYS)
    if unknown:
        raise ctx.fail(f"[schedule].{unknown[0]}", f"unknown key (known: {', '.join(sorted(_SCHEDULE_KEYS))})")
    defaults = Schedule()
    values: dict[str, Any] = {}
    for key in ("start", "jitter", "heal_gap", "tail"):
        if key in raw:
            values[key] = _number(ctx, f"[schedule].{key}", raw[key])
    for key in ("interval", "fault_duration"):
        if key in raw:
            values[key] = _span(ctx, f"[schedule].{key}", raw[key])
    if "pick" in raw:
        if raw["pick"] not in _PICKS:
            raise ctx.fail("[schedule].pick", f"must be one of {', '.join(_PICKS)}, got {raw['pick']!r}")
        values["pick"] = raw["pick"]
    if "combine" in raw:
        combine = _number(ctx, "[schedule].combine", raw["combine"])
        if combine > 1:
            raise ctx.fail("[schedule].combine", f"is a probability in [0, 1], got {raw['combine']!r}")
        values["combine"] = combine
    schedule = Schedule(**{**defaults.__dict__, **values})
    if schedule.jitter >= schedule.start and schedule.jitter > 0:
        raise ctx.fail("[schedule].jitter",
                       f"must be below start ({schedule.start:g}) so no fault starts before the run")
    return schedule


def normalize_target(value: Any) -> str | None:
    """The canonical selector string, or None if ``value`` is not a selector."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"node:{value}" if value >= 1 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if re.fullmatch(r"[1-9][0-9]{0,3}", text):
        return f"node:{int(text)}"
    if text in ("leader", "follower", "random", "minority", "majority", "all", "random-link", "leader-link"):
        return text
    if _NODE_RE.fullmatch(text):
        return text
    match = _LINK_RE.fullmatch(text)
    if match:
        a, b = sorted((int(match.group(1)), int(match.group(2))))
        return f"link:{a}-{b}" if a != b else None
    return None


def is_link_target(target: str) -> bool:
    return target.startswith("link:") or target in ("random-link", "leader-link")


def _fault(ctx: _Ctx, number: int, raw: Any) -> FaultSpec:
    where = f"[[fault]] {number}"
    if not isinstance(raw, dict):
        raise ctx.fail(where, "must be a table")
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise ctx.fail(f"{where}: kind", f"must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    allowed = _FAULT_COMMON_KEYS | set(FAULT_KINDS[kind])
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ctx.fail(f"{where}: {unknown[0]}", f"unknown key for kind {kind!r} (known: {', '.join(sorted(allowed))})")
    default_target = "all" if kind in ("rolling-restart", "add-broker") else None
    raw_target = raw.get("target", default_target)
    if raw_target is None:
        raise ctx.fail(f"{where}: target", "is required")
    target = normalize_target(raw_target)
    if target is None:
        raise ctx.fail(f"{where}: target", f"{raw_target!r} is not a selector (leader, follower, node:N, random, "
                                           "minority, majority, all, link:A-B, random-link, leader-link)")
    link = is_link_target(target)
    if kind == "cut-link" and not link:
        raise ctx.fail(f"{where}: target",
                       f"cut-link needs a link selector (link:A-B, random-link, leader-link), got {target!r}")
    if kind in _ONE_NODE_KINDS | PROCESS_KINDS and link:
        raise ctx.fail(f"{where}: target", f"{kind} needs a node selector, got the link selector {target!r}")
    if kind in _ONE_NODE_KINDS and target in ("minority", "majority", "all"):
        raise ctx.fail(f"{where}: target", f"{kind} takes one node (leader, follower, node:N, random), got {target!r}")
    if kind in _NODE_OR_LINK_KINDS and target in ("minority", "majority", "all"):
        raise ctx.fail(f"{where}: target", f"{kind} takes one node or one link, got {target!r}")
    if kind == "rolling-restart" and target != "all":
        raise ctx.fail(f"{where}: target", "rolling-restart always covers every node (target = \"all\")")
    if kind == "add-broker" and target != "all":
        raise ctx.fail(f"{where}: target", "add-broker starts a new broker and takes no target")
    partition = raw.get("partition", 0)
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ctx.fail(f"{where}: partition", f"must be an integer >= 0, got {partition!r}")
    params: list[tuple[str, Any]] = []
    for key, (kind_type, _default) in FAULT_KINDS[kind].items():
        if key not in raw:
            continue
        value = raw[key]
        if kind_type is str:
            value = _string_param(ctx, f"{where}: {key}", key, value)
        elif kind_type is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ctx.fail(f"{where}: {key}", f"must be an integer >= 0, got {value!r}")
            if key == "kb_s" and value == 0:
                raise ctx.fail(f"{where}: {key}", "must be > 0 (0 would mean unlimited)")
            if key == "torn" and value > 1:
                raise ctx.fail(f"{where}: {key}", f"must be 0 or 1, got {value!r}")
        else:
            value = _number(ctx, f"{where}: {key}", value)
        params.append((key, value))
    return FaultSpec(kind=kind, target=target, partition=partition, params=tuple(sorted(params)))


def _string_param(ctx: _Ctx, where: str, key: str, value: Any) -> str:
    """A string parameter checked against what its key allows."""
    if key in ("mode", "direction"):
        choices = _MODES if key == "mode" else _DIRECTIONS
        if value not in choices:
            raise ctx.fail(where, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail(where, f"must be a non-empty string, got {value!r}")
    if key == "ops":
        names = [part.strip() for part in value.split(",")]
        unknown = [name for name in names if name not in DISK_OPS]
        if unknown or not names:
            raise ctx.fail(where, f"names operations from {', '.join(DISK_OPS)} (comma-separated), got {value!r}")
        return ",".join(names)
    return value.strip()
