"""The Kafka wire protocol's primitive types and a small schema engine over them.

Kafka messages are sequences of typed fields; a field exists from one API version on (and sometimes until
another). ``Field`` says so, and ``decode`` / ``encode`` walk a schema for one version, so each message of
``kafka_messages.py`` is written once as data instead of once per version by hand.

Types (all big-endian):

* ``int8/int16/int32/int64``, ``bool`` (one byte, 0 or 1);
* ``string`` (int16 length + UTF-8), ``nullable_string`` (length -1 = null), ``bytes`` / ``nullable_bytes``
  (int32 length, -1 = null);
* arrays (int32 count, -1 = null for nullable arrays) of a primitive or of a struct (a nested schema);
* flexible versions (KIP-482): strings, bytes and arrays carry ``length + 1`` as an **unsigned** varint
  (0 = null), and every struct ends with a tagged-field section (a count, then tag / size / bytes each),
  which we skip on decode and write empty on encode. Record-level varints inside a RecordBatch are the other
  kind, zigzag-signed (``kafka_records.py``): the two must never share a helper.

No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from raftmq.cluster.errors import InvalidRequest

_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_UINT32 = struct.Struct(">I")

PRIMITIVES: Final = frozenset({"int8", "int16", "int32", "int64", "uint32", "bool", "string", "nullable_string",
                               "bytes", "nullable_bytes"})
_FIXED = {"int8": _INT8, "int16": _INT16, "int32": _INT32, "int64": _INT64, "uint32": _UINT32}
# The bounds a primitive value must respect on encode (a bug in the broker, not a client's fault).
_RANGES = {"int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
           "int64": (-(2**63), 2**63 - 1), "uint32": (0, 2**32 - 1)}


class DecodeError(InvalidRequest):
    """A Kafka frame that does not match its schema: the listener closes the connection (what a Kafka
    broker does with a request it cannot parse; the client reconnects and starts over)."""


@dataclass(frozen=True)
class Field:
    """One field of a message: ``kind`` is a primitive name or a nested schema (a tuple of Fields).

    ``array``: the field is an array of ``kind``; ``nullable`` (arrays): -1 / 0 means null. The field is
    present in versions ``since`` .. ``until`` (inclusive; None = every later version)."""

    name: str
    kind: str | Schema
    since: int = 0
    until: int | None = None
    array: bool = False
    nullable: bool = False
    default: Any = None  # the value encode writes when the caller leaves the field out

    def present(self, version: int) -> bool:
        return version >= self.since and (self.until is None or version <= self.until)


Schema = tuple[Field, ...]


# --- unsigned varints (KIP-482 lengths and tags) ---------------------------------------------------


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"unsigned varint of a negative value {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Reader:
    """Reads primitives from one frame; every read past the end is a DecodeError, never an IndexError."""

    __slots__ = ("buffer", "position")

    def __init__(self, buffer: bytes | memoryview, position: int = 0) -> None:
        self.buffer = memoryview(buffer)
        self.position = position

    @property
    def remaining(self) -> int:
        return len(self.buffer) - self.position

    def take(self, size: int) -> memoryview:
        if size < 0 or size > self.remaining:
            raise DecodeError(f"the frame ends {size - self.remaining} bytes early", position=self.position)
        chunk = self.buffer[self.position:self.position + size]
        self.position += size
        return chunk

    def fixed(self, kind: str) -> int:
        layout = _FIXED[kind]
        value: int = layout.unpack(self.take(layout.size))[0]
        return value

    def uvarint(self) -> int:
        value = 0
        for shift in range(0, 35, 7):  # a length or tag is at most a 32-bit number: 5 bytes
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise DecodeError("unsigned varint longer than 5 bytes", position=self.position)

    def length(self, compact: bool, width: str) -> int:
        """A length or count; -1 means null (compact: ``length + 1`` as an unsigned varint, 0 = null)."""
        if compact:
            return self.uvarint() - 1
        return self.fixed(width)

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())


class Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts = bytearray()

    def fixed(self, kind: str, value: int) -> None:
        low, high = _RANGES[kind]
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{value!r} does not fit {kind}")
        self.parts += _FIXED[kind].pack(value)

    def length(self, compact: bool, width: str, value: int) -> None:
        if compact:
            self.parts += encode_uvarint(value + 1)
        else:
            self.fixed(width, value)

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self.parts += data

    def empty_tagged_fields(self) -> None:
        self.parts.append(0)


# --- schema walk ------------------------------------------------------------------------------------


def _decode_primitive(reader: Reader, kind: str, compact: bool) -> Any:
    if kind in _FIXED:
        return reader.fixed(kind)
    if kind == "bool":
        return reader.take(1)[0] != 0
    if kind in ("string", "nullable_string"):
        size = reader.length(compact, "int16")
        if size < 0:
            if kind == "string":
                raise DecodeError("null where a string is required")
            return None
        try:
            return str(reader.take(size), "utf-8")
        except UnicodeDecodeError:
            raise DecodeError("string is not UTF-8") from None
    if kind in ("bytes", "nullable_bytes"):
        size = reader.length(compact, "int32")
        if size < 0:
            if kind == "bytes":
                raise DecodeError("null where bytes are required")
            return None
        return bytes(reader.take(size))
    raise AssertionError(f"unknown primitive {kind}")


def _encode_primitive(writer: Writer, kind: str, value: Any, compact: bool) -> None:
    if kind in _FIXED:
        writer.fixed(kind, value)
    elif kind == "bool":
        writer.raw(b"\x01" if value else b"\x00")
    elif kind in ("string", "nullable_string", "bytes", "nullable_bytes"):
        if value is None:
            if not kind.startswith("nullable"):
                raise ValueError(f"null {kind}")
            writer.length(compact, "int16" if kind.endswith("string") else "int32", -1)
            return
        data = value.encode("utf-8") if kind.endswith("string") else bytes(value)
        writer.length(compact, "int16" if kind.endswith("string") else "int32", len(data))
        writer.raw(data)
    else:
        raise AssertionError(f"unknown primitive {kind}")


def decode(schema: Schema, reader: Reader, version: int, *, flexible: bool = False,
           count_max: int = 100_000) -> dict[str, Any]:
    """Decode one struct of ``schema`` at ``version``. ``count_max`` bounds every array's element count
    (checked against the bytes left too), so a hostile count cannot make us allocate."""
    out: dict[str, Any] = {}
    for item in schema:
        if not item.present(version):
            continue
        if item.array:
            count = reader.length(flexible, "int32")
            if count < 0:
                if not item.nullable:
                    raise DecodeError(f"{item.name}: null where an array is required")
                out[item.name] = None
                continue
            if count > count_max or count > reader.remaining:
                raise DecodeError(f"{item.name}: {count} elements cannot be in this frame", field=item.name)
            if isinstance(item.kind, tuple):
                out[item.name] = [decode(item.kind, reader, version, flexible=flexible, count_max=count_max)
                                  for _ in range(count)]
            else:
                out[item.name] = [_decode_primitive(reader, item.kind, flexible) for _ in range(count)]
        elif isinstance(item.kind, tuple):
            out[item.name] = decode(item.kind, reader, version, flexible=flexible, count_max=count_max)
        else:
            out[item.name] = _decode_primitive(reader, item.kind, flexible)
    if flexible:
        reader.skip_tagged_fields()
    return out


def encode(schema: Schema, values: Mapping[str, Any], version: int, writer: Writer | None = None, *,
           flexible: bool = False) -> Writer:
    """Encode ``values`` as one struct of ``schema`` at ``version``; fields missing from ``values`` take
    their default (a field without a default must be given)."""
    writer = writer if writer is not None else Writer()
    for item in schema:
        if not item.present(version):
            continue
        value = values.get(item.name, item.default)
        if item.array:
            if value is None:
                if not item.nullable:
                    raise ValueError(f"{item.name}: null array")
                writer.length(flexible, "int32", -1)
                continue
            elements: Sequence[Any] = value
            writer.length(flexible, "int32", len(elements))
            for element in elements:
                if isinstance(item.kind, tuple):
                    encode(item.kind, element, version, writer, flexible=flexible)
                else:
                    _encode_primitive(writer, item.kind, element, flexible)
        elif isinstance(item.kind, tuple):
            encode(item.kind, value, version, writer, flexible=flexible)
        else:
            if value is None and item.kind in _FIXED:
                raise ValueError(f"{item.name} is required")
            _encode_primitive(writer, item.kind, value, flexible)
    if flexible:
        writer.empty_tagged_fields()
    return writer


__all__ = ["DecodeError", "Field", "PRIMITIVES", "Reader", "Schema", "Writer", "decode", "encode", "encode_uvarint"]
