"""The inputs that used to stop a broker process, sent to the peer ports of a real three-broker cluster: every
broker keeps running, the acknowledged records are intact and replicas identical, and the cluster still
commits writes.

Method: `start_cluster` (real `python -m raftmq.node` processes, a cluster secret as `raftmq cluster up` makes);
the cluster id comes from /v1/health as an attacker would get it; for the frames after a valid handshake
the test reads the secret file (an insider with the secret, or any local process when a cluster runs
without one). node/peer_protocol.py's unit tests and tests/integration/test_peer_port.py cover each input
in isolation; this is the end-to-end promise.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack
import pytest
from raftmq.cluster import limits
from raftmq.deploy.local_cluster import HOST, LocalCluster, http_json, wait_until
from raftmq.node import peer_protocol
from raftmq.node.peer_protocol import Challenge, FrameReader, Hello, Welcome
from raftmq.node.raft_transport import handshake_mac

pytestmark = pytest.mark.cluster
TOPIC = "peer-attack"


def _framed(body: bytes) -> bytes:
    return peer_protocol.LENGTH.pack(len(body)) + body

# Impersonating broker 3 races with the real broker 3 redialling; a few tries always get one through.
_HANDSHAKE_ATTEMPTS = 5


def _read_frame(sock: socket.socket, reader: FrameReader) -> Any:
    while True:
        bodies = reader.bodies()
        if bodies:
            return peer_protocol.decode(bodies[0])
        chunk = sock.recv(65536)
        if not chunk:
            return None
        reader.feed(chunk)


def _closed(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _attack(cluster: LocalCluster, payload: bytes, *, handshake_as: int | None = None,
            secret: str = "") -> bool:
    """Send ``payload`` to broker 1's peer port (after a valid handshake as ``handshake_as``); True when
    the broker closed the connection."""
    for _attempt in range(_HANDSHAKE_ATTEMPTS):
        with socket.create_connection((HOST, cluster.nodes[1].peer_port), timeout=5) as sock:
            sock.settimeout(5)
            if handshake_as is not None and not _handshake(cluster, sock, handshake_as, secret):
                continue  # the genuine broker reconnected and superseded this connection: handshake again
            sock.sendall(payload)
            return _closed(sock)
    raise AssertionError(f"no handshake as broker {handshake_as} held in {_HANDSHAKE_ATTEMPTS} attempts")


def _handshake(cluster: LocalCluster, sock: socket.socket, as_broker: int, secret: str) -> bool:
    """A valid handshake as ``as_broker``; False when the broker closed the connection instead of welcoming
    it (the real ``as_broker`` redialled at the same moment, and its newer connection supersedes this one)."""
    reader = FrameReader(limits.peer_frame_bytes_max)
    challenge = _read_frame(sock, reader)
    assert isinstance(challenge, Challenge)
    mac = handshake_mac(secret.encode(), challenge.nonce, cluster.cluster_id, as_broker, 1)
    sock.sendall(peer_protocol.encode_hello(Hello(1, cluster.cluster_id, as_broker, 1, mac)))
    answer = _read_frame(sock, reader)
    assert answer is None or isinstance(answer, Welcome), answer
    return answer is not None


def _produce(cluster: LocalCluster, values: list[str]) -> None:
    leader = cluster.wait_for_leader(TOPIC, 0)
    status, body = http_json(f"{cluster.nodes[leader].url}/v1/topics/{TOPIC}/partitions/0/records", method="POST",
                             body={"acks": "all", "records": [{"value": v} for v in values]}, timeout_s=20)
    assert status == 200, body


def _read_all(cluster: LocalCluster, broker_id: int) -> list[str]:
    status, body = http_json(f"{cluster.nodes[broker_id].url}/v1/topics/{TOPIC}/partitions/0/records"
                             "?offset=0&replica=any")
    assert status == 200, body
    return [record["value"] for record in body["records"]]


def test_hostile_peers_stop_no_broker(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    status, body = http_json(f"{cluster.nodes[1].url}/v1/topics", method="POST", body={"name": TOPIC})
    assert status == 201, body
    _produce(cluster, ["before-1", "before-2"])
    status, health = http_json(f"{cluster.nodes[1].url}/v1/health")
    cluster_id = health["cluster_id"]  # public: what an attacker learns first
    secret = cluster.secret_path.read_text().strip()

    # 1. Unauthenticated: the seven bytes, alone and inside a HELLO.
    assert _attack(cluster, bytes.fromhex("00000003818000"))
    assert _attack(cluster, _framed(bytes.fromhex("9202818000")))
    # 2. HELLOs whose MAC is a string or a negative number.
    for mac in ["x", -1]:
        hello = [2, {"v": 1, "cluster": cluster_id, "from": 3, "to": 1, "mac": mac}]
        assert _attack(cluster, _framed(msgpack.packb(hello)))
    # 3. Malformed Raft frames after a valid handshake.
    for frame in ([4, {}, {}], [4, "meta", {}],
                  [4, "meta", {"type": "append_entries", "term": "x", "commit_index": 0}],
                  [4, "meta", {"type": "request_vote", "term": None, "last_log_index": 0, "last_log_term": 0}]):
        assert _attack(cluster, _framed(msgpack.packb(frame)), handshake_as=3, secret=secret)

    for broker_id, node in cluster.nodes.items():
        assert node.running, f"broker {broker_id} exited:\n{cluster.tail_log(broker_id)}"
    assert "replication thread crashed" not in cluster.tail_log(1, 400)
    _produce(cluster, ["after"])
    expected = ["before-1", "before-2", "after"]
    wait_until(lambda: all(_read_all(cluster, b) == expected for b in cluster.nodes), timeout_s=20,
               what="every replica to hold exactly the acknowledged records")
    log = cluster.nodes[1].log_path.read_text(errors="replace")
    assert log.count("protocol error") >= 8, "each hostile connection is logged"
