"""Pure wire pieces: the record batch format, error codes, body decoding, acks parsing, routing, the command
envelope. Method: round trips, one damaged byte at every position, and Kafka's own murmur2 vectors."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as batches
from raftmq.cluster import commands, limits
from raftmq.cluster.errors import (
    BatchTooLarge,
    CorruptBatch,
    InvalidAcks,
    InvalidOffset,
    InvalidRequest,
    MalformedBody,
    RaftMQError,
    RecordTooLarge,
    UnsupportedMediaType,
    all_error_classes,
    error_from_wire,
)
from raftmq.cluster.routing import murmur2, partition_for
from raftmq.cluster.wire import Acks, decode_body, encode_body, parse_acks, query_int, records_to_batch, wants_msgpack

record_strategy = st.tuples(
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8))), max_size=3),
    st.integers(min_value=0, max_value=2**40),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(record_strategy, min_size=1, max_size=30), st.booleans(), st.integers(0, 2**40))
def test_batch_round_trip(records: list, idempotent: bool, base_offset: int) -> None:
    producer = {"producer_id": 7, "base_sequence": 3} if idempotent else {}
    data = batches.encode_batch(records, **producer)
    header = batches.validate_produced(data)
    assert header.record_count == len(records)
    stored = batches.stamp(data, base_offset=base_offset, leader_epoch=4, raft_index=99, append_time_ms=123)
    stored_header = batches.verify_stored(stored)
    assert (stored_header.base_offset, stored_header.leader_epoch, stored_header.raft_index) == (base_offset, 4, 99)
    decoded = batches.decode_records(stored, stored_header)
    for index, (record, original) in enumerate(zip(decoded, records, strict=True)):
        key, value, headers, timestamp = original
        assert record.offset == base_offset + index
        assert (record.key, record.value) == (key, value)
        assert record.headers == tuple((h, v) for h, v in headers)
        assert record.timestamp_ms == timestamp


def test_every_flipped_byte_of_a_stored_batch_is_detected() -> None:
    data = batches.encode_batch([(b"k", b"value-%d" % i, [("h", b"x")], 1000 + i) for i in range(5)],
                                producer_id=1, base_sequence=0)
    stored = batches.stamp(data, base_offset=10, leader_epoch=2, raft_index=5, append_time_ms=1)
    for position in range(len(stored)):
        damaged = bytearray(stored)
        damaged[position] ^= 0x01
        with pytest.raises(CorruptBatch):
            batches.verify_stored(bytes(damaged))


def test_produced_batch_checks() -> None:
    good = batches.encode_batch([(None, b"v", [], 5)])
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    with pytest.raises(CorruptBatch, match="CRC"):
        batches.validate_produced(bytes(bad_crc))
    with pytest.raises(CorruptBatch):
        batches.validate_produced(good[:50])
    with pytest.raises(CorruptBatch, match="BatchLength"):
        batches.validate_produced(good + b"x")
    with pytest.raises(BatchTooLarge):
        batches.validate_produced(b"\x00" * (limits.batch_bytes_max + 1))
    # A RecordsCount that disagrees with the records, under a valid CRC (a buggy client), is refused too.
    import struct

    import crc32c

    forged = bytearray(batches.encode_batch([(None, b"a", [], 5), (None, b"b", [], 5)]))
    struct.pack_into(">ii", forged, 23, 0, 1)  # LastOffsetDelta, then RecordsCount at 57: both say one record
    struct.pack_into(">i", forged, 57, 1)
    struct.pack_into(">I", forged, 17, crc32c.crc32c(bytes(forged[21:])))
    with pytest.raises(CorruptBatch, match="records do not decode"):
        batches.validate_produced(bytes(forged))


def test_record_size_limits() -> None:
    with pytest.raises(RecordTooLarge):
        batches.encode_batch([(None, b"x" * (limits.record_bytes_max + 1), [], 0)])
    with pytest.raises(BatchTooLarge):
        batches.encode_batch([(None, b"x" * (limits.record_bytes_max // 2), [], 0)] * 3)
    with pytest.raises(BatchTooLarge):
        batches.encode_batch([])


def test_iter_batches_splits_and_detects_truncation() -> None:
    stored = [batches.stamp(batches.encode_batch([(None, b"%d" % i, [], 0)]), base_offset=i, leader_epoch=1,
                            raft_index=i + 1, append_time_ms=0) for i in range(4)]
    joined = b"".join(stored)
    assert [h.base_offset for h, _ in batches.iter_stored(joined)] == [0, 1, 2, 3]
    assert [h.base_offset for h, _ in batches.iter_batches(batches.served(joined))] == [0, 1, 2, 3]
    with pytest.raises(CorruptBatch):
        list(batches.iter_stored(joined[:-3]))
    with pytest.raises(CorruptBatch):
        list(batches.iter_batches(batches.served(joined)[:-3]))


def test_error_codes_are_unique_and_round_trip() -> None:
    classes = all_error_classes()
    assert len({cls.code for cls in classes}) == len(classes)
    for cls in classes:
        error = cls("message text", answer=42)
        wire = json.loads(json.dumps({"error": error.to_wire()}))
        again = error_from_wire(wire, cls.http_status)
        assert type(again) is cls
        assert (again.code, again.message, again.details) == (cls.code, "message text", {"answer": 42})
        assert (again.retriable, again.refresh_metadata, again.definite) == (cls.retriable, cls.refresh_metadata,
                                                                          cls.definite)
        assert 400 <= cls.http_status < 600
    unknown = error_from_wire({"error": {"code": "FROM_THE_FUTURE", "message": "m"}})
    assert type(unknown) is RaftMQError and unknown.code == "FROM_THE_FUTURE"
    assert error_from_wire("garbage", 500).code == "UNEXPECTED_RESPONSE"


@pytest.mark.parametrize("value,expected", [(0, Acks.NONE), (1, Acks.LEADER), (-1, Acks.ALL), ("all", Acks.ALL),
                                            ("ALL", Acks.ALL), ("1", Acks.LEADER), ("-1", Acks.ALL)])
def test_parse_acks(value: object, expected: Acks) -> None:
    assert parse_acks(value) is expected


@pytest.mark.parametrize("value", [2, "some", None, 1.0, True, [], "", -2])
def test_parse_acks_rejects(value: object) -> None:
    with pytest.raises(InvalidAcks):
        parse_acks(value)


def test_decode_body() -> None:
    assert decode_body("application/json", b'{"a": 1}') == {"a": 1}
    assert decode_body("application/msgpack", msgpack.packb({"a": b"x"})) == {"a": b"x"}
    assert decode_body("application/json; charset=utf-8", b"") == {}
    for content_type, raw in [("application/json", b"{"), ("application/json", b"[1]"),
                              ("application/msgpack", b"\xc1"), ("application/msgpack", msgpack.packb([1]))]:
        with pytest.raises(MalformedBody):
            decode_body(content_type, raw)
    with pytest.raises(UnsupportedMediaType):
        decode_body("text/plain", b"hello")
    assert wants_msgpack("application/msgpack", None) and not wants_msgpack("application/json", "application/msgpack")
    assert wants_msgpack(None, "application/msgpack") and not wants_msgpack(None, None)
    assert msgpack.unpackb(encode_body({"b": b"x"}, as_msgpack=True)) == {"b": b"x"}
    assert json.loads(encode_body({"b": b"x"}, as_msgpack=False)) == {"b": "eA=="}


def test_query_int() -> None:
    assert query_int({"o": "5"}, "o", offset=True) == 5
    with pytest.raises(InvalidOffset):
        query_int({"o": "-1"}, "o", offset=True)
    with pytest.raises(InvalidOffset):
        query_int({}, "o", offset=True)
    with pytest.raises(InvalidOffset):
        query_int({"o": "x"}, "o", offset=True)
    with pytest.raises(InvalidRequest):
        query_int({"m": "10"}, "m", maximum=5)


def test_records_to_batch() -> None:
    data = records_to_batch([{"key": "k", "value": "v", "headers": {"h": "x"}, "timestamp_ms": 10},
                             {"value": b"raw", "timestamp_ms": 5}], now_ms=1_000)
    records = batches.decode_records(data)
    assert records[0].key == b"k" and records[0].headers == (("h", b"x"),)
    assert records[1].value == b"raw" and records[1].timestamp_ms == 5  # out-of-order timestamps are kept
    for bad in [[], "x", [1], [{"value": 5}], [{"headers": 5}], [{"timestamp_ms": -1}], [{"headers": [["a"]]}]]:
        with pytest.raises(InvalidRequest):
            records_to_batch(bad, now_ms=1_000)


def test_murmur2_matches_kafka() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2.
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
               "abc": 479470107}
    for text, expected in vectors.items():
        assert murmur2(text.encode()) == expected


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=300))
def test_partition_for_is_stable_and_in_range(key: bytes, count: int) -> None:
    partition = partition_for(key, count)
    assert 0 <= partition < count and partition == partition_for(key, count)


def test_command_envelope() -> None:
    encoded = commands.encode(commands.PartitionOp.APPEND, 2**50 + 3, 1700000000000, b"payload")
    decoded = commands.decode(encoded)
    assert (decoded.op, decoded.proposal_id, decoded.time_ms, bytes(decoded.payload)) == (
        commands.PartitionOp.APPEND, 2**50 + 3, 1700000000000, b"payload")
    assert commands.proposal_id_of(encoded) == 2**50 + 3
    assert commands.proposal_id_of(b"\x00" + encoded, 1) == 2**50 + 3
    assert commands.proposal_id_of(b"junk") is None
    with pytest.raises(ValueError):
        commands.decode(b"XXXX" + encoded[4:])
