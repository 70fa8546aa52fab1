"""``raftmq chaos``: Jepsen-style fault-injection scenarios against a local cluster, with a verdict per ack level.

    raftmq chaos list                                   the shipped scenarios
    raftmq chaos show SCENARIO [--seed N --duration D]  the fault schedule a run would execute
    raftmq chaos run SCENARIO|all [--acks 0,1,all] [--seed N] [--duration 60s] [--report-dir DIR]
                     [--client raftmq|kafka]
    raftmq chaos proxies --api URL                      the proxies and toxics of a running proxy server
    raftmq chaos heal --api URL                         POST /reset: every proxy up, every toxic removed

``run`` starts a fresh cluster behind fault proxies for every (scenario, ack level), executes the same
seeded schedule, checks the history and prints the matrix; it writes ``report.json`` and ``summary.md`` to
the report directory. Exit codes: 0 every verdict PASS, 1 a verdict FAIL or ERROR, 2 a usage problem.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import click
from rich.table import Table

from raftmq.chaos import limits as chaos_limits  # the failover target summary.md measures against too
from raftmq.cli.common import EXIT_BROKER, ConfigProblem, err, out

_DURATION_RE = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?)\s*m(?:in)?)?\s*(?:([0-9]+(?:\.[0-9]+)?)\s*s?)?\s*")


def parse_duration(text: str) -> float:
    """'60s', '60', '1m', '1m30s', '90.5s' -> seconds."""
    match = _DURATION_RE.fullmatch(text or "")
    if not match or not (match.group(1) or match.group(2)):
        raise ConfigProblem(f"--duration {text!r} is not a duration", "write it like 60s, 90, 2m or 1m30s")
    seconds = float(match.group(1) or 0) * 60 + float(match.group(2) or 0)
    if seconds <= 0:
        raise ConfigProblem(f"--duration {text!r} must be more than 0 s")
    return seconds


def parse_acks(text: str) -> list[str]:
    levels: list[str] = []
    for part in (text or "").split(","):
        value = part.strip().lower()
        if value == "-1":
            value = "all"
        if value not in ("0", "1", "all"):
            raise ConfigProblem(f"--acks {text!r}: {part.strip()!r} is not an ack level", "use 0, 1 and/or all, "
                                "comma-separated (e.g. --acks 0,1,all)")
        if value not in levels:
            levels.append(value)
    if not levels:
        raise ConfigProblem("--acks needs at least one ack level")
    return levels


def _load_scenarios(spec: str) -> list:
    from raftmq.chaos.scenario import ScenarioError, load, load_all

    try:
        if spec.strip().lower() == "all":
            return load_all()
        return [load(part.strip()) for part in spec.split(",") if part.strip()]
    except ScenarioError as exc:
        raise ConfigProblem(str(exc), "raftmq chaos list shows the scenarios", code="INVALID_SCENARIO") from None


@click.group("chaos")
def chaos() -> None:
    """Fault-injection scenarios (Jepsen-style) with a verdict per ack level.

    Every run starts a fresh local cluster whose peer links and client ports go through fault proxies,
    runs producers and a consumer while the scenario's faults happen, heals, drains every partition and
    replica, and checks the history: acks=all must lose nothing while a majority lives.
    """


@chaos.command("list")
def list_scenarios() -> None:
    """The shipped scenarios: name, what happens, fault kinds."""
    from raftmq.chaos.scenario import ScenarioError, load_all

    try:
        scenarios = load_all()
    except ScenarioError as exc:
        raise ConfigProblem(str(exc), code="INVALID_SCENARIO") from None
    table = Table(title="chaos scenarios (raftmq chaos run NAME|all)", title_justify="left", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    table.add_column("faults", no_wrap=True)
    for scenario in scenarios:
        table.add_row(scenario.name, scenario.description, scenario.fault_summary())
    out().print(table)


@chaos.command("show")
@click.argument("scenario")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the schedule.")
@click.option("--duration", default="60s", show_default=True, help="Run length (60s, 2m, 1m30s).")
@click.option("--nodes", type=click.IntRange(3, 9), default=None,
              help="Number of brokers at the start [default: the scenario's `nodes`, 3 unless it says].")
def show(scenario: str, seed: int, duration: str, nodes: int | None) -> None:
    """Print the fault schedule a run of SCENARIO would execute (same seed: same schedule)."""
    from raftmq.chaos.nemesis import generate
    from raftmq.chaos.scenario import ScenarioError

    seconds = parse_duration(duration)
    for item in _load_scenarios(scenario):
        try:
            steps = generate(item, duration_s=seconds, seed=seed, nodes=nodes or item.nodes)
        except ScenarioError as exc:
            raise ConfigProblem(str(exc), code="INVALID_SCENARIO") from None
        table = Table(title=f"{item.name}: seed {seed}, {seconds:g} s, {nodes or item.nodes} brokers",
                      title_justify="left")
        for column in ("step", "start", "end", "fault", "target", "params"):
            table.add_column(column)
        for step in steps:
            target = step.target + (f" (partition {step.partition})" if step.live_target else "")
            table.add_row(str(step.index), f"{step.at_s:.2f} s", f"{step.end_s:.2f} s", step.kind, target,
                          " ".join(f"{k}={v}" for k, v in step.params))
        out().print(table)


@chaos.command("run")
@click.argument("scenario")
@click.option("--acks", "acks_text", default="0,1,all", show_default=True,
              help="Ack levels, comma-separated; the same schedule runs once per level.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the fault schedule and workload.")
@click.option("--duration", default="60s", show_default=True, help="Workload length per run (60s, 2m, 1m30s).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/chaos"),
              show_default=True, help="Where report.json, summary.md and every run's data and logs go.")
@click.option("--nodes", type=click.IntRange(3, 9), default=None,
              help="Number of brokers at the start [default: the scenario's `nodes`, 3 unless it says].")
@click.option("--rate", type=click.FloatRange(1, 5000), default=200.0, show_default=True,
              help="Sends per second, all producers together.")
@click.option("--durability", type=click.Choice(["always", "interval", "never"]), default="always",
              show_default=True, help="Broker fsync policy (the acks=all promise assumes 'always').")
@click.option("--client", type=click.Choice(["raftmq", "kafka"]), default="raftmq", show_default=True,
              help="The producers' client: raftmq's own (HTTP API), or confluent-kafka on the brokers' Kafka "
                   "listeners, which then sit behind fault proxies too (pip install 'raftmq[kafka]').")
def run(scenario: str, acks_text: str, seed: int, duration: str, report_dir: Path, nodes: int | None, rate: float,
        durability: str, client: str) -> None:
    """Run SCENARIO (a name, several comma-separated, a .toml path, or 'all') once per ack level.

    Prints the matrix (scenario x ack level: attempted, acked, lost, duplicated, unknown, recovered,
    reordered, divergence, failover, verdict) and writes REPORT_DIR/report.json and REPORT_DIR/summary.md.
    Exit code 1 if any verdict is FAIL or ERROR.
    """
    from raftmq.chaos.nemesis import generate
    from raftmq.chaos.report import LiveProgress, matrix_table, overall_verdict
    from raftmq.chaos.runner import RunSettings, run_matrix
    from raftmq.chaos.scenario import ScenarioError

    seconds = parse_duration(duration)
    levels = parse_acks(acks_text)
    if client == "kafka":
        from raftmq.cli.bench_kafka import import_confluent_kafka

        import_confluent_kafka()  # before a cluster is started: a missing package is a usage error
    scenarios = _load_scenarios(scenario)
    if not scenarios:
        raise ConfigProblem("no scenario named", "raftmq chaos list shows the scenarios")
    for item in scenarios:
        try:
            generate(item, duration_s=seconds, seed=seed, nodes=nodes or item.nodes)
        except ScenarioError as exc:
            raise ConfigProblem(str(exc), "use a longer --duration", code="INVALID_SCENARIO") from None
    settings = RunSettings(duration_s=seconds, seed=seed, nodes=nodes, rate=rate, durability=durability,
                           client=client)
    report_dir = report_dir.resolve()
    console = err()
    total = len(scenarios) * len(levels)
    brokers = nodes or "the scenario's"
    producers = " from confluent-kafka producers (Kafka protocol)" if client == "kafka" else ""
    console.print(f"chaos: {len(scenarios)} scenario(s) x acks {','.join(levels)} = {total} run(s) of "
                  f"{seconds:g} s, seed {seed}, {brokers} brokers, {rate:g} sends/s{producers}; "
                  f"report in {report_dir}")
    with LiveProgress(console, total_runs=total) as progress:
        results = asyncio.run(run_matrix(scenarios, levels, settings, report_dir, progress=progress))
    stdout = out()
    stdout.print(matrix_table(results))
    failovers = _failover_table(results)
    if failovers is not None:
        stdout.print(failovers)
    verdict = overall_verdict(results)
    colour = "green" if verdict == "PASS" else "red"
    stdout.print(f"[bold {colour}]overall verdict: {verdict}[/] ({len(results)} runs). "
                 f"Report: {report_dir / 'report.json'}  Summary: {report_dir / 'summary.md'}")
    for result in results:
        if result.error:
            stdout.print(f"[red]{result.scenario} acks={result.acks}: {result.error}[/] (logs: {result.run_dir})")
    if verdict != "PASS":
        raise click.exceptions.Exit(EXIT_BROKER)


def _failover_table(results: list) -> Table | None:
    """Each failover of every run (None when there was none); those slower than the target in yellow."""
    failovers = [(r, f) for r in results for f in r.failovers]
    if not failovers:
        return None
    table = Table(title="failover (fault -> first ok send acknowledged by another leader; target < "
                        f"{chaos_limits.failover_target_ms / 1000:.0f} s)", title_justify="left")
    for column in ("scenario", "acks", "fault", "partition", "old -> new leader", "election", "failover"):
        table.add_column(column)
    for result, f in failovers:
        new = f"n{f.new_leader}" if f.new_leader is not None else "-"
        value = "-" if f.failover_ms is None else f"{f.failover_ms / 1000:.2f} s"
        if f.failover_ms is None or f.failover_ms >= chaos_limits.failover_target_ms:
            value = f"[yellow]{value}[/]"
        election = "-" if f.election_ms is None else f"{f.election_ms / 1000:.2f} s"
        table.add_row(result.scenario, result.acks, f"{f.kind} (step {f.step})", str(f.partition),
                      f"n{f.old_leader} -> {new}", election, value)
    return table


@chaos.command("proxies")
@click.option("--api", "api_url", required=True,
              help="The proxy server's API URL (printed by raftmq cluster up --chaos).")
def proxies(api_url: str) -> None:
    """List the proxies and toxics of a running fault proxy server."""
    from raftmq.chaos.proxy_client import ProxyClient, ToxiproxyError

    try:
        client = ProxyClient.from_url(api_url)
        states = client.proxies()
    except (ToxiproxyError, ValueError) as exc:
        raise ConfigProblem(f"the proxy API at {api_url} did not answer: {exc}", code="PROXY_API") from None
    table = Table(title=f"fault proxies ({api_url})", title_justify="left")
    for column in ("proxy", "listen", "upstream", "enabled", "toxics"):
        table.add_column(column)
    for name, state in sorted(states.items()):
        toxics = ", ".join(f"{t.name}({t.type} {t.stream} {dict(t.attributes)})" for t in state.toxics) or "-"
        table.add_row(name, state.listen, state.upstream, "yes" if state.enabled else "[red]no[/]", toxics)
    out().print(table)


@chaos.command("heal")
@click.option("--api", "api_url", required=True, help="The proxy server's API URL.")
def heal(api_url: str) -> None:
    """Enable every proxy and remove every toxic (POST /reset, confirmed)."""
    from raftmq.chaos.proxy_client import ProxyClient, ToxiproxyError

    try:
        ProxyClient.from_url(api_url).reset()
    except (ToxiproxyError, ValueError) as exc:
        raise ConfigProblem(f"reset through {api_url} failed: {exc}", code="PROXY_API") from None
    out().print("every proxy enabled, every toxic removed")


__all__ = ["chaos", "parse_acks", "parse_duration"]
