"""``raftmq bench publish``: exchange publish throughput with 1, 3 and 10 bindings next to plain produce.

On a fresh local cluster (or ``--bootstrap``): ``max(--bindings)`` topics of one partition each (replication
factor ``min(3, brokers)``, leaders spread by the controller) and one fanout exchange per binding count,
bound to that many of the topics. Then, for ``--seconds`` each, ``--clients`` concurrent HTTP clients send one
``--record-bytes`` record per request at acks=all:

* plain produce: ``POST /v1/topics/{topic}/partitions/0/records`` to the topic's leader (what a producer
  does), one topic per client in turn;
* publish with N bindings: ``POST /v1/exchanges/{exchange}/publish`` to the first broker, with a
  ``publish_id`` (idempotent, as ``ExchangePublisher`` sends it), so each request is N appends.

The modes take turns for ``--rounds`` rounds (so a burst of other work on the machine hits them alike), and
each mode reports the median round: requests/s, appends/s (requests x bindings), and every error seen (a
plain produce that meets NOT_LEADER, a leader moved by leader balancing, follows it, as a producer does).
One request per record on purpose: it measures the per-publish cost (routing, fan-out, forwarding), not
batching.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import click
import msgpack
from rich.table import Table

from raftmq.cli.bench_cluster import fresh_cluster
from raftmq.cli.common import bootstrap_option, err, out
from raftmq.client.admin import Admin
from raftmq.client.metadata import ClusterMetadata

_MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
# One request's deadline (an acks=all append normally takes milliseconds; this bounds a stuck one).
_REQUEST_TIMEOUT_S = 10.0
# Error codes kept per mode in the report (the first ones seen; the count is always complete).
_ERRORS_KEPT = 5
# How often the leaders are re-read while waiting for them to settle (a resolution, not an ordering wait).
_LEADER_POLL_S = 0.2


async def _setup(bootstrap: list[str], prefix: str, bindings: list[int], timeout_s: float) -> list[str]:
    topics = [f"{prefix}-{index}" for index in range(max(bindings))]
    async with Admin(bootstrap) as admin:
        brokers = len((await admin.metadata()).brokers)
        for topic in topics:
            await admin.create_topic(topic, 1, min(3, brokers))
        for topic in topics:
            await admin.wait_for_topic(topic, timeout_s=timeout_s)
        for count in bindings:
            await admin.create_exchange(f"{prefix}-x{count}", "fanout")
            for topic in topics[:count]:
                await admin.bind(f"{prefix}-x{count}", topic)
    return topics


async def _settled_leaders(bootstrap: list[str], topics: list[str], timeout_s: float) -> dict[str, str]:
    """Each topic's leader URL once every topic is led by its preferred replica (the controller moves
    leadership there after a creation; a measurement during those moves would count the elections), or
    as they are when ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    async with Admin(bootstrap) as admin:
        while True:
            meta: ClusterMetadata = await admin.metadata()
            urls = {b.broker_id: b.url for b in meta.brokers}
            parts = [info.partitions[0] for t in topics if (info := meta.topic(t)) is not None]
            settled = len(parts) == len(topics) and all(p.leader_id == p.replicas[0] for p in parts)
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(_LEADER_POLL_S)
    leaders = {}
    for part in parts:
        if part.leader_id is None or part.leader_id not in urls:
            raise click.ClickException(f"topic {part.topic} has no leader: the cluster is not ready")
        leaders[part.topic] = urls[part.leader_id]
    return leaders


async def _load(session: aiohttp.ClientSession, clients: int, seconds: float, request: Any,
                refused: Any = None) -> dict[str, Any]:
    """``clients`` loops sending ``request(client, n) -> (url, body)`` for ``seconds``; counts and errors.
    ``refused(client, error)`` sees each coded refusal (a producer follows NOT_LEADER to the new leader)."""
    ok = 0
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def loop(client: int) -> None:
        nonlocal ok
        sent = 0
        while time.monotonic() < deadline:
            url, body = request(client, sent)
            sent += 1
            try:
                async with session.post(url, data=msgpack.packb(body, use_bin_type=True), headers=_MSGPACK,
                                        timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S)) as response:
                    answer = msgpack.unpackb(await response.read(), raw=False)
                if response.status == 200:
                    ok += 1
                    continue
                error = answer.get("error") if isinstance(answer, dict) else None
                code = str(error.get("code") if isinstance(error, dict) else response.status)
                if refused is not None and isinstance(error, dict):
                    refused(client, error)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                code = type(exc).__name__
            errors[code] = errors.get(code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(loop(client) for client in range(clients)))
    elapsed = time.monotonic() - started
    return {"requests": ok, "seconds": round(elapsed, 3), "requests_per_s": round(ok / elapsed, 1),
            "errors": sum(errors.values()), "error_codes": dict(sorted(errors.items())[:_ERRORS_KEPT])}


async def run_publish_bench(bootstrap: list[str], bindings: list[int], clients: int, seconds: float,
                            record_bytes: int, timeout_s: float, rounds: int = 1) -> dict[str, Any]:
    prefix = f"bench-pub-{uuid.uuid4().hex[:6]}"
    topics = await _setup(bootstrap, prefix, bindings, timeout_s)
    leaders = await _settled_leaders(bootstrap, topics, timeout_s)
    value = b"x" * record_bytes
    publish_url = bootstrap[0].rstrip("/")
    modes: list[tuple[str, int, Any, Any]] = []  # name, bindings, request, refused
    async with aiohttp.ClientSession() as session:
        def produce(client: int, _n: int) -> tuple[str, dict[str, Any]]:
            topic = topics[client % len(topics)]
            return (f"{leaders[topic].rstrip('/')}/v1/topics/{topic}/partitions/0/records",
                    {"records": [{"value": value}], "acks": "all"})

        def moved(client: int, error: dict[str, Any]) -> None:
            """Leader balancing may move a leader during the run: follow it, as a producer does."""
            url = (error.get("details") or {}).get("leader_url")
            if error.get("code") == "NOT_LEADER" and isinstance(url, str):
                leaders[topics[client % len(topics)]] = url

        modes.append(("plain produce", 1, produce, moved))
        for count in bindings:
            exchange = f"{prefix}-x{count}"

            def publish(client: int, n: int, exchange: str = exchange) -> tuple[str, dict[str, Any]]:
                return (f"{publish_url}/v1/exchanges/{exchange}/publish",
                        {"routing_key": "", "records": [{"value": value}], "acks": "all",
                         "publish_id": f"{client}-{n}-{uuid.uuid4().hex[:8]}"})

            modes.append((f"publish, {count} binding{'s' if count > 1 else ''}", count, publish, None))
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _count, _request, _refused in modes}
        for _round in range(rounds):
            for name, _count, request, refused in modes:
                measured[name].append(await _load(session, clients, seconds, request, refused))
    runs = []
    for name, count, _request, _refused in modes:
        rounds_of = sorted(measured[name], key=lambda r: r["requests_per_s"])
        median = rounds_of[len(rounds_of) // 2]
        errors: dict[str, int] = {}
        for one in rounds_of:
            for code, seen in one["error_codes"].items():
                errors[code] = errors.get(code, 0) + seen
        runs.append({"mode": name, "bindings": count, **median,
                     "appends_per_s": round(median["requests_per_s"] * count, 1),
                     "requests_per_s_rounds": [r["requests_per_s"] for r in measured[name]],
                     "errors": sum(r["errors"] for r in rounds_of), "error_codes": errors})
    return {"clients": clients, "seconds": seconds, "rounds": rounds, "record_bytes": record_bytes,
            "topics": len(topics), "runs": runs}


def _bindings(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter("comma-separated binding counts, e.g. 1,3,10") from None
    if not counts or counts[0] < 1 or counts[-1] > 100:
        raise click.BadParameter("binding counts are between 1 and 100")
    return counts


@click.command("publish")
@click.option("--bindings", "bindings_text", default="1,3,10", show_default=True,
              help="Binding counts to measure (one fanout exchange each).")
@click.option("--clients", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--seconds", type=click.FloatRange(0.5, 600), default=3.0, show_default=True,
              help="How long each mode runs.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="The modes take turns this many times; each reports its median round.")
@click.option("--record-bytes", type=click.IntRange(0, 100_000), default=100, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Setting up the topics may take this long.")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Brokers of the fresh cluster (without --bootstrap).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the figures as JSON here.")
@bootstrap_option(default=None, from_env=False,
                  help_text="Use this running cluster instead of starting a fresh one (comma separated URLs).")
def publish(bindings_text: str, clients: int, seconds: float, rounds: int, record_bytes: int, timeout_s: float,
            nodes: int, report_path: Path | None, bootstrap: list[str] | None) -> None:
    """Exchange publish throughput (1, 3, 10 bindings) next to plain produce, one record per request."""
    bindings = _bindings(bindings_text)

    def run(urls: list[str]) -> dict[str, Any]:
        return asyncio.run(run_publish_bench(urls, bindings, clients, seconds, record_bytes, timeout_s, rounds))

    if bootstrap:
        result = run(bootstrap)
    else:
        with fresh_cluster(nodes, ready_timeout_s=60) as cluster:
            result = run(cluster.urls)
    table = Table(title=f"raftmq bench publish: {clients} clients, {rounds} round(s) of {seconds:g} s per mode "
                        f"(median shown), one {record_bytes} B record per request, acks=all", title_justify="left")
    for column in ("what", "requests/s", "appends/s", "errors"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for row in result["runs"]:
        table.add_row(row["mode"], f"{row['requests_per_s']:,.0f}", f"{row['appends_per_s']:,.0f}",
                      f"{row['errors']:,}" + (f" {row['error_codes']}" if row["errors"] else ""))
    out().print(table)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps({"tool": "raftmq bench publish", "command": ["raftmq", *sys.argv[1:]],
                                           **result}, indent=2) + "\n")
        err().print(f"report written to {report_path}")
