"""The one record batch format (cluster/batch.py, cluster/compression.py): Kafka RecordBatch v2, stored behind
a checksummed broker prefix.

Goal: a batch from any producer (raftmq's encoder, or aiokafka's independent builder standing in for a Kafka
client, compressed with any codec) is validated, stamped and served byte for byte as sent but for BaseOffset
and PartitionLeaderEpoch, and reads back the same records everywhere; every stored byte is under a checksum;
what a producer may not send is refused with a coded error before it is stored.

Method: hypothesis draws records, codecs and producer fields; aiokafka's reader is the independent check of
what we serve; single bytes are flipped at every position of a stored batch.
"""

from __future__ import annotations

import struct

import crc32c
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as batches
from raftmq.cluster import compression, limits
from raftmq.cluster.errors import BatchTooLarge, CorruptBatch, RecordTooLarge, UnsupportedCompression

RecordTuple = tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]

_RECORD = st.builds(
    lambda ts, key, value, headers: (ts, key, value, tuple(headers)),
    st.integers(0, 2**41), st.none() | st.binary(max_size=30), st.none() | st.binary(max_size=30),
    st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3))


def _client_batch(records: list[RecordTuple], codec: int = 0, producer_id: int = -1, base_sequence: int = -1,
                  *, transactional: bool = False) -> bytes:
    """A batch as a Kafka client writes it (aiokafka's builder: an encoder independent of ours)."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=int(transactional),
                                        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                        base_sequence=base_sequence, batch_size=1 << 22)
    for index, (ts, key, value, headers) in enumerate(records):
        builder.append(index, timestamp=ts, key=key, value=value, headers=list(headers))
    return bytes(builder.build())


def _stamp(batch: bytes, base_offset: int = 1000) -> bytes:
    return batches.stamp(batch, base_offset=base_offset, leader_epoch=4, raft_index=9, append_time_ms=2)


@settings(max_examples=80, deadline=None)
@given(records=st.lists(_RECORD, min_size=1, max_size=6), codec=st.sampled_from(compression.CODECS),
       idempotent=st.booleans())
def test_a_client_batch_is_stored_and_served_verbatim_but_for_the_two_broker_fields(
        records: list[RecordTuple], codec: int, idempotent: bool) -> None:
    producer_id, base_sequence = (11, 5) if idempotent else (-1, -1)
    produced = _client_batch(records, codec, producer_id, base_sequence)
    header = batches.validate_produced(produced)
    assert (header.codec, header.producer_id, header.base_sequence, header.record_count) == \
        (codec, producer_id, base_sequence, len(records))
    stored = _stamp(produced)
    stored_header = batches.verify_stored(stored)
    assert (stored_header.raft_index, stored_header.append_time_ms, stored_header.base_offset,
            stored_header.leader_epoch) == (9, 2, 1000, 4)
    served = batches.served(stored)
    assert served[16:] == produced[16:], "only BaseOffset, BatchLength's neighbours and the epoch may change"
    assert served[8:12] == produced[8:12]
    reader = DefaultRecordBatch(bytearray(served))  # what a Kafka consumer does with it
    assert reader.validate_crc() and reader.base_offset == 1000 and reader.producer_id == producer_id
    assert reader.compression_type == codec
    expected = [(1000 + i, *record) for i, record in enumerate(records)]
    assert [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in reader] == expected
    for decoded in (batches.decode_records(served), batches.decode_records(stored, stored_header)):
        assert [tuple(r) for r in decoded] == expected


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_RECORD, min_size=1, max_size=6), idempotent=st.booleans())
def test_raftmqs_encoder_writes_the_bytes_a_kafka_client_writes(records: list[RecordTuple],
                                                                 idempotent: bool) -> None:
    producer_id, base_sequence = (11, 5) if idempotent else (-1, -1)
    ours = batches.encode_batch([(key, value, headers, ts) for ts, key, value, headers in records],
                                producer_id=producer_id, base_sequence=base_sequence)
    assert ours == _client_batch(records, 0, producer_id, base_sequence)


def test_every_stored_byte_is_under_a_checksum() -> None:
    stored = _stamp(batches.encode_batch([(b"k", b"value", [("h", b"v")], 7), (None, b"x", (), 9)],
                                         producer_id=3, base_sequence=0))
    for position in range(len(stored)):
        broken = bytearray(stored)
        broken[position] ^= 0x01
        with pytest.raises(CorruptBatch):
            batches.verify_stored(bytes(broken))
    with pytest.raises(CorruptBatch):
        batches.verify_stored(stored[:-1])


def test_a_flipped_bit_under_the_v2_crc_is_refused_but_the_broker_fields_are_not_covered() -> None:
    good = batches.encode_batch([(b"k", b"v", (), 5)])
    restamped = bytes(8 * [0x01]) + good[8:12] + (77).to_bytes(4, "big") + good[16:]
    batches.validate_produced(restamped)  # BaseOffset and PartitionLeaderEpoch are outside the CRC
    for position in (21, 30, len(good) - 1):
        broken = bytearray(good)
        broken[position] ^= 0x10
        with pytest.raises(CorruptBatch, match="CRC"):
            batches.validate_produced(bytes(broken))


def _with_body(codec: int, body: bytes, records_count: int = 1, attributes: int | None = None,
               producer: tuple[int, int, int] = (-1, -1, -1)) -> bytes:
    """A v2 batch whose records part is ``body`` as given (compressed or not), with a correct CRC."""
    attributes = codec if attributes is None else attributes
    tail = struct.pack(">hiqqqhii", attributes, records_count - 1, 0, 0, *producer, records_count) + body
    return struct.pack(">qiibI", 0, 49 + len(body), -1, 2, crc32c.crc32c(tail)) + tail


def _record_bytes(value: bytes = b"v", offset_delta: int = 0, headers: int = 0) -> bytes:
    """One encoded record (the record part of a one-record batch from aiokafka's builder, which has no size
    limits of its own)."""
    one = _client_batch([(0, b"k", value, (("h", None),) * headers)])
    record = one[batches.BATCH_HEADER_BYTES:]
    if offset_delta:  # the offset delta is the third varint: attributes(1 byte), ts delta(0 -> 1 byte), delta
        assert record[3] == 0 and offset_delta < 64
        record = record[:3] + bytes([offset_delta * 2]) + record[4:]
    return record


def test_transactional_control_legacy_and_inconsistent_batches_are_refused() -> None:
    with pytest.raises(CorruptBatch, match="transactional"):
        batches.validate_produced(_client_batch([(1, None, b"x", ())], 0, 1, 0, transactional=True))
    for bit in (batches.CONTROL_BIT, batches.TIMESTAMP_TYPE_BIT):
        with pytest.raises(CorruptBatch, match="attributes"):
            batches.validate_produced(_with_body(0, _record_bytes(), attributes=bit))
    legacy = bytearray(batches.encode_batch([(None, b"v", (), 1)]))
    legacy[16] = 1
    with pytest.raises(CorruptBatch, match="magic"):
        batches.validate_produced(bytes(legacy))
    with pytest.raises(CorruptBatch, match="BaseSequence"):
        batches.validate_produced(_with_body(0, _record_bytes(), producer=(5, 0, -1)))
    with pytest.raises(CorruptBatch, match="BaseSequence"):
        batches.validate_produced(_with_body(0, _record_bytes(), producer=(5, -1, 0)))
    with pytest.raises(CorruptBatch, match="overflows"):
        batches.validate_produced(_with_body(0, _record_bytes() + _record_bytes(offset_delta=1), 2,
                                             producer=(5, 0, 2**31 - 1)))
    # Without a producer id the sequence means nothing (aiokafka writes 0 there): accepted.
    assert batches.validate_produced(_with_body(0, _record_bytes(), producer=(-1, -1, 0))).base_sequence == 0
    with pytest.raises(CorruptBatch, match="BatchLength"):
        batches.validate_produced(batches.encode_batch([(None, b"v", (), 1)])[:-1])


def test_records_that_do_not_add_up_are_refused_before_they_are_stored() -> None:
    two = _record_bytes() + _record_bytes(offset_delta=1)
    assert len(batches.decode_records(batches.validate_produced(_with_body(0, two, 2)) and
                                      _with_body(0, two, 2))) == 2
    cases = {
        "more records than RecordsCount": _with_body(0, two, 1),
        "fewer records than RecordsCount": _with_body(0, _record_bytes(), 2),
        "offset deltas not 0, 1, ...": _with_body(0, _record_bytes() + _record_bytes(offset_delta=5), 2),
        "trailing garbage": _with_body(0, _record_bytes() + b"\x00"),
        "a record cut short": _with_body(0, _record_bytes()[:-1]),
    }
    for what, batch in cases.items():
        with pytest.raises(CorruptBatch):
            batches.validate_produced(batch)
            pytest.fail(what)
    with pytest.raises(CorruptBatch, match="too many headers"):
        batches.validate_produced(_with_body(0, _record_bytes(headers=limits.headers_per_record_max + 1)))


def test_a_compressed_record_over_the_size_limit_is_refused() -> None:
    big = _record_bytes(value=b"\x00" * (limits.record_bytes_max + 1))
    batch = _with_body(compression.CODEC_GZIP, compression.compress(compression.CODEC_GZIP, big))
    assert len(batch) < 10_000, "compressed, the batch itself is small"
    with pytest.raises(RecordTooLarge):
        batches.validate_produced(batch)


@pytest.mark.parametrize("codec", [compression.CODEC_GZIP, compression.CODEC_SNAPPY, compression.CODEC_LZ4,
                                   compression.CODEC_ZSTD])
def test_every_codec_decompresses_and_a_bomb_is_cut(codec: int) -> None:
    batch = _with_body(codec, compression.compress(codec, _record_bytes()))
    assert [r.value for r in batches.decode_records(batch, batches.validate_produced(batch))] == [b"v"]
    bomb = _with_body(codec, compression.compress(codec, b"\x00" * (limits.kafka_decompressed_batch_bytes_max + 1)))
    with pytest.raises(CorruptBatch, match="inflates|decompress"):
        batches.validate_produced(bomb)
    garbage = _with_body(codec, b"\x01\x02 not compressed data")
    with pytest.raises(CorruptBatch):
        batches.validate_produced(garbage)


def test_snappy_in_the_java_clients_xerial_framing_is_read_too() -> None:
    block = compression.compress(compression.CODEC_SNAPPY, _record_bytes())
    framed = b"\x82SNAPPY\x00" + bytes(8) + len(block).to_bytes(4, "big") + block
    batch = _with_body(compression.CODEC_SNAPPY, framed)
    assert [r.value for r in batches.decode_records(batch, batches.validate_produced(batch))] == [b"v"]


def test_an_unknown_codec_is_refused_as_unsupported_compression() -> None:
    with pytest.raises(UnsupportedCompression):
        batches.validate_produced(_with_body(5, _record_bytes()))


def test_stored_and_served_batches_split_back_to_back() -> None:
    produced = [batches.encode_batch([(None, b"x" * n, (), n)]) for n in (1, 50, 3)]
    stored = b"".join(_stamp(batch, base_offset=i) for i, batch in enumerate(produced))
    assert [h.base_offset for h, _ in batches.iter_stored(stored)] == [0, 1, 2]
    served = batches.served(stored)
    assert [(h.base_offset, h.size_bytes) for h, _ in batches.iter_batches(served)] == \
        [(i, len(b)) for i, b in enumerate(produced)]
    for cut in (1, batches.STORED_PREFIX_BYTES + 3, len(stored) - 1):
        with pytest.raises(CorruptBatch):
            batches.served(stored[:cut])
        with pytest.raises(CorruptBatch):
            list(batches.iter_stored(stored[:cut]))
    with pytest.raises(CorruptBatch):
        list(batches.iter_batches(served[:-1]))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), codec=st.sampled_from(compression.CODECS))
def test_any_damage_under_a_valid_crc_is_refused_with_a_coded_error_or_decodes(data: st.DataObject,
                                                                              codec: int) -> None:
    """A buggy client can write any bytes under a correct CRC: the leader's check never crashes, and what it
    lets through every reader decodes."""
    produced = bytearray(_client_batch([(1, b"k", b"value", (("h", b"x"),)), (2, None, b"v" * 40, ())], codec))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(batches.BATCH_HEADER_BYTES - 4, len(produced) - 1))
        produced[position] = data.draw(st.integers(0, 255))
    struct.pack_into(">I", produced, 17, crc32c.crc32c(bytes(produced[21:])))
    try:
        header = batches.validate_produced(bytes(produced))
    except (CorruptBatch, RecordTooLarge, UnsupportedCompression, BatchTooLarge):
        return
    assert len(batches.decode_records(batches.served(_stamp(bytes(produced))))) == header.record_count
