"""Wire encoding of HTTP bodies (msgpack or JSON) and the parsing of request fields, shared by node and client.

Every decoder here raises a ``RaftMQError`` with a stable code and names the offending field, so the node can
answer bad input with a 4xx before touching any stored data.

No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Mapping
from typing import Any

import msgpack
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    InvalidAcks,
    InvalidOffset,
    InvalidRequest,
    MalformedBody,
    RaftMQError,
    UnsupportedMediaType,
)

MSGPACK = "application/msgpack"
JSON = "application/json"
_MSGPACK_ALIASES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}
# Decimal integers as they appear in paths and query strings: ASCII digits only (str.isdigit() also accepts
# "²" and other Unicode digits that int() refuses), at most 19 of them (int64), an optional minus sign.
_DECIMAL = re.compile(r"-?[0-9]{1,19}")


class Acks(enum.Enum):
    NONE = "0"
    LEADER = "1"
    ALL = "all"

    @property
    def wire(self) -> int | str:
        """As the HTTP API spells it: 0, 1 or "all"."""
        return "all" if self is Acks.ALL else int(self.value)


def parse_acks(value: Any) -> Acks:
    """0, 1, "all" (also -1, "-1", "0", "1"), as Kafka clients spell them."""
    if type(value) is int:
        value = str(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("all", "-1"):
            return Acks.ALL
        if text == "0":
            return Acks.NONE
        if text == "1":
            return Acks.LEADER
    raise InvalidAcks(f"acks must be 0, 1 or \"all\", got {value!r}", acks=repr(value)[:40])


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_body(content_type: str | None, raw: bytes) -> dict[str, Any]:
    """Decode a request body into an object. Empty body → {}."""
    kind = media_type(content_type)
    if not raw:
        return {}
    if kind in _MSGPACK_ALIASES:
        try:
            body = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=limits.request_bytes_max)
        except Exception as exc:  # noqa: BLE001 - every decoder failure is the same error to the caller
            raise MalformedBody(f"body is not valid msgpack: {exc}") from None
    elif kind in (JSON, "", "text/json"):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedBody(f"body is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise MalformedBody("body is not valid JSON: nested too deeply") from None
    else:
        raise UnsupportedMediaType(f"Content-Type {kind!r} is not supported; use {MSGPACK} or {JSON}",
                                   content_type=kind)
    if not isinstance(body, dict):
        raise MalformedBody("body must be an object (a map)")
    return body


def wants_msgpack(accept: str | None, content_type: str | None) -> bool:
    if accept:
        return any(media_type(part) in _MSGPACK_ALIASES for part in accept.split(","))
    return media_type(content_type) in _MSGPACK_ALIASES


def encode_body(obj: Any, *, as_msgpack: bool) -> bytes:
    if as_msgpack:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    return (json.dumps(obj, separators=(",", ":"), default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def require_int(body: Mapping[str, Any], key: str, *, default: int | None = None, minimum: int | None = None,
                maximum: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise InvalidRequest(f"{key} is required", field=key)
    if type(value) is not int:
        raise InvalidRequest(f"{key} must be an integer", field=key)
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"{key} must be at least {minimum}", field=key, value=value)
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"{key} must be at most {maximum}", field=key, value=value)
    return value


def parse_decimal(text: str | None, name: str, *, error: type[RaftMQError] = InvalidRequest) -> int:
    """A decimal integer from a path or query string; anything but ASCII digits (and a leading minus) is
    refused with ``error``, never a ValueError."""
    if text is None or not _DECIMAL.fullmatch(text):
        shown = "" if text is None else text[:40]
        raise error(f"{name} must be a decimal integer, got {shown!r}", field=name)
    return int(text)


def parse_partition(text: str | None) -> int:
    """A partition number from a URL path: a non-negative int32."""
    value = parse_decimal(text, "partition")
    if not 0 <= value <= limits.partition_number_max:
        raise InvalidRequest(f"partition must be between 0 and {limits.partition_number_max}", field="partition",
                             value=(text or "")[:40])
    return value


def query_int(query: Mapping[str, str], key: str, *, default: int | None = None, minimum: int = 0,
              maximum: int | None = None, offset: bool = False) -> int:
    """An integer query parameter; offsets get INVALID_OFFSET, the rest INVALID_REQUEST."""
    text = query.get(key)
    error = InvalidOffset if offset else InvalidRequest
    if text is None or text == "":
        if default is None:
            raise error(f"query parameter {key} is required", field=key)
        return default
    value = parse_decimal(text, key, error=error)
    if value < minimum:
        raise error(f"{key} must be at least {minimum}", field=key, value=value)
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"{key} must be at most {maximum}", field=key, value=value)
    return value


def _as_bytes(value: Any, field: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidRequest(f"{field} must be a string, bytes or null", field=field)


def records_to_batch(records: Any, *, now_ms: int) -> bytes:
    """Build a (non-idempotent) batch from the ``records`` form of a produce request (the slow path)."""
    if not isinstance(records, list) or not records:
        raise InvalidRequest("records must be a non-empty array", field="records")
    if len(records) > limits.batch_records_max:
        raise InvalidRequest(f"at most {limits.batch_records_max} records per request", field="records")
    now = now_ms  # the default timestamp of records that carry none
    items = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InvalidRequest(f"records[{index}] must be an object", field=f"records[{index}]")
        key = _as_bytes(record.get("key"), f"records[{index}].key")
        value = _as_bytes(record.get("value"), f"records[{index}].value")
        raw_headers = record.get("headers") or {}
        if isinstance(raw_headers, Mapping):
            pairs = list(raw_headers.items())
        elif isinstance(raw_headers, list):
            pairs = raw_headers
        else:
            raise InvalidRequest(f"records[{index}].headers must be an object or a list of pairs",
                                 field=f"records[{index}].headers")
        headers = []
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str):
                raise InvalidRequest(f"records[{index}].headers entries are [name, value]",
                                     field=f"records[{index}].headers")
            headers.append((pair[0], _as_bytes(pair[1], f"records[{index}].headers")))
        timestamp = record.get("timestamp_ms", now)
        if type(timestamp) is not int or not 0 <= timestamp <= limits.timestamp_ms_max:
            raise InvalidRequest(f"records[{index}].timestamp_ms must be an integer in [0, 2**63)",
                                 field=f"records[{index}].timestamp_ms")
        items.append((key, value, headers, timestamp))
    return batches.encode_batch(items)


def text_or_b64(value: bytes | None, name: str) -> dict[str, Any]:
    """JSON rendering of a key or value: UTF-8 text when it is, else null plus base64."""
    if value is None:
        return {name: None}
    try:
        return {name: value.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: None, f"{name}_b64": base64.b64encode(value).decode()}


def b64decode_field(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidRequest(f"{field} must be base64 text", field=field)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidRequest(f"{field} is not valid base64", field=field) from None
