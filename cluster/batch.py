"""The record batch: raftmq's unit of produce, replication, storage and fetch.

A batch is built once by the producer, validated once by the partition leader, stamped with its offset by
the replicated state machine, stored as is in a segment and served as is to consumers. Nothing on the hot
path re-encodes records (the Kafka RecordBatch idea).

Layout (big-endian; offsets in bytes)::

    0   u64  base_offset        set when the batch is applied (0 from the client)
    8   u32  batch_length       bytes after this field (= len(batch) - 12)
    12  u64  leader_epoch       Raft term of the entry that carried the batch
    20  u64  raft_index         Raft index of that entry (makes replay idempotent)
    28  i64  append_time_ms     leader clock when the batch was proposed (drives time retention)
    36  u32  header_crc         CRC-32 of bytes [0, 36) and [40, 47): the broker fields + magic,
                                attributes and the client crc, so every byte of a stored batch is covered
    40  u8   magic = 1
    41  u16  attributes         0 (no compression); other values are rejected
    43  u32  crc                CRC-32 of bytes [47, end): written by the producer, checked by the
                                leader before it proposes and by every reader
    47  u32  record_count
    51  i64  first_timestamp_ms  the smallest record timestamp (records store deltas from it)
    59  i64  max_timestamp_ms
    67  i64  producer_id        -1 when the producer is not idempotent
    75  i32  base_sequence      -1 when the producer is not idempotent; else the sequence of the first record
    79  ...  records            msgpack array of [timestamp_delta_ms, key, value, headers]
                                key, value: bin or nil; headers: array of [str, bin or nil]

Record ``i`` of a batch has offset ``base_offset + i`` and sequence ``base_sequence + i``.

No I/O here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.errors import BatchTooLarge, CorruptBatch, InvalidRequest, RecordTooLarge

MAGIC: Final = 1
HEADER_BYTES: Final = 79
# The prefix a reader needs to learn a batch's length.
LENGTH_PREFIX_BYTES: Final = 12

_HEADER = struct.Struct(">QIQQqIBHIIqqqi")
assert _HEADER.size == HEADER_BYTES
_BROKER_FIELDS = struct.Struct(">QIQQq")  # base_offset .. append_time_ms, bytes [0, 36)
_U32 = struct.Struct(">I")
_PREFIX = struct.Struct(">QI")
_CLIENT_CRC_SPAN = slice(40, 47)  # magic, attributes, crc

NO_PRODUCER_ID: Final = -1
NO_SEQUENCE: Final = -1


class Record(NamedTuple):
    """One record as a consumer sees it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    raft_index: int
    append_time_ms: int
    header_crc: int
    magic: int
    attributes: int
    crc: int
    record_count: int
    first_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    base_sequence: int

    @property
    def size_bytes(self) -> int:
        return self.batch_length + LENGTH_PREFIX_BYTES

    @property
    def last_offset(self) -> int:
        """Offset of the last record (inclusive)."""
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        """Offset after the last record (exclusive end)."""
        return self.base_offset + self.record_count

    @property
    def last_sequence(self) -> int:
        return self.base_sequence + self.record_count - 1


def _record_size(key: bytes | None, value: bytes | None, headers: Sequence[Any]) -> int:
    size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
    for header in headers:
        size += len(header[0]) + (len(header[1]) if header[1] is not None else 0)
    return size


def encode_batch(
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]],
    *,
    producer_id: int = NO_PRODUCER_ID,
    base_sequence: int = NO_SEQUENCE,
    sizes_checked: bool = False,
) -> bytes:
    """Build a batch from ``(key, value, headers, timestamp_ms)`` tuples (the producer side).

    Raises RecordTooLarge / BatchTooLarge before anything is sent, so the caller fails fast.
    ``sizes_checked``: the caller already checked every record against ``record_bytes_max`` (the producer
    does so in ``send()``); the per-record check is then skipped on this hot path.
    """
    items = records if isinstance(records, list | tuple) else list(records)
    if not items:
        raise BatchTooLarge("a batch needs at least one record", record_count=0)
    if len(items) > limits.batch_records_max:
        raise BatchTooLarge("too many records in one batch", record_count=len(items),
                            record_count_max=limits.batch_records_max)
    if (producer_id == NO_PRODUCER_ID) != (base_sequence == NO_SEQUENCE):
        raise ValueError("producer_id and base_sequence are set together or not at all")
    if not sizes_checked:
        for key, value, headers, _timestamp_ms in items:
            size = _record_size(key, value, headers)
            if size > limits.record_bytes_max:
                raise RecordTooLarge("record too large", size_bytes=size, size_bytes_max=limits.record_bytes_max)
    # Timestamps are stored as non-negative deltas from the smallest one, so records keep their own
    # timestamps even when they are not in time order.
    timestamps = [item[3] for item in items]
    first_ts = min(timestamps)
    max_ts = max(timestamps)
    if first_ts < 0 or max_ts > limits.timestamp_ms_max:
        raise InvalidRequest("record timestamps must be in [0, 2**63) ms", field="timestamp_ms",
                             first_timestamp_ms=first_ts, max_timestamp_ms=max_ts)
    if producer_id != NO_PRODUCER_ID and not (0 <= producer_id <= 2**63 - 1 and 0 <= base_sequence <= 2**31 - 1):
        raise InvalidRequest("producer_id must be an int64 and base_sequence an int32, both >= 0",
                             producer_id=producer_id, base_sequence=base_sequence)
    body: bytes = msgpack.packb([[timestamp_ms - first_ts, key, value, [list(h) for h in headers] if headers else []]
                                 for key, value, headers, timestamp_ms in items], use_bin_type=True)
    tail = struct.pack(">Iqqqi", len(items), first_ts, max_ts, producer_id, base_sequence) + body
    crc = zlib.crc32(tail)
    total = HEADER_BYTES + len(body)
    if total > limits.batch_bytes_max:
        raise BatchTooLarge("batch too large", size_bytes=total, size_bytes_max=limits.batch_bytes_max)
    head = _BROKER_FIELDS.pack(0, total - LENGTH_PREFIX_BYTES, 0, 0, 0) + _U32.pack(0)
    head += struct.pack(">BHI", MAGIC, 0, crc)
    return head + tail


def parse_header(buf: bytes | memoryview, position: int = 0) -> BatchHeader:
    """Decode the fixed header at ``position``; raises CorruptBatch when the buffer is too short."""
    if len(buf) - position < HEADER_BYTES:
        raise CorruptBatch("batch shorter than its header", size_bytes=len(buf) - position)
    return BatchHeader._make(_HEADER.unpack_from(buf, position))


def batch_length_at(buf: bytes | memoryview, position: int = 0) -> int | None:
    """Total size of the batch starting at ``position``, or None when fewer than 12 bytes remain."""
    if len(buf) - position < LENGTH_PREFIX_BYTES:
        return None
    length: int = _PREFIX.unpack_from(buf, position)[1]
    return length + LENGTH_PREFIX_BYTES


def _header_crc(batch: bytes | memoryview) -> int:
    return zlib.crc32(batch[_CLIENT_CRC_SPAN], zlib.crc32(batch[0:36]))


def validate_produced(batch: bytes, *, check_records: bool = True) -> BatchHeader:
    """Check a batch received from a producer before it is proposed. Never trusts the client.

    Checks sizes, magic, attributes, the client CRC, the producer fields and (``check_records``) that
    the msgpack body holds exactly ``record_count`` well-formed records within the size limits, so a
    consumer can always decode what the broker stores.
    """
    size = len(batch)
    if size > limits.batch_bytes_max:
        raise BatchTooLarge("batch too large", size_bytes=size, size_bytes_max=limits.batch_bytes_max)
    header = parse_header(batch)
    if header.size_bytes != size:
        raise CorruptBatch("batch_length does not match the batch size",
                           batch_length=header.batch_length, size_bytes=size)
    if header.magic != MAGIC:
        raise CorruptBatch(f"unknown batch magic {header.magic}", magic=header.magic)
    if header.attributes != 0:
        raise CorruptBatch("unsupported batch attributes (compression is not supported)",
                           attributes=header.attributes)
    if zlib.crc32(memoryview(batch)[47:]) != header.crc:
        raise CorruptBatch("batch CRC mismatch")
    if not 1 <= header.record_count <= limits.batch_records_max:
        raise BatchTooLarge("record_count out of range", record_count=header.record_count,
                            record_count_max=limits.batch_records_max)
    if header.producer_id == NO_PRODUCER_ID:
        if header.base_sequence != NO_SEQUENCE:
            raise CorruptBatch("base_sequence set without producer_id")
    elif header.producer_id < 0 or header.base_sequence < 0:
        raise CorruptBatch("producer_id and base_sequence must be >= 0 (or both -1)",
                           producer_id=header.producer_id, base_sequence=header.base_sequence)
    elif header.base_sequence + header.record_count - 1 > 2**31 - 1:
        raise CorruptBatch("sequence overflows int32", base_sequence=header.base_sequence)
    if header.first_timestamp_ms < 0 or header.max_timestamp_ms < header.first_timestamp_ms:
        raise CorruptBatch("bad timestamps", first_timestamp_ms=header.first_timestamp_ms,
                           max_timestamp_ms=header.max_timestamp_ms)
    if check_records:
        _check_records(batch, header)
    return header


def _check_records(batch: bytes, header: BatchHeader) -> None:
    try:
        # max_bin_len is the batch size, not the record size: an oversized record must be reported as
        # RECORD_TOO_LARGE by the size check below, not as a decoder failure.
        body = msgpack.unpackb(memoryview(batch)[HEADER_BYTES:], raw=False, use_list=True,
                               max_bin_len=limits.batch_bytes_max, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing: corrupt body
        raise CorruptBatch(f"record body is not valid msgpack: {exc}") from None
    if not isinstance(body, list) or len(body) != header.record_count:
        raise CorruptBatch("record body does not hold record_count records", record_count=header.record_count)
    max_delta = header.max_timestamp_ms - header.first_timestamp_ms
    for index, record in enumerate(body):
        if not isinstance(record, list) or len(record) != 4:
            raise CorruptBatch("record is not [timestamp_delta, key, value, headers]", record_index=index)
        delta, key, value, headers = record
        if type(delta) is not int or not 0 <= delta <= max_delta:
            raise CorruptBatch("record timestamp delta out of range", record_index=index)
        if not (key is None or type(key) is bytes) or not (value is None or type(value) is bytes):
            raise CorruptBatch("record key and value must be bytes or nil", record_index=index)
        if type(headers) is not list:
            raise CorruptBatch("record headers must be an array", record_index=index)
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
        if headers:
            if len(headers) > limits.headers_per_record_max:
                raise CorruptBatch("too many headers", record_index=index)
            for header_item in headers:
                if (type(header_item) is not list or len(header_item) != 2 or type(header_item[0]) is not str
                        or len(header_item[0]) > limits.header_key_chars_max
                        or not (header_item[1] is None or type(header_item[1]) is bytes)):
                    raise CorruptBatch("header must be [str key, bytes value]", record_index=index)
                size += len(header_item[0]) + (len(header_item[1]) if header_item[1] is not None else 0)
        if size > limits.record_bytes_max:
            raise RecordTooLarge("record too large", record_index=index, size_bytes=size,
                                 size_bytes_max=limits.record_bytes_max)


def stamp(batch: bytes, *, base_offset: int, leader_epoch: int, raft_index: int, append_time_ms: int) -> bytes:
    """Return the batch with the broker fields set and the header CRC computed (the apply step)."""
    head = _BROKER_FIELDS.pack(base_offset, len(batch) - LENGTH_PREFIX_BYTES, leader_epoch, raft_index,
                               append_time_ms)
    header_crc = zlib.crc32(batch[_CLIENT_CRC_SPAN], zlib.crc32(head))
    return head + _U32.pack(header_crc) + batch[40:]


def verify_stored(batch: bytes | memoryview, *, check_body_crc: bool = True) -> BatchHeader:
    """Check a stored (stamped) batch: both CRCs and the length. Raises CorruptBatch."""
    header = parse_header(batch)
    if header.size_bytes != len(batch):
        raise CorruptBatch("stored batch length mismatch", batch_length=header.batch_length, size_bytes=len(batch))
    if header.magic != MAGIC:
        raise CorruptBatch(f"unknown batch magic {header.magic}")
    if _header_crc(batch) != header.header_crc:
        raise CorruptBatch("batch header CRC mismatch", base_offset=header.base_offset)
    if check_body_crc and zlib.crc32(memoryview(batch)[47:]) != header.crc:
        raise CorruptBatch("batch CRC mismatch", base_offset=header.base_offset)
    return header


def decode_records(batch: bytes | memoryview, header: BatchHeader | None = None) -> list[Record]:
    """Decode every record of a stored batch (the consumer side). Raises CorruptBatch."""
    if header is None:
        header = parse_header(batch)
    try:
        body = msgpack.unpackb(memoryview(batch)[HEADER_BYTES:], raw=False, use_list=False)
        records = [
            Record(header.base_offset + index, header.first_timestamp_ms + item[0], item[1], item[2],
                   tuple((h[0], h[1]) for h in item[3]))
            for index, item in enumerate(body)
        ]
    except (ValueError, TypeError, IndexError, msgpack.ExtraData) as exc:
        raise CorruptBatch(f"cannot decode records: {exc}", base_offset=header.base_offset) from None
    if len(records) != header.record_count:
        raise CorruptBatch("record count mismatch", base_offset=header.base_offset)
    return records


def iter_batches(buf: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Split concatenated stored batches (a fetch response) into (header, bytes). Raises CorruptBatch
    on a truncated batch: brokers only return whole batches."""
    view = memoryview(buf)
    position = 0
    while position < len(view):
        size = batch_length_at(view, position)
        if size is None or size < HEADER_BYTES or position + size > len(view):
            raise CorruptBatch("truncated batch in fetch data", position=position)
        chunk = view[position:position + size]
        yield parse_header(chunk), chunk
        position += size
