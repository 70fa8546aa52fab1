"""``raftmq bench publish`` (raftmq/cli/bench_publish.py) on an in-process cluster: every mode runs, counts
only acknowledged requests, and each acknowledged publish is an append in every bound topic.

Method: a short run (0.5 s per mode, 2 clients) against real brokers; the topics' logs are read afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from raftmq.cli import cli
from raftmq.cli.bench_publish import run_publish_bench
from tests.inprocess import InProcessCluster


@pytest.mark.asyncio
async def test_every_mode_runs_and_each_publish_is_one_append_per_binding(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        result = await run_publish_bench(cluster.urls, [1, 3], clients=2, seconds=0.5, record_bytes=10,
                                         timeout_s=30)
        runs = {run["mode"]: run for run in result["runs"]}
        assert list(runs) == ["plain produce", "publish, 1 binding", "publish, 3 bindings"]
        assert all(run["requests"] > 0 and run["errors"] == 0 for run in runs.values()), runs
        assert runs["publish, 3 bindings"]["appends_per_s"] == \
            pytest.approx(3 * runs["publish, 3 bindings"]["requests_per_s"])
        names = sorted(t for t in cluster.service(1).metadata.view if t.startswith("bench-pub-"))
        stored = [len(cluster.stored(name, 0)) for name in names]
        plain, published_1, published_3 = (runs[mode]["requests"] for mode in runs)
        # Plain produce went to topics 0 and 1 (client n -> topic n); topic 2 is bound only to the 3-exchange.
        assert stored[2] == published_3
        assert sum(stored) == plain + published_1 + 3 * published_3


def test_binding_counts_are_checked() -> None:
    for bad in ("0", "x", "1,200", ""):
        result = CliRunner().invoke(cli, ["bench", "publish", "--bindings", bad, "-b", "http://127.0.0.1:1"])
        assert result.exit_code == 2, (bad, result.output)
