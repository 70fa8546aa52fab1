"""The Kafka requests and responses raftmq's Kafka listener serves, their versions, and the frame headers.

What we advertise ("Profile A") and why the minimums matter: every client picks the highest version both
sides support, so each API is really served at one version (the maximum below), and the four clients we
test (kcat with librdkafka 2.0.2, confluent-kafka, kafka-python 3, aiokafka 0.14) all land on it. The
minimums are for librdkafka before 2.11.1, which enables a feature only when the broker's range contains
one exact version: Produce must include v0 or it silently sends gzip/snappy uncompressed, Produce 3 and
Fetch 4 or it falls back to the legacy message format, Produce 7 and Fetch 10 for zstd, InitProducerId 0
for idempotence, ListOffsets 1 for timestamp lookups, FindCoordinator 0 for lz4. Produce v0-2 are
advertised for that reason only and answered UNSUPPORTED_VERSION (nothing sends them: the maximum is 7),
as Kafka 4.0 does.

Group APIs (Kafka's classic group protocol): FindCoordinator 0-1, JoinGroup 0-5, SyncGroup 0-3,
Heartbeat 0-1, LeaveGroup 0-1, OffsetCommit 2-3, OffsetFetch 1-3. librdkafka 2.0.2's group consumer
(``kcat -G``) needs JoinGroup, SyncGroup, Heartbeat and LeaveGroup v0 in the range, and ties lz4 to
FindCoordinator v0; aiokafka stops at OffsetCommit 3, kafka-python needs OffsetFetch 2 for "every committed
partition" (a null topic list).

No flexible (KIP-482) version is needed by any of the four clients except ApiVersions v3, which librdkafka
sends first (it falls back, but v3 saves a round trip); kafka-python sends v4 first and falls back to our
maximum on UNSUPPORTED_VERSION.

Frames: int32 size, then the header. Request header v1: api_key int16, api_version int16, correlation_id
int32, client_id nullable string (int16 length, even in flexible header v2, which adds a tagged-field
section). Response header: correlation_id int32, plus a tagged-field section for flexible versions,
**except ApiVersions**, whose response header never has one (clients parse it before they know versions).

No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from raftmq.cluster.kafka_codec import DecodeError, Field, Reader, Schema, Writer, decode, encode


class ApiKey(enum.IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    INIT_PRODUCER_ID = 22


# (min, max) advertised; see the module docstring for why each bound is what it is.
ADVERTISED: Final[Mapping[ApiKey, tuple[int, int]]] = {
    ApiKey.PRODUCE: (0, 7),
    ApiKey.FETCH: (4, 11),
    ApiKey.LIST_OFFSETS: (1, 2),
    ApiKey.METADATA: (0, 4),
    ApiKey.OFFSET_COMMIT: (2, 3),
    ApiKey.OFFSET_FETCH: (1, 3),
    ApiKey.FIND_COORDINATOR: (0, 1),
    ApiKey.JOIN_GROUP: (0, 5),
    ApiKey.HEARTBEAT: (0, 1),
    ApiKey.LEAVE_GROUP: (0, 1),
    ApiKey.SYNC_GROUP: (0, 3),
    ApiKey.API_VERSIONS: (0, 3),
    ApiKey.CREATE_TOPICS: (0, 3),
    ApiKey.DELETE_TOPICS: (0, 1),
    ApiKey.INIT_PRODUCER_ID: (0, 1),
}
# Advertised but refused (UNSUPPORTED_VERSION): the legacy message format (see the module docstring).
PRODUCE_VERSION_MIN_SERVED: Final = 3
# The first flexible version of each API we serve (only ApiVersions reaches it).
FIRST_FLEXIBLE: Final[Mapping[ApiKey, int]] = {
    ApiKey.PRODUCE: 9, ApiKey.FETCH: 12, ApiKey.LIST_OFFSETS: 6, ApiKey.METADATA: 9, ApiKey.OFFSET_COMMIT: 8,
    ApiKey.OFFSET_FETCH: 6, ApiKey.FIND_COORDINATOR: 3, ApiKey.JOIN_GROUP: 6, ApiKey.HEARTBEAT: 4,
    ApiKey.LEAVE_GROUP: 4, ApiKey.SYNC_GROUP: 4, ApiKey.API_VERSIONS: 3, ApiKey.CREATE_TOPICS: 5,
    ApiKey.DELETE_TOPICS: 4, ApiKey.INIT_PRODUCER_ID: 2}


def is_flexible(api_key: ApiKey, version: int) -> bool:
    return version >= FIRST_FLEXIBLE[api_key]


def _f(name: str, kind: str | Schema, since: int = 0, **kwargs: Any) -> Field:
    return Field(name, kind, since, **kwargs)


# --- schemas (request, response) per API -----------------------------------------------------------

API_VERSIONS_REQUEST: Schema = (
    _f("client_software_name", "string", 3, default=""),
    _f("client_software_version", "string", 3, default=""),
)
API_VERSIONS_RESPONSE: Schema = (
    _f("error_code", "int16"),
    _f("api_keys", (_f("api_key", "int16"), _f("min_version", "int16"), _f("max_version", "int16")), array=True),
    _f("throttle_time_ms", "int32", 1, default=0),
)

_BROKER: Schema = (_f("node_id", "int32"), _f("host", "string"), _f("port", "int32"),
                   _f("rack", "nullable_string", 1))
_METADATA_PARTITION: Schema = (
    _f("error_code", "int16"), _f("partition_index", "int32"), _f("leader_id", "int32"),
    _f("replica_nodes", "int32", array=True), _f("isr_nodes", "int32", array=True),
)
METADATA_REQUEST: Schema = (
    # v0: an empty list means every topic; v1+: null means every topic and an empty list none.
    _f("topics", (_f("name", "string"),), array=True, nullable=True),
    _f("allow_auto_topic_creation", "bool", 4, default=True),
)
METADATA_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 3, default=0),
    _f("brokers", _BROKER, array=True),
    _f("cluster_id", "nullable_string", 2),
    _f("controller_id", "int32", 1, default=-1),
    _f("topics", (_f("error_code", "int16"), _f("name", "string"), _f("is_internal", "bool", 1, default=False),
                  _f("partitions", _METADATA_PARTITION, array=True)), array=True),
)

PRODUCE_REQUEST: Schema = (
    _f("transactional_id", "nullable_string", 3),
    _f("acks", "int16"),
    _f("timeout_ms", "int32"),
    _f("topic_data", (_f("name", "string"),
                      _f("partition_data", (_f("index", "int32"), _f("records", "nullable_bytes")), array=True)),
       array=True),
)
PRODUCE_RESPONSE: Schema = (
    _f("responses", (_f("name", "string"),
                     _f("partition_responses", (
                         _f("index", "int32"), _f("error_code", "int16"), _f("base_offset", "int64"),
                         _f("log_append_time_ms", "int64", 2, default=-1),
                         _f("log_start_offset", "int64", 5, default=-1)), array=True)), array=True),
    _f("throttle_time_ms", "int32", 1, default=0),
)

FETCH_REQUEST: Schema = (
    _f("replica_id", "int32"),
    _f("max_wait_ms", "int32"),
    _f("min_bytes", "int32"),
    _f("max_bytes", "int32", 3, default=0x7FFFFFFF),
    _f("isolation_level", "int8", 4, default=0),
    _f("session_id", "int32", 7, default=0),
    _f("session_epoch", "int32", 7, default=-1),
    _f("topics", (_f("topic", "string"),
                  _f("partitions", (_f("partition", "int32"), _f("current_leader_epoch", "int32", 9, default=-1),
                                    _f("fetch_offset", "int64"), _f("log_start_offset", "int64", 5, default=-1),
                                    _f("partition_max_bytes", "int32")), array=True)), array=True),
    _f("forgotten_topics_data", (_f("topic", "string"), _f("partitions", "int32", array=True)), 7, array=True,
       default=()),
    _f("rack_id", "string", 11, default=""),
)
FETCH_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 1, default=0),
    _f("error_code", "int16", 7, default=0),
    _f("session_id", "int32", 7, default=0),
    _f("responses", (_f("topic", "string"),
                     _f("partitions", (
                         _f("partition_index", "int32"), _f("error_code", "int16"), _f("high_watermark", "int64"),
                         _f("last_stable_offset", "int64", 4, default=-1),
                         _f("log_start_offset", "int64", 5, default=-1),
                         _f("aborted_transactions", (_f("producer_id", "int64"), _f("first_offset", "int64")), 4,
                            array=True, nullable=True),
                         _f("preferred_read_replica", "int32", 11, default=-1),
                         _f("records", "nullable_bytes")), array=True)), array=True),
)

LIST_OFFSETS_REQUEST: Schema = (
    _f("replica_id", "int32"),
    _f("isolation_level", "int8", 2, default=0),
    _f("topics", (_f("name", "string"),
                  _f("partitions", (_f("partition_index", "int32"), _f("timestamp", "int64")), array=True)),
       array=True),
)
LIST_OFFSETS_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 2, default=0),
    _f("topics", (_f("name", "string"),
                  _f("partitions", (_f("partition_index", "int32"), _f("error_code", "int16"),
                                    _f("timestamp", "int64", default=-1), _f("offset", "int64", default=-1)),
                     array=True)), array=True),
)
# ListOffsets timestamps with a meaning of their own.
LATEST_TIMESTAMP: Final = -1
EARLIEST_TIMESTAMP: Final = -2

FIND_COORDINATOR_REQUEST: Schema = (_f("key", "string"), _f("key_type", "int8", 1, default=0))
FIND_COORDINATOR_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 1, default=0), _f("error_code", "int16"),
    _f("error_message", "nullable_string", 1), _f("node_id", "int32", default=-1), _f("host", "string", default=""),
    _f("port", "int32", default=-1),
)

JOIN_GROUP_REQUEST: Schema = (
    _f("group_id", "string"), _f("session_timeout_ms", "int32"), _f("rebalance_timeout_ms", "int32", 1, default=-1),
    _f("member_id", "string"), _f("group_instance_id", "nullable_string", 5), _f("protocol_type", "string"),
    _f("protocols", (_f("name", "string"), _f("metadata", "bytes")), array=True),
)
JOIN_GROUP_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 2, default=0), _f("error_code", "int16"), _f("generation_id", "int32", default=-1),
    _f("protocol_name", "string", default=""), _f("leader", "string", default=""), _f("member_id", "string"),
    _f("members", (_f("member_id", "string"), _f("group_instance_id", "nullable_string", 5),
                   _f("metadata", "bytes")), array=True, default=()),
)
SYNC_GROUP_REQUEST: Schema = (
    _f("group_id", "string"), _f("generation_id", "int32"), _f("member_id", "string"),
    _f("group_instance_id", "nullable_string", 3),
    _f("assignments", (_f("member_id", "string"), _f("assignment", "bytes")), array=True),
)
SYNC_GROUP_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 1, default=0), _f("error_code", "int16"), _f("assignment", "bytes", default=b""),
)
HEARTBEAT_REQUEST: Schema = (_f("group_id", "string"), _f("generation_id", "int32"), _f("member_id", "string"))
HEARTBEAT_RESPONSE: Schema = (_f("throttle_time_ms", "int32", 1, default=0), _f("error_code", "int16"))
LEAVE_GROUP_REQUEST: Schema = (_f("group_id", "string"), _f("member_id", "string"))
LEAVE_GROUP_RESPONSE: Schema = HEARTBEAT_RESPONSE
OFFSET_COMMIT_REQUEST: Schema = (
    _f("group_id", "string"), _f("generation_id", "int32"), _f("member_id", "string"),
    _f("retention_time_ms", "int64", default=-1),
    _f("topics", (_f("name", "string"),
                  _f("partitions", (_f("partition_index", "int32"), _f("committed_offset", "int64"),
                                    _f("committed_metadata", "nullable_string")), array=True)), array=True),
)
OFFSET_COMMIT_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 3, default=0),
    _f("topics", (_f("name", "string"),
                  _f("partitions", (_f("partition_index", "int32"), _f("error_code", "int16")), array=True)),
       array=True),
)
OFFSET_FETCH_REQUEST: Schema = (
    _f("group_id", "string"),
    # v2+: null means every partition the group has committed.
    _f("topics", (_f("name", "string"), _f("partition_indexes", "int32", array=True)), array=True, nullable=True),
)
OFFSET_FETCH_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 3, default=0),
    _f("topics", (_f("name", "string"),
                  _f("partitions", (_f("partition_index", "int32"), _f("committed_offset", "int64"),
                                    _f("metadata", "nullable_string"), _f("error_code", "int16")), array=True)),
       array=True),
    _f("error_code", "int16", 2, default=0),
)

INIT_PRODUCER_ID_REQUEST: Schema = (_f("transactional_id", "nullable_string"),
                                    _f("transaction_timeout_ms", "int32", default=-1))
INIT_PRODUCER_ID_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", default=0), _f("error_code", "int16"), _f("producer_id", "int64", default=-1),
    _f("producer_epoch", "int16", default=-1),
)

CREATE_TOPICS_REQUEST: Schema = (
    _f("topics", (_f("name", "string"), _f("num_partitions", "int32"), _f("replication_factor", "int16"),
                  _f("assignments", (_f("partition_index", "int32"), _f("broker_ids", "int32", array=True)),
                     array=True, default=()),
                  _f("configs", (_f("name", "string"), _f("value", "nullable_string")), array=True, default=())),
       array=True),
    _f("timeout_ms", "int32"),
    _f("validate_only", "bool", 1, default=False),
)
CREATE_TOPICS_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 2, default=0),
    _f("topics", (_f("name", "string"), _f("error_code", "int16"), _f("error_message", "nullable_string", 1)),
       array=True),
)

DELETE_TOPICS_REQUEST: Schema = (_f("topic_names", "string", array=True), _f("timeout_ms", "int32"))
DELETE_TOPICS_RESPONSE: Schema = (
    _f("throttle_time_ms", "int32", 1, default=0),
    _f("responses", (_f("name", "string"), _f("error_code", "int16")), array=True),
)

SCHEMAS: Final[Mapping[ApiKey, tuple[Schema, Schema]]] = {
    ApiKey.API_VERSIONS: (API_VERSIONS_REQUEST, API_VERSIONS_RESPONSE),
    ApiKey.METADATA: (METADATA_REQUEST, METADATA_RESPONSE),
    ApiKey.PRODUCE: (PRODUCE_REQUEST, PRODUCE_RESPONSE),
    ApiKey.FETCH: (FETCH_REQUEST, FETCH_RESPONSE),
    ApiKey.LIST_OFFSETS: (LIST_OFFSETS_REQUEST, LIST_OFFSETS_RESPONSE),
    ApiKey.FIND_COORDINATOR: (FIND_COORDINATOR_REQUEST, FIND_COORDINATOR_RESPONSE),
    ApiKey.JOIN_GROUP: (JOIN_GROUP_REQUEST, JOIN_GROUP_RESPONSE),
    ApiKey.SYNC_GROUP: (SYNC_GROUP_REQUEST, SYNC_GROUP_RESPONSE),
    ApiKey.HEARTBEAT: (HEARTBEAT_REQUEST, HEARTBEAT_RESPONSE),
    ApiKey.LEAVE_GROUP: (LEAVE_GROUP_REQUEST, LEAVE_GROUP_RESPONSE),
    ApiKey.OFFSET_COMMIT: (OFFSET_COMMIT_REQUEST, OFFSET_COMMIT_RESPONSE),
    ApiKey.OFFSET_FETCH: (OFFSET_FETCH_REQUEST, OFFSET_FETCH_RESPONSE),
    ApiKey.INIT_PRODUCER_ID: (INIT_PRODUCER_ID_REQUEST, INIT_PRODUCER_ID_RESPONSE),
    ApiKey.CREATE_TOPICS: (CREATE_TOPICS_REQUEST, CREATE_TOPICS_RESPONSE),
    ApiKey.DELETE_TOPICS: (DELETE_TOPICS_REQUEST, DELETE_TOPICS_RESPONSE),
}


# --- headers and frames -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestHeader:
    api_key: int  # a raw int: an unknown key must still be answerable (or closed on) by the listener
    api_version: int
    correlation_id: int
    client_id: str | None


@dataclass(frozen=True)
class Request:
    header: RequestHeader
    api_key: ApiKey
    body: dict[str, Any]


class UnsupportedRequest(DecodeError):
    """A request for an API key or version we do not advertise (the header was readable)."""

    def __init__(self, message: str, header: RequestHeader) -> None:
        super().__init__(message, api_key=header.api_key, api_version=header.api_version)
        self.header = header


def decode_request_header(frame: bytes | memoryview) -> tuple[RequestHeader, Reader]:
    """The header v1 fields of a frame (the size prefix already removed), and a reader after them."""
    reader = Reader(frame)
    api_key, api_version, correlation_id = reader.fixed("int16"), reader.fixed("int16"), reader.fixed("int32")
    size = reader.fixed("int16")  # client_id keeps its int16 length even in flexible header v2
    client_id = None if size < 0 else str(reader.take(size), "utf-8", errors="replace")
    return RequestHeader(api_key, api_version, correlation_id, client_id), reader


def decode_request(frame: bytes | memoryview, *, count_max: int = 100_000) -> Request:
    """Decode a whole request frame. Raises UnsupportedRequest for a key or version we do not serve (the
    caller answers ApiVersions with error 35, and closes on anything else), DecodeError when malformed."""
    header, reader = decode_request_header(frame)
    try:
        api_key = ApiKey(header.api_key)
    except ValueError:
        raise UnsupportedRequest(f"API key {header.api_key} is not served by raftmq", header) from None
    low, high = ADVERTISED[api_key]
    if not low <= header.api_version <= high:
        raise UnsupportedRequest(f"{api_key.name} v{header.api_version} is not served (v{low}-{high} are)", header)
    flexible = is_flexible(api_key, header.api_version)
    if flexible:
        reader.skip_tagged_fields()  # request header v2
    body = decode(SCHEMAS[api_key][0], reader, header.api_version, flexible=flexible, count_max=count_max)
    if reader.remaining:
        raise DecodeError(f"{reader.remaining} bytes after the end of {api_key.name} v{header.api_version}")
    return Request(header, api_key, body)


def encode_request(api_key: ApiKey, version: int, correlation_id: int, body: Mapping[str, Any],
                   client_id: str | None = "raftmq") -> bytes:
    """A whole request frame with its size prefix (what a client sends; tests and tools use it)."""
    writer = Writer()
    writer.fixed("int16", int(api_key))
    writer.fixed("int16", version)
    writer.fixed("int32", correlation_id)
    if client_id is None:
        writer.fixed("int16", -1)
    else:
        data = client_id.encode("utf-8")
        writer.fixed("int16", len(data))
        writer.raw(data)
    flexible = is_flexible(api_key, version)
    if flexible:
        writer.empty_tagged_fields()
    encode(SCHEMAS[api_key][0], body, version, writer, flexible=flexible)
    return _framed(writer.parts)


def encode_response(api_key: ApiKey, version: int, correlation_id: int, body: Mapping[str, Any]) -> bytes:
    """A whole response frame with its size prefix."""
    writer = Writer()
    writer.fixed("int32", correlation_id)
    flexible = is_flexible(api_key, version)
    if flexible and api_key is not ApiKey.API_VERSIONS:
        writer.empty_tagged_fields()  # response header v1; never for ApiVersions (see the module docstring)
    encode(SCHEMAS[api_key][1], body, version, writer, flexible=flexible)
    return _framed(writer.parts)


def decode_response(api_key: ApiKey, version: int, frame: bytes | memoryview) -> tuple[int, dict[str, Any]]:
    """(correlation_id, body) of a response frame without its size prefix (the client side; for tests)."""
    reader = Reader(frame)
    correlation_id = reader.fixed("int32")
    flexible = is_flexible(api_key, version)
    if flexible and api_key is not ApiKey.API_VERSIONS:
        reader.skip_tagged_fields()
    body = decode(SCHEMAS[api_key][1], reader, version, flexible=flexible)
    if reader.remaining:
        raise DecodeError(f"{reader.remaining} bytes after the end of the response")
    return correlation_id, body


def advertised_api_keys() -> list[dict[str, int]]:
    return [{"api_key": int(key), "min_version": low, "max_version": high}
            for key, (low, high) in sorted(ADVERTISED.items())]


def unsupported_api_versions_response(correlation_id: int) -> bytes:
    """The answer to an ApiVersions request above our maximum: error 35 and the full list in the **v0**
    body layout (librdkafka then retries at min(sent - 1, our max), kafka-python decodes any error body as
    v0 and retries at our max; both need the whole list, not just ApiVersions' own entry)."""
    return encode_response(ApiKey.API_VERSIONS, 0, correlation_id,
                           {"error_code": 35, "api_keys": advertised_api_keys()})


def _framed(payload: bytes | bytearray) -> bytes:
    return len(payload).to_bytes(4, "big") + bytes(payload)


__all__ = ["ADVERTISED", "ApiKey", "EARLIEST_TIMESTAMP", "LATEST_TIMESTAMP", "PRODUCE_VERSION_MIN_SERVED", "Request",
           "RequestHeader", "SCHEMAS", "UnsupportedRequest", "advertised_api_keys", "decode_request",
           "decode_request_header", "decode_response", "encode_request", "encode_response", "is_flexible",
           "unsupported_api_versions_response"]
