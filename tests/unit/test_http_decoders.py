"""Every decoder of client input (cluster/wire.py, cluster/metadata.py, cluster/batch.py, node/api.py) answers
anything at all with a value or a coded 4xx RaftMQError: never another exception (which would be a 500).

Method: the inputs that used to slip through (a "²" partition, 5,000-digit numbers, timestamps of 2**63,
JSON nested 200,000 deep, a topic name with a trailing newline, a 1 MiB + 1 record); then hypothesis throws
random bytes, random JSON and random msgpack structures at each decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    CorruptBatch,
    InvalidOffset,
    InvalidRequest,
    InvalidTopic,
    MalformedBody,
    RaftMQError,
    RecordTooLarge,
)
from raftmq.cluster.metadata import parse_create_topic, parse_producer_name, validate_topic_name
from raftmq.cluster.placement import plan_create_topic
from raftmq.cluster.wire import (
    decode_body,
    parse_acks,
    parse_decimal,
    parse_partition,
    query_int,
    records_to_batch,
)
from raftmq.node.api import _produce_args

BROKERS = [1, 2, 3]


def _coded(call: Callable[[], Any]) -> None:
    """``call`` returns, or raises a RaftMQError that maps to a 4xx."""
    try:
        call()
    except RaftMQError as error:
        assert 400 <= error.http_status < 500, error
        assert error.code and error.message


@pytest.mark.parametrize("text", ["\u00b2", "1" * 5000, "+5", " 5", "1_000", "0x10", "", "5 ", "\u0665", "-"])
def test_partition_numbers_that_int_would_misread(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_partition(text)


def test_partition_numbers() -> None:
    assert parse_partition("0") == 0 and parse_partition("255") == 255
    with pytest.raises(InvalidRequest):
        parse_partition(str(2**31))
    with pytest.raises(InvalidRequest):
        parse_partition("-1")
    with pytest.raises(InvalidOffset):
        query_int({"offset": "\u00b2"}, "offset", offset=True)
    with pytest.raises(InvalidOffset):
        query_int({"offset": "9" * 5000}, "offset", offset=True)
    assert query_int({"offset": "42"}, "offset", offset=True) == 42
    assert parse_decimal("-7", "x") == -7


@pytest.mark.parametrize("timestamp", [2**63, 2**64 - 1, -1, 1.5, "1"])
def test_record_timestamps_out_of_range(timestamp: Any) -> None:
    with pytest.raises(InvalidRequest):
        records_to_batch([{"value": "v", "timestamp_ms": timestamp}], now_ms=1_000)
    assert records_to_batch([{"value": "v", "timestamp_ms": 2**63 - 1}], now_ms=1_000)


def test_encode_batch_refuses_out_of_range_fields_with_a_code() -> None:
    with pytest.raises(InvalidRequest):
        batches.encode_batch([(None, b"v", (), 2**63)])
    with pytest.raises(InvalidRequest):
        batches.encode_batch([(None, b"v", (), 1)], producer_id=2**63, base_sequence=0)


def test_json_nested_too_deep_is_malformed() -> None:
    with pytest.raises(MalformedBody):
        decode_body("application/json", b"[" * 200_000)
    with pytest.raises(MalformedBody):
        decode_body("application/msgpack", b"\x91" * 200_000)


def test_topic_names_with_a_trailing_newline() -> None:
    for name in ["probe\n", "probe\r\n", "\nprobe", "pro\nbe", "probe\x00"]:
        with pytest.raises(InvalidTopic):
            validate_topic_name(name)
    assert validate_topic_name("probe.v1_x-2") == "probe.v1_x-2"


def test_one_record_above_the_limit_is_record_too_large() -> None:
    good = batches.encode_batch([(None, b"x" * limits.record_bytes_max, (), 1)])
    batches.validate_produced(good)
    # Build the oversized record with a Kafka client's encoder: raftmq's refuses to encode it.
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 22)
    builder.append(0, timestamp=1, key=None, value=b"x" * (limits.record_bytes_max + 1), headers=[])
    with pytest.raises(RecordTooLarge):
        batches.validate_produced(bytes(builder.build()))


# --- property tests -------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children,
                                                                              max_size=5)),
    max_leaves=30)
_msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(), st.text(max_size=20), st.binary(max_size=40)),
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(
        st.one_of(st.text(max_size=10), st.binary(max_size=4), st.integers()), children, max_size=5)),
    max_leaves=30)
_fields = st.sampled_from(["acks", "timeout_ms", "batch", "records", "key", "name", "partitions",
                           "replication_factor", "config", "value", "timestamp_ms", "headers"])
_requestish = st.dictionaries(_fields, _msgpack_values, max_size=6)
_records = st.lists(st.dictionaries(st.sampled_from(["key", "value", "headers", "timestamp_ms", "x"]),
                                    _msgpack_values, max_size=4), max_size=4)
_settings = settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@_settings
@given(st.binary(max_size=200), st.sampled_from(["application/json", "application/msgpack", "", "text/plain"]))
def test_decode_body_random_bytes(raw: bytes, content_type: str) -> None:
    _coded(lambda: decode_body(content_type, raw))


@_settings
@given(_json_values)
def test_decode_body_random_json(value: Any) -> None:
    _coded(lambda: decode_body("application/json", json.dumps(value).encode()))


@_settings
@given(_msgpack_values)
def test_decode_body_random_msgpack(value: Any) -> None:
    try:
        raw = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    _coded(lambda: decode_body("application/msgpack", raw))


@_settings
@given(_requestish)
def test_request_parsers_random_fields(body: dict[str, Any]) -> None:
    _coded(lambda: _produce_args(body))
    _coded(lambda: plan_create_topic(parse_create_topic(body), BROKERS))
    _coded(lambda: parse_producer_name(body))
    _coded(lambda: parse_acks(body.get("acks")))


@_settings
@given(_records)
def test_records_to_batch_random_records(records: list[Any]) -> None:
    _coded(lambda: records_to_batch(records, now_ms=1_000))


@_settings
@given(st.text(max_size=30))
def test_numbers_in_paths_and_queries(text: str) -> None:
    _coded(lambda: parse_partition(text))
    _coded(lambda: query_int({"offset": text}, "offset", offset=True))
    _coded(lambda: query_int({"max_bytes": text}, "max_bytes", minimum=1, maximum=limits.fetch_bytes_max))
    _coded(lambda: validate_topic_name(text))


@_settings
@given(st.binary(max_size=300))
def test_validate_produced_random_batches(raw: bytes) -> None:
    _coded(lambda: batches.validate_produced(raw))


@_settings
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=8)), st.one_of(st.none(), st.binary(max_size=8)),
                          st.integers(min_value=0, max_value=2**63 - 1)), min_size=1, max_size=5),
       st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=4))
def test_a_valid_batch_with_flipped_bytes_is_corrupt_or_still_valid(records: list[Any], position: int,
                                                                   flip: int) -> None:
    batch = bytearray(batches.encode_batch([(k, v, (), t) for k, v, t in records]))
    batches.validate_produced(bytes(batch))
    if flip:
        batch[position % len(batch)] ^= flip
    try:
        batches.validate_produced(bytes(batch))
    except (CorruptBatch, RaftMQError) as error:
        assert 400 <= error.http_status < 500
