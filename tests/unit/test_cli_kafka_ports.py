"""`raftmq cluster up`'s Kafka ports: a port in use is named before anything starts, --kafka-base-port 0
turns the listeners off, the restart command it prints keeps a moved Kafka base port, and with --chaos the
Kafka listeners get fault proxies like the client ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from raftmq.deploy.local_cluster import find_free_ports

from raftmq.cli.cluster_cmd import DEFAULT_KAFKA_BASE_PORT, UpOptions, _check_ports
from raftmq.cli.common import ConfigProblem


def test_a_kafka_port_in_use_is_named_and_base_port_0_checks_none() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        kafka_port = taken.getsockname()[1]
        base = find_free_ports(1)[0]
        with pytest.raises(ConfigProblem, match=f"port {kafka_port} \\(Kafka port of broker 1\\)"):
            _check_ports(1, base, None, kafka_base_port=kafka_port)
        _check_ports(1, base, None, kafka_base_port=0)


def test_the_restart_command_keeps_a_moved_kafka_base_port(tmp_path: Path) -> None:
    moved = UpOptions(3, tmp_path, 9101, "always", False, 60.0, kafka_base_port=19092)
    assert "--kafka-base-port 19092" in moved.restart_command()
    default = UpOptions(3, tmp_path, 9101, "always", False, 60.0, kafka_base_port=DEFAULT_KAFKA_BASE_PORT)
    assert "--kafka-base-port" not in default.restart_command()


def test_a_chaos_cluster_opens_kafka_listeners_behind_proxies(tmp_path: Path) -> None:
    from raftmq.cli.cluster_cmd import _LocalRun

    options = UpOptions(3, tmp_path, 9101, "always", True, 60.0, kafka_base_port=19092)
    local = _LocalRun.create(options)
    assert local.harness is not None
    assert [node.kafka_port for node in local.nodes.values()] == [19092, 19093, 19094]
    wanted = [proxy for n in local.nodes for proxy in local.harness._client_wanted(n)]
    assert [(name, upstream) for name, kind, upstream, _ in wanted if kind == "kafka"] == [
        ("kafka_n1", "127.0.0.1:19092"), ("kafka_n2", "127.0.0.1:19093"), ("kafka_n3", "127.0.0.1:19094")]
    assert "--kafka-base-port 19092" in options.restart_command() and "--chaos" in options.restart_command()
    off = _LocalRun.create(UpOptions(3, tmp_path / "off", 9101, "always", True, 60.0, kafka_base_port=0))
    assert all(node.kafka_port is None for node in off.nodes.values())
