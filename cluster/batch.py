"""The record batch: Kafka's RecordBatch v2, raftmq's unit of produce, replication, storage and fetch.

raftmq's client and Kafka clients send the same bytes: a v2 batch. The partition leader validates it once
(sizes, magic, CRC-32C, attributes, producer fields, every record), the replicated state machine writes the
two fields outside the CRC (BaseOffset, PartitionLeaderEpoch) and stores the batch otherwise verbatim,
compressed batches included, and every fetch (HTTP or Kafka) serves it as stored. Nothing on the hot path
re-encodes records; the per-record work (varints) runs in aiokafka's compiled record module.

A v2 batch (big-endian; offsets in bytes)::

    0   i64  BaseOffset            written by the broker (a producer sends 0)           not under the CRC
    8   i32  BatchLength           bytes after this field (= size - 12)
    12  i32  PartitionLeaderEpoch  written by the broker: the Raft term of its entry    not under the CRC
    16  i8   Magic = 2
    17  u32  CRC                   CRC-32C (Castagnoli) of bytes [21, end), written by the producer
    21  i16  Attributes            bits 0-2 codec (none, gzip, snappy, lz4, zstd); bit 3 timestamp type,
                                   bit 4 transactional, bit 5 control: a producer sets none of them here
    23  i32  LastOffsetDelta       RecordsCount - 1 (a produced batch has no offset gaps)
    27  i64  BaseTimestamp         the first record's timestamp; records store signed deltas from it
    35  i64  MaxTimestamp
    43  i64  ProducerId            -1 when the producer is not idempotent
    51  i16  ProducerEpoch         -1 when the producer is not idempotent
    53  i32  BaseSequence          the sequence of the first record (ignored without a ProducerId)
    57  i32  RecordsCount
    61  ...  records, or one compressed blob of them: each record is a varint length, an attributes byte,
             varint timestamp delta, offset delta, key, value and headers (Kafka's layout)

Record ``i`` has offset ``BaseOffset + i`` and sequence ``BaseSequence + i``.

A STORED batch is the v2 batch behind a 20-byte prefix holding what v2 has no room for::

    0   u32  prefix_crc      CRC-32C of prefix bytes [4, 20) and batch bytes [0, 21): the broker's fields and
                             every batch byte the v2 CRC leaves out, so each stored byte is under a checksum
                             (a torn or corrupt tail is detected and cut on recovery)
    4   i64  raft_index      Raft index of the entry that carried the batch (makes replay idempotent)
    12  i64  append_time_ms  leader clock when the batch was proposed (drives time retention)
    20  ...  the v2 batch

Segments and snapshot streams hold stored batches; fetches serve the bare v2 batches (``served``).

No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import crc32c
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from raftmq.cluster import limits
from raftmq.cluster.compression import CODEC_NONE, CODECS, decompress
from raftmq.cluster.errors import BatchTooLarge, CorruptBatch, InvalidRequest, RecordTooLarge, UnsupportedCompression

MAGIC: Final = 2
BATCH_HEADER_BYTES: Final = 61
BATCH_LENGTH_BYTES: Final = 12  # BaseOffset + BatchLength: what a reader needs to learn a batch's size
STORED_PREFIX_BYTES: Final = 20
STORED_HEADER_BYTES: Final = STORED_PREFIX_BYTES + BATCH_HEADER_BYTES
STORED_LENGTH_BYTES: Final = STORED_PREFIX_BYTES + BATCH_LENGTH_BYTES
STORED_BATCH_BYTES_MAX: Final = STORED_PREFIX_BYTES + limits.batch_bytes_max

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _BATCH_HEADER.size == BATCH_HEADER_BYTES
_STORED_HEADER = struct.Struct(">Iqq" + _BATCH_HEADER.format[1:])
assert _STORED_HEADER.size == STORED_HEADER_BYTES
_PREFIX_FIELDS = struct.Struct(">qq")  # raft_index, append_time_ms
_OFFSET_AND_LENGTH = struct.Struct(">qi")
_OFFSET_FIELDS = struct.Struct(">qii")  # BaseOffset, BatchLength, PartitionLeaderEpoch
_U32 = struct.Struct(">I")
_CRC_START: Final = 21  # the v2 CRC covers [21, end)

CODEC_MASK: Final = 0x07
TIMESTAMP_TYPE_BIT: Final = 0x08
TRANSACTIONAL_BIT: Final = 0x10
CONTROL_BIT: Final = 0x20
_ATTRIBUTES_SERVED: Final = CODEC_MASK  # a produced batch may set the codec and nothing else

NO_PRODUCER_ID: Final = -1
NO_SEQUENCE: Final = -1
NO_PRODUCER_EPOCH: Final = -1
NO_BROKER_FIELD: Final = -1  # raft_index / append_time_ms of a batch that is not stored
_INT32_MAX: Final = 2**31 - 1
# Room the builder is given: batch_bytes_max is checked on the result, and a record must never be refused
# by the builder's own size estimate.
_BUILDER_BYTES: Final = 1 << 31


class Record(NamedTuple):
    """One record as a consumer sees it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class BatchHeader(NamedTuple):
    """The header of a v2 batch, and the broker's prefix fields when it was read from storage."""

    raft_index: int          # NO_BROKER_FIELD outside storage
    append_time_ms: int      # NO_BROKER_FIELD outside storage
    prefix_bytes: int        # STORED_PREFIX_BYTES for a stored batch, 0 for a bare v2 batch
    base_offset: int
    batch_length: int
    leader_epoch: int        # PartitionLeaderEpoch: the Raft term of the entry
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp_ms: int  # BaseTimestamp
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size_bytes(self) -> int:
        """Bytes of the batch as read (with the stored prefix, if any)."""
        return self.prefix_bytes + BATCH_LENGTH_BYTES + self.batch_length

    @property
    def codec(self) -> int:
        return self.attributes & CODEC_MASK

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


# --- the producer side ------------------------------------------------------------------------------


def encode_batch(
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]],
    *,
    producer_id: int = NO_PRODUCER_ID,
    base_sequence: int = NO_SEQUENCE,
    producer_epoch: int | None = None,
    sizes_checked: bool = False,
) -> bytes:
    """Build an uncompressed v2 batch from ``(key, value, headers, timestamp_ms)`` tuples.

    Raises RecordTooLarge / BatchTooLarge before anything is sent, so the caller fails fast.
    ``sizes_checked``: the caller already checked every record against ``record_bytes_max`` (the producer
    does so in ``send()``); the per-record check is then skipped on this hot path. ``producer_epoch``
    defaults to 0 for an idempotent batch (raftmq allocates a fresh producer id instead of bumping epochs).
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
    if producer_id != NO_PRODUCER_ID and not (0 <= producer_id <= 2**63 - 1 and 0 <= base_sequence <= _INT32_MAX):
        raise InvalidRequest("producer_id must be an int64 and base_sequence an int32, both >= 0",
                             producer_id=producer_id, base_sequence=base_sequence)
    if producer_epoch is None:
        producer_epoch = 0 if producer_id != NO_PRODUCER_ID else NO_PRODUCER_EPOCH
    builder = DefaultRecordBatchBuilder(magic=MAGIC, compression_type=CODEC_NONE, is_transactional=0,
                                        producer_id=producer_id, producer_epoch=producer_epoch,
                                        base_sequence=base_sequence, batch_size=_BUILDER_BYTES)
    append = builder.append
    try:
        for offset_delta, (key, value, headers, timestamp_ms) in enumerate(items):
            append(offset_delta, timestamp=timestamp_ms, key=key, value=value,
                   headers=list(headers) if headers else [])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"a record cannot be encoded: {exc}") from None
    batch = bytes(builder.build())
    if len(batch) > limits.batch_bytes_max:
        raise BatchTooLarge("batch too large", size_bytes=len(batch), size_bytes_max=limits.batch_bytes_max)
    return batch


# --- headers ----------------------------------------------------------------------------------------


def parse_batch_header(buf: bytes | memoryview, position: int = 0) -> BatchHeader:
    """Decode the header of the bare v2 batch at ``position``; raises CorruptBatch when too short."""
    if len(buf) - position < BATCH_HEADER_BYTES:
        raise CorruptBatch("batch shorter than its 61-byte header", size_bytes=len(buf) - position)
    return BatchHeader(NO_BROKER_FIELD, NO_BROKER_FIELD, 0, *_BATCH_HEADER.unpack_from(buf, position))


def parse_header(buf: bytes | memoryview, position: int = 0) -> BatchHeader:
    """Decode the prefix and header of the STORED batch at ``position``; raises CorruptBatch when too short."""
    if len(buf) - position < STORED_HEADER_BYTES:
        raise CorruptBatch("stored batch shorter than its header", size_bytes=len(buf) - position)
    fields = _STORED_HEADER.unpack_from(buf, position)
    return BatchHeader(fields[1], fields[2], STORED_PREFIX_BYTES, *fields[3:])


def batch_length_at(buf: bytes | memoryview, position: int = 0) -> int | None:
    """Total size of the STORED batch starting at ``position``, or None when fewer than
    ``STORED_LENGTH_BYTES`` bytes remain."""
    if len(buf) - position < STORED_LENGTH_BYTES:
        return None
    length: int = _OFFSET_AND_LENGTH.unpack_from(buf, position + STORED_PREFIX_BYTES)[1]
    return STORED_LENGTH_BYTES + length


# --- the leader's validation ------------------------------------------------------------------------


def validate_produced(batch: bytes | memoryview, *, check_records: bool = True) -> BatchHeader:
    """Check a batch received from a producer before it is proposed. Never trusts the client.

    Checks sizes, magic, the CRC-32C, attributes (a codec and nothing else: no transactions, control
    batches or broker timestamps), the record count and the producer fields, and (``check_records``)
    decodes every record (decompressed, bounded): offset deltas 0, 1, 2, ..., header counts and key
    lengths, and record sizes within ``record_bytes_max``, so every reader can decode what is stored.
    """
    size = len(batch)
    if size > limits.batch_bytes_max:
        raise BatchTooLarge("batch too large", size_bytes=size, size_bytes_max=limits.batch_bytes_max)
    header = parse_batch_header(batch)
    if header.size_bytes != size:
        raise CorruptBatch("BatchLength does not match the batch size", batch_length=header.batch_length,
                           size_bytes=size)
    if header.magic != MAGIC:
        raise CorruptBatch(f"record batch magic {header.magic} is not served (only v2, magic 2)",
                           magic=header.magic)
    if crc32c.crc32c(memoryview(batch)[_CRC_START:]) != header.crc:
        raise CorruptBatch("record batch CRC-32C mismatch")
    if header.attributes & ~_ATTRIBUTES_SERVED:
        raise CorruptBatch("transactional, control and log-append-time batches are not served (attributes "
                           "may set the codec only)", attributes=header.attributes)
    if header.codec not in CODECS:
        raise UnsupportedCompression(f"compression codec {header.codec} is not served (none, gzip, snappy, lz4, "
                                     "zstd are)", codec=header.codec)
    if not 1 <= header.record_count <= limits.batch_records_max \
            or header.last_offset_delta != header.record_count - 1:
        raise BatchTooLarge("RecordsCount out of range or not LastOffsetDelta + 1", record_count=header.record_count,
                            last_offset_delta=header.last_offset_delta, record_count_max=limits.batch_records_max)
    if header.producer_id != NO_PRODUCER_ID:
        if header.producer_id < 0 or header.base_sequence < 0 or header.producer_epoch < 0:
            raise CorruptBatch("an idempotent batch needs ProducerId, ProducerEpoch and BaseSequence >= 0 (or "
                               "ProducerId -1)", producer_id=header.producer_id,
                               producer_epoch=header.producer_epoch, base_sequence=header.base_sequence)
        if header.base_sequence + header.record_count - 1 > _INT32_MAX:
            # Kafka wraps sequences around; raftmq's producer table does not: a client starts a new producer id.
            raise CorruptBatch("sequence overflows int32", base_sequence=header.base_sequence)
    # Without a ProducerId the sequence means nothing (aiokafka writes 0 there): ignored, as Kafka does.
    if check_records:
        check_records_of(batch, header)
    return header


def check_records_of(batch: bytes | memoryview, header: BatchHeader) -> None:
    """The record checks of ``validate_produced`` (the leader may run them off its event loop: a compressed
    batch is decompressed for them). Raises CorruptBatch, RecordTooLarge, UnsupportedCompression."""
    # A batch no larger than one record cannot hold a record over the limit: the size sums are skipped.
    check_sizes = header.batch_length > limits.record_bytes_max or header.codec != CODEC_NONE
    index = 0
    base = header.base_offset  # the reader's offsets are absolute; whatever a producer wrote there is unused
    try:
        for index, record in enumerate(_records_of(batch, header)):
            if record.offset - base != index:
                raise CorruptBatch("record offset deltas must be 0, 1, 2, ...", record_index=index)
            headers = record.headers
            size = 0
            if headers:
                if len(headers) > limits.headers_per_record_max:
                    raise CorruptBatch("too many headers", record_index=index)
                for name, value in headers:
                    if len(name) > limits.header_key_chars_max:
                        raise CorruptBatch("header key too long", record_index=index)
                    size += len(name) + (len(value) if value is not None else 0)
            if check_sizes:
                key, value = record.key, record.value
                size += (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
                if size > limits.record_bytes_max:
                    raise RecordTooLarge("record too large", record_index=index, size_bytes=size,
                                         size_bytes_max=limits.record_bytes_max)
    except (CorruptBatch, RecordTooLarge, UnsupportedCompression):
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing: corrupt records
        raise CorruptBatch(f"records do not decode: {exc}", record_index=index) from None


def _records_of(batch: bytes | memoryview, header: BatchHeader) -> DefaultRecordBatch:
    """The records of a (validated or stored) batch as aiokafka's compiled reader yields them. ``batch``
    starts at the v2 header. A compressed batch is decompressed here (bounded) and handed to the reader as
    the equivalent uncompressed batch (the reader itself never decompresses, nor checks the CRC)."""
    if header.codec == CODEC_NONE:
        return DefaultRecordBatch(batch)
    records = decompress(header.codec, memoryview(batch)[BATCH_HEADER_BYTES:])
    head = bytearray(memoryview(batch)[:BATCH_HEADER_BYTES])
    head[21:23] = (header.attributes & ~CODEC_MASK).to_bytes(2, "big")
    return DefaultRecordBatch(bytes(head) + records)


# --- the apply step and storage ---------------------------------------------------------------------


def _prefix_crc(prefix_fields: bytes | memoryview, batch: bytes | memoryview) -> int:
    return crc32c.crc32c(batch[:_CRC_START], crc32c.crc32c(prefix_fields))


def stamp(batch: bytes | memoryview, *, base_offset: int, leader_epoch: int, raft_index: int,
          append_time_ms: int) -> bytes:
    """The stored form of a validated batch: BaseOffset and PartitionLeaderEpoch written, the broker prefix in
    front (the apply step). Every other byte is the producer's."""
    epoch = min(leader_epoch, _INT32_MAX)  # Raft terms: 2**31 elections never happen; clamp rather than fail
    head = _OFFSET_FIELDS.pack(base_offset, len(batch) - BATCH_LENGTH_BYTES, epoch) + bytes(batch[16:_CRC_START])
    fields = _PREFIX_FIELDS.pack(raft_index, append_time_ms)
    return b"".join((_U32.pack(_prefix_crc(fields, head)), fields, head, memoryview(batch)[_CRC_START:]))


def verify_stored(stored: bytes | memoryview, *, check_body_crc: bool = True) -> BatchHeader:
    """Check a stored batch: its size, magic, the prefix CRC and (``check_body_crc``) the v2 CRC-32C over the
    records. Raises CorruptBatch."""
    header = parse_header(stored)
    if header.size_bytes != len(stored):
        raise CorruptBatch("stored batch length mismatch", batch_length=header.batch_length, size_bytes=len(stored))
    if header.magic != MAGIC:
        raise CorruptBatch(f"unknown batch magic {header.magic}")
    view = memoryview(stored)
    if _prefix_crc(view[4:STORED_PREFIX_BYTES], view[STORED_PREFIX_BYTES:]) != _U32.unpack_from(stored)[0]:
        raise CorruptBatch("stored batch prefix CRC mismatch", base_offset=header.base_offset)
    if check_body_crc and crc32c.crc32c(view[STORED_PREFIX_BYTES + _CRC_START:]) != header.crc:
        raise CorruptBatch("batch CRC-32C mismatch", base_offset=header.base_offset)
    return header


def served(stored: bytes | memoryview) -> bytes:
    """Stored batches back to back (a log read) as the bare v2 batches a fetch serves: the prefixes dropped."""
    view = memoryview(stored)
    parts = []
    position = 0
    while position < len(view):
        size = batch_length_at(view, position)
        if size is None or size < STORED_HEADER_BYTES or position + size > len(view):
            raise CorruptBatch("truncated stored batch in a log read", position=position)
        parts.append(view[position + STORED_PREFIX_BYTES:position + size])
        position += size
    return b"".join(parts)


# --- the consumer side ------------------------------------------------------------------------------


def decode_records(batch: bytes | memoryview, header: BatchHeader | None = None) -> list[Record]:
    """Every record of a batch (bare v2 when ``header`` is None; else as ``header`` was parsed, stored or
    bare), decompressed. Raises CorruptBatch."""
    if header is None:
        header = parse_batch_header(batch)
    view = memoryview(batch)[header.prefix_bytes:] if header.prefix_bytes else batch
    base = header.base_offset
    try:
        records = [Record(r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
                   for r in _records_of(view, header)]
    except (CorruptBatch, UnsupportedCompression):
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing: corrupt records
        raise CorruptBatch(f"cannot decode records: {exc}", base_offset=base) from None
    if len(records) != header.record_count:
        raise CorruptBatch("record count mismatch", base_offset=base)
    return records


def iter_batches(buf: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Split concatenated v2 batches (a fetch response) into (header, bytes). Raises CorruptBatch on a
    truncated batch: brokers only return whole batches."""
    view = memoryview(buf)
    position = 0
    while position < len(view):
        if len(view) - position < BATCH_HEADER_BYTES:
            raise CorruptBatch("truncated batch in fetch data", position=position)
        header = parse_batch_header(view, position)
        size = header.size_bytes
        if size < BATCH_HEADER_BYTES or position + size > len(view):
            raise CorruptBatch("truncated batch in fetch data", position=position)
        yield header, view[position:position + size]
        position += size


def iter_stored(buf: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Split concatenated STORED batches (a log read) into (header, bytes). Raises CorruptBatch when one is
    cut short."""
    view = memoryview(buf)
    position = 0
    while position < len(view):
        size = batch_length_at(view, position)
        if size is None or size < STORED_HEADER_BYTES or position + size > len(view):
            raise CorruptBatch("truncated stored batch", position=position)
        chunk = view[position:position + size]
        yield parse_header(chunk), chunk
        position += size


def check_batch_crc(batch: bytes | memoryview, header: BatchHeader) -> None:
    """The v2 CRC-32C of a bare batch (a consumer's check of fetched data). Raises CorruptBatch."""
    if crc32c.crc32c(memoryview(batch)[_CRC_START:]) != header.crc:
        raise CorruptBatch("batch CRC-32C mismatch", base_offset=header.base_offset)
