"""The chaos report: the scenario x ack-level matrix (rich), live progress, ``report.json`` and ``summary.md``.

``report.json`` (format ``raftmq-chaos-report/1``): the configuration and seed, every scenario's schedule,
the matrix rows, failover times, the overall verdict, and per run the timeline (faults, live-target
resolutions, leader changes), the checker's full ``CheckResult.to_json()`` and the run's statistics.
``summary.md``: the matrix, failover times against the 1 s target (``limits.failover_target_ms``), and per
scenario and ack level the findings labelled *expected* or **BUG**, where every lost record went
(``LostRecord.describe()``), and the timeline. Every run's history, logs and data stay under
``<report dir>/<scenario>/acks-<a>/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from raftmq.chaos import limits
from raftmq.chaos.nemesis import schedule_to_json
from raftmq.chaos.scenario import Scenario
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from raftmq.chaos.runner import RunResult, RunSettings

REPORT_FORMAT: Final = "raftmq-chaos-report/1"
MIB: Final = 1024 * 1024
MATRIX_COLUMNS: Final = ("attempted", "acked", "lost", "duplicated", "unknown", "recovered", "reordered", "divergence")

_EXPECTED_NOTE: Final = {
    "all": "acks=all: nothing acknowledged may be lost while a majority lives; any loss is a bug.",
    "1": "acks=1: the leader acknowledges before replicating; loss under leader failover is expected behaviour.",
    "0": "acks=0: the broker acknowledges on receipt; loss under failover is expected behaviour.",
}


def overall_verdict(results: Sequence[RunResult]) -> str:
    """PASS when every run that ran passed; SKIP runs (no FUSE for a disk scenario) are shown, not counted,
    but a matrix of nothing but skipped runs is SKIP, not PASS."""
    ran = [r for r in results if r.verdict != "SKIP"]
    if not results:
        return "NONE"
    if not ran:
        return "SKIP"
    return "PASS" if all(r.verdict == "PASS" for r in ran) else "FAIL"


def matrix_row(result: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": result.scenario, "acks": result.acks}
    summary = result.check.summary_row() if result.check is not None else {}
    for column in MATRIX_COLUMNS:
        row[column] = summary.get(column)
    row["failover_ms"] = None if result.failover_max_ms is None else round(result.failover_max_ms, 1)
    for metric in PLACEMENT_METRICS:
        row[metric] = result.placement_ms(metric)
    row["verdict"] = result.verdict
    row["expected_loss"] = bool(result.check and result.check.lost
                                and (result.acks != "all" or result.check.loss_allowed is not None))
    return row


# Heal / balance / drain times (chaos/placement.py): the matrix shows them after the failover column.
PLACEMENT_METRICS = ("heal_ms", "balance_ms", "drain_ms")
_PLACEMENT_HEADS = ("heal", "balance", "drain")


def _placement_cells(result: RunResult, row: dict[str, Any]) -> list[str]:
    """A metric the run has a fault for but never reached shows "never"; no such fault: "-"."""
    cells = []
    for metric in PLACEMENT_METRICS:
        expected = any(r["metric"] == metric for r in result.placement)
        cells.append(_fmt_ms(row[metric]) if row[metric] is not None or not expected else "never")
    return cells


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s"


def _verdict_style(verdict: str) -> str:
    return {"PASS": "bold green", "FAIL": "bold red", "ERROR": "bold red"}.get(verdict, "yellow")


def matrix_table(results: Sequence[RunResult], title: str = "raftmq chaos matrix") -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("scenario")
    table.add_column("acks")
    for column in MATRIX_COLUMNS:
        table.add_column(column, justify="right")
    table.add_column("failover", justify="right")
    for head in _PLACEMENT_HEADS:
        table.add_column(head, justify="right")
    table.add_column("verdict")
    for result in results:
        row = matrix_row(result)
        cells = ["-" if row[c] is None else str(row[c]) for c in MATRIX_COLUMNS]
        if row["expected_loss"]:
            cells[MATRIX_COLUMNS.index("lost")] += " (expected)"
        verdict = Text(result.verdict, style=_verdict_style(result.verdict))
        table.add_row(result.scenario, result.acks, *cells, _fmt_ms(row["failover_ms"]),
                      *_placement_cells(result, row), verdict)
    return table


def matrix_markdown(results: Sequence[RunResult]) -> str:
    head = ["scenario", "acks", *MATRIX_COLUMNS, "failover", *_PLACEMENT_HEADS, "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for result in results:
        row = matrix_row(result)
        cells = ["-" if row[c] is None else str(row[c]) for c in MATRIX_COLUMNS]
        if row["expected_loss"]:
            cells[MATRIX_COLUMNS.index("lost")] += " (expected)"
        verdict = result.verdict if result.verdict == "PASS" else f"**{result.verdict}**"
        lines.append("| " + " | ".join([result.scenario, result.acks, *cells, _fmt_ms(row["failover_ms"]),
                                        *_placement_cells(result, row), verdict]) + " |")
    return "\n".join(lines)


# --- live progress ---------------------------------------------------------------------------------


class LiveProgress:
    """Progress while the matrix runs: a live table on a terminal, a line every few seconds elsewhere."""

    def __init__(self, console: Console | None = None, *, total_runs: int = 0,
                 line_interval_s: float = limits.progress_line_interval_s_default) -> None:
        self.console = console or Console(stderr=True)
        self.total_runs = total_runs
        self.results: list[RunResult] = []
        self.status: dict[str, Any] = {}
        self.line_interval_s = line_interval_s
        self._last_line = 0.0
        self._live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            # Transient: the caller prints the final matrix once the runs are over.
            self._live = Live(self._render(), console=self.console,
                              refresh_per_second=limits.live_table_refreshes_per_s, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.status = snapshot
        if snapshot.get("phase") == "done" and snapshot.get("result") is not None:
            self.results.append(snapshot["result"])
            if self._live is None:
                result = snapshot["result"]
                row = matrix_row(result)
                self.console.print(f"[{len(self.results)}/{self.total_runs}] {result.scenario} acks={result.acks}: "
                                   f"{result.verdict} " + " ".join(f"{c}={row[c]}" for c in MATRIX_COLUMNS)
                                   + f" failover={_fmt_ms(row['failover_ms'])}"
                                   + (f" error={result.error}" if result.error else ""))
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_line >= self.line_interval_s and snapshot.get("phase") != "done":
            self._last_line = time.monotonic()
            self.console.print(self.status_line(), markup=False)

    def status_line(self) -> str:
        s = self.status
        if not s:
            return ""
        counts = s.get("counts") or {}
        leaders = s.get("leaders") or {}
        lead = " ".join(f"p{p}=n{v[0]}/t{v[1]}" if v and v[0] is not None else f"p{p}=none"
                        for p, v in leaders.items())
        active = "; ".join(s.get("active") or []) or "none"
        return (f"{s.get('scenario')} acks={s.get('acks')} [{s.get('phase')}] t={s.get('t_s', 0):.0f}/"
                f"{s.get('duration_s', 0):.0f} s sent={counts.get('sent', 0)} ok={counts.get('ok', 0)} "
                f"fail={counts.get('fail', 0)} unknown={counts.get('unknown', 0)} leaders: {lead or '-'} "
                f"faults: {active} last: {s.get('last_event', '')}")

    def _render(self, final: bool = False) -> Group:
        done = len(self.results)
        title = f"raftmq chaos matrix ({done}/{self.total_runs} runs)" if self.total_runs else "raftmq chaos matrix"
        parts: list[Any] = [matrix_table(self.results, title=title)]
        if not final and self.status and self.status.get("phase") != "done":
            parts.append(Text(self.status_line()))
        return Group(*parts)


# --- files -----------------------------------------------------------------------------------------


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def build_report(scenarios: Sequence[Scenario], acks_levels: Sequence[str], settings: RunSettings,
                 results: Sequence[RunResult], *, started_at: float) -> dict[str, Any]:
    from raftmq.chaos.nemesis import generate

    failovers = []
    for result in results:
        for f in result.failovers:
            failovers.append({"scenario": result.scenario, "acks": result.acks, **f.to_json(),
                              "within_target": f.failover_ms is not None and f.failover_ms < limits.failover_target_ms})
    all_ms = [f["failover_ms"] for f in failovers if f["acks"] == "all" and f["failover_ms"] is not None]
    return {
        "format": REPORT_FORMAT,
        "started_at": _iso(started_at),
        "written_at": _iso(time.time()),
        "config": {"seed": settings.seed, "duration_s": settings.duration_s, "nodes": settings.nodes,
                   "rate": settings.rate, "durability": settings.durability, "processes": settings.processes,
                   "request_timeout_ms": settings.request_timeout_ms,
                   "delivery_timeout_ms": settings.delivery_timeout_ms, "acks": list(acks_levels),
                   "client": settings.client,
                   "scenarios": [s.name for s in scenarios],
                   "topic": {"partitions": limits.topic_partitions_default,
                             "replication_factor": limits.topic_replication_factor_default,
                             "min_insync_replicas": limits.topic_min_insync_replicas_default}},
        "seed": settings.seed,
        "scenarios": {s.name: {"description": s.description, "faults": [asdict(f) for f in s.faults],
                               "nodes": settings.nodes or s.nodes, "partitions": s.partitions,
                               "replication_factor": s.replication_factor, "liveness": dict(s.liveness),
                               "schedule": schedule_to_json(generate(s, duration_s=settings.duration_s,
                                                                     seed=settings.seed,
                                                                     nodes=settings.nodes or s.nodes))}
                      for s in scenarios},
        "verdict": overall_verdict(results),
        "matrix": [matrix_row(r) for r in results],
        "failover": {"target_ms": limits.failover_target_ms, "max_ms_acks_all": max(all_ms) if all_ms else None,
                     "measurements": failovers},
        "runs": [r.to_json() for r in results],
    }


def _describe_timeline_row(row: dict[str, Any]) -> str:
    kind = row.get("type")
    if kind == "leader":
        previous = row.get("previous") or [None, None]
        changed = (previous[0], previous[1]) != (row.get("leader"), row.get("term"))
        was = f" (was n{previous[0]} term {previous[1]})" if changed and previous[0] is not None else ""
        if row.get("leader") is None:
            return f"partition {row['partition']}: no broker claims leadership{was}"
        claimants = row.get("claimants") or []
        extra = f"; claimants {[f'n{c[0]}/t{c[1]}' for c in claimants]}" if len(claimants) > 1 else ""
        return f"partition {row['partition']}: leader n{row['leader']} term {row['term']}{was}{extra}"
    if kind == "resolve":
        how = f" ({row['how']})" if row.get("how") and row["how"] != "leader" else ""
        term = f" term {row['term']}" if row.get("term") is not None else ""
        return (f"step {row['step']}: {row['selector']} (partition {row['partition']}) -> {row.get('resolved')}"
                f"{term}{how}")
    detail = row.get("detail") or {}
    bits = []
    for key in ("mode", "nodes", "groups", "disabled", "toxics", "started", "resumed", "errors", "after_s"):
        value = detail.get(key)
        if value not in (None, [], {}, ""):
            bits.append(f"{key}={value}")
    return f"**{row.get('action')}** {row.get('target')}" + (f" ({'; '.join(bits)})" if bits else "")


def summary_markdown(report: dict[str, Any], results: Sequence[RunResult]) -> str:
    lines = _summary_head(report, results) + _failover_section(report)
    by_scenario: dict[str, list[RunResult]] = {}
    for result in results:
        by_scenario.setdefault(result.scenario, []).append(result)
    for name, runs in by_scenario.items():
        lines += _scenario_section(name, report["scenarios"].get(name, {}), runs)
    return "\n".join(lines) + "\n"


def _summary_head(report: dict[str, Any], results: Sequence[RunResult]) -> list[str]:
    """The configuration (with the command that reproduces the report), the verdict and the matrix."""
    cfg = report["config"]
    topic = cfg["topic"]
    lines = ["# raftmq chaos report", ""]
    client = cfg.get("client", "raftmq")
    producers = "confluent-kafka producers on the Kafka listeners" if client == "kafka" else "producers"
    lines.append(f"Seed {cfg['seed']}, {cfg['duration_s']:g} s per run, {cfg['nodes']} brokers (durability "
                 f"{cfg['durability']}), {cfg['rate']:g} sends/s from {cfg['processes']} {producers} "
                 f"(half idempotent), "
                 f"topic with {topic['partitions']} partitions x {topic['replication_factor']} replicas, "
                 f"min.insync.replicas {topic['min_insync_replicas']}. Reproduce: `raftmq chaos run "
                 f"{','.join(cfg['scenarios']) if len(cfg['scenarios']) < 4 else 'all'} --acks {','.join(cfg['acks'])} "
                 f"--seed {cfg['seed']} --duration {cfg['duration_s']:g}s"
                 f"{' --client kafka' if client == 'kafka' else ''}`.")
    lines += ["", f"**Overall verdict: {report['verdict']}** ({len(results)} runs)", "", "## Matrix", "",
              matrix_markdown(results), ""]
    lines += ["Expected behaviour: " + " ".join(_EXPECTED_NOTE[a] for a in ("all", "1", "0")), ""]
    return lines


def _failover_section(report: dict[str, Any]) -> list[str]:
    """Every failover measurement against the target (nothing when no step took a leader away)."""
    measurements = report["failover"]["measurements"]
    if not measurements:
        return []
    lines = ["## Failover", "",
             f"From the fault to the first ok send on the partition acknowledged by a different leader "
             f"(target: under {limits.failover_target_ms / 1000:g} s for acks=all). Election = first metadata poll "
             "showing another leader.", "",
             "| scenario | acks | step | fault | partition | old leader | new leader (term) | election "
             "| failover | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in measurements:
        new = f"n{m['new_leader']} (t{m['new_term']})" if m["new_leader"] is not None else "-"
        ok = "yes" if m["within_target"] else "**no**"
        lines.append(f"| {m['scenario']} | {m['acks']} | {m['step']} | {m['kind']} | {m['partition']} | "
                     f"n{m['old_leader']} (t{m['old_term']}) | {new} | {_fmt_ms(m['election_ms'])} | "
                     f"{_fmt_ms(m['failover_ms'])} | {ok} |")
    lines.append("")
    return lines


def _scenario_section(name: str, info: dict[str, Any], runs: list[RunResult]) -> list[str]:
    """One scenario: its description, its schedule (shared by every ack level) and each of its runs."""
    lines = [f"## {name}", "", info.get("description", ""), "", "Schedule (same for every ack level):", ""]
    for step in info.get("schedule", []):
        lines.append(f"- {step['at_s']:.2f} s -> {step['end_s']:.2f} s: {step['description']}")
    lines.append("")
    for result in runs:
        lines += _run_section(name, result)
    return lines


def _run_section(name: str, result: RunResult) -> list[str]:
    """One run: what to expect at its ack level, its sends, findings, failovers, losses and timeline."""
    lines = [f"### {name}, acks={result.acks}: {result.verdict}", ""]
    lines.append(_EXPECTED_NOTE.get(result.acks, ""))
    if result.check is not None and result.check.loss_allowed:
        lines.append(f"In this run, at every ack level: {result.check.loss_allowed}.")
    lines.append("")
    if result.error:
        lines += [f"Run error: `{result.error}` (see `{result.run_dir}/error.txt`).", ""]
    counts = result.stats.get("counts") or {}
    lines.append(f"Sends: {counts.get('sent', 0)} sent, {counts.get('ok', 0)} ok, {counts.get('fail', 0)} "
                 f"failed, {counts.get('unknown', 0)} unknown; errors {result.stats.get('errors', {})}; "
                 f"consumer polled {result.stats.get('polled', 0)} records. Data and logs: `{result.run_dir}`.")
    lines.append("")
    findings = _finding_lines(result)
    lines += (["Findings:", "", *findings, ""] if findings else ["Findings: none.", ""])
    for f in result.failovers:
        lines.append(f"- failover after step {f.step} ({f.kind} of n{f.old_leader}, partition {f.partition}): "
                     f"{_fmt_ms(f.failover_ms)} (election seen after {_fmt_ms(f.election_ms)})")
    if result.failovers:
        lines.append("")
    for row in result.placement:
        what = {"heal_ms": "healed", "balance_ms": "balanced", "drain_ms": "drained"}[row["metric"]]
        lines.append(f"- {row['action']} n{row['node']} at {row['t_ms'] / 1000:.2f} s: {what} after "
                     f"{_fmt_ms(row['value']) if row['value'] is not None else 'never (within the run)'}")
    if result.placement:
        lines.append("")
    return lines + _disk_and_neighbour_lines(result) + _lost_lines(result) + _timeline_lines(result)


def _disk_and_neighbour_lines(result: RunResult) -> list[str]:
    """What each power cut took per broker; the hostile neighbour's producer latency; brokers' peak memory."""
    lines: list[str] = []
    for cut in (result.stats.get("disks") or {}).get("power_cuts") or []:
        taken = "; ".join(f"n{node}: {lost.get('bytes_dropped')} bytes dropped, {lost.get('files_rolled_back')} "
                          f"files rolled back ({lost.get('torn_files')} torn), {lost.get('directory_ops_undone')} "
                          "directory entries undone" for node, lost in sorted((cut.get("lost") or {}).items()))
        lines.append(f"- power cut at {cut['t_ms'] / 1000:.2f} s: {taken}")
    latency = result.stats.get("hostile_latency")
    if latency:
        lines.append(f"- producers while the neighbour ran: {latency['sends']} ok sends, p50 {latency['p50_ms']} ms, "
                     f"p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms")
    rss = result.stats.get("rss_max_bytes")
    if rss and result.stats.get("hostile") is not None:
        lines.append("- peak broker memory (RSS): " + ", ".join(f"n{node} {value / MIB:.0f} MiB"
                                                                  for node, value in sorted(rss.items())))
    return [*lines, ""] if lines else []


def _finding_lines(result: RunResult) -> list[str]:
    """The checker's findings, then the runner's, each labelled expected or BUG."""
    findings = []
    if result.check is not None:
        for finding in result.check.findings:
            label = "expected" if finding.expected else "**BUG**"
            findings.append(f"- [{label}] {finding.kind}: {finding.count}: {finding.explanation}")
    for extra in result.extra_findings:
        label = "expected" if extra["expected"] else "**BUG**"
        findings.append(f"- [{label}] {extra['kind']}: {extra['count']}: {extra['explanation']}")
    return findings


def _lost_lines(result: RunResult) -> list[str]:
    """Lost records grouped by who acknowledged them (exact counts), then where the first few went."""
    lines: list[str] = []
    groups = result.stats.get("lost_by_ack") or []
    if groups:
        lines += ["Lost records by who acknowledged them:", ""]
        for g in groups:
            who = f"broker {g['leader']}" if g["leader"] is not None else "an unknown broker"
            lines.append(f"- {g['count']} on partition {g['partition']}, acked by {who} in term {g['term']} "
                         f"between {g['first_ack_ms'] / 1000:.2f} s and {g['last_ack_ms'] / 1000:.2f} s")
        lines.append("")
    if result.check is not None and result.check.lost_records:
        shown = result.check.lost_records[: limits.summary_lost_records_max]
        lines += [f"Where the lost records went ({result.check.lost} lost, {len(shown)} shown):", ""]
        lines += [f"- {record.describe()}" for record in shown]
        lines.append("")
    return lines


def _timeline_lines(result: RunResult) -> list[str]:
    """The run's timeline as a table, cut after limits.summary_timeline_rows_max rows (report.json has all)."""
    if not result.timeline:
        return []
    rows_max = limits.summary_timeline_rows_max
    lines = ["Timeline (t = seconds since the workload started):", "", "| t (s) | event |", "|---|---|"]
    for row in result.timeline[:rows_max]:
        lines.append(f"| {row['t_ms'] / 1000:.2f} | {_describe_timeline_row(row)} |")
    if len(result.timeline) > rows_max:
        lines.append(f"| ... | {len(result.timeline) - rows_max} more rows in report.json |")
    lines.append("")
    return lines


def write_reports(report_dir: Path, scenarios: Sequence[Scenario], acks_levels: Sequence[str],
                  settings: RunSettings, results: Sequence[RunResult], *, started_at: float) -> dict[str, Any]:
    """Write ``report.json`` and ``summary.md`` (atomically: a temp file, then rename) and return the report."""
    report = build_report(scenarios, acks_levels, settings, results, started_at=started_at)
    report_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", json.dumps(report, indent=1, default=str)),
                       ("summary.md", summary_markdown(report, results))):
        temp = report_dir / f".{name}.tmp"
        temp.write_text(text)
        temp.replace(report_dir / name)
    return report
