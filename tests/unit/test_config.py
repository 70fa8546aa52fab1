"""Node configuration: the shipped example loads; a bad file fails with INVALID_CONFIG naming the key; a rendered
config parses back to the same value."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from raftmq.cluster.errors import InvalidConfig
from raftmq.node.config import Durability, PeerAddress, load_config, parse_config, prepare_for_start, render_config

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
    (lambda c: c.update(peer_listen="10.0.0.1:70000"), "peer_listen"),
    (lambda c: c.update(client_listen="0.0.0.0:0"), "client_listen"),
    (lambda c: c.update(client_listen="0.0.0.0:\u00b2"), "client_listen"),
    (lambda c: c.update(cluster_secret="x"), "cluster_secret_file"),  # both set
    (lambda c: c.update(http_connections_max=1), "http_connections_max"),
    (lambda c: c.update(allow_insecure_peers="no"), "allow_insecure_peers"),
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


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(EXAMPLE.read_bytes().replace(b"# One raftmq", b"# \xe9 One raftmq"))
    with pytest.raises(InvalidConfig, match="UTF-8"):
        load_config(path)


def test_a_reachable_peer_port_needs_a_secret(tmp_path: Path) -> None:
    raw = _base()
    raw.pop("cluster_secret_file")
    config = parse_config(raw)
    with pytest.raises(InvalidConfig) as caught:
        prepare_for_start(config)
    assert caught.value.details["key"] == "cluster_secret"
    assert prepare_for_start(replace(config, allow_insecure_peers=True)).cluster_secret == ""
    loopback = replace(config, peer_listen=PeerAddress("127.0.0.1", 9201))
    assert prepare_for_start(loopback).cluster_secret == ""
    assert prepare_for_start(replace(config, cluster_secret="s")).cluster_secret == "s"


def test_the_secret_file_is_read_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    raw = _base()
    raw["cluster_secret_file"] = str(secret)
    config = parse_config(raw)
    with pytest.raises(InvalidConfig, match="cannot be read") as caught:
        prepare_for_start(config)
    assert caught.value.details["key"] == "cluster_secret_file"
    secret.write_text("  \n")
    with pytest.raises(InvalidConfig, match="empty"):
        prepare_for_start(config)
    secret.write_text("abc123\n")
    assert prepare_for_start(config).cluster_secret == "abc123"


def test_rendered_strings_cannot_break_out_of_their_quotes(tmp_path: Path) -> None:
    raw = _base()
    raw.pop("cluster_secret_file")
    raw["cluster_secret"] = 'a"b\\c\nd = 1'
    raw["cluster_id"] = "id with \"quotes\" and \u00e9"
    config = parse_config(raw)
    path = tmp_path / "node.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config
