"""``raftmq bench consume``: consumer-group throughput and rebalance time.

On a fresh local cluster (or ``--bootstrap``): a topic of ``--partitions`` partitions is filled with
``--records`` records (acks=all), then ``--consumers`` group consumers in this process read it all. Reported:

* throughput: records / s from the first record any member received to the last (joining excluded), and
  the time from the first join to the first record (join + first assignment);
* rebalance after a crash: one member stops without committing or leaving (what a killed process looks
  like); the time until the others own every partition again (bounded below by the session timeout);
* rebalance after a leave: one more member leaves cleanly; the time until the others own everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from raftmq.cli.bench_cluster import fresh_cluster
from raftmq.cli.common import bootstrap_option, err, out
from raftmq.client.admin import Admin
from raftmq.client.group_consumer import GroupConsumer
from raftmq.client.producer import Producer
from raftmq.client.types import TopicPartition

# How often ownership is checked while a rebalance is timed (a measurement resolution, not a wait for order).
_OWNERSHIP_POLL_S = 0.01


async def run_consume_bench(bootstrap: list[str], records: int, partitions: int, consumers: int,
                            record_bytes: int, session_timeout_ms: int, timeout_s: float) -> dict[str, Any]:
    topic, group = f"bench-consume-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, partitions)
        await admin.wait_for_topic(topic, timeout_s=timeout_s)
    value = b"x" * record_bytes
    started = time.monotonic()
    async with Producer(bootstrap, acks="all") as producer:
        for index in range(records):
            await producer.send(topic, value, key=str(index).encode(), on_delivery=lambda _report: None)
        await producer.flush()
    produce_s = time.monotonic() - started
    members = [GroupConsumer(bootstrap, group, topics=[topic], session_timeout_ms=session_timeout_ms,
                             client_id=f"bench-{i}") for i in range(consumers)]
    received = 0
    first_record: float | None = None
    done = asyncio.Event()

    async def read(member: GroupConsumer) -> None:
        nonlocal received, first_record
        while True:
            batch = await member.poll(timeout_ms=200)
            if batch and first_record is None:
                first_record = time.monotonic()
            received += len(batch)
            if received >= records:
                done.set()

    join_started = time.monotonic()
    for member in members:
        await member.start()
    readers = [asyncio.create_task(read(m)) for m in members]
    try:
        async with asyncio.timeout(timeout_s):
            await done.wait()
        last_record = time.monotonic()
        assert first_record is not None
        result: dict[str, Any] = {
            "topic": topic, "records": records, "partitions": partitions, "consumers": consumers,
            "record_bytes": record_bytes, "produce_s": round(produce_s, 3),
            "join_to_first_record_s": round(first_record - join_started, 3),
            "consume_s": round(last_record - first_record, 3),
            "records_per_s": round(records / max(last_record - first_record, 1e-9)),
        }
        everything = {TopicPartition(topic, p) for p in range(partitions)}
        if consumers >= 2:
            result["rebalance_after_crash_s"] = await _time_rebalance(members, readers, 0, everything, crash=True,
                                                                      timeout_s=timeout_s)
        if consumers >= 3:
            result["rebalance_after_leave_s"] = await _time_rebalance(members, readers, 1, everything, crash=False,
                                                                      timeout_s=timeout_s)
        return result
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for member in members:
            with contextlib.suppress(Exception):
                await member.stop()


async def _time_rebalance(members: list[GroupConsumer], readers: list[asyncio.Task[None]], index: int,
                          everything: set[TopicPartition], *, crash: bool, timeout_s: float) -> float:
    """Stop member ``index`` (crash or leave); seconds until the members after it own every partition."""
    others = members[index + 1:]
    readers[index].cancel()
    await asyncio.gather(readers[index], return_exceptions=True)
    stopped = time.monotonic()
    await members[index].stop(commit=not crash, leave=not crash)
    deadline = stopped + timeout_s
    while {tp for m in others for tp in m.assignment()} != everything:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the partitions were not owned again within {timeout_s:.0f} s")
        await asyncio.sleep(_OWNERSHIP_POLL_S)
    return round(time.monotonic() - stopped, 3)


@click.command("consume")
@click.option("--records", type=click.IntRange(1, 10_000_000), default=100_000, show_default=True)
@click.option("--partitions", type=click.IntRange(1, 256), default=6, show_default=True)
@click.option("--consumers", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--record-bytes", type=click.IntRange(0, 1_000_000), default=100, show_default=True)
@click.option("--session-timeout-ms", type=click.IntRange(100, 300_000), default=3_000, show_default=True,
              help="The members' session timeout: the floor of the rebalance time after a crash.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=300.0, show_default=True)
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Brokers of the fresh cluster (without --bootstrap).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the figures as JSON here.")
@bootstrap_option(default=None, from_env=False,
                  help_text="Use this running cluster instead of starting a fresh one (comma separated URLs).")
def consume(records: int, partitions: int, consumers: int, record_bytes: int, session_timeout_ms: int,
            timeout_s: float, nodes: int, report_path: Path | None, bootstrap: list[str] | None) -> None:
    """Consumer-group throughput and rebalance times (crash, leave) on a fresh local cluster."""

    def run(urls: list[str]) -> dict[str, Any]:
        return asyncio.run(run_consume_bench(urls, records, partitions, consumers, record_bytes,
                                             session_timeout_ms, timeout_s))

    if bootstrap:
        result = run(bootstrap)
    else:
        with fresh_cluster(nodes, ready_timeout_s=60) as cluster:
            result = run(cluster.urls)
    table = Table(title=f"raftmq bench consume: {records:,} records of {record_bytes} B, {partitions} partitions, "
                        f"{consumers} consumers, session timeout {session_timeout_ms} ms", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("consume throughput", f"{result['records_per_s']:,} records/s")
    table.add_row("consume time (first to last record)", f"{result['consume_s']:.2f} s")
    table.add_row("join to first record", f"{result['join_to_first_record_s']:.2f} s")
    for key, label in (("rebalance_after_crash_s", "crash to partitions owned again"),
                       ("rebalance_after_leave_s", "leave to partitions owned again")):
        if key in result:
            table.add_row(label, f"{result[key]:.2f} s")
    out().print(table)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps({"tool": "raftmq bench consume", "command": ["raftmq", *sys.argv[1:]],
                                           **result}, indent=2) + "\n")
        err().print(f"report written to {report_path}")
