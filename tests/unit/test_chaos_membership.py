"""Scenarios that change the cluster for good (issue 9): their file keys, the new fault kinds, and the pure
placement rules the runner judges them with (chaos/placement.py). No cluster, no I/O.

Goal: ``nodes`` / ``partitions`` / ``replication_factor`` / ``[liveness]`` parse and are checked the way the
node checks its ``[controller]`` table; ``kill-for-good``, ``add-broker`` and ``drain`` validate their targets
and schedule like other faults; placement convergence demands exactly the replication factor, no move and
no dead broker; heal, balance and drain times are measured from the fault to the first snapshot that
satisfies the rule.
"""

from __future__ import annotations

import pytest
from raftmq.chaos.nemesis import generate
from raftmq.chaos.placement import (
    PlacementSnapshot,
    balanced,
    controller_view,
    placement_problems,
    placement_times,
    snapshot,
)
from raftmq.chaos.scenario import PERMANENT_KINDS, ScenarioError, liveness_of, load, parse

BASE = """
name = "tiny"
description = "a test scenario"
{top}
[schedule]
start = 2.0
interval = 50.0
fault_duration = 2.0
tail = 2.0
{tables}
[[fault]]
{fault}
"""


def _parse(top: str = "", fault: str = 'kind = "kill-for-good"\ntarget = "follower"', tables: str = ""):  # type: ignore[no-untyped-def]
    return parse(BASE.format(top=top, fault=fault, tables=tables))


def test_sizes_default_to_three_and_parse() -> None:
    plain = _parse()
    assert (plain.nodes, plain.partitions, plain.replication_factor, plain.liveness) == (3, 3, 3, ())
    sized = _parse("nodes = 5\npartitions = 6\nreplication_factor = 3")
    assert (sized.nodes, sized.partitions, sized.replication_factor) == (5, 6, 3)
    assert sized.permanent


def test_liveness_table_becomes_the_node_liveness() -> None:
    scenario = _parse(tables="[liveness]\nheartbeat_ms = 200\nsession_timeout_ms = 1000\nheal_grace_ms = 2000\n")
    live = liveness_of(scenario.liveness)
    assert (live.heartbeat_s, live.session_timeout_s, live.heal_grace_s) == (0.2, 1.0, 2.0)
    assert live.moves_max == 2  # the node default where the table is silent


@pytest.mark.parametrize(("top", "tables", "message"), [
    ("replication_factor = 4", "", "more than the 3 nodes"),
    ("nodes = 0", "", "nodes: must be an integer from 1"),
    ("partitions = true", "", "partitions: must be an integer"),
    ("", "[liveness]\nbeat_ms = 1\n", "[liveness].beat_ms: unknown key"),
    ("", "[liveness]\nheartbeat_ms = 500\nsession_timeout_ms = 600\n", "at least 2 x heartbeat_ms"),
    ("", "[liveness]\nheal_grace_ms = -1\n", "[liveness].heal_grace_ms: must be an integer >= 0"),
])
def test_bad_sizes_and_liveness_name_the_key(top: str, tables: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace(".", r"\.")):
        _parse(top, tables=tables)


@pytest.mark.parametrize(("fault", "message"), [
    ('kind = "kill-for-good"\ntarget = "all"', "takes one node"),
    ('kind = "drain"\ntarget = "link:1-2"', "needs a node selector"),
    ('kind = "add-broker"\ntarget = "leader"', "takes no target"),
])
def test_membership_fault_targets_are_checked(fault: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        _parse("nodes = 5", fault=fault)


def test_membership_faults_schedule_like_others() -> None:
    scenario = _parse("nodes = 5", fault='kind = "add-broker"')
    (step,) = generate(scenario, duration_s=20.0, seed=3, nodes=scenario.nodes)
    assert (step.kind, step.target, step.at_s) == ("add-broker", "all", 2.0)
    drain = _parse("nodes = 5", fault='kind = "drain"\ntarget = "random"')
    (step,) = generate(drain, duration_s=20.0, seed=3, nodes=drain.nodes)
    assert step.kind == "drain" and step.target.startswith("node:") and 1 <= int(step.target[5:]) <= 5
    assert PERMANENT_KINDS == {"kill-for-good", "add-broker", "drain"}


@pytest.mark.parametrize(("name", "nodes"), [("kill-broker-for-good", 5), ("add-broker-under-load", 4),
                                              ("drain-under-faults", 5)])
def test_shipped_membership_scenarios_fit_a_short_ci_run(name: str, nodes: int) -> None:
    scenario = load(name)
    assert scenario.nodes == nodes and scenario.replication_factor == 3 and scenario.permanent
    steps = generate(scenario, duration_s=15.0, seed=1, nodes=scenario.nodes)
    assert len({s.group for s in steps}) == 1, "one permanent change per run"


# --- placement --------------------------------------------------------------------------------------


def _body(replicas: dict[int, list[int]], *, targets: dict[int, list[int]] | None = None,
          states: dict[int, str] | None = None, controller: int = 1, applied: int = 10) -> dict:  # type: ignore[type-arg]
    targets = targets or {}
    return {"broker_id": controller, "controller_id": controller, "metadata": {"applied_index": applied},
            "brokers": [{"id": b, "state": s} for b, s in (states or {}).items()],
            "topics": [{"name": "chaos", "partitions": [
                {"partition": p, "replicas": r, "target": targets.get(p)} for p, r in replicas.items()]}],
            "moves": [{"topic": "chaos", "partition": p} for p in targets]}


def _snap(t_ms: float, replicas: dict[int, list[int]], **kwargs) -> PlacementSnapshot:  # type: ignore[no-untyped-def]
    snap = snapshot(_body(replicas, **kwargs), "chaos", t_ms)
    assert snap is not None
    return snap


def test_snapshot_reads_replicas_targets_states_and_moves() -> None:
    snap = _snap(5.0, {0: [1, 2, 3], 1: [2, 3, 4]}, targets={1: [2, 3, 5]}, states={4: "fenced"})
    assert snap.replicas == {0: (1, 2, 3), 1: (2, 3, 4)}
    assert snap.targets == {0: None, 1: (2, 3, 5)} and snap.moves == 1 and snap.moving
    assert snap.states == {4: "fenced"} and snap.hosts(5) and not snap.hosts(6)
    assert snapshot(_body({0: [1]}), "other", 0.0) is None


def test_controller_view_prefers_the_controller_then_the_newest() -> None:
    old, new = _body({0: [1]}, controller=2, applied=5), _body({0: [2]}, controller=3, applied=9)
    old["broker_id"], new["broker_id"] = 1, 3
    assert controller_view({1: old, 3: new, 4: None}) is new
    new["controller_id"] = 2
    assert controller_view({1: old, 3: new}) is new  # no controller answered: the most applied metadata
    assert controller_view({1: None}) is None


def test_placement_problems() -> None:
    good = _snap(0, {0: [1, 2, 3], 1: [2, 3, 4]})
    assert placement_problems(good, partitions=2, replication_factor=3, gone={5}) == []
    short = _snap(0, {0: [1, 2], 1: [2, 3, 5]}, targets={0: [1, 2, 4]})
    problems = placement_problems(short, partitions=3, replication_factor=3, gone={5})
    assert any("partitions [2]" in p for p in problems)
    assert any("2 replicas" in p for p in problems) and any("gone for good" in p for p in problems)
    assert any("moving to" in p for p in problems)


def test_balance_counts_only_alive_brokers_and_needs_no_move() -> None:
    assert balanced(_snap(0, {0: [1, 2, 3], 1: [4, 5, 1], 2: [2, 3, 4]}), [1, 2, 3, 4, 5])
    assert not balanced(_snap(0, {0: [1, 2, 3], 1: [1, 2, 3]}), [1, 2, 3, 4])  # 4 hosts nothing
    assert balanced(_snap(0, {0: [1, 2, 3], 1: [1, 2, 3]}, states={4: "draining"}), [1, 2, 3, 4])
    assert not balanced(_snap(0, {0: [1, 2, 3]}, targets={0: [1, 2, 4]}), [1, 2, 3])


def test_heal_balance_and_drain_times_run_from_the_fault_to_the_first_good_snapshot() -> None:
    snaps = [
        _snap(1000, {0: [1, 2, 3], 1: [3, 4, 5]}),
        _snap(3000, {0: [1, 2, 3], 1: [3, 4, 5]}, targets={0: [1, 2, 4]}, states={3: "fenced"}),
        _snap(4500, {0: [1, 2, 4], 1: [4, 5, 1]}, states={3: "removed"}),
        _snap(9000, {0: [1, 2, 4], 1: [6, 5, 1], 2: [6, 2, 4]}, states={3: "removed"}),
    ]
    events = [{"action": "kill-for-good", "node": 3, "t_ms": 2000.0},
              {"action": "add-broker", "node": 6, "t_ms": 5000.0},
              {"action": "drain", "node": 3, "t_ms": 500.0},
              {"action": "pause", "node": 1, "t_ms": 0.0}]
    rows = placement_times(snaps, events, replication_factor=3)
    by_metric = {row["metric"]: row["value"] for row in rows}
    assert by_metric == {"heal_ms": 2500.0, "balance_ms": 4000.0, "drain_ms": 4000.0}
    never = placement_times(snaps[:2], events[:1], replication_factor=3)
    assert never == [{"action": "kill-for-good", "node": 3, "t_ms": 2000.0, "metric": "heal_ms", "value": None}]


# --- the local cluster's configs -------------------------------------------------------------------


def test_add_node_lists_everyone_and_leaves_older_configs_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from raftmq.deploy.local_cluster import LocalCluster
    from raftmq.node import Liveness, load_config

    live = Liveness(heartbeat_s=0.2, session_timeout_s=1.0, heal_grace_s=2.0, moves_max=2)
    cluster = LocalCluster(tmp_path, nodes=4, liveness=live, racks={1: "a", 2: "b"}, secure=False)
    cluster.write_configs()
    before = {n: node.config_path.read_text() for n, node in cluster.nodes.items()}
    new = cluster.add_node(start=False, rack="c")
    assert new == 5
    assert {n: cluster.nodes[n].config_path.read_text() for n in before} == before
    config = load_config(cluster.nodes[5].config_path)
    assert config.broker_ids == [1, 2, 3, 4, 5] and config.voters == [1, 2, 3] and config.rack == "c"
    assert config.liveness == live
    first = load_config(cluster.nodes[1].config_path)
    assert first.broker_ids == [1, 2, 3, 4] and first.rack == "a" and first.liveness == live
    ports = [p for node in cluster.nodes.values() for p in (node.client_port, node.peer_port)]
    assert len(set(ports)) == len(ports)


def test_add_node_with_a_base_port_takes_the_next_ports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from raftmq.deploy.local_cluster import LocalCluster

    cluster = LocalCluster(tmp_path, nodes=3, base_port=21000, secure=False)
    cluster.add_node(start=False)
    assert (cluster.nodes[4].client_port, cluster.nodes[4].peer_port) == (21003, 21103)
