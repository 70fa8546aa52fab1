"""The Kafka wire codecs (cluster/kafka_codec.py, kafka_messages.py, kafka_records.py, kafka_errors.py).

Method: every request and response schema we serve round-trips at every advertised version over values
hypothesis draws from the schema itself; random and truncated frames fail only with DecodeError; record
batches are checked byte for byte against aiokafka's independent encoder (a real client's bytes), and a
produced batch survives the edge conversion to raftmq's batch and back with every field a consumer sees.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as raftmq_batch
from raftmq.cluster import kafka_records as kr
from raftmq.cluster.errors import CorruptBatch, error_class_for
from raftmq.cluster.kafka_codec import DecodeError, Field, Reader, Schema, encode_uvarint
from raftmq.cluster.kafka_errors import ERROR_CODES, KafkaError, kafka_error_for
from raftmq.cluster.kafka_messages import (
    ADVERTISED,
    SCHEMAS,
    ApiKey,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    is_flexible,
    unsupported_api_versions_response,
)

from tests.kafka_strategies import values_for

CASES = [(key, version) for key, (low, high) in ADVERTISED.items() for version in range(low, high + 1)]


@pytest.mark.parametrize(("api_key", "version"), CASES, ids=[f"{k.name}-v{v}" for k, v in CASES])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_every_request_and_response_round_trips(api_key: ApiKey, version: int, data: st.DataObject) -> None:
    request_schema, response_schema = SCHEMAS[api_key]
    body = data.draw(values_for(request_schema, version))
    frame = encode_request(api_key, version, 42, body, client_id="c")
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    decoded = decode_request(frame[4:])
    assert (decoded.api_key, decoded.header.api_version, decoded.header.correlation_id) == (api_key, version, 42)
    assert decoded.header.client_id == "c"
    assert decoded.body == body
    answer = data.draw(values_for(response_schema, version))
    response = encode_response(api_key, version, 43, answer)
    assert decode_response(api_key, version, response[4:]) == (43, answer)


def test_flexible_api_versions_v3_uses_compact_fields_and_a_v0_response_header() -> None:
    frame = encode_request(ApiKey.API_VERSIONS, 3, 7, {"client_software_name": "rdkafka",
                                                       "client_software_version": "2.0.2"}, client_id="kcat")
    # header v2: int16 client_id length, then an empty tag section; body: compact strings + tags
    assert frame[4:] == (b"\x00\x12\x00\x03\x00\x00\x00\x07\x00\x04kcat\x00" + b"\x08rdkafka" + b"\x062.0.2" + b"\x00")
    response = encode_response(ApiKey.API_VERSIONS, 3, 7, {
        "error_code": 0, "api_keys": [{"api_key": 18, "min_version": 0, "max_version": 3}], "throttle_time_ms": 0})
    # correlation id, NO header tag section, error 0, compact array of 1 (2), the entry + its tags, throttle, tags
    assert response[4:] == b"\x00\x00\x00\x07" + b"\x00\x00" + b"\x02" + b"\x00\x12\x00\x00\x00\x03\x00" \
        + b"\x00\x00\x00\x00" + b"\x00"


def test_api_versions_above_our_maximum_gets_error_35_with_a_v0_body_listing_every_api() -> None:
    frame = unsupported_api_versions_response(9)
    correlation_id, body = decode_response(ApiKey.API_VERSIONS, 0, frame[4:])
    assert correlation_id == 9 and body["error_code"] == 35
    advertised = {entry["api_key"]: (entry["min_version"], entry["max_version"]) for entry in body["api_keys"]}
    assert advertised == {int(k): v for k, v in ADVERTISED.items()}


def test_the_advertised_ranges_hold_the_exact_versions_old_librdkafka_looks_for() -> None:
    """librdkafka 2.0.2 (kcat on Debian 12) enables a feature only when one exact version is in range."""
    def has(key: ApiKey, version: int) -> bool:
        low, high = ADVERTISED[key]
        return low <= version <= high

    assert has(ApiKey.PRODUCE, 0), "without Produce v0 librdkafka 2.0.2 silently sends gzip/snappy uncompressed"
    assert has(ApiKey.PRODUCE, 3) and has(ApiKey.FETCH, 4), "record batches v2 (MsgVer2)"
    assert has(ApiKey.PRODUCE, 7) and has(ApiKey.FETCH, 10), "zstd"
    assert has(ApiKey.INIT_PRODUCER_ID, 0), "idempotent producer"
    assert has(ApiKey.LIST_OFFSETS, 1) and has(ApiKey.FIND_COORDINATOR, 0)
    assert not any(is_flexible(key, high) for key, (_, high) in ADVERTISED.items() if key is not ApiKey.API_VERSIONS)


def test_unadvertised_keys_and_versions_are_refused_with_their_header() -> None:
    from raftmq.cluster.kafka_messages import UnsupportedRequest
    with pytest.raises(UnsupportedRequest) as refused:
        decode_request(encode_request(ApiKey.API_VERSIONS, 4, 5, {})[4:])
    assert refused.value.header.correlation_id == 5
    unknown_key = b"\x00\x0b\x00\x06\x00\x00\x00\x06\xff\xff"  # JoinGroup v6 (flexible): not served
    with pytest.raises(UnsupportedRequest):
        decode_request(unknown_key)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_frames_fail_only_with_decode_errors(frame: bytes) -> None:
    try:
        decode_request(frame)
    except DecodeError:
        pass


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_truncation_of_a_valid_request_is_a_decode_error(data: st.DataObject) -> None:
    body = data.draw(values_for(SCHEMAS[ApiKey.FETCH][0], 11))
    frame = encode_request(ApiKey.FETCH, 11, 1, body)[4:]
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(DecodeError):
        decode_request(frame[:cut])


def test_a_hostile_array_count_is_refused_before_anything_is_allocated() -> None:
    schema: Schema = (Field("items", "int64", array=True),)
    from raftmq.cluster.kafka_codec import decode
    with pytest.raises(DecodeError):
        decode(schema, Reader(b"\x7f\xff\xff\xff"), 0)


@given(st.integers(0, 2**32 - 1))
def test_unsigned_varints_round_trip(value: int) -> None:
    assert Reader(encode_uvarint(value)).uvarint() == value


@given(st.integers(-(2**63), 2**63 - 1))
def test_zigzag_varints_round_trip_and_differ_from_unsigned_ones(value: int) -> None:
    encoded = kr.encode_varint(value)
    assert kr._read_varint(encoded, 0) == (value, len(encoded))


def test_zigzag_golden_bytes() -> None:
    assert [kr.encode_varint(v) for v in (0, -1, 1, -2, 63, -64, 64)] == \
        [b"\x00", b"\x01", b"\x02", b"\x03", b"\x7e", b"\x7f", b"\x80\x01"]


# --- record batches ---------------------------------------------------------------------------------

_RECORD = st.builds(
    lambda ts, key, value, headers: (ts, key, value, tuple(headers)),
    st.integers(0, 2**41), st.none() | st.binary(max_size=30), st.none() | st.binary(max_size=30),
    st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3))


def _aiokafka_batch(records: list[tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]],
                    codec: int, producer_id: int, base_sequence: int) -> bytes:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0,
                                        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                        base_sequence=base_sequence, batch_size=1 << 22)
    for index, (ts, key, value, headers) in enumerate(records):
        builder.append(index, timestamp=ts, key=key, value=value, headers=list(headers))
    return bytes(builder.build())


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_RECORD, min_size=1, max_size=6), codec=st.sampled_from([0, 1, 2, 3, 4]),
       idempotent=st.booleans())
def test_batches_match_aiokafkas_encoder_and_survive_the_edge_conversion(
        records: list[tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]], codec: int,
        idempotent: bool) -> None:
    producer_id, base_sequence = (11, 5) if idempotent else (-1, -1)
    produced = _aiokafka_batch(records, codec, producer_id, base_sequence)
    header = kr.validate(produced)
    decoded = kr.decode_records(produced, header)
    assert [(r.timestamp_ms, r.key, r.value, r.headers) for r in decoded] == records
    if codec == 0:  # our encoder writes the same bytes as a real client
        assert kr.encode_batch(decoded, producer_id=producer_id, producer_epoch=0 if idempotent else -1,
                               base_sequence=base_sequence) == produced
    stored = raftmq_batch.stamp(kr.to_raftmq_batch(produced, now_ms=1), base_offset=1000, leader_epoch=4,
                                raft_index=9, append_time_ms=2)
    stored_header = raftmq_batch.verify_stored(stored)
    assert (stored_header.producer_id, stored_header.base_sequence) == (producer_id, base_sequence)
    served = kr.from_raftmq_batches(stored)
    from aiokafka.record.default_records import DefaultRecordBatch
    batch = DefaultRecordBatch(bytearray(served))
    assert batch.validate_crc() and batch.base_offset == 1000 and batch.producer_id == producer_id
    assert batch.base_sequence == base_sequence
    assert [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in batch] == \
        [(1000 + i, *record) for i, record in enumerate(records)]


def _one_batch(**kwargs: Any) -> bytes:
    return kr.encode_batch([kr.KafkaRecord(0, 5, b"k", b"v", ())], **kwargs)


def test_a_flipped_bit_under_the_crc_is_refused_but_the_broker_fields_are_not_covered() -> None:
    good = bytearray(_one_batch())
    restamped = bytes(8 * [0x01]) + good[8:12] + (77).to_bytes(4, "big") + good[16:]
    kr.validate(restamped)  # BaseOffset and PartitionLeaderEpoch are outside the CRC
    for position in (21, 30, len(good) - 1):
        broken = bytearray(good)
        broken[position] ^= 0x10
        with pytest.raises(CorruptBatch, match="CRC"):
            kr.validate(bytes(broken))


def test_transactional_legacy_and_inconsistent_batches_are_refused() -> None:
    with pytest.raises(CorruptBatch, match="transactional"):
        kr.validate(_aiokafka_transactional())
    legacy = bytearray(_one_batch())
    legacy[16] = 1
    with pytest.raises(CorruptBatch, match="magic"):
        kr.validate(bytes(legacy))
    with pytest.raises(CorruptBatch, match="BaseSequence"):
        kr.validate(_one_batch(producer_id=5, producer_epoch=0, base_sequence=-1))
    # Without a producer id the sequence is ignored (aiokafka writes 0), and not carried into raftmq's batch.
    stored = raftmq_batch.parse_header(kr.to_raftmq_batch(_one_batch(base_sequence=0), now_ms=1))
    assert (stored.producer_id, stored.base_sequence) == (-1, -1)
    with pytest.raises(CorruptBatch, match="BatchLength"):
        kr.validate(_one_batch()[:-1])


def _aiokafka_transactional() -> bytes:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=1,
                                        producer_epoch=0, base_sequence=0, batch_size=1 << 20)
    builder.append(0, timestamp=1, key=None, value=b"x", headers=[])
    return bytes(builder.build())


def _with_body(codec: int, body: bytes, records_count: int = 1) -> bytes:
    """A v2 batch whose records part is ``body`` as given (compressed or not), with a correct CRC."""
    import struct

    import crc32c
    tail = struct.pack(">hiqqqhii", codec, records_count - 1, 0, 0, -1, -1, -1, records_count) + body
    return struct.pack(">qiibI", 0, 49 + len(body), -1, 2, crc32c.crc32c(tail)) + tail


_ONE_RECORD = kr._encode_record(kr.KafkaRecord(0, 0, b"k", b"v", ()), 0)


def _compress(codec: int, data: bytes) -> bytes:
    import cramjam
    if codec == kr.CODEC_GZIP:
        compressor = zlib.compressobj(wbits=31)
        return compressor.compress(data) + compressor.flush()
    return bytes({kr.CODEC_SNAPPY: cramjam.snappy.compress_raw, kr.CODEC_LZ4: cramjam.lz4.compress,
                  kr.CODEC_ZSTD: cramjam.zstd.compress}[codec](data))


@pytest.mark.parametrize("codec", [kr.CODEC_GZIP, kr.CODEC_SNAPPY, kr.CODEC_LZ4, kr.CODEC_ZSTD])
def test_every_kafka_codec_decompresses_and_a_bomb_is_cut(codec: int) -> None:
    batch = _with_body(codec, _compress(codec, _ONE_RECORD))
    assert [r.value for r in kr.decode_records(batch, kr.validate(batch))] == [b"v"]
    from raftmq.cluster import limits
    bomb = _with_body(codec, _compress(codec, b"\x00" * (limits.kafka_decompressed_batch_bytes_max + 1)))
    with pytest.raises(CorruptBatch, match="inflates|decompress"):
        kr.decode_records(bomb, kr.validate(bomb))
    garbage = _with_body(codec, b"\x01\x02 not compressed data")
    with pytest.raises(CorruptBatch):
        kr.decode_records(garbage, kr.validate(garbage))


def test_snappy_in_the_java_clients_xerial_framing_is_read_too() -> None:
    import cramjam
    block = bytes(cramjam.snappy.compress_raw(_ONE_RECORD))
    framed = b"\x82SNAPPY\x00" + bytes(8) + len(block).to_bytes(4, "big") + block
    batch = _with_body(kr.CODEC_SNAPPY, framed)
    assert [r.value for r in kr.decode_records(batch, kr.validate(batch))] == [b"v"]


def test_an_unknown_codec_is_refused_as_unsupported_compression() -> None:
    batch = _with_body(5, _ONE_RECORD)
    with pytest.raises(kr.UnsupportedCompression):
        kr.decode_records(batch, kr.validate(batch))


def test_a_produce_payload_splits_into_whole_batches_only() -> None:
    one, two = _one_batch(), _one_batch(base_offset=1)
    assert [bytes(b) for b in kr.split_batches(one + two)] == [one, two]
    with pytest.raises(CorruptBatch):
        list(kr.split_batches(one + two[:20]))


def test_the_first_fetched_batch_is_served_even_past_the_budget() -> None:
    stored = b"".join(raftmq_batch.stamp(raftmq_batch.encode_batch([(None, b"x" * 100, (), 1)]), base_offset=i,
                                         leader_epoch=1, raft_index=i + 1, append_time_ms=1) for i in range(3))
    assert len(list(kr.split_batches(kr.from_raftmq_batches(stored, byte_budget=1)))) == 1
    assert len(list(kr.split_batches(kr.from_raftmq_batches(stored)))) == 3


# --- error table --------------------------------------------------------------------------------------


def test_every_mapped_raftmq_code_exists_and_definite_failures_never_map_to_possibly_stored() -> None:
    for code, kafka_code in ERROR_CODES.items():
        if code == "UNSUPPORTED_COMPRESSION_TYPE":
            continue  # Kafka-only (kafka_records.py)
        cls = error_class_for(code)
        assert cls.code == code, f"{code} is not a registered raftmq error"
        if kafka_code in (KafkaError.NOT_LEADER_OR_FOLLOWER, KafkaError.LEADER_NOT_AVAILABLE):
            assert cls.definite, f"{code} may have been stored: clients would take it as certainly not"
        if not cls.definite:
            assert kafka_code in (KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND)
    assert kafka_error_for(error_class_for("NOT_LEADER")("x")) is KafkaError.NOT_LEADER_OR_FOLLOWER
    assert kafka_error_for(error_class_for("INTERNAL_ERROR")("x")) is KafkaError.UNKNOWN_SERVER_ERROR
