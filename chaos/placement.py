"""Where the replicas are: convergence of placement after faults that change the cluster for good, and the
heal / balance / drain times measured from the metadata the runner polls.

Pure: no I/O, no clock. Inputs are ``/v1/metadata`` bodies (docs/api.md "Health and metadata") and times in
run-clock milliseconds; ``chaos/runner.py`` and ``chaos/harness.py`` do the polling and waiting.

* Converged placement: every partition of the topic has exactly ``replication_factor`` replicas, none of them
  a broker that is gone for good, no ``target`` (no move running) and nothing in ``moves``.
* Heal time: from a ``kill-for-good`` to the first snapshot where the dead broker hosts nothing and every
  partition is back to the replication factor with no move running.
* Balance time: from an ``add-broker`` to the first snapshot where no move runs and no live broker hosts more
  than one replica more than another (the new one included).
* Drain time: from a drain request to the first snapshot where the drained broker hosts nothing and no move
  involving it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# Broker states (docs/api.md) that count as hosts for balance: fenced, draining and removed brokers do not.
_BALANCE_STATES: Final = frozenset({"alive"})


@dataclass(frozen=True)
class PlacementSnapshot:
    """The topic's placement as one metadata body showed it at ``t_ms`` (run clock)."""

    t_ms: float
    replicas: Mapping[int, tuple[int, ...]]  # partition -> committed replica set
    targets: Mapping[int, tuple[int, ...] | None]  # partition -> target of a running move (None: no move)
    states: Mapping[int, str] = field(default_factory=dict)  # broker -> state ("alive" when not reported)
    moves: int = 0  # entries in the body's "moves" for this topic

    def key(self) -> tuple[Any, ...]:
        """What changed between two snapshots (the time aside): the runner keeps only changes."""
        return (tuple(sorted(self.replicas.items())), tuple(sorted(self.targets.items())),
                tuple(sorted(self.states.items())), self.moves)

    @property
    def moving(self) -> bool:
        return self.moves > 0 or any(t is not None for t in self.targets.values())

    def hosts(self, broker: int) -> bool:
        return any(broker in r for r in self.replicas.values()) or any(
            broker in t for t in self.targets.values() if t is not None)


def snapshot(body: Mapping[str, Any], topic: str, t_ms: float) -> PlacementSnapshot | None:
    """The placement of ``topic`` in one metadata body, or None when the body does not list the topic."""
    for item in body.get("topics") or []:
        if item.get("name") != topic:
            continue
        replicas: dict[int, tuple[int, ...]] = {}
        targets: dict[int, tuple[int, ...] | None] = {}
        for part in item.get("partitions") or []:
            p = int(part["partition"])
            replicas[p] = tuple(int(b) for b in part.get("replicas") or [])
            target = part.get("target")
            targets[p] = tuple(int(b) for b in target) if target else None
        states = {int(b["id"]): str(b.get("state") or "alive") for b in body.get("brokers") or []
                  if type(b.get("id")) is int}
        moves = sum(1 for m in body.get("moves") or [] if m.get("topic") == topic)
        return PlacementSnapshot(t_ms, replicas, targets, states, moves)
    return None


def controller_view(bodies: Mapping[int, Mapping[str, Any] | None]) -> Mapping[str, Any] | None:
    """The body to read placement from: the controller's own when it answered (its metadata is the newest and
    only it fills in ``moves`` progress), else the one that applied the most metadata."""
    answered = {n: b for n, b in bodies.items() if b}
    for n, body in answered.items():
        if body.get("controller_id") == n:
            return body
    if not answered:
        return None
    return max(answered.values(), key=lambda b: int((b.get("metadata") or {}).get("applied_index") or 0))


def placement_problems(snap: PlacementSnapshot, *, partitions: int, replication_factor: int,
                       gone: Iterable[int] = ()) -> list[str]:
    """What keeps the topic's placement from having converged (empty: converged)."""
    problems: list[str] = []
    dead = set(gone)
    missing = sorted(set(range(partitions)) - set(snap.replicas))
    if missing:
        problems.append(f"partitions {missing} are not in the metadata")
    for p, replicas in sorted(snap.replicas.items()):
        if len(replicas) != replication_factor:
            problems.append(f"partition {p} has {len(replicas)} replicas {list(replicas)}, "
                            f"not {replication_factor}")
        if dead & set(replicas):
            problems.append(f"partition {p} still has broker(s) {sorted(dead & set(replicas))}, gone for good")
        if snap.targets.get(p) is not None:
            problems.append(f"partition {p} is moving to {list(snap.targets[p] or ())}")
    if snap.moves and not problems:
        problems.append(f"{snap.moves} move(s) still listed")
    return problems


def replica_counts(snap: PlacementSnapshot, brokers: Iterable[int]) -> dict[int, int]:
    """Replicas per broker (every one of ``brokers`` listed, 0 when it hosts nothing)."""
    counts = {b: 0 for b in brokers}
    for replicas in snap.replicas.values():
        for b in replicas:
            counts[b] = counts.get(b, 0) + 1
    return counts


def balanced(snap: PlacementSnapshot, brokers: Iterable[int]) -> bool:
    """No move runs and no live broker hosts more than one replica more than another."""
    if snap.moving:
        return False
    live = [b for b in brokers if snap.states.get(b, "alive") in _BALANCE_STATES]
    counts = replica_counts(snap, live)
    live_counts = [counts[b] for b in live]
    return not live_counts or max(live_counts) - min(live_counts) <= 1


def first_after(snaps: Sequence[PlacementSnapshot], t_ms: float,
                condition: Callable[[PlacementSnapshot], bool]) -> float | None:
    """Milliseconds from ``t_ms`` to the first snapshot at or after it that meets ``condition`` (None: never)."""
    for snap in snaps:
        if snap.t_ms >= t_ms and condition(snap):
            return round(snap.t_ms - t_ms, 1)
    return None


def heal_ms(snaps: Sequence[PlacementSnapshot], t_ms: float, dead: int, *, replication_factor: int) -> float | None:
    def healed(snap: PlacementSnapshot) -> bool:
        return (not snap.moving and not snap.hosts(dead) and bool(snap.replicas)
                and all(len(r) == replication_factor for r in snap.replicas.values()))

    return first_after(snaps, t_ms, healed)


def balance_ms(snaps: Sequence[PlacementSnapshot], t_ms: float, added: int,
               brokers: Iterable[int]) -> float | None:
    """``added`` is counted even before the metadata lists it (it must get replicas to be balanced)."""
    everyone = sorted({*brokers, added})
    return first_after(snaps, t_ms, lambda snap: balanced(snap, everyone))


def drain_ms(snaps: Sequence[PlacementSnapshot], t_ms: float, drained: int) -> float | None:
    return first_after(snaps, t_ms, lambda snap: not snap.moving and not snap.hosts(drained))


def placement_times(snaps: Sequence[PlacementSnapshot], events: Sequence[Mapping[str, Any]], *,
                    replication_factor: int) -> list[dict[str, Any]]:
    """One row per permanent fault event (``{"action", "node", "t_ms"}``; actions ``kill-for-good``,
    ``add-broker``, ``drain``) with the time it took the cluster to heal, balance or drain after it."""
    rows = []
    brokers = sorted({b for s in snaps for r in s.replicas.values() for b in r} | {b for s in snaps for b in s.states})
    for event in events:
        action, node, t_ms = event["action"], int(event["node"]), float(event["t_ms"])
        if action == "kill-for-good":
            row = {"metric": "heal_ms", "value": heal_ms(snaps, t_ms, node, replication_factor=replication_factor)}
        elif action == "add-broker":
            row = {"metric": "balance_ms", "value": balance_ms(snaps, t_ms, node, brokers)}
        elif action == "drain":
            row = {"metric": "drain_ms", "value": drain_ms(snaps, t_ms, node)}
        else:
            continue
        rows.append({"action": action, "node": node, "t_ms": round(t_ms, 1), **row})
    return rows
