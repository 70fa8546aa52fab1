"""`raftmq node start` with a config it cannot use exits 2 with INVALID_CONFIG naming the key, no traceback.

Method: a real `python -m raftmq.node` process per case (a port in use, data_dir a regular file, a port of 70000, a
config that is not UTF-8, a reachable peer port without a secret, a data_dir of the earlier storage format), each
stopped by its own exit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from raftmq.deploy.local_cluster import HOST, find_free_ports
from raftmq.node.config import BrokerEntry, NodeConfig, PeerAddress, render_config

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, client_port: int, peer_port: int) -> NodeConfig:
    entry = BrokerEntry(1, PeerAddress(HOST, peer_port), f"http://{HOST}:{client_port}")
    return NodeConfig(broker_id=1, cluster_id="start-test", data_dir=tmp_path / "data",
                      client_listen=PeerAddress(HOST, client_port), peer_listen=PeerAddress(HOST, peer_port),
                      advertised_url=entry.url, brokers=(entry,))


def _run(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftmq.node", "--config", str(config_path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _expect_config_error(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "INVALID_CONFIG" in result.stderr and f"key: {key}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


Case = Callable[[Path, NodeConfig, socket.socket, socket.socket], tuple[Path, str]]


def _peer_port_in_use(tmp: Path, config: NodeConfig, client: socket.socket, peer: socket.socket) -> tuple[Path, str]:
    client.close()
    peer.listen(1)
    return _write(tmp, render_config(config)), "peer_listen"


def _client_port_in_use(tmp: Path, config: NodeConfig, client: socket.socket, peer: socket.socket) -> tuple[Path, str]:
    peer.close()
    client.listen(1)
    return _write(tmp, render_config(config)), "client_listen"


def _data_dir_is_a_file(tmp: Path, config: NodeConfig, client: socket.socket, peer: socket.socket) -> tuple[Path, str]:
    config.data_dir.write_text("not a directory")
    return _write(tmp, render_config(config)), "data_dir"


def _port_out_of_range(tmp: Path, config: NodeConfig, client: socket.socket, peer: socket.socket) -> tuple[Path, str]:
    return _write(tmp, render_config(config).replace(f'peer_listen = "{config.peer_listen}"',
                                                     'peer_listen = "127.0.0.1:70000"')), "peer_listen"


def _reachable_peer_port_without_secret(tmp: Path, config: NodeConfig, client: socket.socket,
                                        peer: socket.socket) -> tuple[Path, str]:
    text = render_config(config).replace(f'peer_listen = "{config.peer_listen}"',
                                         f'peer_listen = "0.0.0.0:{config.peer_listen.port}"')
    return _write(tmp, text), "cluster_secret"


@pytest.mark.parametrize("case", [_peer_port_in_use, _client_port_in_use, _data_dir_is_a_file, _port_out_of_range,
                                  _reachable_peer_port_without_secret], ids=lambda c: c.__name__.strip("_"))
def test_unusable_config_exits_2_naming_the_key(tmp_path: Path, case: Case) -> None:
    client_port, peer_port = find_free_ports(2)
    config = _config(tmp_path, client_port, peer_port)
    with socket.socket() as client, socket.socket() as peer:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind((HOST, client_port))
        peer.bind((HOST, peer_port))
        path, key = case(tmp_path, config, client, peer)
        if client.fileno() != -1 and peer.fileno() != -1:  # neither port is meant to be taken
            client.close()
            peer.close()
        _expect_config_error(_run(path), key)


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    client_port, peer_port = find_free_ports(2)
    text = render_config(_config(tmp_path, client_port, peer_port)).encode() + b"# caf\xe9\n"
    path = tmp_path / "node.toml"
    path.write_bytes(text)
    result = _run(path)
    assert result.returncode == 2 and "UTF-8" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_data_dir_of_the_earlier_batch_format_is_refused_untouched(tmp_path: Path) -> None:
    client_port, peer_port = find_free_ports(2)
    config = _config(tmp_path, client_port, peer_port)
    # What a broker of storage format 1 (raftmq's own msgpack batches) left behind: never to be misread as v2.
    identity = '{"broker_id": 1, "cluster_id": "start-test", "format": 1, "incarnation": 3}\n'
    segment = config.data_dir / "partitions" / "orders-0" / f"{0:020d}.log"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(bytes(79))
    (config.data_dir / "node.json").write_text(identity)
    result = _run(_write(tmp_path, render_config(config)))
    assert result.returncode == 2, result.stderr
    assert "UNSUPPORTED_STORAGE_FORMAT" in result.stderr and "what to do: move the directory away" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert (config.data_dir / "node.json").read_text() == identity and segment.read_bytes() == bytes(79)
