"""The pure parts of ``bench idle`` and ``bench failover`` (raftmq/cli/bench_stats.py, bench_idle.py,
bench_failover.py): /proc parsing on fixture files, CPU and memory arithmetic, topic splitting, the
per-partition failover times extracted from delivery events, and their percentiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftmq.cli.bench_failover import _victim
from raftmq.cli.bench_idle import broker_rows, summary
from raftmq.cli.bench_stats import (
    Delivery,
    ProcSample,
    bytes_per_partition,
    cpu_percent,
    failover_summary,
    failover_times,
    parse_cpu_ticks,
    parse_status,
    read_proc,
    split_partitions,
)

# A real /proc/PID/stat line shape, with a command name holding a space and a ')' (fields are counted from
# the last ')'): utime 250, stime 50.
STAT = "4242 (python -m ) x) S 1 4242 4242 0 -1 4194304 9000 0 0 0 250 50 0 0 20 0 7 0 1000 300000000 11000\n"
STATUS = "Name:\tpython\nVmHWM:\t   50000 kB\nVmRSS:\t   45056 kB\nThreads:\t7\nSigQ:\t0/63\n"


def fake_proc(root: Path, pid: int, *, fds: int) -> Path:
    folder = root / str(pid)
    (folder / "fd").mkdir(parents=True)
    (folder / "stat").write_text(STAT)
    (folder / "status").write_text(STATUS)
    for fd in range(fds):
        (folder / "fd" / str(fd)).write_text("")
    return root


def test_stat_and_status_parsing() -> None:
    assert parse_cpu_ticks(STAT) == 300
    assert parse_status(STATUS) == (45056 * 1024, 7)
    with pytest.raises(ValueError):
        parse_status("Name:\tpython\n")


def test_read_proc_from_a_fixture_folder(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, 4242, fds=3)
    sample = read_proc(4242, proc_root=root, clock_ticks=100)
    assert sample == ProcSample(cpu_s=3.0, rss_bytes=45056 * 1024, threads=7, fds=3)
    assert read_proc(4243, proc_root=root, clock_ticks=100) is None  # gone


def test_cpu_and_memory_arithmetic() -> None:
    before = ProcSample(cpu_s=10.0, rss_bytes=100, threads=5, fds=20)
    after = ProcSample(cpu_s=10.5, rss_bytes=200, threads=5, fds=20)
    assert cpu_percent(before, after, 10.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        cpu_percent(before, after, 0.0)
    assert bytes_per_partition(1_100_000, 100_000, 1000) == 1000.0
    assert bytes_per_partition(1_100_000, 100_000, 0) is None


def test_partitions_are_split_at_the_per_topic_limit() -> None:
    assert split_partitions(3, 256) == [3]
    assert split_partitions(1000, 256) == [256, 256, 256, 232]
    assert split_partitions(512, 256) == [256, 256]
    with pytest.raises(ValueError):
        split_partitions(0, 256)


def test_idle_rows_report_memory_per_hosted_partition() -> None:
    baseline = {1: {"cpu_percent": 1.0, "rss_bytes": 40 * 2**20, "threads": 5, "fds": 20, "window_s": 5.0}}
    loaded = {1: {"cpu_percent": 4.0, "rss_bytes": 50 * 2**20, "threads": 6, "fds": 300, "window_s": 20.0},
              2: {"cpu_percent": 6.0, "rss_bytes": 51 * 2**20, "threads": 6, "fds": 301, "window_s": 20.0}}
    rows = broker_rows(baseline, loaded, hosted={1: 1024, 2: 1024}, led={1: 500})
    assert rows["1"]["bytes_per_idle_partition"] == 10 * 1024 and rows["1"]["led_partitions"] == 500
    assert rows["2"]["bytes_per_idle_partition"] is None and rows["2"]["led_partitions"] == 0  # no baseline
    totals = summary(rows)
    assert totals["cpu_percent_mean"] == 5.0 and totals["cpu_percent_max"] == 6.0
    assert totals["kib_per_idle_partition_mean"] == 10.0 and totals["threads_max"] == 6


def test_failover_time_is_the_first_ok_ack_from_another_leader_after_the_kill() -> None:
    a, b, c = ("t", 0), ("t", 1), ("t", 2)
    deliveries = [
        Delivery(9.0, a, True, 1),  # before the kill
        Delivery(10.1, a, True, 1),  # the killed leader's answer, already on the wire
        Delivery(10.5, a, False, None),  # failed attempt
        Delivery(10.9, a, True, 2),  # first write on the new leader: 0.9 s
        Delivery(11.0, a, True, 2),
        Delivery(10.2, b, True, 3),  # 0.2 s (reports may arrive out of order)
        Delivery(10.05, c, True, 2),  # c was not led by the killed broker: ignored
    ]
    times = failover_times(deliveries, killed_at=10.0, killed_broker=1, partitions=[a, b, ("t", 3)])
    assert times == {a: pytest.approx(0.9), b: pytest.approx(0.2), ("t", 3): None}
    result = failover_summary(times)
    assert result == {"partitions": 3, "recovered": 2, "not_recovered": 1, "p50_ms": 200.0, "p99_ms": 900.0,
                      "max_ms": 900.0}


def test_failover_summary_percentiles_over_many_partitions() -> None:
    times = {("t", i): (i + 1) / 1000 for i in range(100)}  # 1 .. 100 ms
    result = failover_summary(times)  # type: ignore[arg-type]
    assert (result["p50_ms"], result["p99_ms"], result["max_ms"]) == (50.0, 99.0, 100.0)
    assert failover_summary({})["p50_ms"] is None


def test_the_victim_is_the_broker_leading_most_partitions() -> None:
    led = {("t", 0): 1, ("t", 1): 2, ("t", 2): 2, ("t", 3): None, ("u", 0): 3}
    assert _victim(led) == (2, [("t", 1), ("t", 2)])
    assert _victim({("t", 0): 1, ("t", 1): 2})[0] == 1  # a tie: the lowest id, so runs are repeatable
