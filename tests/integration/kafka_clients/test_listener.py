"""The Kafka listener at the protocol level, over raw sockets with our own codec (cluster/kafka_messages.py):
version negotiation, what happens to bad input (unknown keys, unadvertised versions, oversized and
malformed frames: a clean error or a close, never a hang), pipelined requests answered in order,
idempotent retries answered with the original offset, and the per-partition error codes clients act on.

Method: the package's one real 3-broker cluster (conftest.py); every socket read has a deadline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from raftmq.cluster import batch as batches
from raftmq.cluster.kafka_errors import KafkaError
from raftmq.cluster.kafka_messages import ADVERTISED, SCHEMAS, ApiKey, decode_response, encode_request
from raftmq.deploy.local_cluster import LocalCluster

from tests.integration.kafka_clients.support import create_topic, read_over_http, unique

pytestmark = pytest.mark.cluster

READ_TIMEOUT_S = 15.0
VERSIONS = {key: high for key, (_, high) in ADVERTISED.items()}


@contextmanager
def connect(cluster: LocalCluster, broker_id: int = 1) -> Iterator[socket.socket]:
    port = cluster.nodes[broker_id].kafka_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        yield sock


def read_frame(sock: socket.socket) -> bytes | None:
    """One response frame without its size, or None when the broker closed the connection."""
    def exactly(size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    head = exactly(4)
    return None if head is None else exactly(int.from_bytes(head, "big"))


def call(sock: socket.socket, api_key: ApiKey, body: dict[str, Any], correlation_id: int = 1,
         version: int | None = None) -> dict[str, Any]:
    version = VERSIONS[api_key] if version is None else version
    sock.sendall(encode_request(api_key, version, correlation_id, body))
    frame = read_frame(sock)
    assert frame is not None, "the broker closed the connection"
    answered_id, answer = decode_response(api_key, version, frame)
    assert answered_id == correlation_id
    return answer


def leader_of(cluster: LocalCluster, topic: str, partition: int) -> int:
    with connect(cluster) as sock:
        metadata = call(sock, ApiKey.METADATA, {"topics": [{"name": topic}]})
    [described] = metadata["topics"]
    return int(described["partitions"][partition]["leader_id"])


def produce_body(topic: str, batch: bytes, acks: int = -1) -> dict[str, Any]:
    return {"transactional_id": None, "acks": acks, "timeout_ms": 10_000,
            "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": batch}]}]}


def partition_answer(answer: dict[str, Any]) -> dict[str, Any]:
    [topic] = answer["responses"]
    [partition] = topic["partition_responses"]
    return dict(partition)


def test_api_versions_lists_profile_a_and_a_newer_request_gets_35_with_the_list(kafka_cluster: LocalCluster) -> None:
    with connect(kafka_cluster) as sock:
        answer = call(sock, ApiKey.API_VERSIONS, {}, version=3)  # flexible: librdkafka's first request
        assert answer["error_code"] == 0
        assert {e["api_key"]: (e["min_version"], e["max_version"]) for e in answer["api_keys"]} == \
            {int(k): v for k, v in ADVERTISED.items()}
        sock.sendall(encode_request(ApiKey.API_VERSIONS, 4, 7, {}))  # kafka-python's first request
        frame = read_frame(sock)
        assert frame is not None
        correlation_id, refused = decode_response(ApiKey.API_VERSIONS, 0, frame)
        assert (correlation_id, refused["error_code"]) == (7, KafkaError.UNSUPPORTED_VERSION)
        assert len(refused["api_keys"]) == len(ADVERTISED)
        assert call(sock, ApiKey.API_VERSIONS, {}, version=0)["error_code"] == 0  # the connection still works


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x00\x0a" + b"\x00\x0b\x00\x05\x00\x00\x00\x01\xff\xff",  # JoinGroup: not served
    b"\x00\x00\x00\x0a" + b"\x00\x03\x00\x63\x00\x00\x00\x01\xff\xff",  # Metadata v99
    b"\x00\x00\x00\x0b" + b"\x00\x03\x00\x04\x00\x00\x00\x01\xff\xff\x07",  # Metadata v4, body cut short
    b"\x7f\xff\xff\xff",  # a 2 GiB request
    b"\x00\x00\x00\x02\x00\x00",  # shorter than any header
], ids=["unknown-key", "unadvertised-version", "malformed", "oversized", "too-short"])
def test_bad_requests_close_the_connection_and_the_broker_keeps_serving(kafka_cluster: LocalCluster,
                                                                        frame: bytes) -> None:
    with connect(kafka_cluster) as sock:
        sock.sendall(frame)
        assert read_frame(sock) is None, "closed, not answered with bytes the client cannot parse"
    with connect(kafka_cluster) as sock:
        assert call(sock, ApiKey.API_VERSIONS, {}, version=2)["error_code"] == 0


def test_pipelined_requests_are_answered_in_request_order(kafka_cluster: LocalCluster) -> None:
    topic = unique("raw-pipeline")
    create_topic(kafka_cluster, topic, partitions=1)
    leader = leader_of(kafka_cluster, topic, 0)
    fetch = {"replica_id": -1, "max_wait_ms": 400, "min_bytes": 1, "max_bytes": 1 << 20, "isolation_level": 0,
             "session_id": 0, "session_epoch": -1, "topics": [{"topic": topic, "partitions": [
                 {"partition": 0, "current_leader_epoch": -1, "fetch_offset": 0, "log_start_offset": -1,
                  "partition_max_bytes": 1 << 20}]}], "forgotten_topics_data": [], "rack_id": ""}
    with connect(kafka_cluster, leader) as sock:
        # A long-polling Fetch first, then a quick ApiVersions: the answers must still come back in order.
        sock.sendall(encode_request(ApiKey.FETCH, 11, 1, fetch) + encode_request(ApiKey.API_VERSIONS, 2, 2, {}))
        first, second = read_frame(sock), read_frame(sock)
        assert first is not None and second is not None
        assert decode_response(ApiKey.FETCH, 11, first)[0] == 1
        assert decode_response(ApiKey.API_VERSIONS, 2, second)[0] == 2


def test_an_idempotent_retry_answers_the_original_offset_and_is_stored_once(kafka_cluster: LocalCluster) -> None:
    topic = unique("raw-idempotent")
    create_topic(kafka_cluster, topic, partitions=1)
    leader = leader_of(kafka_cluster, topic, 0)
    with connect(kafka_cluster, leader) as sock:
        identity = call(sock, ApiKey.INIT_PRODUCER_ID, {"transactional_id": None, "transaction_timeout_ms": -1})
        assert identity["error_code"] == 0 and identity["producer_id"] >= 0
        pid = identity["producer_id"]

        def batch(sequence: int, value: bytes) -> bytes:
            return batches.encode_batch([(None, value, (), 1_700_000_000_000)], producer_id=pid,
                                        base_sequence=sequence)

        first = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, batch(0, b"a"))))
        second = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, batch(1, b"b")), 2))
        retry = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, batch(0, b"a")), 3))
        assert (first["error_code"], first["base_offset"]) == (0, 0)
        assert (second["error_code"], second["base_offset"]) == (0, 1)
        assert (retry["error_code"], retry["base_offset"]) == (0, 0), "a duplicate answers its original offset"
        gap = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, batch(5, b"c")), 4))
        assert gap["error_code"] == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "only a real gap is out of order"
    assert [value for *_, value in read_over_http(kafka_cluster, topic, 1, 2)] == [b"a", b"b"]


def test_per_partition_errors_carry_the_codes_clients_act_on(kafka_cluster: LocalCluster) -> None:
    topic = unique("raw-errors")
    create_topic(kafka_cluster, topic, partitions=1)
    leader = leader_of(kafka_cluster, topic, 0)
    follower = next(b for b in kafka_cluster.nodes if b != leader)
    record = batches.encode_batch([(None, b"x", (), 1)])
    with connect(kafka_cluster, follower) as sock:
        answer = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, record)))
        assert answer["error_code"] == KafkaError.NOT_LEADER_OR_FOLLOWER
    with connect(kafka_cluster, leader) as sock:
        missing = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(unique("nope"), record)))
        assert missing["error_code"] == KafkaError.UNKNOWN_TOPIC_OR_PARTITION
        corrupt = bytearray(record)
        corrupt[-1] ^= 0xFF
        bad = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, bytes(corrupt))))
        assert bad["error_code"] == KafkaError.INVALID_RECORD, "a bad CRC is permanent, not retried"
        legacy = partition_answer(call(sock, ApiKey.PRODUCE, produce_body(topic, record), version=2))
        assert legacy["error_code"] == KafkaError.UNSUPPORTED_VERSION
        offsets = call(sock, ApiKey.LIST_OFFSETS, {"replica_id": -1, "isolation_level": 0, "topics": [
            {"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}]})
        assert offsets["topics"][0]["partitions"][0]["offset"] == 0
        fetch = call(sock, ApiKey.FETCH, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 20, "topics": [
                {"topic": topic, "partitions": [{"partition": 0, "fetch_offset": 99, "partition_max_bytes": 1024}]}]},
            version=4)
        assert fetch["responses"][0]["partitions"][0]["error_code"] == KafkaError.OFFSET_OUT_OF_RANGE
        coordinator = call(sock, ApiKey.FIND_COORDINATOR, {"key": "group", "key_type": 0})
        assert coordinator["error_code"] == 0
        assert f"{coordinator['host']}:{coordinator['port']}" in kafka_cluster.kafka_bootstrap.split(",")
        transactions = call(sock, ApiKey.FIND_COORDINATOR, {"key": "tx", "key_type": 1})
        assert transactions["error_code"] == KafkaError.INVALID_REQUEST


def _fuzzed(api_key: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
    """Keep a drawn request answerable and cheap: acks=0 gets no answer, a long poll would wait, and a
    CreateTopics must not really create thousands of partitions (validate_only)."""
    if api_key is ApiKey.PRODUCE and body["acks"] == 0:
        body["acks"] = -1
    if api_key is ApiKey.FETCH:
        body["max_wait_ms"] = min(abs(body["max_wait_ms"]), 50)
    if api_key is ApiKey.CREATE_TOPICS:
        body["validate_only"] = True
    return body


FUZZED = [(key, version) for key, (low, high) in ADVERTISED.items() for version in (low, high)
          if not (key is ApiKey.CREATE_TOPICS and version == 0)]  # v0 has no validate_only


@pytest.mark.parametrize(("api_key", "version"), FUZZED, ids=[f"{k.name}-v{v}" for k, v in FUZZED])
def test_any_well_formed_request_is_answered(kafka_cluster: LocalCluster, api_key: ApiKey, version: int) -> None:
    """Requests that match their schema, with any values hypothesis draws (negative partitions, absurd sizes,
    unknown topics, garbage records): each gets an answer on the same connection. A handler that failed
    instead would close it, and log a traceback that the package's cluster fixture reports."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.kafka_strategies import values_for

    with connect(kafka_cluster) as sock:
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=values_for(SCHEMAS[api_key][0], version), correlation_id=st.integers(0, 2**31 - 1))
        def answered(body: dict[str, Any], correlation_id: int) -> None:
            call(sock, api_key, _fuzzed(api_key, body), correlation_id, version=version)

        answered()
