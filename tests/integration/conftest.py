"""Real broker processes on loopback (deploy/local_cluster.py), one cluster per test module unless a test
needs its own (kills, restarts)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq.deploy.local_cluster import LocalCluster


def start_cluster(root: Path, nodes: int = 3, **kwargs: object) -> LocalCluster:
    # Tests that pick "the leader" and then act on it must not see leadership move to the preferred
    # replica underneath them; the rebalance has its own test.
    kwargs.setdefault("leader_rebalance", False)
    cluster = LocalCluster(root, nodes=nodes, python=sys.executable, **kwargs)  # type: ignore[arg-type]
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=30)
    except BaseException:
        cluster.stop()
        for broker_id in cluster.nodes:
            print(f"--- broker {broker_id} log ---\n{cluster.tail_log(broker_id, 60)}")
        raise
    return cluster


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
        failed = [b for b, n in cluster.nodes.items()
                  if n.process is not None and n.process.returncode not in (0, -9, None)]
        for broker_id in failed:
            print(f"--- broker {broker_id} exited with {cluster.nodes[broker_id].process.returncode} ---")  # type: ignore[union-attr]
            print(cluster.tail_log(broker_id, 60))
