"""What may arrive on a peer port: the frames of the peer protocol and a schema for each, checked before use.

A peer port is reachable by anything on the network, so every byte read from it is hostile until proven
otherwise. This module turns the body of one length-prefixed frame into a typed value, or raises
``PeerProtocolError`` naming what was wrong; ``node/raft_transport.py`` answers that by logging and closing
the one connection. Nothing that a socket sends reaches pysyncobj, the journal or a state machine without
passing the schema of its message type here first.

Frame bodies are msgpack arrays ``[kind, ...]``:

=========  ==================================================================  ============================
kind       body                                                                sent by
=========  ==================================================================  ============================
CHALLENGE  ``[1, nonce: bin(16)]``                                              acceptor, first
HELLO      ``[2, {"v": int, "cluster": str, "from": int, "to": int, "mac": bin}]``  dialer, answering
WELCOME    ``[3, {"from": int}]``                                               acceptor, handshake done
RAFT       ``[4, group_id: str, message: map]``                                 either, once the link is up
PING       ``[5]``                                                              either, when idle
REJECT     ``[6, reason: str]``                                                 acceptor, before closing
=========  ==================================================================  ============================

A RAFT message is one of pysyncobj's dicts (or one of raftmq's pre-vote or quiescence messages); ``RAFT_SCHEMAS`` lists
every field each type may carry, with its type. Entry commands must be what raftmq itself proposes: a
pysyncobj no-op, a regular command wrapping a ``cluster.commands`` envelope, or a membership change in
raftmq's own envelope (``MEMBERSHIP_MAGIC`` + msgpack ``[kind, broker_id]``, see ``encode_membership``;
pysyncobj would pickle a node object there, ``node/replication.py`` swaps in this envelope). pysyncobj's
code-version commands and its chunked "transmission" of oversized entries are never produced by a raftmq
broker (entries stay below the AppendEntries batch size, see ``cluster/limits.py``) and are refused,
because pysyncobj would unpickle them.

Pure: no sockets, threads, clocks or pysyncobj here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import msgpack
from raftmq.cluster import commands, limits

KIND_CHALLENGE: Final = 1
KIND_HELLO: Final = 2
KIND_WELCOME: Final = 3
KIND_RAFT: Final = 4
KIND_PING: Final = 5
KIND_REJECT: Final = 6

PROTOCOL_VERSION: Final = 1
CHALLENGE_BYTES: Final = 16
LENGTH = struct.Struct(">I")
# Largest value of any index, term or counter on the wire (they are int64 in the journal and in pysyncobj's
# arithmetic; msgpack could carry up to 2**64 - 1).
INT_MAX: Final = 2**63 - 1
# pysyncobj's command-type byte in front of every entry (its _COMMAND_TYPE; a unit test pins the values).
COMMAND_REGULAR: Final = 0
COMMAND_NO_OP: Final = 1
COMMAND_MEMBERSHIP: Final = 2
# A membership change entry is COMMAND_MEMBERSHIP, this magic, then msgpack [kind, broker_id].
MEMBERSHIP_MAGIC: Final = b"RMQM"
MEMBERSHIP_ADD: Final = "add"  # pysyncobj's spelling of the two kinds (SyncObj.__doChangeCluster)
MEMBERSHIP_REMOVE: Final = "rem"
MEMBERSHIP_BYTES_MAX: Final = 32  # magic + the largest [kind, int64] msgpack array, with room to spare
GROUP_ID_CHARS_MAX: Final = 128
REASON_CHARS_MAX: Final = 1024


class PeerProtocolError(ValueError):
    """A frame that breaks the peer protocol. The connection that sent it is closed; nothing else changes."""


class Challenge(NamedTuple):
    nonce: bytes


class Hello(NamedTuple):
    version: int
    cluster_id: str
    from_id: int
    to_id: int
    mac: bytes


class Welcome(NamedTuple):
    from_id: int


class RaftFrame(NamedTuple):
    group_id: str
    message: dict[str, Any]


class Ping(NamedTuple):
    pass


class Reject(NamedTuple):
    reason: str


Frame = Challenge | Hello | Welcome | RaftFrame | Ping | Reject


# --- encoding (what this broker sends) -----------------------------------------------------------


def encode(payload: list[Any]) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return LENGTH.pack(len(body)) + body


def encode_challenge(nonce: bytes) -> bytes:
    return encode([KIND_CHALLENGE, nonce])


def encode_hello(hello: Hello) -> bytes:
    return encode([KIND_HELLO, {"v": hello.version, "cluster": hello.cluster_id, "from": hello.from_id,
                                "to": hello.to_id, "mac": hello.mac}])


def encode_welcome(from_id: int) -> bytes:
    return encode([KIND_WELCOME, {"from": from_id}])


def encode_raft(group_id: str, message: Mapping[str, Any]) -> bytes:
    return encode([KIND_RAFT, group_id, message])


def encode_ping() -> bytes:
    return encode([KIND_PING])


def encode_reject(reason: str) -> bytes:
    return encode([KIND_REJECT, reason[:REASON_CHARS_MAX]])


def encode_membership(kind: str, broker_id: int) -> bytes:
    """The body of a membership change entry (after pysyncobj's command-type byte)."""
    if kind not in (MEMBERSHIP_ADD, MEMBERSHIP_REMOVE) or type(broker_id) is not int or not 0 <= broker_id <= INT_MAX:
        raise ValueError(f"bad membership change {kind!r} {broker_id!r}")
    body: bytes = msgpack.packb([kind, broker_id], use_bin_type=True)
    return MEMBERSHIP_MAGIC + body


def decode_membership(body: bytes | memoryview) -> tuple[str, int]:
    """``(kind, broker_id)`` of a membership change body; PeerProtocolError unless it is exactly what
    ``encode_membership`` makes."""
    body = bytes(body)
    if len(body) > MEMBERSHIP_BYTES_MAX or body[:len(MEMBERSHIP_MAGIC)] != MEMBERSHIP_MAGIC:
        raise PeerProtocolError("not a raftmq membership change")
    try:
        value = msgpack.unpackb(body[len(MEMBERSHIP_MAGIC):], raw=False, use_list=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - every way msgpack can fail means the same: not a change
        raise PeerProtocolError("membership change is not msgpack") from None
    if type(value) is not tuple or len(value) != 2 or value[0] not in (MEMBERSHIP_ADD, MEMBERSHIP_REMOVE) \
            or type(value[1]) is not int or not 0 <= value[1] <= INT_MAX:
        raise PeerProtocolError("membership change must be [\"add\" | \"rem\", broker id]")
    return value[0], value[1]


# --- decoding (what a peer port receives) ---------------------------------------------------------


def decode(body: bytes | memoryview) -> Frame:
    """The frame in ``body`` (one frame's bytes, without the length prefix), checked against its schema."""
    try:
        # strict_map_key: map keys must be str or bytes, so a key can never be an unhashable map or array.
        # raw=False: strings must be UTF-8. use_list=False: arrays become tuples, which nothing can mutate.
        value = msgpack.unpackb(body, raw=False, use_list=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - every way msgpack can fail means the same: not a frame
        raise PeerProtocolError(f"not a msgpack value: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(value, tuple) or not value or type(value[0]) is not int:
        raise PeerProtocolError("a frame is an array that starts with its kind")
    decoder = _FRAME_DECODERS.get(value[0])
    if decoder is None:
        raise PeerProtocolError(f"unknown frame kind {value[0]}")
    return decoder(value)


def _arity(value: tuple[Any, ...], count: int, name: str) -> None:
    if len(value) != count:
        raise PeerProtocolError(f"{name} frame has {len(value)} elements, expected {count}")


def _challenge(value: tuple[Any, ...]) -> Challenge:
    _arity(value, 2, "CHALLENGE")
    nonce = value[1]
    if type(nonce) is not bytes or len(nonce) != CHALLENGE_BYTES:
        raise PeerProtocolError(f"CHALLENGE nonce must be {CHALLENGE_BYTES} bytes")
    return Challenge(nonce)


def _hello(value: tuple[Any, ...]) -> Hello:
    _arity(value, 2, "HELLO")
    fields = _fields(value[1], "HELLO", {"v": _int, "cluster": _str, "from": _int, "to": _int, "mac": _bytes},
                     required=("v", "cluster", "from", "to", "mac"))
    return Hello(fields["v"], fields["cluster"], fields["from"], fields["to"], fields["mac"])


def _welcome(value: tuple[Any, ...]) -> Welcome:
    _arity(value, 2, "WELCOME")
    fields = _fields(value[1], "WELCOME", {"from": _int}, required=("from",))
    return Welcome(fields["from"])


def _raft(value: tuple[Any, ...]) -> RaftFrame:
    _arity(value, 3, "RAFT")
    group_id = value[1]
    if type(group_id) is not str or not 0 < len(group_id) <= GROUP_ID_CHARS_MAX:
        raise PeerProtocolError(f"RAFT group id must be a string of 1-{GROUP_ID_CHARS_MAX} characters")
    return RaftFrame(group_id, validate_raft_message(value[2]))


def _ping(value: tuple[Any, ...]) -> Ping:
    _arity(value, 1, "PING")
    return Ping()


def _reject(value: tuple[Any, ...]) -> Reject:
    _arity(value, 2, "REJECT")
    if type(value[1]) is not str:
        raise PeerProtocolError("REJECT reason must be a string")
    return Reject(value[1][:REASON_CHARS_MAX])


_FRAME_DECODERS: dict[int, Callable[[tuple[Any, ...]], Frame]] = {
    KIND_CHALLENGE: _challenge, KIND_HELLO: _hello, KIND_WELCOME: _welcome, KIND_RAFT: _raft, KIND_PING: _ping,
    KIND_REJECT: _reject,
}


# --- field checkers -------------------------------------------------------------------------------


def _int(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise PeerProtocolError(f"{name} must be an integer in [0, 2**63)")
    return value


def _exactly(kind: type, description: str) -> Callable[[Any, str], Any]:
    """A checker for values of exactly ``kind`` (``type(x) is kind``: True is not an int, a str is not bytes)."""

    def check(value: Any, name: str) -> Any:
        if type(value) is not kind:
            raise PeerProtocolError(f"{name} must be {description}")
        return value

    return check


_bool = _exactly(bool, "a boolean")
_bytes = _exactly(bytes, "bytes")
_str = _exactly(str, "a string")


def _command(value: Any, name: str) -> bytes:
    """An entry command as raftmq proposes it: pysyncobj's no-op, a regular raftmq command, or a membership
    change in raftmq's envelope (a follower forwards a change it was asked for to its leader, as pysyncobj
    forwards every command: ``apply_command`` carries them too)."""
    if type(value) is not bytes or not value:
        raise PeerProtocolError(f"{name} must be non-empty bytes")
    if value[0] == COMMAND_NO_OP and len(value) == 1:
        return value
    if value[0] == COMMAND_REGULAR and len(value) >= 1 + commands.HEAD_BYTES \
            and value[1:1 + len(commands.MAGIC)] == commands.MAGIC:
        return value
    if value[0] == COMMAND_MEMBERSHIP:
        decode_membership(value[1:])
        return value
    raise PeerProtocolError(f"{name} is neither a no-op, a raftmq command nor a membership change")


def _entries(value: Any, name: str) -> tuple[tuple[bytes, int, int], ...]:
    if type(value) is not tuple:
        raise PeerProtocolError(f"{name} must be an array")
    for position, entry in enumerate(value):
        if type(entry) is not tuple or len(entry) != 3:
            raise PeerProtocolError(f"{name}[{position}] must be [command, index, term]")
        _command(entry[0], f"{name}[{position}].command")
        _int(entry[1], f"{name}[{position}].index")
        _int(entry[2], f"{name}[{position}].term")
    return value


def _snapshot_chunk(value: Any, name: str) -> tuple[bytes, bool, bool] | None:
    if value is None:
        return None
    if type(value) is not tuple or len(value) != 3 or type(value[0]) is not bytes \
            or type(value[1]) is not bool or type(value[2]) is not bool:
        raise PeerProtocolError(f"{name} must be nil or [chunk, is_first, is_last]")
    if len(value[0]) > limits.snapshot_chunk_bytes:
        raise PeerProtocolError(f"{name} chunk exceeds snapshot_chunk_bytes")
    return value


Checker = Callable[[Any, str], Any]


def _fields(value: Any, what: str, schema: Mapping[str, Checker], *, required: tuple[str, ...]) -> dict[str, Any]:
    if type(value) is not dict:
        raise PeerProtocolError(f"{what} body must be a map")
    unknown = [key for key in value if key not in schema]
    if unknown:
        raise PeerProtocolError(f"{what} has unknown fields {sorted(map(str, unknown))[:8]}")
    missing = [key for key in required if key not in value]
    if missing:
        raise PeerProtocolError(f"{what} lacks {missing}")
    return {key: schema[key](item, f"{what}.{key}") for key, item in value.items()}


class _Schema(NamedTuple):
    fields: Mapping[str, Checker]
    required: tuple[str, ...]


_type = _str


RAFT_SCHEMAS: Final[Mapping[str, _Schema]] = {
    # pysyncobj's messages (0.3.17, SyncObj.__onMessageReceived reads exactly these fields).
    "request_vote": _Schema({"type": _type, "term": _int, "last_log_index": _int, "last_log_term": _int},
                            ("term", "last_log_index", "last_log_term")),
    "response_vote": _Schema({"type": _type, "term": _int}, ("term",)),
    "append_entries": _Schema({"type": _type, "term": _int, "commit_index": _int, "prevLogIdx": _int,
                               "prevLogTerm": _int, "entries": _entries, "serialized": _snapshot_chunk},
                              ("term", "commit_index")),
    # rmq_leo: the follower's log end offset, a raftmq annotation (node/partition.py) used for snapshots.
    "next_node_idx": _Schema({"type": _type, "next_node_idx": _int, "reset": _bool, "success": _bool,
                              "rmq_leo": _int},
                             ("next_node_idx", "reset", "success")),
    "apply_command": _Schema({"type": _type, "command": _command, "request_id": _int}, ("command",)),
    "apply_command_response": _Schema({"type": _type, "request_id": _int, "error": _int, "log_idx": _int,
                                       "log_term": _int}, ("request_id",)),
    "timeout_now": _Schema({"type": _type, "term": _int}, ("term",)),
    # raftmq's pre-vote (node/prevote.py).
    "rmq_prevote": _Schema({"type": _type, "round": _int, "term": _int, "last_log_index": _int,
                            "last_log_term": _int}, ("round", "term", "last_log_index", "last_log_term")),
    "rmq_prevote_reply": _Schema({"type": _type, "round": _int, "granted": _bool}, ("round", "granted")),
    # raftmq's quiescence of idle groups (node/quiescence.py).
    "rmq_quiesce": _Schema({"type": _type, "round": _int, "term": _int, "index": _int}, ("round", "term", "index")),
    "rmq_quiesce_ack": _Schema({"type": _type, "round": _int, "ok": _bool}, ("round", "ok")),
}


def validate_raft_message(value: Any) -> dict[str, Any]:
    """Check a Raft message against the schema of its type; returns it (a dict of checked fields)."""
    if type(value) is not dict:
        raise PeerProtocolError("a Raft message is a map")
    kind = value.get("type")
    schema = RAFT_SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None:
        raise PeerProtocolError(f"unknown Raft message type {str(kind)[:40]!r}")
    message = _fields(value, str(kind), schema.fields, required=schema.required)
    if kind == "append_entries":
        _check_append_entries(message)
    elif kind == "apply_command_response" and "error" not in message \
            and ("log_idx" not in message or "log_term" not in message):
        raise PeerProtocolError("apply_command_response without an error needs log_idx and log_term")
    return message


def _check_append_entries(message: dict[str, Any]) -> None:
    """The shape a correct leader sends: entries follow prevLogIdx without a gap, in term order, no later
    than the message's own term; a snapshot chunk comes without entries."""
    has_prev = "prevLogIdx" in message
    if has_prev != ("prevLogTerm" in message):
        raise PeerProtocolError("append_entries carries prevLogIdx and prevLogTerm together")
    entries = message.get("entries", ())
    if entries and not has_prev:
        raise PeerProtocolError("append_entries with entries needs prevLogIdx")
    if "serialized" in message and (has_prev or entries):
        raise PeerProtocolError("append_entries carries either entries or a snapshot chunk")
    if not entries:
        return
    previous_term = message["prevLogTerm"]
    for position, (_command_bytes, index, term) in enumerate(entries):
        if index != message["prevLogIdx"] + 1 + position:
            raise PeerProtocolError("append_entries entries must follow prevLogIdx without gaps")
        if not previous_term <= term <= message["term"]:
            raise PeerProtocolError("append_entries entry terms must not decrease or pass the message term")
        previous_term = term


class FrameReader:
    """Splits a byte stream into frame bodies. ``frame_bytes_max`` may be lowered while a link is not yet
    authenticated, so an unknown peer cannot make the broker buffer megabytes."""

    def __init__(self, frame_bytes_max: int) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._position = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._position

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def bodies(self, max_frames: int | None = None) -> list[bytes]:
        """Complete frame bodies buffered so far (at most ``max_frames``). Raises PeerProtocolError for a
        frame above the limit. During a handshake the caller takes one frame at a time: the frame that ends
        the handshake raises the limit, and the peer's first large frame may sit right behind it."""
        out: list[bytes] = []
        buffer = self._buffer
        position = self._position
        while len(buffer) - position >= LENGTH.size and (max_frames is None or len(out) < max_frames):
            (length,) = LENGTH.unpack_from(buffer, position)
            if length > self.frame_bytes_max:
                raise PeerProtocolError(f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}")
            if len(buffer) - position - LENGTH.size < length:
                break
            out.append(bytes(buffer[position + LENGTH.size:position + LENGTH.size + length]))
            position += LENGTH.size + length
        # Compact lazily: deleting a prefix of a bytearray moves the rest.
        if position and (position == len(buffer) or position > len(buffer) // 2):
            del buffer[:position]
            position = 0
        self._position = position
        return out


__all__ = [
    "CHALLENGE_BYTES",
    "COMMAND_MEMBERSHIP",
    "Challenge",
    "Frame",
    "FrameReader",
    "Hello",
    "PROTOCOL_VERSION",
    "PeerProtocolError",
    "Ping",
    "RAFT_SCHEMAS",
    "RaftFrame",
    "Reject",
    "Welcome",
    "decode",
    "decode_membership",
    "encode_challenge",
    "encode_hello",
    "encode_membership",
    "encode_ping",
    "encode_raft",
    "encode_reject",
    "encode_welcome",
    "validate_raft_message",
]
