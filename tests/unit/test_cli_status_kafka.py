"""`raftmq cluster status` shows each broker's Kafka address under its URL, as the brokers list it in
/v1/metadata (``brokers[].kafka``), and nothing for a broker without a Kafka listener."""

from __future__ import annotations

from rich.console import Console

from raftmq.cli.cluster_status import BrokerState, ClusterSnapshot, _pick_partitions, kafka_address, render_status


def test_the_kafka_address_of_each_broker_is_shown_under_its_url() -> None:
    listed = [{"id": 1, "url": "http://127.0.0.1:9101", "kafka": "127.0.0.1:9092"},
              {"id": 2, "url": "http://127.0.0.1:9102", "kafka": None}]
    metadata = {"broker_id": 1, "controller_id": 1, "metadata": {"term": 1}, "brokers": listed, "topics": []}
    states = [BrokerState("http://127.0.0.1:9101", 1, True, True, None, metadata),
              BrokerState("http://127.0.0.1:9102", 2, False)]
    snapshot = ClusterSnapshot(states, *_pick_partitions(states))
    assert kafka_address(snapshot, 1) == "127.0.0.1:9092"
    assert kafka_address(snapshot, 2) is None and kafka_address(snapshot, 3) is None
    console = Console(width=220, record=True, color_system=None)
    console.print(render_status(snapshot))
    text = console.export_text()
    assert text.count("kafka 127.0.0.1:9092") == 1 and "kafka None" not in text
