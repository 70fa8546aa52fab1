"""What ``raftmq bench idle`` and ``raftmq bench failover`` share: a fresh local cluster in a temporary
folder (deploy/local_cluster.py, stopped and removed afterwards), topics totalling N partitions, a bounded
wait with progress until every partition has a leader, and /proc samples of every broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raftmq.cli.bench_stats import PartitionKey, ProcSample, read_proc, split_partitions
from raftmq.cli.common import CommandFailed, err
from raftmq.client.admin import Admin
from raftmq.client.metadata import ClusterMetadata
from raftmq.cluster import limits
from raftmq.cluster.errors import RaftMQError

if TYPE_CHECKING:  # imported when a cluster starts: the rest of the CLI starts without the deploy room
    from raftmq.deploy.local_cluster import LocalCluster

# Brokers get this long after SIGTERM to stop cleanly before they are killed (as bench produce).
_CLUSTER_STOP_S = 20.0
# The leader count is re-read this often while waiting: a metadata answer for 1,000 partitions is tens of
# kB, so polling faster only adds load to the brokers being measured.
_LEADER_POLL_S = 0.5
# One metadata request may take this long (a busy broker answers slowly, but it must answer).
_METADATA_TIMEOUT_S = 10.0


@contextlib.contextmanager
def fresh_cluster(nodes: int, ready_timeout_s: float) -> Iterator[LocalCluster]:
    """A new ``nodes``-broker cluster (durability always, leader balancing on) for the benchmark's life."""
    from raftmq.deploy.local_cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix="raftmq-bench-"))
    cluster = LocalCluster(root, nodes=nodes)
    try:
        with err().status(f"starting a fresh {nodes}-node cluster ..."):
            cluster.start()
            cluster.wait_ready(timeout_s=ready_timeout_s)
        yield cluster
    finally:
        with err().status("stopping the benchmark cluster ..."):
            cluster.stop(timeout_s=_CLUSTER_STOP_S)
        shutil.rmtree(root, ignore_errors=True)


def topic_names(prefix: str, total: int) -> list[tuple[str, int]]:
    """(name, partition count) of the topics holding ``total`` partitions (a topic holds at most
    ``limits.partitions_per_topic_max``)."""
    counts = split_partitions(total, limits.partitions_per_topic_max)
    return [(f"{prefix}-{index}", count) for index, count in enumerate(counts)]


async def create_topics(admin: Admin, topics: Sequence[tuple[str, int]], replication_factor: int) -> float:
    """Create every topic (the broker's answer waits up to ``limits.topic_leaders_wait_s`` for leaders);
    returns the seconds it took."""
    started = time.monotonic()
    with err().status(f"creating {len(topics)} topic(s), {sum(c for _, c in topics):,} partitions ..."):
        for name, count in topics:
            await admin.create_topic(name, count, replication_factor)
    return time.monotonic() - started


def leaders(metadata: ClusterMetadata, topics: Sequence[tuple[str, int]]) -> dict[PartitionKey, int | None]:
    """Partition -> leader id (None: none known) for the benchmark's topics, as one broker sees them."""
    wanted = {name for name, _ in topics}
    return {(topic.name, p.partition): p.leader_id for topic in metadata.topics if topic.name in wanted
            for p in topic.partitions}


async def wait_for_leaders(admin: Admin, topics: Sequence[tuple[str, int]], timeout_s: float,
                           *, preferred: bool = False) -> dict[PartitionKey, int | None]:
    """Poll until every partition has a leader (``preferred``: its first replica), with a progress bar;
    raises CommandFailed at the deadline. Returns partition -> leader id."""
    total = sum(count for _, count in topics)
    what = "preferred leaders" if preferred else "partitions with a leader"
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err(), transient=True) as progress:
        task = progress.add_task(what, total=total)
        while True:
            done, led = await _count_led(admin, topics, preferred)
            progress.update(task, completed=done)
            if done == total:
                return led
            if time.monotonic() >= deadline:
                raise CommandFailed("TIMEOUT", f"{done:,} of {total:,} {what} after {timeout_s:.0f} s",
                                    "raise --timeout, or measure fewer partitions")
            await asyncio.sleep(_LEADER_POLL_S)  # poll interval, bounded by the deadline above


async def _count_led(admin: Admin, topics: Sequence[tuple[str, int]],
                     preferred: bool) -> tuple[int, dict[PartitionKey, int | None]]:
    try:
        metadata = await admin.metadata(timeout_s=_METADATA_TIMEOUT_S)
    except RaftMQError:
        return 0, {}  # a broker too busy to answer counts as no progress; the deadline still holds
    led = leaders(metadata, topics)
    first = {(t.name, p.partition): (p.replicas[0] if p.replicas else None)
             for t in metadata.topics for p in t.partitions}
    done = sum(1 for key, leader in led.items()
               if leader is not None and (not preferred or leader == first.get(key)))
    return done, led


def sample_brokers(cluster: LocalCluster) -> dict[int, ProcSample]:
    """A /proc sample of every running broker (brokers that are gone are left out)."""
    samples: dict[int, ProcSample] = {}
    for broker_id, node in cluster.nodes.items():
        pid = node.pid
        sample = read_proc(pid) if pid is not None else None
        if sample is not None:
            samples[broker_id] = sample
    return samples


def hosted_counts(metadata: ClusterMetadata, topics: Sequence[tuple[str, int]]) -> dict[int, int]:
    """Broker id -> replicas of the benchmark's partitions it hosts."""
    wanted = {name for name, _ in topics}
    counts: dict[int, int] = {}
    for topic in metadata.topics:
        if topic.name in wanted:
            for partition in topic.partitions:
                for broker_id in partition.replicas:
                    counts[broker_id] = counts.get(broker_id, 0) + 1
    return counts
