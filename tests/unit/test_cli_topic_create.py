"""`raftmq topic create`: the wait for leaders shows progress and scales with the partition count; a big topic
is summarised per broker instead of a row per partition.

Method: the CLI (click's runner, in a thread) against an in-process cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from raftmq.client.admin import Admin

from raftmq.cli import cli
from tests.inprocess import InProcessCluster

pytestmark = pytest.mark.asyncio


async def test_a_big_topic_is_summarised_per_broker_and_a_small_one_listed(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        async def run(*args: str) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, "-b", cluster.urls[0]],
                                             env={"COLUMNS": "200"})
            assert result.exit_code == 0, result.output
            return result.stdout

        big = await run("topic", "create", "big", "--partitions", "80")
        assert "80 partitions, by broker (`raftmq cluster status` lists each partition)" in big and "leads" in big
        assert big.count("\n") < 20  # three broker rows, not eighty partition rows
        small = await run("topic", "create", "small", "--partitions", "3")
        assert "electing" in small or all(f" {p} " in small for p in range(3))
        assert "by broker" not in small

        seen: list[tuple[int, int]] = []
        async with Admin(cluster.urls) as admin:
            await admin.wait_for_topic("big", timeout_s=10, on_progress=lambda led, total: seen.append((led, total)))
        assert seen and seen[-1] == (80, 80)
