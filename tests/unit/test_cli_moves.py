"""`raftmq cluster drain` and `raftmq topic alter` against a scripted controller: what they ask, the progress
they show, their exit codes and messages (done, refused, cancelled meanwhile, timed out, Ctrl-C).

Method: click's CliRunner against tests/unit/fake_controller.py; a drain advances one step per controller
poll (``on_metadata``), and the poll interval is lowered, so nothing waits on time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner, Result

from raftmq.cli import cli, cluster_moves, topic_cmd
from raftmq.cli.cluster_moves import DURATION, EXIT_INTERRUPTED
from tests.unit.fake_controller import FakeCluster, partition


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    monkeypatch.setattr(cluster_moves, "POLL_INTERVAL_S", 0.001)
    monkeypatch.setattr(topic_cmd, "POLL_INTERVAL_S", 0.001)
    with FakeCluster(brokers=4, controller_id=1) as cluster:
        cluster.topics = [{"name": "orders", "topic_id": 7, "replication_factor": 3, "config": {},
                           "partitions": [partition(0, [1, 2, 3]), partition(1, [3, 1, 2]), partition(2, [1, 2, 4])]}]
        yield cluster


def run(cluster: FakeCluster, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-b", cluster.urls[1]], env={"COLUMNS": "200"})


def test_drain_waits_until_the_broker_hosts_nothing(fake: FakeCluster) -> None:
    fake.on_metadata = lambda cluster: cluster.step_drain(3, spare=4)
    result = run(fake, "cluster", "drain", "3", "--timeout", "30s")
    assert result.exit_code == 0, result.output
    assert "broker 3 is draining" in result.stdout
    assert "broker 3 hosts no replicas" in result.stdout and "can now be stopped" in result.stdout
    assert "broker 3 (draining): 0 replica(s) left, 0 move(s) running" in result.stderr  # the last progress frame
    assert fake.hosted(3) == [] and fake.calls_to("POST", "/v1/brokers/3/drain")[0].broker_id == 1


def test_drain_no_wait_returns_after_asking(fake: FakeCluster) -> None:
    result = run(fake, "cluster", "drain", "3", "--no-wait")
    assert result.exit_code == 0, result.output
    assert "broker 3 is draining" in result.stdout and "raftmq cluster status" in result.stdout
    assert fake.states[3] == "draining"


def test_a_refused_drain_shows_the_message_and_what_to_do(fake: FakeCluster) -> None:
    fake.fail("POST", "/v1/brokers/3/drain", "NOT_ENOUGH_BROKERS", 409,
              "the other live brokers (1, 2) cannot hold replication factor 3", replication_factor=3)
    result = run(fake, "cluster", "drain", "3")
    assert result.exit_code == 1
    assert "NOT_ENOUGH_BROKERS" in result.stderr and "cannot hold replication factor 3" in result.stderr
    assert "the drain of broker 3 was refused" in result.stderr
    assert "raftmq cluster add-broker" in result.stderr  # the hint
    unknown = run(fake, "cluster", "drain", "9")
    assert unknown.exit_code == 1 and "UNKNOWN_BROKER" in unknown.stderr and "cluster status" in unknown.stderr


def test_cancel(fake: FakeCluster) -> None:
    fake.states[3] = "draining"
    result = run(fake, "cluster", "drain", "3", "--cancel")
    assert result.exit_code == 0, result.output
    assert "the drain of broker 3 is cancelled" in result.stdout and fake.states[3] == "alive"


def test_a_drain_cancelled_meanwhile_exits_1(fake: FakeCluster) -> None:
    def cancel(cluster: FakeCluster) -> None:
        cluster.states[3] = "alive"

    fake.on_metadata = cancel
    result = run(fake, "cluster", "drain", "3")
    assert result.exit_code == 1
    assert "DRAIN_CANCELLED" in result.stderr and "raftmq cluster drain 3" in result.stderr


def test_a_drain_that_does_not_end_times_out_and_says_it_goes_on(fake: FakeCluster) -> None:
    result = run(fake, "cluster", "drain", "3", "--timeout", "200ms")
    assert result.exit_code == 1
    assert "DRAIN_TIMEOUT" in result.stderr and "--cancel" in result.stderr
    assert fake.states[3] == "draining"


def test_ctrl_c_leaves_the_drain_running(fake: FakeCluster) -> None:
    main_pid = os.getpid()

    def interrupt(cluster: FakeCluster) -> None:
        os.kill(main_pid, signal.SIGINT)  # as Ctrl-C would, while the command waits

    fake.on_metadata = interrupt
    result = run(fake, "cluster", "drain", "3", "--timeout", "30s")
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "the drain of broker 3 goes on" in result.stderr and "raftmq cluster drain 3 --cancel" in result.stderr
    assert fake.states[3] == "draining" and not fake.calls_to("DELETE", "/drain")


def test_topic_alter_waits_for_the_moves(fake: FakeCluster) -> None:
    polls = 0

    def shrink(cluster: FakeCluster) -> None:
        nonlocal polls
        polls += 1
        for part in cluster.topics[0]["partitions"]:
            if polls == 1:
                part["target"] = part["replicas"][:2]
            else:
                part["replicas"], part["target"] = part["replicas"][:2], None
        cluster.moves = [] if polls > 1 else [
            {"topic": "orders", "partition": 0, "replicas": [1, 2, 3], "target": [1, 2],
             "reason": "replication_factor", "adding": None, "removing": 3}]

    fake.on_metadata = shrink
    result = run(fake, "topic", "alter", "orders", "--replication-factor", "2", "--partitions", "3")
    assert result.exit_code == 0, result.output
    assert fake.calls_to("PATCH", "/v1/topics/orders")[0].body == {"partitions": 3, "replication_factor": 2}
    assert "topic orders altered" in result.stdout and "moves ended" in result.stdout
    assert "1 move(s) running" in result.stderr or "0 move(s) running" in result.stderr


def test_topic_alter_no_wait_and_errors(fake: FakeCluster) -> None:
    result = run(fake, "topic", "alter", "orders", "-p", "5", "--no-wait")
    assert result.exit_code == 0, result.output
    assert "moves may still run" in result.stdout and len(fake.topics[0]["partitions"]) == 5
    assert run(fake, "topic", "alter", "orders").exit_code == 2  # nothing asked
    fake.fail("PATCH", "/v1/topics/orders", "NOT_ENOUGH_BROKERS", 409, "only 4 live brokers")
    refused = run(fake, "topic", "alter", "orders", "-r", "5")
    assert refused.exit_code == 1 and "NOT_ENOUGH_BROKERS" in refused.stderr and "only 4" in refused.stderr
    stuck = run(fake, "topic", "alter", "orders", "-r", "2", "--timeout", "0.2s")
    assert stuck.exit_code == 1 and "ALTER_TIMEOUT" in stuck.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0),
                                               ("250ms", 0.25), ("2 min", 120.0)])
def test_durations(text: str, seconds: float) -> None:
    assert DURATION.convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["", "ten", "-5s", "0", "5 days"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(click.BadParameter):
        DURATION.convert(text, None, None)
