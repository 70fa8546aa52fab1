"""The nemesis schedule and the scenario files: pure, no cluster.

Goal: the same scenario, duration, node count and seed always give the same schedule (the runner executes
it once per ack level and a report must be reproducible from its seed); the random ``mixed`` schedule
really depends on the seed; every shipped scenario file loads, validates and fits the CI and matrix
durations; a bad scenario file fails with a sentence naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from raftmq.chaos.nemesis import Step, generate, schedule_to_json
from raftmq.chaos.scenario import (
    FAULT_KINDS,
    ScenarioError,
    load,
    load_all,
    parse,
    scenario_names,
)

REQUIRED = {"leader-isolation", "minority-partition", "majority-partition", "bridge", "one-way-leader",
            "kill-leader", "kill-all", "pause-leader", "slow-follower", "flapping-links", "rolling-restart",
            "mixed", "power-loss-one", "power-loss-all", "disk-full-leader", "disk-errors-follower",
            "slow-disk-follower"}
DISK_SCENARIOS = ("power-loss-one", "power-loss-all", "disk-full-leader", "disk-errors-follower",
                  "slow-disk-follower")

MINIMAL = """
name = "tiny"
description = "a test scenario"
[schedule]
start = 2.0
interval = 5.0
fault_duration = 2.0
tail = 2.0
[[fault]]
kind = "kill"
target = "leader"
"""


def test_every_required_scenario_ships_and_validates() -> None:
    names = set(scenario_names())
    assert REQUIRED <= names, f"missing scenarios: {sorted(REQUIRED - names)}"
    for scenario in load_all():
        assert scenario.description.strip()
        assert scenario.faults
        assert scenario.name in Path(scenario.path).name


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("duration_s", [30.0, 60.0])
def test_every_scenario_fits_the_matrix_durations(name: str, duration_s: float) -> None:
    scenario = load(name)
    steps = generate(scenario, duration_s=duration_s, seed=1)
    assert steps, "at least one fault"
    for step in steps:
        assert 0 < step.at_s < step.end_s <= duration_s - scenario.schedule.tail
        assert step.kind in FAULT_KINDS


@pytest.mark.parametrize("name", ["leader-isolation", "kill-leader", "pause-leader", "bridge"])
def test_ci_scenarios_fit_twenty_seconds(name: str) -> None:
    steps = generate(load(name), duration_s=20.0, seed=7)
    assert steps and steps[0].at_s >= 3.0


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_same_seed_same_schedule(name: str) -> None:
    scenario = load(name)
    first = generate(scenario, duration_s=60.0, seed=42)
    again = generate(load(name), duration_s=60.0, seed=42)
    assert first == again
    assert schedule_to_json(first) == schedule_to_json(again)


def test_mixed_differs_between_seeds_and_covers_many_kinds() -> None:
    scenario = load("mixed")
    schedules = {seed: generate(scenario, duration_s=60.0, seed=seed) for seed in range(1, 6)}
    shapes = {tuple((s.at_s, s.kind, s.target) for s in steps) for steps in schedules.values()}
    assert len(shapes) == len(schedules), "every seed gives its own schedule"
    kinds = {s.kind for steps in schedules.values() for s in steps}
    assert len(kinds) >= 8, kinds
    network = {"isolate", "partition", "bridge", "one-way", "cut-link", "slow", "bandwidth", "reset"}
    assert kinds & network and kinds & {"kill", "pause", "restart"}


def test_mixed_groups_never_overlap_and_combinations_share_a_start() -> None:
    scenario = load("mixed")
    for seed in range(1, 20):
        steps = generate(scenario, duration_s=90.0, seed=seed)
        groups: dict[int, list[Step]] = {}
        for step in steps:
            groups.setdefault(step.group, []).append(step)
        ordered = [groups[g] for g in sorted(groups)]
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            assert max(s.end_s for s in earlier) + scenario.schedule.heal_gap <= min(s.at_s for s in later) + 1e-6
        for group in ordered:
            assert len({s.at_s for s in group}) == 1
            assert len({s.pick for s in group}) == 1


def test_seeded_selectors_are_resolved_live_ones_are_not() -> None:
    steps = generate(load("mixed"), duration_s=300.0, seed=3)
    targets = {s.target for s in steps}
    assert "random" not in targets and "random-link" not in targets and "majority" not in targets
    for step in steps:
        assert (step.target in ("leader", "follower", "leader-link", "all")
                or step.target.startswith(("node:", "nodes:", "link:"))), step.target
        if step.target.startswith("nodes:"):
            assert len(step.target[6:].split(",")) == 2  # a majority of 3
    assert any(s.live_target for s in steps)


def test_rolling_restart_expands_to_one_restart_per_node_in_a_seeded_order() -> None:
    scenario = load("rolling-restart")
    steps = generate(scenario, duration_s=30.0, seed=5)
    assert [s.kind for s in steps] == ["restart"] * 3
    assert sorted(s.target for s in steps) == ["node:1", "node:2", "node:3"]
    for earlier, later in zip(steps, steps[1:], strict=False):
        assert later.at_s >= earlier.end_s + 3.0, "the next node goes down only after the previous one settled"
    orders = {tuple(s.target for s in generate(scenario, duration_s=30.0, seed=seed)) for seed in range(10)}
    assert len(orders) > 1


def test_leader_faults_are_marked_for_failover_measurement() -> None:
    assert all(s.takes_leader_away for s in generate(load("kill-leader"), duration_s=30, seed=1))
    assert all(s.takes_leader_away for s in generate(load("leader-isolation"), duration_s=30, seed=1))
    assert not any(s.takes_leader_away for s in generate(load("slow-follower"), duration_s=30, seed=1))
    assert not any(s.takes_leader_away for s in generate(load("minority-partition"), duration_s=30, seed=1))


def test_too_short_a_run_names_the_minimum() -> None:
    with pytest.raises(ScenarioError, match=r"rolling-restart: a 10 s run is too short.*at least 20 s"):
        generate(load("rolling-restart"), duration_s=10.0, seed=1)


def test_more_nodes_draw_bigger_sets() -> None:
    steps = generate(load("kill-majority"), duration_s=60.0, seed=1, nodes=5)
    assert all(len(s.target[6:].split(",")) == 3 for s in steps)
    with pytest.raises(ScenarioError, match="node the 3-node cluster does not have"):
        generate(parse(MINIMAL.replace('target = "leader"', 'target = "node:4"')), duration_s=30, seed=1)


def test_minimal_scenario_parses() -> None:
    scenario = parse(MINIMAL, source="tiny.toml")
    assert scenario.name == "tiny"
    steps = generate(scenario, duration_s=20.0, seed=1)
    assert [s.at_s for s in steps] == [2.0, 7.0, 12.0]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace('kind = "kill"', 'kind = "explode"'), r"tiny\.toml: \[\[fault\]\] 1: kind: must be one of"),
    (lambda t: t.replace('target = "leader"', 'target = "the-boss"'), r"\[\[fault\]\] 1: target: 'the-boss' is not"),
    (lambda t: t.replace('target = "leader"', 'target = "link:1-2"'), r"target: kill needs a node selector"),
    (lambda t: t.replace("interval = 5.0", "interval = [5.0, 1.0]"), r"\[schedule\]\.interval: range .* min > max"),
    (lambda t: t.replace("interval = 5.0", "interval = -1"), r"\[schedule\]\.interval: must be > 0"),
    (lambda t: t.replace("tail = 2.0", "tail = 2.0\nspeed = 3"), r"\[schedule\]\.speed: unknown key"),
    (lambda t: t.replace('target = "leader"', 'target = "leader"\nmode = "refuse"'),
     r"1: mode: unknown key for kind 'kill'"),
    (lambda t: t.replace('description = "a test scenario"', ""), r"tiny\.toml: description: must be"),
    (lambda t: t.replace('name = "tiny"', 'name = "other"'), r"name: 'other' does not match the file name 'tiny'"),
    (lambda t: t.split("[[fault]]")[0], r"\[\[fault\]\]: at least one"),
    (lambda t: t + "\n[[fault]]\nkind = \"isolate\"\ntarget = \"leader\"\nmode = \"loud\"\n",
     r"\[\[fault\]\] 2: mode: must be one of refuse, blackhole"),
    (lambda t: t.replace("[schedule]", "[schedule]\ncombine = 0.5"), r"combine: only applies with pick"),
    (lambda t: t + "\n[[fault]]\nkind = \"bandwidth\"\ntarget = \"random\"\nkb_s = 0\n", r"2: kb_s: must be > 0"),
    (lambda t: "name = [", r"tiny\.toml: not valid TOML"),
])
def test_bad_scenario_files_name_the_file_and_key(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tiny.toml"
    path.write_text(edit(MINIMAL))
    with pytest.raises(ScenarioError, match=message):
        load(path)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'; known: .*kill-leader"):
        load("nope")


def test_scenario_files_are_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"raftmq.chaos" = ["scenarios/*.toml"]' in pyproject


# --- the CLI's pure parts ------------------------------------------------------------------------------


def test_cli_lists_and_shows_scenarios() -> None:
    from click.testing import CliRunner

    from raftmq.cli.chaos_cmd import chaos

    runner = CliRunner()
    listed = runner.invoke(chaos, ["list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    for name in REQUIRED:
        assert name in listed.output
    shown = [runner.invoke(chaos, ["show", "mixed", "--seed", "9", "--duration", "45s"]) for _ in range(2)]
    assert shown[0].exit_code == 0, shown[0].output
    assert shown[0].output == shown[1].output
    too_short = runner.invoke(chaos, ["run", "rolling-restart", "--duration", "5s"])
    assert too_short.exit_code == 2 and "too short" in too_short.output
    unknown = runner.invoke(chaos, ["run", "no-such-scenario"])
    assert unknown.exit_code == 2 and "unknown scenario" in unknown.output


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60.0), ("60", 60.0), ("2m", 120.0), ("1m30s", 90.0),
                                               ("0.5m", 30.0), ("20.5s", 20.5)])
def test_cli_durations(text: str, seconds: float) -> None:
    from raftmq.cli.chaos_cmd import parse_duration

    assert parse_duration(text) == seconds


def test_cli_bad_options() -> None:
    import click

    from raftmq.cli.chaos_cmd import parse_acks, parse_duration

    assert parse_acks("0,1,all") == ["0", "1", "all"]
    assert parse_acks("all,-1,1") == ["all", "1"]
    for bad in ("2", "", "all,maybe"):
        with pytest.raises(click.ClickException):
            parse_acks(bad)
    for bad in ("soon", "0s", "-5s", "5h"):
        with pytest.raises(click.ClickException):
            parse_duration(bad)


@pytest.mark.parametrize("name", DISK_SCENARIOS)
def test_disk_scenarios_need_the_fault_file_system_and_fit_twenty_seconds(name: str) -> None:
    scenario = load(name)
    assert scenario.needs_faultfs
    assert scenario.power_loss == name.startswith("power-loss")
    steps = generate(scenario, duration_s=20.0, seed=3)
    assert steps and steps[0].at_s >= 3.0


def test_network_scenarios_do_not_mount_the_fault_file_system() -> None:
    assert not load("kill-leader").needs_faultfs and not load("kill-leader").power_loss


@pytest.mark.parametrize(("fault", "message"), [
    ('kind = "disk-errors"\ntarget = "leader"\nops = "write,chmod"', "names operations from"),
    ('kind = "power-loss"\ntarget = "leader"\ntorn = 2', "must be 0 or 1"),
    ('kind = "disk-full"\ntarget = "all"', "takes one node"),
    ('kind = "slow-disk"\ntarget = "link:1-2"', "needs a node selector"),
    ('kind = "disk-full"\ntarget = "leader"\npattern = ""', "non-empty string"),
])
def test_bad_disk_faults_are_refused_naming_the_key(fault: str, message: str) -> None:
    text = MINIMAL.replace('kind = "kill"\ntarget = "leader"', fault)
    with pytest.raises(ScenarioError, match=message):
        parse(text, source="tiny.toml")


def test_disk_fault_parameters_are_kept_normalised() -> None:
    text = MINIMAL.replace('kind = "kill"\ntarget = "leader"',
                           'kind = "disk-errors"\ntarget = "follower"\nops = "read, fsync"\npattern = "*.log"')
    (fault,) = parse(text, source="tiny.toml").faults
    assert (fault.param("ops"), fault.param("pattern")) == ("read,fsync", "*.log")
