"""``raftmq bench idle``: what N idle partitions cost each broker (issue 10's "cheap when idle" figures).

A fresh local cluster is measured twice over a window: first empty (the baseline), then hosting N
partitions (RF 3) that nobody writes to. Per broker: CPU as % of one core (utime+stime from /proc), RSS,
threads, open fds, and the memory one hosted idle partition adds ((RSS with N - empty RSS) / hosted).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raftmq.cli.bench import machine_facts
from raftmq.cli.bench_cluster import (
    create_topics,
    fresh_cluster,
    hosted_counts,
    leaders,
    sample_brokers,
    topic_names,
    wait_for_leaders,
)
from raftmq.cli.bench_stats import ProcSample, bytes_per_partition, cpu_percent
from raftmq.cli.common import out
from raftmq.client.admin import Admin

if TYPE_CHECKING:
    from raftmq.deploy.local_cluster import LocalCluster

# A cluster start takes a few seconds; one that is not ready after this will not be.
_READY_TIMEOUT_S = 60.0
# The progress bar of a measurement window is redrawn this often; the samples are only taken at its ends.
_WINDOW_TICK_S = 0.25
_MIB = 1024 * 1024


async def measure_window(cluster: LocalCluster, seconds: float, label: str) -> dict[int, dict[str, Any]]:
    """Sample every broker, wait ``seconds`` (with a progress bar), sample again: per broker the CPU % of
    a core over the window and RSS, threads and fds at its end."""
    before, started = sample_brokers(cluster), time.monotonic()
    with Progress(TextColumn(label), BarColumn(), TimeElapsedColumn(), console=out(), transient=True) as progress:
        task = progress.add_task(label, total=seconds)
        while (elapsed := time.monotonic() - started) < seconds:
            progress.update(task, completed=elapsed)
            await asyncio.sleep(min(_WINDOW_TICK_S, seconds - elapsed))  # the window itself is the measurement
    after, wall = sample_brokers(cluster), time.monotonic() - started
    return {broker_id: _usage(before[broker_id], sample, wall) for broker_id, sample in after.items()
            if broker_id in before}


def _usage(before: ProcSample, after: ProcSample, wall_s: float) -> dict[str, Any]:
    return {"cpu_percent": round(cpu_percent(before, after, wall_s), 2), "rss_bytes": after.rss_bytes,
            "threads": after.threads, "fds": after.fds, "window_s": round(wall_s, 2)}


def broker_rows(baseline: dict[int, dict[str, Any]], loaded: dict[int, dict[str, Any]],
                hosted: dict[int, int], led: dict[int, int]) -> dict[str, dict[str, Any]]:
    """The report's per-broker figures: the loaded window next to the empty one, and memory per partition."""
    rows: dict[str, dict[str, Any]] = {}
    for broker_id, now in sorted(loaded.items()):
        empty = baseline.get(broker_id)
        per_partition = (bytes_per_partition(now["rss_bytes"], empty["rss_bytes"], hosted.get(broker_id, 0))
                         if empty is not None else None)
        rows[str(broker_id)] = {
            **now, "hosted_partitions": hosted.get(broker_id, 0), "led_partitions": led.get(broker_id, 0),
            "empty": empty,
            "bytes_per_idle_partition": None if per_partition is None else round(per_partition),
        }
    return rows


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cpus = [row["cpu_percent"] for row in rows.values()]
    per_partition = [row["bytes_per_idle_partition"] for row in rows.values()
                     if row["bytes_per_idle_partition"] is not None]
    return {
        "cpu_percent_mean": round(sum(cpus) / len(cpus), 2) if cpus else None,
        "cpu_percent_max": max(cpus) if cpus else None,
        "rss_mib_max": round(max(row["rss_bytes"] for row in rows.values()) / _MIB, 1) if rows else None,
        "threads_max": max(row["threads"] for row in rows.values()) if rows else None,
        "kib_per_idle_partition_mean": (round(sum(per_partition) / len(per_partition) / 1024, 1)
                                        if per_partition else None),
    }


def idle_table(partitions: int, rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=f"bench idle: {partitions:,} partitions (RF 3)", title_justify="left")
    for name in ("broker", "hosted", "led", "CPU % of a core", "(empty)", "RSS MiB", "(empty)",
                 "KiB / idle partition", "threads", "(empty)", "fds", "(empty)"):
        table.add_column(name, justify="left" if name == "broker" else "right")
    for broker_id, row in rows.items():
        empty = row["empty"] or {}
        per_partition = row["bytes_per_idle_partition"]
        table.add_row(broker_id, f"{row['hosted_partitions']:,}", f"{row['led_partitions']:,}",
                      f"{row['cpu_percent']:.1f}", _fmt(empty.get("cpu_percent"), "{:.1f}"),
                      f"{row['rss_bytes'] / _MIB:.1f}", _fmt(empty.get("rss_bytes"), "{:.1f}", _MIB),
                      _fmt(per_partition, "{:.1f}", 1024), str(row["threads"]), _fmt(empty.get("threads"), "{}"),
                      _fmt(row["fds"], "{}"), _fmt(empty.get("fds"), "{}"))
    return table


def _fmt(value: float | None, pattern: str, divisor: float = 1) -> str:
    return "-" if value is None else pattern.format(value / divisor if divisor != 1 else value)


async def run_idle(partitions: int, brokers: int, seconds: float, baseline_seconds: float,
                   settle_seconds: float, timeout_s: float) -> dict[str, Any]:
    """The whole measurement on a fresh cluster; returns the report (without machine facts)."""
    topics = topic_names("idle", partitions)
    with fresh_cluster(brokers, _READY_TIMEOUT_S) as cluster:
        baseline = await measure_window(cluster, baseline_seconds, "empty cluster")
        async with Admin(cluster.urls) as admin:
            started = time.monotonic()
            create_s = await create_topics(admin, topics, replication_factor=min(3, brokers))
            await wait_for_leaders(admin, topics, timeout_s)
            leaders_s = time.monotonic() - started
            # Leader balancing and the creation's own work (journals, first elections) settle before the window.
            await measure_window(cluster, settle_seconds, "settling")
            metadata = await admin.metadata()
        loaded = await measure_window(cluster, seconds, f"{partitions:,} idle partitions")
    led: dict[int, int] = {}
    for leader in leaders(metadata, topics).values():
        if leader is not None:
            led[leader] = led.get(leader, 0) + 1
    rows = broker_rows(baseline, loaded, hosted_counts(metadata, topics), led)
    return {"timings": {"create_topics_s": round(create_s, 2), "all_leaders_s": round(leaders_s, 2)},
            "topics": [{"name": name, "partitions": count} for name, count in topics],
            "brokers": rows, "summary": summary(rows)}


@click.command("idle")
@click.option("--partitions", type=click.IntRange(1, 100_000), default=3, show_default=True,
              help="Partitions in total (RF 3), spread over as many topics as the per-topic limit needs.")
@click.option("--brokers", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--seconds", type=click.FloatRange(1, 3600), default=20.0, show_default=True,
              help="The measurement window with N partitions.")
@click.option("--baseline-seconds", type=click.FloatRange(1, 3600), default=5.0, show_default=True,
              help="The window on the empty cluster, measured first.")
@click.option("--settle-seconds", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Wait after the last leader is elected before the window (elections, balancing).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 7200), default=300.0, show_default=True,
              help="Deadline for every partition to have a leader.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the figures as JSON here.")
def idle(partitions: int, brokers: int, seconds: float, baseline_seconds: float, settle_seconds: float,
         timeout_s: float, report_path: Path | None) -> None:
    """Idle cost per broker (CPU, RSS, threads, fds) of N partitions on a fresh local cluster."""
    report: dict[str, Any] = {
        "tool": "raftmq bench idle", "report_version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": ["raftmq", *sys.argv[1:]], "machine": machine_facts(),
        "settings": {"partitions": partitions, "brokers": brokers, "seconds": seconds,
                     "baseline_seconds": baseline_seconds, "settle_seconds": settle_seconds},
    }
    report.update(asyncio.run(run_idle(partitions, brokers, seconds, baseline_seconds, settle_seconds, timeout_s)))
    out().print(idle_table(partitions, report["brokers"]))
    timings = report["timings"]
    out().print(f"topics created in {timings['create_topics_s']:.1f} s; every partition led after "
                f"{timings['all_leaders_s']:.1f} s; summary: {json.dumps(report['summary'])}")
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        out().print(f"report written to {report_path}")
