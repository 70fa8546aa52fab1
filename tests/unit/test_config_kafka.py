"""The Kafka listener's config keys: kafka_listen, kafka_advertised (default kafka_listen) and each
[[brokers]] entry's ``kafka`` address; bad values fail at start naming the key; a rendered config parses
back to the same value."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from raftmq.cluster.errors import InvalidConfig
from raftmq.node.config import PeerAddress, load_config, parse_config, render_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "node.example.toml"


def _raw() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_example_names_every_brokers_kafka_address() -> None:
    config = load_config(EXAMPLE)
    assert config.kafka_listen == PeerAddress("0.0.0.0", 9092)
    assert config.kafka_address == PeerAddress("broker1.internal", 9092)
    assert [str(b.kafka) for b in config.brokers] == [f"broker{i}.internal:9092" for i in (1, 2, 3)]


def test_without_kafka_keys_there_is_no_listener_and_advertised_defaults_to_listen(tmp_path: Path) -> None:
    raw = _raw()
    del raw["kafka_listen"], raw["kafka_advertised"]
    assert parse_config(raw).kafka_address is None
    raw["kafka_listen"] = "127.0.0.1:19092"
    config = parse_config(raw)
    assert config.kafka_address == PeerAddress("127.0.0.1", 19092)
    path = tmp_path / "node.toml"
    path.write_text(render_config(replace(config, data_dir=tmp_path)))
    assert load_config(path) == replace(config, data_dir=tmp_path)


@pytest.mark.parametrize(("change", "key"), [
    (lambda c: c.update(kafka_listen="nohost"), "kafka_listen"),
    (lambda c: c.update(kafka_listen=9092), "kafka_listen"),
    (lambda c: c.update(kafka_advertised="host:99999"), "kafka_advertised"),
    (lambda c: c.pop("kafka_listen"), "kafka_advertised"),  # advertised without a listener
    (lambda c: c["brokers"][1].update(kafka="broker2"), "brokers[1].kafka"),
])
def test_bad_kafka_keys_are_rejected_with_the_key(change: Any, key: str) -> None:
    raw = _raw()
    change(raw)
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)
    assert key in str(caught.value)
