"""Kafka RecordBatch v2 (magic 2): decode and validate what Kafka producers send, encode what Kafka
consumers read, and convert to and from raftmq's own batch (``cluster/batch.py``).

raftmq stores its own batch format (msgpack records, CRC-32, uncompressed), not v2. The Kafka listener
therefore converts at the edge: a produced v2 batch is checked (CRC-32C, header, record count), its records
are decompressed (gzip, snappy raw or in the Java client's framing, lz4 frames, zstd) and decoded, and
re-encoded as ONE raftmq batch carrying the same producer id and base sequence, so raftmq's idempotence
rules (cluster/producer_state.py) see exactly what the Kafka producer sent; a fetch turns each stored
raftmq batch into one uncompressed v2 batch with the same base offset, record count, timestamps, producer
id and base sequence. Records produced over either protocol read back over both. What is lost at the
edge: the codec (stored and served uncompressed), the producer epoch (raftmq allocates a fresh producer id
per InitProducerId, so the epoch is always 0) and the timestamp type.

Batch header (61 bytes, big-endian)::

    0   int64  BaseOffset            the broker writes it (the producer sends 0)          not under the CRC
    8   int32  BatchLength           bytes after this field
    12  int32  PartitionLeaderEpoch  the broker writes it (the Raft term here)            not under the CRC
    16  int8   Magic = 2
    17  uint32 CRC                   CRC-32C (Castagnoli) of bytes 21..end
    21  int16  Attributes            bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), bit 3 timestamp
                                     type, bit 4 transactional, bit 5 control
    23  int32  LastOffsetDelta       record count - 1 (also the last sequence delta)
    27  int64  BaseTimestamp
    35  int64  MaxTimestamp
    43  int64  ProducerId            -1 when not idempotent
    51  int16  ProducerEpoch         -1 when not idempotent
    53  int32  BaseSequence          -1 when not idempotent
    57  int32  RecordsCount
    61  ...    records (or one compressed blob of them)

A Kafka broker that stores v2 rewrites only BaseOffset and PartitionLeaderEpoch, the two fields outside
the CRC, so a stored batch stays valid byte for byte. Each record: length varint, attributes int8,
timestamp delta varlong, offset delta varint, key (varint length, -1 = null), value (same), header count
varint, then per header a key (varint length + UTF-8) and a value (varint length, -1 = null). Record
varints are zigzag-signed; KIP-482 lengths in ``kafka_codec.py`` are not.

No I/O here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

import cramjam
import crc32c
from raftmq.cluster import batch as raftmq_batch
from raftmq.cluster import limits
from raftmq.cluster.errors import CorruptBatch, RaftMQError

MAGIC: Final = 2
HEADER_BYTES: Final = 61
LOG_OVERHEAD: Final = 12  # BaseOffset + BatchLength: what precedes the part BatchLength counts
_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _HEADER.size == HEADER_BYTES
_CRC_START: Final = 21
# Snappy as the Java client writes it (xerial's framing): a 16-byte header, then [int32 size][raw block]...
# librdkafka writes raw snappy. Both are read.
_XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES: Final = 16

CODEC_MASK: Final = 0x07
CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
TIMESTAMP_TYPE_BIT: Final = 0x08
TRANSACTIONAL_BIT: Final = 0x10
CONTROL_BIT: Final = 0x20


class UnsupportedCompression(RaftMQError):
    """A batch compressed with a codec this broker cannot decompress (Kafka's UNSUPPORTED_COMPRESSION_TYPE).
    Kafka-only: it never crosses raftmq's own API, so it has no code in the shared registry."""

    code = "UNSUPPORTED_COMPRESSION_TYPE"
    hint = "produce with compression gzip or none"


class KafkaBatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def codec(self) -> int:
        return self.attributes & CODEC_MASK

    @property
    def size_bytes(self) -> int:
        return self.batch_length + LOG_OVERHEAD


class KafkaRecord(NamedTuple):
    offset_delta: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


# --- zigzag varints (records) -----------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Zigzag + base-128, as protobuf's sint64 (Kafka's varint and varlong)."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    zigzag = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            raise CorruptBatch("a record ends inside a varint")
        byte = data[position]
        position += 1
        zigzag |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (zigzag >> 1) ^ -(zigzag & 1), position
    raise CorruptBatch("a record varint is longer than 10 bytes")


def _read_bytes(data: bytes | memoryview, position: int) -> tuple[bytes | None, int]:
    size, position = _read_varint(data, position)
    if size < 0:
        return None, position
    if position + size > len(data):
        raise CorruptBatch("a record field runs past the end of its record")
    return bytes(data[position:position + size]), position + size


# --- batches ----------------------------------------------------------------------------------------


def parse_header(data: bytes | memoryview) -> KafkaBatchHeader:
    if len(data) < HEADER_BYTES:
        raise CorruptBatch("record batch shorter than its 61-byte header", size_bytes=len(data))
    return KafkaBatchHeader._make(_HEADER.unpack_from(data, 0))


def split_batches(records: bytes | memoryview) -> Iterator[memoryview]:
    """The batches of a Produce request's ``records`` field (concatenated; each BaseOffset + BatchLength
    prefixed). A short or trailing partial batch is corrupt: a producer never sends one."""
    view = memoryview(records)
    position = 0
    while position < len(view):
        if len(view) - position < LOG_OVERHEAD:
            raise CorruptBatch("trailing bytes after the last record batch", size_bytes=len(view) - position)
        length = int.from_bytes(view[position + 8:position + 12], "big", signed=True)
        end = position + LOG_OVERHEAD + length
        if length < HEADER_BYTES - LOG_OVERHEAD or end > len(view):
            raise CorruptBatch("record batch length does not match the data", batch_length=length)
        yield view[position:end]
        position = end


def validate(data: bytes | memoryview) -> KafkaBatchHeader:
    """Check one produced batch before anything is decoded: sizes, magic, CRC-32C, producer fields, and
    what raftmq does not serve (transactions, control batches)."""
    header = parse_header(data)
    if header.size_bytes != len(data):
        raise CorruptBatch("BatchLength does not match the batch size", batch_length=header.batch_length,
                           size_bytes=len(data))
    if header.magic != MAGIC:
        raise CorruptBatch(f"record batch magic {header.magic} is not served (only v2, magic 2)",
                           magic=header.magic)
    if crc32c.crc32c(data[_CRC_START:]) != header.crc:
        raise CorruptBatch("record batch CRC-32C mismatch")
    if header.attributes & (TRANSACTIONAL_BIT | CONTROL_BIT):
        raise CorruptBatch("transactional and control batches are not served", attributes=header.attributes)
    if not 1 <= header.records_count <= limits.batch_records_max \
            or header.last_offset_delta != header.records_count - 1:
        raise CorruptBatch("RecordsCount and LastOffsetDelta disagree or are out of range",
                           records_count=header.records_count, last_offset_delta=header.last_offset_delta)
    idempotent = header.producer_id >= 0
    if idempotent and (header.base_sequence < 0 or header.producer_epoch < 0):
        raise CorruptBatch("an idempotent batch needs BaseSequence and ProducerEpoch >= 0",
                           producer_id=header.producer_id, base_sequence=header.base_sequence)
    # Without a ProducerId the sequence means nothing (aiokafka writes 0 there): it is ignored, as Kafka does.
    return header


def _decompress(codec: int, blob: bytes | memoryview) -> bytes:
    """The records of a compressed batch. Every codec decompresses into a buffer of at most
    ``kafka_decompressed_batch_bytes_max``: a small bomb cannot inflate past it."""
    if codec == CODEC_NONE:
        return bytes(blob)
    bound = limits.kafka_decompressed_batch_bytes_max
    try:
        if codec == CODEC_GZIP:
            decompressor = zlib.decompressobj(wbits=31)  # 31: a gzip member with its header and trailer
            out = decompressor.decompress(blob, bound)
            if decompressor.unconsumed_tail:
                raise _TooLarge()
            return out
        if codec == CODEC_SNAPPY:
            return _snappy(bytes(blob), bound)
        if codec in (CODEC_LZ4, CODEC_ZSTD):  # LZ4 frame format, zstd frames
            buffer = bytearray(bound)
            size = (cramjam.lz4 if codec == CODEC_LZ4 else cramjam.zstd).decompress_into(bytes(blob), buffer)
            return bytes(buffer[:size])
    except _TooLarge:
        raise CorruptBatch("compressed record data inflates past the batch size limit", codec=codec,
                           size_bytes_max=bound) from None
    except (zlib.error, cramjam.DecompressionError, ValueError) as exc:
        # A full output buffer is cramjam's "failed to write whole buffer": reported the same way.
        raise CorruptBatch(f"record data (codec {codec}) does not decompress: {exc}", codec=codec) from None
    raise UnsupportedCompression(f"compression codec {codec} is not served (none, gzip, snappy, lz4, zstd are)",
                                 codec=codec)


class _TooLarge(Exception):
    pass


def _snappy(blob: bytes, bound: int) -> bytes:
    if not blob.startswith(_XERIAL_MAGIC):
        return _snappy_block(blob, bound)
    out = bytearray()
    position = _XERIAL_HEADER_BYTES
    while position < len(blob):
        if position + 4 > len(blob):
            raise ValueError("xerial snappy chunk header cut short")
        size = int.from_bytes(blob[position:position + 4], "big")
        position += 4
        if size > len(blob) - position:
            raise ValueError("xerial snappy chunk runs past the data")
        out += _snappy_block(blob[position:position + size], bound - len(out))
        position += size
    return bytes(out)


def _snappy_block(block: bytes, bound: int) -> bytes:
    if cramjam.snappy.decompress_raw_len(block) > bound:  # the block states its length first
        raise _TooLarge()
    return bytes(cramjam.snappy.decompress_raw(block))


def decode_records(data: bytes | memoryview, header: KafkaBatchHeader | None = None) -> list[KafkaRecord]:
    """Every record of a validated batch, decompressed."""
    header = header if header is not None else parse_header(data)
    body = _decompress(header.codec, memoryview(data)[HEADER_BYTES:])
    records = []
    position = 0
    for index in range(header.records_count):
        length, position = _read_varint(body, position)
        end = position + length
        if length < 0 or end > len(body):
            raise CorruptBatch("record length runs past the end of the batch", record_index=index)
        record = memoryview(body)[position:end]
        cursor = 1  # attributes: unused
        timestamp_delta, cursor = _read_varint(record, cursor)
        offset_delta, cursor = _read_varint(record, cursor)
        key, cursor = _read_bytes(record, cursor)
        value, cursor = _read_bytes(record, cursor)
        count, cursor = _read_varint(record, cursor)
        if not 0 <= count <= limits.headers_per_record_max:
            raise CorruptBatch("header count out of range", record_index=index, headers=count)
        headers = []
        for _ in range(count):
            name, cursor = _read_bytes(record, cursor)
            header_value, cursor = _read_bytes(record, cursor)
            if name is None:
                raise CorruptBatch("a record header has a null key", record_index=index)
            try:
                headers.append((name.decode("utf-8"), header_value))
            except UnicodeDecodeError:
                raise CorruptBatch("a record header key is not UTF-8", record_index=index) from None
        if cursor != len(record):
            raise CorruptBatch("record length does not match its fields", record_index=index)
        if offset_delta != index:
            raise CorruptBatch("record offset deltas must be 0, 1, 2, ...", record_index=index)
        records.append(KafkaRecord(offset_delta, header.base_timestamp + timestamp_delta, key, value,
                                   tuple(headers)))
        position = end
    if position != len(body):
        raise CorruptBatch("bytes after the last record of the batch")
    return records


def _encode_record(record: KafkaRecord, base_timestamp: int) -> bytes:
    parts = [b"\x00", encode_varint(record.timestamp_ms - base_timestamp), encode_varint(record.offset_delta)]
    for field in (record.key, record.value):
        parts += [encode_varint(-1)] if field is None else [encode_varint(len(field)), field]
    parts.append(encode_varint(len(record.headers)))
    for name, value in record.headers:
        encoded = name.encode("utf-8")
        parts += [encode_varint(len(encoded)), encoded]
        parts += [encode_varint(-1)] if value is None else [encode_varint(len(value)), value]
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def encode_batch(records: Sequence[KafkaRecord], *, base_offset: int = 0, partition_leader_epoch: int = -1,
                 producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                 codec: int = CODEC_NONE) -> bytes:
    """One v2 batch (what a producer sends, and what the broker serves: uncompressed or gzip)."""
    if not records:
        raise ValueError("a record batch needs at least one record")
    # BaseTimestamp is the first record's, as Kafka's own encoder writes it (deltas may be negative).
    base_timestamp, max_timestamp = records[0].timestamp_ms, max(r.timestamp_ms for r in records)
    body = b"".join(_encode_record(r, base_timestamp) for r in records)
    if codec == CODEC_GZIP:
        compressor = zlib.compressobj(wbits=31)
        body = compressor.compress(body) + compressor.flush()
    elif codec != CODEC_NONE:
        raise ValueError(f"codec {codec} cannot be encoded here")
    after_crc = struct.pack(">hiqqqhii", codec, len(records) - 1, base_timestamp, max_timestamp, producer_id,
                            producer_epoch, base_sequence, len(records)) + body
    batch_length = HEADER_BYTES - LOG_OVERHEAD + len(body)
    return struct.pack(">qiibI", base_offset, batch_length, partition_leader_epoch, MAGIC,
                       crc32c.crc32c(after_crc)) + after_crc


# --- conversion at the edge -------------------------------------------------------------------------


def to_raftmq_batch(data: bytes | memoryview, *, now_ms: int) -> bytes:
    """One produced v2 batch as one raftmq batch (validated here; the service validates it again). A
    record without a timestamp (negative) gets the broker's clock, as Kafka's LogAppendTime would."""
    header = validate(data)
    records = decode_records(data, header)
    items = [(r.key, r.value, r.headers, r.timestamp_ms if r.timestamp_ms >= 0 else now_ms) for r in records]
    if header.producer_id >= 0:
        return raftmq_batch.encode_batch(items, producer_id=header.producer_id, base_sequence=header.base_sequence)
    return raftmq_batch.encode_batch(items)


def from_raftmq_batches(data: bytes | memoryview, *, byte_budget: int | None = None) -> bytes:
    """Stored raftmq batches (as the service's fetch returns them) as v2 batches, in order. The first batch
    is always converted (a consumer must get at least one whole batch, or it stalls); later ones only while
    the output stays within ``byte_budget``."""
    out = bytearray()
    for header, chunk in raftmq_batch.iter_batches(data):
        records = raftmq_batch.decode_records(chunk, header)
        converted = encode_batch(
            [KafkaRecord(r.offset - header.base_offset, r.timestamp_ms, r.key, r.value, r.headers) for r in records],
            base_offset=header.base_offset, partition_leader_epoch=min(header.leader_epoch, 2**31 - 1),
            producer_id=header.producer_id, producer_epoch=0 if header.producer_id >= 0 else -1,
            base_sequence=header.base_sequence)
        if out and byte_budget is not None and len(out) + len(converted) > byte_budget:
            break
        out += converted
    return bytes(out)


__all__ = ["CODEC_GZIP", "CODEC_NONE", "KafkaBatchHeader", "KafkaRecord", "MAGIC", "UnsupportedCompression",
           "decode_records", "encode_batch", "encode_varint", "from_raftmq_batches", "parse_header",
           "split_batches", "to_raftmq_batch", "validate"]
