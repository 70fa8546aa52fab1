"""Node configuration: the shipped example loads; a bad file fails with INVALID_CONFIG naming the key; a rendered
config parses back to the same value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cluster.errors import InvalidConfig
from node.config import load_config, parse_config, render_config
from node.replication import Durability

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "node.example.toml"


def _base() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.broker_id == 1 and config.broker_ids == [1, 2, 3]
    assert config.durability is Durability.ALWAYS
    assert config.url_of(2) == "http://broker2.internal:9101"


def test_render_round_trip(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    path = tmp_path / "node.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize("change,key", [
    (lambda c: c.pop("broker_id"), "broker_id"),
    (lambda c: c.update(broker_id=0), "broker_id"),
    (lambda c: c.update(broker_id="1"), "broker_id"),
    (lambda c: c.update(broker_id=9), "brokers"),
    (lambda c: c.update(durability="sometimes"), "durability"),
    (lambda c: c.update(flush_interval_ms=0), "flush_interval_ms"),
    (lambda c: c.update(peer_listen="nohost"), "peer_listen"),
    (lambda c: c.update(surprise=1), "surprise"),
    (lambda c: c["brokers"].append(dict(c["brokers"][0])), "brokers"),
    (lambda c: c["raft"].update(election_timeout_min_ms=200), "raft"),
    (lambda c: c["raft"].update(connection_timeout_ms=500), "raft"),
    (lambda c: c.update(log_level="loud"), "log_level"),
    (lambda c: c.update(leader_rebalance="yes"), "leader_rebalance"),
])
def test_bad_configs_are_rejected_with_the_key(change, key: str) -> None:  # type: ignore[no-untyped-def]
    raw = _base()
    change(raw)
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)
    assert key in str(caught.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("broker_id = [")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        load_config(broken)
