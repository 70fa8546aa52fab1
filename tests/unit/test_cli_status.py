"""`raftmq cluster status`: which broker's view each partition row shows, and how it is rendered (broker
states, moves, under-replicated and leaderless partitions)."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner
from raftmq.cluster.errors import ConnectionFailed
from rich.console import Console

from raftmq.cli import cli
from raftmq.cli.cluster_status import BrokerState, ClusterSnapshot, _pick_partitions, cluster_view, render_status
from tests.unit.fake_controller import FakeCluster, partition


def part(partition: int, role: str, epoch: int, leader: int | None, hw: int) -> dict[str, Any]:
    return {"partition": partition, "replicas": [1, 2, 3], "leader_id": leader, "leader_epoch": epoch,
            "isr": [1, 2, 3] if role == "leader" else [], "role": role, "commit_index": hw + 2,
            "applied_index": hw + 2, "high_watermark": hw, "log_start_offset": 0, "size_bytes": 10 * hw}


def broker(broker_id: int, partitions: list[dict[str, Any]], controller: int = 1) -> BrokerState:
    metadata = {"broker_id": broker_id, "controller_id": controller, "metadata": {"term": 2},
                "brokers": [{"id": i, "url": f"http://127.0.0.1:{9100 + i}"} for i in (1, 2, 3)],
                "topics": [{"name": "orders", "topic_id": 1, "replication_factor": 3, "config": {},
                            "partitions": partitions}]}
    return BrokerState(f"http://127.0.0.1:{9100 + broker_id}", broker_id, True, True, None, metadata)


def test_the_leaders_view_wins_and_the_newest_epoch_breaks_ties() -> None:
    brokers = [
        broker(1, [part(0, "leader", 3, 1, 50), part(1, "follower", 4, 2, 10)]),
        broker(2, [part(0, "follower", 3, 1, 40), part(1, "leader", 4, 2, 70)]),
        # broker 3 still believes it leads partition 1 (a deposed leader at an older epoch)
        broker(3, [part(0, "follower", 3, 1, 45), part(1, "leader", 2, 3, 60)]),
    ]
    _, rows = _pick_partitions(brokers)
    p0, p1 = rows["orders"]
    assert (p0.source_id, p0.view["high_watermark"], p0.has_leader) == (1, 50, True)
    assert (p1.source_id, p1.view["high_watermark"], p1.view["leader_epoch"]) == (2, 70, 4)


def test_a_partition_nobody_leads_is_flagged_with_the_last_known_leader() -> None:
    brokers = [broker(2, [part(0, "follower", 5, 1, 40)]), broker(3, [part(0, "candidate", 6, None, 41)])]
    _, rows = _pick_partitions(brokers)
    (row,) = rows["orders"]
    assert not row.has_leader and row.view["leader_epoch"] == 6
    dead = BrokerState("http://127.0.0.1:9101", 1, False, None, ConnectionFailed("refused"))
    console = Console(width=200, record=True, color_system=None)
    console.print(render_status(ClusterSnapshot([dead, *brokers], *_pick_partitions(brokers))))
    text = console.export_text()
    assert "no (CONNECTION_FAILED)" in text
    assert "none" in text and "without a reachable leader: orders/0" in text


def text_of(snapshot: ClusterSnapshot) -> str:
    console = Console(width=220, record=True, color_system=None)
    console.print(render_status(snapshot))
    return console.export_text()


def test_broker_states_moves_and_under_replicated_partitions_are_shown() -> None:
    with FakeCluster(brokers=4, controller_id=1) as cluster:
        cluster.states.update({2: "fenced", 3: "draining", 4: "removed"})
        cluster.topics = [{"name": "orders", "topic_id": 1, "replication_factor": 3, "config": {},
                           "partitions": [partition(0, [1, 2, 3], target=[1, 3, 4]), partition(1, [1, 3, 4]),
                                          partition(2, [1, 3, 4], isr=[1, 3])]}]
        cluster.moves = [{"topic": "orders", "partition": 0, "replicas": [1, 2, 3], "target": [1, 3, 4],
                          "reason": "heal", "adding": 4, "removing": 2, "running_s": 75.0,
                          "progress": {"broker": 4, "match_index": 600, "leader_last_index": 1000}}]
        states = [BrokerState(url, i + 1, True, True, None, cluster.metadata(i + 1))
                  for i, url in enumerate(cluster.urls)]
    states[1] = BrokerState(states[1].url, 2, False, None, ConnectionFailed("refused"))
    text = text_of(ClusterSnapshot(states, *_pick_partitions(states), cluster_view(states)))
    brokers = text.split("moves", 1)[0]
    assert "brokers (controller: broker 1)" in brokers
    for broker_id, state in ((1, "alive"), (2, "fenced"), (3, "draining"), (4, "removed")):
        assert f"│  {broker_id} │ {state}" in brokers
    assert "rack-1" in brokers and "controller (leader)" in brokers and "learner" in brokers
    assert "0.2 s" in brokers  # heartbeat age, from the controller's answer
    assert "no (CONNECTION_FAILED)" in brokers
    assert "moves (1 running)" in text
    assert "orders/0  │ 1,2,3 → 1,3,4" in text and "heal" in text and "1 min 15 s" in text
    assert "██████░░░░  60% 600/1,000" in text
    assert "1,2,3 → 1,3,4" in text.split("topic orders", 1)[1]  # the partition row shows the target too
    assert "under-replicated partition(s): orders/0, orders/1, orders/2" in text


def test_state_colours() -> None:
    from raftmq.client.metadata import BrokerInfo

    from raftmq.cli.cluster_status import state_cell

    cells = {s: state_cell(BrokerInfo(1, "http://h:1", state=s)) for s in ("fenced", "draining", "removed")}
    assert cells == {"fenced": "[bold red]fenced[/]", "draining": "[yellow]draining[/]", "removed": "[dim]removed[/]"}
    assert state_cell(None) == "?"


def test_status_command_asks_the_controller_it_learns_about() -> None:
    with FakeCluster(brokers=3, controller_id=3) as cluster:
        cluster.states[2] = "draining"
        cluster.topics = [{"name": "t", "topic_id": 1, "replication_factor": 3, "config": {},
                           "partitions": [partition(0, [2, 1, 3], target=[1, 3, 4])]}]
        cluster.moves = [{"topic": "t", "partition": 0, "replicas": [2, 1, 3], "target": [1, 3, 4],
                          "reason": "drain", "adding": 4, "removing": 2, "running_s": 1.0,
                          "progress": {"broker": 4, "match_index": 10, "leader_last_index": 10}}]
        result = CliRunner().invoke(cli, ["cluster", "status", "-b", cluster.urls[0]], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    assert "brokers (controller: broker 3)" in result.stdout
    assert "██████████ 100% 10/10" in result.stdout and "drain" in result.stdout
    assert {c.broker_id for c in cluster.calls_to("GET", "/v1/metadata")} == {1, 2, 3}
