"""The peer protocol's schemas (node/peer_protocol.py): every frame a correct broker sends passes; anything
else is a PeerProtocolError, never another exception.

Method: the frames pysyncobj and raftmq really send, round-tripped; the hostile inputs found by hand (the
seven bytes that used to stop a broker, malformed Raft messages); then hypothesis throws random bytes and random
msgpack structures at the decoder and asserts "a frame or a PeerProtocolError", nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.cluster import commands
from raftmq.node import peer_protocol
from raftmq.node.peer_protocol import (
    Challenge,
    FrameReader,
    Hello,
    PeerProtocolError,
    Ping,
    RaftFrame,
    Reject,
    Welcome,
)
from raftmq.node.raft_transport import handshake_mac, hello_rejection

COMMAND = bytes([peer_protocol.COMMAND_REGULAR]) + commands.encode(1, 7, 1_700_000_000_000, b"batch")
NO_OP = bytes([peer_protocol.COMMAND_NO_OP])


def body(frame: bytes) -> bytes:
    (length,) = peer_protocol.LENGTH.unpack_from(frame)
    assert len(frame) == 4 + length
    return frame[4:]


def test_command_type_bytes_match_pysyncobj() -> None:
    from pysyncobj.syncobj import _COMMAND_TYPE

    assert peer_protocol.COMMAND_REGULAR == _COMMAND_TYPE.REGULAR
    assert peer_protocol.COMMAND_NO_OP == _COMMAND_TYPE.NO_OP


VALID_RAFT_MESSAGES: list[dict[str, Any]] = [
    {"type": "request_vote", "term": 3, "last_log_index": 10, "last_log_term": 2},
    {"type": "response_vote", "term": 3},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 10, "prevLogTerm": 2,
     "entries": [(NO_OP, 11, 3), (COMMAND, 12, 3)]},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 10, "prevLogTerm": 2, "entries": []},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"chunk", True, False)},
    {"type": "next_node_idx", "next_node_idx": 12, "reset": False, "success": True, "rmq_leo": 500},
    {"type": "apply_command", "command": COMMAND, "request_id": 4},
    {"type": "apply_command_response", "request_id": 4, "log_idx": 12, "log_term": 3},
    {"type": "apply_command_response", "request_id": 4, "error": 4},
    {"type": "timeout_now", "term": 3},
    {"type": "rmq_prevote", "round": 1, "term": 4, "last_log_index": 10, "last_log_term": 2},
    {"type": "rmq_prevote_reply", "round": 1, "granted": True},
]


@pytest.mark.parametrize("message", VALID_RAFT_MESSAGES, ids=lambda m: m["type"])
def test_what_brokers_send_round_trips(message: dict[str, Any]) -> None:
    frame = peer_protocol.decode(body(peer_protocol.encode_raft("p/12/0", message)))
    assert isinstance(frame, RaftFrame)
    assert frame.group_id == "p/12/0"
    expected = {key: tuple(value) if isinstance(value, list) else value for key, value in message.items()}
    assert frame.message == expected


def test_handshake_frames_round_trip() -> None:
    hello = Hello(peer_protocol.PROTOCOL_VERSION, "cluster-a", 3, 1, b"m" * 32)
    assert peer_protocol.decode(body(peer_protocol.encode_hello(hello))) == hello
    assert peer_protocol.decode(body(peer_protocol.encode_challenge(b"c" * 16))) == Challenge(b"c" * 16)
    assert peer_protocol.decode(body(peer_protocol.encode_welcome(1))) == Welcome(1)
    assert peer_protocol.decode(body(peer_protocol.encode_ping())) == Ping()
    assert peer_protocol.decode(body(peer_protocol.encode_reject("no"))) == Reject("no")


HOSTILE_BODIES = {
    # The seven bytes that stopped a broker: a map whose key is a map (unhashable in Python).
    "map-keyed-by-map": bytes.fromhex("818000"),
    "hello-with-map-key": bytes.fromhex("9202818000"),  # [2, {{}: nil}]
    "not-msgpack": b"\xc1\xc1\xc1",
    "trailing-bytes": msgpack.packb([5]) + b"x",
    "empty-array": msgpack.packb([]),
    "kind-not-int": msgpack.packb(["4", "meta", {}]),
    "unknown-kind": msgpack.packb([99]),
    "bool-kind": msgpack.packb([True]),
    "invalid-utf8": b"\x92\x06\xa2\xff\xfe",
    "deep-nesting": b"\x91" * 100_000 + b"\xc0",
    "raft-group-is-map": msgpack.packb([4, {}, {}]),
    "raft-no-type": msgpack.packb([4, "meta", {}]),
    "raft-term-str": msgpack.packb([4, "meta", {"type": "append_entries", "term": "x", "commit_index": 1}]),
    "vote-term-null": msgpack.packb([4, "meta", {"type": "request_vote", "term": None, "last_log_index": 1,
                                                 "last_log_term": 1}]),
    "negative-term": msgpack.packb([4, "meta", {"type": "response_vote", "term": -1}]),
    "huge-term": msgpack.packb([4, "meta", {"type": "response_vote", "term": 2**64 - 1}]),
    "bool-as-int": msgpack.packb([4, "meta", {"type": "response_vote", "term": True}]),
    "unknown-field": msgpack.packb([4, "meta", {"type": "response_vote", "term": 1, "evil": 1}]),
    "unknown-type": msgpack.packb([4, "meta", {"type": "install_everything"}]),
    "pickled-command": msgpack.packb([4, "meta", {"type": "apply_command", "command": b"\x00\x80\x02cos\nsystem"}]),
    "version-command": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                                  "prevLogIdx": 0, "prevLogTerm": 0,
                                                  "entries": [[b"\x03\x80\x02K\x05.", 1, 1]]}]),
    "entries-gap": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                              "prevLogIdx": 0, "prevLogTerm": 0, "entries": [[NO_OP, 5, 1]]}]),
    "entry-term-above-message": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                                           "prevLogIdx": 0, "prevLogTerm": 0,
                                                           "entries": [[NO_OP, 1, 9]]}]),
    "entries-without-prev": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                                       "entries": [[NO_OP, 1, 1]]}]),
    "transmission": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                               "prevLogIdx": 0, "prevLogTerm": 0, "transmission": "finish",
                                               "data": b"x"}]),
    "snapshot-chunk-shape": msgpack.packb([4, "meta", {"type": "append_entries", "term": 1, "commit_index": 0,
                                                       "serialized": [1, 2, 3]}]),
    "response-without-index": msgpack.packb([4, "meta", {"type": "apply_command_response", "request_id": 1}]),
    "hello-mac-str": msgpack.packb([2, {"v": 1, "cluster": "c", "from": 3, "to": 1, "mac": "x"}]),
    "hello-mac-negative": msgpack.packb([2, {"v": 1, "cluster": "c", "from": 3, "to": 1, "mac": -1}]),
    "hello-missing-mac": msgpack.packb([2, {"v": 1, "cluster": "c", "from": 3, "to": 1}]),
    "hello-from-str": msgpack.packb([2, {"v": 1, "cluster": "c", "from": "3", "to": 1, "mac": b""}]),
    "challenge-short": msgpack.packb([1, b"x"]),
    "ping-extra": msgpack.packb([5, 1]),
    "reject-map": msgpack.packb([6, {}]),
    "ext-type": msgpack.packb([4, "meta", msgpack.ExtType(1, b"x")]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_bodies_are_protocol_errors(name: str) -> None:
    with pytest.raises(PeerProtocolError):
        peer_protocol.decode(HOSTILE_BODIES[name])


def test_frame_reader_splits_and_limits() -> None:
    reader = FrameReader(64)
    frames = peer_protocol.encode_ping() + peer_protocol.encode_reject("a")
    reader.feed(frames[:3])
    assert reader.bodies() == []
    reader.feed(frames[3:])
    assert [peer_protocol.decode(b) for b in reader.bodies()] == [Ping(), Reject("a")]
    assert reader.buffered_bytes == 0
    reader.feed(peer_protocol.LENGTH.pack(65))
    with pytest.raises(PeerProtocolError, match="exceeds"):
        reader.bodies()


def test_hello_rejections() -> None:
    secret = b"s3cret"
    challenge = b"c" * 16
    peers = {2: None, 3: None}
    good = Hello(1, "c1", 3, 1, handshake_mac(secret, challenge, "c1", 3, 1))

    def reject(hello: Hello, key: bytes = secret) -> str | None:
        return hello_rejection(hello, cluster_id="c1", self_id=1, peers=peers, challenge=challenge, secret=key)

    assert reject(good) is None
    assert "protocol version" in (reject(good._replace(version=2)) or "")
    assert "cluster id" in (reject(good._replace(cluster_id="other")) or "")
    assert "dialed broker" in (reject(good._replace(to_id=2)) or "")
    assert "not a peer" in (reject(good._replace(from_id=9)) or "")
    assert "bad cluster secret" in (reject(good._replace(mac=b"x")) or "")
    assert "bad cluster secret" in (reject(good._replace(mac=b"")) or "")
    assert reject(good._replace(mac=b""), key=b"") is None  # no secret configured: no MAC checked


# --- property tests: anything at all is a frame or a PeerProtocolError ------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                     st.floats(allow_nan=True), st.binary(max_size=24), st.text(max_size=12))
_keys = st.one_of(st.sampled_from(["type", "term", "commit_index", "prevLogIdx", "prevLogTerm", "entries",
                                   "serialized", "request_id", "command", "log_idx", "log_term", "error",
                                   "next_node_idx", "reset", "success", "v", "cluster", "from", "to", "mac",
                                   "round", "granted", "last_log_index", "last_log_term"]),
                  st.text(max_size=6), st.binary(max_size=4))
_values = st.recursive(_scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(_keys, children, max_size=6)), max_leaves=25)
_types = st.sampled_from(sorted(peer_protocol.RAFT_SCHEMAS) + ["bogus"])
_raft_like = st.fixed_dictionaries({"type": _types}, optional={key: _values for key in [
    "term", "commit_index", "prevLogIdx", "prevLogTerm", "entries", "serialized", "request_id", "command",
    "log_idx", "log_term", "error", "next_node_idx", "reset", "success", "round", "granted", "last_log_index",
    "last_log_term"]})
_frames = st.one_of(
    st.lists(_values, max_size=4),
    st.tuples(st.integers(min_value=0, max_value=7), _values),
    st.tuples(st.just(4), st.one_of(st.text(max_size=8), _values), st.one_of(_raft_like, _values)),
    st.tuples(st.just(2), st.dictionaries(_keys, _values, max_size=6)),
)


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        frame = peer_protocol.decode(data)
    except PeerProtocolError:
        return
    assert isinstance(frame, Challenge | Hello | Welcome | RaftFrame | Ping | Reject)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(_frames)
def test_random_msgpack_structures(value: Any) -> None:
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return  # not representable in msgpack: cannot arrive on the wire either
    _decode_or_protocol_error(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_stream_into_reader(data: bytes) -> None:
    reader = FrameReader(128)
    reader.feed(data)
    try:
        bodies = reader.bodies()
    except PeerProtocolError:
        return
    for item in bodies:
        _decode_or_protocol_error(item)
