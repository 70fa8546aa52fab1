"""A peer port under attack (node/raft_transport.py): hostile bytes close one connection, never the thread
that drives the port, and real brokers still link up afterwards.

Method: a PeerNetwork for broker 1 on loopback, driven by a thread that does what the replication thread does
(poll, maintain, flush) and records any exception; attackers are raw sockets that send the inputs that used to
stop a broker (the seven bytes, a HELLO with a string or negative MAC, malformed Raft frames after a valid
handshake), floods of unfinished handshakes and oversized frames. After each, a real second PeerNetwork
(broker 2) must still link up and its Raft messages must still arrive.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from raftmq.cluster import commands, limits
from raftmq.deploy.local_cluster import find_free_ports, wait_until
from raftmq.node import peer_protocol
from raftmq.node.config import PeerAddress
from raftmq.node.peer_protocol import Challenge, FrameReader, Hello, Welcome
from raftmq.node.raft_transport import NetworkListener, PeerNetwork, handshake_mac

CLUSTER = "peer-port-test"
SECRET = "correct horse battery staple"


class Recorder(NetworkListener):
    def __init__(self) -> None:
        self.up: set[int] = set()
        self.messages: list[tuple[int, str, dict[str, Any]]] = []

    def on_peer_up(self, peer_id: int) -> None:
        self.up.add(peer_id)

    def on_peer_down(self, peer_id: int) -> None:
        self.up.discard(peer_id)

    def on_raft_message(self, peer_id: int, group_id: str, message: dict[str, Any]) -> None:
        self.messages.append((peer_id, group_id, message))


class Driven:
    """A PeerNetwork and the thread that drives it, as the replication loop would."""

    def __init__(self, broker_id: int, ports: dict[int, int], secret: str) -> None:
        self.listener = Recorder()
        peers = {b: PeerAddress("127.0.0.1", p) for b, p in ports.items() if b != broker_id}
        self.network = PeerNetwork(self_id=broker_id, cluster_id=CLUSTER, listen=PeerAddress("127.0.0.1",
                                   ports[broker_id]), peers=peers, listener=self.listener, secret=secret)
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.calls: list[Any] = []

    def start(self) -> None:
        self.network.start()
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.network.poll(0.02)
                while self.calls:
                    self.calls.pop(0)()
                self.network.maintain()
                self.network.flush()
        except BaseException as exc:  # noqa: BLE001 - the test asserts there was none
            self.failure = exc

    def stop(self) -> None:
        self._stop.set()
        self.network.wake()
        self._thread.join(timeout=5)
        self.network.stop()


@pytest.fixture(params=[SECRET, ""], ids=["secret", "no-secret"])
def port(request: pytest.FixtureRequest) -> Iterator[tuple[Driven, dict[int, int], str]]:
    ports = dict(zip((1, 2, 3), find_free_ports(3), strict=True))
    broker = Driven(1, ports, request.param)
    broker.start()
    try:
        yield broker, ports, request.param
    finally:
        broker.stop()
    assert broker.failure is None, f"the thread driving the peer port failed: {broker.failure!r}"


def connect(ports: dict[int, int]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", ports[1]), timeout=5)
    sock.settimeout(5)
    return sock


def read_frame(sock: socket.socket, reader: FrameReader) -> peer_protocol.Frame | None:
    """The next frame, or None once the broker closed the connection."""
    while True:
        bodies = reader.bodies()
        if bodies:
            return peer_protocol.decode(bodies[0])
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        reader.feed(chunk)


def closed_by_broker(sock: socket.socket) -> bool:
    """Read until EOF (whatever the broker sent before closing, e.g. a REJECT); True if it closed."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def handshake_as(sock: socket.socket, broker_id: int, secret: str) -> None:
    reader = FrameReader(limits.peer_frame_bytes_max)
    challenge = read_frame(sock, reader)
    assert isinstance(challenge, Challenge)
    mac = handshake_mac(secret.encode(), challenge.nonce, CLUSTER, broker_id, 1) if secret else b""
    sock.sendall(peer_protocol.encode_hello(Hello(peer_protocol.PROTOCOL_VERSION, CLUSTER, broker_id, 1, mac)))
    assert isinstance(read_frame(sock, reader), Welcome)


def framed(body: bytes) -> bytes:
    return peer_protocol.LENGTH.pack(len(body)) + body


def assert_real_peer_still_links(broker: Driven, ports: dict[int, int], secret: str) -> None:
    """Broker 3 (a real PeerNetwork) links up and a Raft message from it arrives at broker 1."""
    peer = Driven(3, ports, secret)
    peer.start()
    try:
        wait_until(lambda: 1 in peer.listener.up and 3 in broker.listener.up, timeout_s=10,
                   what="broker 3 to link up with broker 1")
        message = {"type": "response_vote", "term": 7}
        peer.calls.append(lambda: peer.network.send_raft(1, "meta", message))
        peer.network.wake()
        wait_until(lambda: (3, "meta", message) in broker.listener.messages, timeout_s=10,
                   what="a Raft message from broker 3")
    finally:
        peer.stop()
    assert peer.failure is None


def test_the_seven_bytes_close_one_connection(port: tuple[Driven, dict[int, int], str]) -> None:
    broker, ports, secret = port
    with connect(ports) as sock:
        sock.sendall(bytes.fromhex("00000003818000"))
        assert closed_by_broker(sock)
    with connect(ports) as sock:  # the same bytes inside a HELLO array
        sock.sendall(framed(bytes.fromhex("9202818000")))
        assert closed_by_broker(sock)
    wait_until(lambda: broker.network.stats["protocol_errors"] >= 2, timeout_s=5, what="two protocol errors")
    assert_real_peer_still_links(broker, ports, secret)


@pytest.mark.parametrize("mac", ["x", -1, None, [1, 2], {"a": 1}])
def test_hello_with_a_mac_of_the_wrong_type(port: tuple[Driven, dict[int, int], str], mac: Any) -> None:
    broker, ports, secret = port
    with connect(ports) as sock:
        reader = FrameReader(limits.peer_frame_bytes_max)
        assert isinstance(read_frame(sock, reader), Challenge)
        sock.sendall(framed(msgpack.packb([2, {"v": 1, "cluster": CLUSTER, "from": 3, "to": 1, "mac": mac}])))
        assert closed_by_broker(sock)
    assert 3 not in broker.listener.up
    assert_real_peer_still_links(broker, ports, secret)


def test_wrong_secret_is_rejected(port: tuple[Driven, dict[int, int], str]) -> None:
    broker, ports, secret = port
    if not secret:
        pytest.skip("without a secret there is no MAC to get wrong")
    with connect(ports) as sock:
        reader = FrameReader(limits.peer_frame_bytes_max)
        challenge = read_frame(sock, reader)
        assert isinstance(challenge, Challenge)
        mac = handshake_mac(b"wrong", challenge.nonce, CLUSTER, 3, 1)
        sock.sendall(peer_protocol.encode_hello(Hello(1, CLUSTER, 3, 1, mac)))
        reject = read_frame(sock, reader)
        assert isinstance(reject, peer_protocol.Reject) and "secret" in reject.reason
    assert broker.network.stats["handshakes_rejected"] >= 1


MALFORMED_RAFT = {
    "group-is-map": [4, {}, {}],
    "no-type": [4, "meta", {}],
    "append-term-str": [4, "meta", {"type": "append_entries", "term": "x", "commit_index": 0}],
    "vote-term-null": [4, "meta", {"type": "request_vote", "term": None, "last_log_index": 0, "last_log_term": 0}],
    "pickled-command": [4, "meta", {"type": "apply_command", "command": b"\x00\x80\x02cos\nsystem\n."}],
    "handshake-again": [2, {"v": 1, "cluster": CLUSTER, "from": 2, "to": 1, "mac": b""}],
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RAFT))
def test_malformed_raft_frame_after_a_valid_handshake(port: tuple[Driven, dict[int, int], str], name: str) -> None:
    broker, ports, secret = port
    with connect(ports) as sock:
        handshake_as(sock, 2, secret)
        wait_until(lambda: 2 in broker.listener.up, timeout_s=5, what="the attacker's link to be up")
        sock.sendall(framed(msgpack.packb(MALFORMED_RAFT[name], use_bin_type=True)))
        assert closed_by_broker(sock)
    wait_until(lambda: 2 not in broker.listener.up, timeout_s=5, what="the link to go down")
    assert broker.listener.messages == []
    assert_real_peer_still_links(broker, ports, secret)


def test_oversized_frame_before_the_handshake(port: tuple[Driven, dict[int, int], str]) -> None:
    broker, ports, secret = port
    with connect(ports) as sock:
        sock.sendall(peer_protocol.LENGTH.pack(limits.peer_handshake_frame_bytes_max + 1) + b"\x00" * 1024)
        assert closed_by_broker(sock)
    assert_real_peer_still_links(broker, ports, secret)


def test_a_flood_of_unfinished_handshakes_does_not_lock_brokers_out(port: tuple[Driven, dict[int, int], str]) -> None:
    broker, ports, secret = port
    flood = [connect(ports) for _ in range(limits.peer_pending_connections_max * 2)]
    try:
        wait_until(lambda: broker.network.stats["pending_evicted"] >= limits.peer_pending_connections_max,
                   timeout_s=10, what="the oldest unfinished handshakes to be closed")
        assert_real_peer_still_links(broker, ports, secret)
    finally:
        for sock in flood:
            sock.close()


def test_a_large_frame_right_behind_the_welcome_is_read_with_the_link_limit() -> None:
    """The accepting broker sends its first AppendEntries at once after WELCOME; with a backlog both arrive in
    one read at the dialer. Regression: the dialer parsed the whole buffer with the 4 KiB handshake limit and
    closed the link as hostile, every time it redialled, so a lagging follower never caught up."""
    ports = dict(zip((1, 2, 3), find_free_ports(3), strict=True))
    server = socket.create_server(("127.0.0.1", ports[1]))
    dialer = Driven(2, ports, SECRET)  # broker 2 dials broker 1 (the lower id)
    dialer.start()
    try:
        server.settimeout(10)
        sock, _ = server.accept()
        sock.settimeout(10)
        with sock:
            nonce = b"n" * peer_protocol.CHALLENGE_BYTES
            sock.sendall(peer_protocol.encode_challenge(nonce))
            hello = read_frame(sock, FrameReader(limits.peer_frame_bytes_max))
            assert isinstance(hello, Hello) and hello.from_id == 2
            command = bytes([peer_protocol.COMMAND_REGULAR]) + commands.encode(1, 1, 0, b"v" * 20_000)
            append = {"type": "append_entries", "term": 3, "commit_index": 0, "prevLogIdx": 0, "prevLogTerm": 0,
                      "entries": [(command, 1, 3)]}
            big = peer_protocol.encode_raft("p0", append)
            assert len(big) > limits.peer_handshake_frame_bytes_max
            sock.sendall(peer_protocol.encode_welcome(1) + big)  # one write: one read at the dialer
            wait_until(lambda: any(group == "p0" for _, group, _ in dialer.listener.messages), timeout_s=10,
                       what="the AppendEntries behind the WELCOME")
            assert 1 in dialer.listener.up and dialer.network.stats["protocol_errors"] == 0
    finally:
        dialer.stop()
        server.close()
    assert dialer.failure is None
