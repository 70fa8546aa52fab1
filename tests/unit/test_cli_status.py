"""`raftmq cluster status`: which broker's view each partition row shows, and how it is rendered."""

from __future__ import annotations

from typing import Any

from raftmq.cluster.errors import ConnectionFailed
from rich.console import Console

from raftmq.cli.cluster_cmd import BrokerState, ClusterSnapshot, _pick_partitions, render_status


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
