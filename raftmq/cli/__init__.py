"""The ``raftmq`` command line (console script ``raftmq = raftmq.cli:main``).

    raftmq cluster up | status | drain  a local cluster in the foreground; brokers, moves, partitions;
                                        moving every replica off a broker
    raftmq topic create | list | describe | alter | delete
    raftmq produce TOPIC                stdin lines or --count generated records; a summary at the end
    raftmq consume TOPIC                print records (text or JSON lines), optionally --follow
    raftmq node start --config FILE     run one broker (same as python -m raftmq.node)
    raftmq bench produce                producer throughput and latency, JSON report
    raftmq bench idle | failover        idle cost of N partitions; per-partition failover after a kill
    raftmq demo                         a three-node cluster, a leader kill, and a correctness check
    raftmq chaos ...                    fault-injection scenarios (when the chaos package provides them)

Exit codes: 0 success; 1 a broker/cluster error or a failed check; 2 a usage or configuration error.

This is the one room allowed to compose the others: it may import client, chaos, deploy and node (the
broker's entry point, for ``raftmq node start``); nothing imports it.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import click

from raftmq.cli.bench import bench
from raftmq.cli.bench_consume import consume as bench_consume
from raftmq.cli.bench_failover import failover
from raftmq.cli.bench_idle import idle
from raftmq.cli.bench_publish import publish as bench_publish
from raftmq.cli.cluster_cmd import cluster
from raftmq.cli.common import RaftMQGroup
from raftmq.cli.consume_cmd import consume
from raftmq.cli.demo import demo
from raftmq.cli.dlt_cmd import dlt
from raftmq.cli.exchange_cmd import exchange
from raftmq.cli.group_cmd import group
from raftmq.cli.node_cmd import node
from raftmq.cli.produce_cmd import produce
from raftmq.cli.topic_cmd import topic

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _version() -> str:
    try:
        return metadata.version("raftmq")
    except metadata.PackageNotFoundError:  # running from a checkout without `pip install -e .`
        try:
            pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
            return str(tomllib.loads(pyproject.read_text())["project"]["version"]) + " (source checkout)"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


@click.group(cls=RaftMQGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(version=_version(), message="%(prog)s %(version)s")
def cli() -> None:
    """raftmq: a replicated message broker (Kafka's model, one Raft group per partition).

    Commands that talk to a cluster take --bootstrap/-b (or RAFTMQ_BOOTSTRAP); `raftmq cluster up`
    prints the value to use. Exit codes: 0 ok, 1 broker or cluster error, 2 usage or config error.
    """


bench.add_command(idle)
bench.add_command(failover)
bench.add_command(bench_consume)
bench.add_command(bench_publish)
for _command in (cluster, topic, exchange, produce, consume, group, dlt, node, bench, demo):
    cli.add_command(_command)

try:  # written separately; the CLI works without it
    from raftmq.cli.chaos_cmd import chaos

    cli.add_command(chaos)
except ImportError:
    pass


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="raftmq")


__all__ = ["cli", "main"]
