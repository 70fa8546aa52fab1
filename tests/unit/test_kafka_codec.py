"""The Kafka wire codecs (cluster/kafka_codec.py, kafka_messages.py, kafka_records.py, kafka_errors.py).

Method: every request and response schema we serve round-trips at every advertised version over values
hypothesis draws from the schema itself; random and truncated frames fail only with DecodeError; a Produce
payload splits into whole batches only and a Fetch answer keeps at least one. (The batch format itself,
RecordBatch v2, is tested in test_batch.py.)
"""

from __future__ import annotations

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


# --- the batches of a Produce or Fetch ------------------------------------------------------------------


def _one_batch(value: bytes = b"v") -> bytes:
    return raftmq_batch.encode_batch([(b"k", value, (), 5)])


def test_a_produce_payload_splits_into_whole_batches_only() -> None:
    one, two = _one_batch(b"a"), _one_batch(b"b")
    assert [bytes(b) for b in kr.split_batches(one + two)] == [one, two]
    with pytest.raises(CorruptBatch):
        list(kr.split_batches(one + two[:20]))


def test_the_first_fetched_batch_is_served_even_past_the_budget() -> None:
    fetched = b"".join(_one_batch(b"x" * 100) for _ in range(3))
    assert len(list(kr.split_batches(kr.within_budget(fetched, 1)))) == 1
    assert len(list(kr.split_batches(kr.within_budget(fetched, 2 * len(_one_batch(b"x" * 100)))))) == 2
    assert kr.within_budget(fetched, len(fetched)) == fetched


# --- error table --------------------------------------------------------------------------------------


def test_every_mapped_raftmq_code_exists_and_definite_failures_never_map_to_possibly_stored() -> None:
    for code, kafka_code in ERROR_CODES.items():
        cls = error_class_for(code)
        assert cls.code == code, f"{code} is not a registered raftmq error"
        if kafka_code in (KafkaError.NOT_LEADER_OR_FOLLOWER, KafkaError.LEADER_NOT_AVAILABLE):
            assert cls.definite, f"{code} may have been stored: clients would take it as certainly not"
        if not cls.definite:
            assert kafka_code in (KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND)
    assert kafka_error_for(error_class_for("NOT_LEADER")("x")) is KafkaError.NOT_LEADER_OR_FOLLOWER
    assert kafka_error_for(error_class_for("INTERNAL_ERROR")("x")) is KafkaError.UNKNOWN_SERVER_ERROR
