"""The pure parts of ``raftmq bench idle`` and ``raftmq bench failover``: /proc parsing, CPU and memory
arithmetic, percentiles, and the per-partition failover times extracted from delivery events.

Only :func:`read_proc` touches the file system (a /proc root it is given, so tests pass a fixture folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from raftmq.cli.bench import percentile

# A partition key: (topic, partition number).
PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment, from /proc/PID/{stat,status,fd}."""

    cpu_s: float  # utime + stime, seconds of CPU since the process started
    rss_bytes: int
    threads: int
    fds: int | None  # None when the fd folder cannot be listed (another user's process)


def parse_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may contain spaces or ')' itself, so the fields are
    counted from the LAST ')'; utime and stime are fields 14 and 15 of proc(5), i.e. 12 and 13 after it."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parse_status(status_text: str) -> tuple[int, int]:
    """(RSS in bytes, thread count) from the text of /proc/PID/status (VmRSS is in kB)."""
    rss_kb = threads = None
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            rss_kb = int(value.split()[0])
        elif name == "Threads":
            threads = int(value.split()[0])
    if rss_kb is None or threads is None:
        raise ValueError("no VmRSS or Threads line in /proc/PID/status")
    return rss_kb * 1024, threads


def read_proc(pid: int, *, proc_root: Path = Path("/proc"), clock_ticks: int | None = None) -> ProcSample | None:
    """A :class:`ProcSample` of a live process, or None once it is gone."""
    base = proc_root / str(pid)
    try:
        ticks = parse_cpu_ticks((base / "stat").read_text())
        rss_bytes, threads = parse_status((base / "status").read_text())
    except (OSError, ValueError, IndexError):
        return None
    try:
        fds: int | None = len(os.listdir(base / "fd"))
    except OSError:
        fds = None
    hz = clock_ticks if clock_ticks is not None else os.sysconf("SC_CLK_TCK")
    return ProcSample(cpu_s=ticks / hz, rss_bytes=rss_bytes, threads=threads, fds=fds)


def cpu_percent(before: ProcSample, after: ProcSample, wall_s: float) -> float:
    """CPU used between two samples as a percentage of one core (200 = two cores busy)."""
    if wall_s <= 0:
        raise ValueError("the window must be longer than zero")
    return 100.0 * (after.cpu_s - before.cpu_s) / wall_s


def bytes_per_partition(rss_bytes: int, baseline_rss_bytes: int, partitions: int) -> float | None:
    """Memory one hosted partition adds: RSS growth over the empty broker, divided (None for 0 partitions)."""
    return None if partitions <= 0 else (rss_bytes - baseline_rss_bytes) / partitions


def split_partitions(total: int, per_topic_max: int) -> list[int]:
    """Partition counts of the topics that together hold ``total`` partitions, none above the limit."""
    if total < 1 or per_topic_max < 1:
        raise ValueError("total and per_topic_max must be >= 1")
    full, rest = divmod(total, per_topic_max)
    return [per_topic_max] * full + ([rest] if rest else [])


class Delivery(NamedTuple):
    """One acks=all delivery report as the failover bench records it (``at`` on the monotonic clock)."""

    at: float
    key: PartitionKey
    ok: bool
    leader_id: int | None


def failover_times(deliveries: Iterable[Delivery], killed_at: float, killed_broker: int,
                   partitions: Iterable[PartitionKey]) -> dict[PartitionKey, float | None]:
    """Per partition the killed broker led: seconds from the kill to the first successful write that
    another leader acknowledged (None: none did). Acks from the killed broker that arrive after the kill
    (answers already on the wire) do not count: the partition has not failed over yet."""
    first: dict[PartitionKey, float | None] = {key: None for key in partitions}
    for delivery in deliveries:
        if (not delivery.ok or delivery.at < killed_at or delivery.key not in first
                or delivery.leader_id == killed_broker):
            continue
        elapsed = delivery.at - killed_at
        seen = first[delivery.key]
        if seen is None or elapsed < seen:
            first[delivery.key] = elapsed
    return first


def failover_summary(times: dict[PartitionKey, float | None]) -> dict[str, Any]:
    """p50/p99/max in ms over the partitions that failed over, and how many did not."""
    recovered = sorted(value for value in times.values() if value is not None)
    as_ms = (lambda v: None if v is None else round(v * 1000.0, 1))  # noqa: E731
    return {
        "partitions": len(times),
        "recovered": len(recovered),
        "not_recovered": len(times) - len(recovered),
        "p50_ms": as_ms(percentile(recovered, 0.50)),
        "p99_ms": as_ms(percentile(recovered, 0.99)),
        "max_ms": as_ms(recovered[-1] if recovered else None),
    }
