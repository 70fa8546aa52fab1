"""One error hierarchy shared by node, client, CLI and chaos suite.

Every error that crosses the wire has a stable UPPER_SNAKE ``code`` (never reused, never renamed), an HTTP
status, and three flags that drive client behaviour:

* ``retriable``: the same request may succeed later (after a backoff, maybe on another broker).
* ``refresh_metadata``: the client's view of leaders/topics is probably stale; refresh before retrying.
* ``definite``: the operation certainly did NOT take effect. ``definite=False`` means the outcome is
  unknown (a timeout, a leader change after the entry was proposed): the record may or may not be stored.
  The producer reports such sends as ``unknown``, never as ``failed``, and the chaos checker treats them
  the same way (Jepsen's ``info``).

The node sends ``{"error": {"code", "message", "details"}}``; the client rebuilds the same class with
:func:`error_from_wire`. Details are plain fields (numbers, strings) so they survive msgpack and JSON.

No I/O here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RaftMQError(Exception):
    """Base of every raftmq error. Subclasses set the class attributes; instances carry a message and details."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False
    refresh_metadata: ClassVar[bool] = False
    definite: ClassVar[bool] = True
    hint: ClassVar[str] = ""  # what the user should do next; shown by the CLI

    def __init__(self, message: str = "", **details: Any) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        self.details: dict[str, Any] = details
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


_REGISTRY: dict[str, type[RaftMQError]] = {}


def _register(cls: type[RaftMQError]) -> type[RaftMQError]:
    if cls.code in _REGISTRY:
        raise AssertionError(f"error code {cls.code} registered twice")
    _REGISTRY[cls.code] = cls
    return cls


def error_class_for(code: str) -> type[RaftMQError]:
    """The class for a wire code; unknown codes (a newer broker) map to the base class."""
    return _REGISTRY.get(code, RaftMQError)


def error_from_wire(payload: Any, http_status: int | None = None) -> RaftMQError:
    """Rebuild an error from a decoded ``{"error": {...}}`` body (or its inner dict)."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload = payload["error"]
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
        return UnexpectedResponse(f"error response without a code (HTTP {http_status})", http_status=http_status)
    cls = error_class_for(payload["code"])
    details = payload.get("details") or {}
    if not isinstance(details, dict):
        details = {"details": details}
    err = cls(str(payload.get("message") or ""), **details)
    if cls is RaftMQError:
        # Keep the unknown code visible instead of pretending it is INTERNAL_ERROR.
        err.code = payload["code"]  # type: ignore[misc]
    return err


def all_error_classes() -> list[type[RaftMQError]]:
    return list(_REGISTRY.values())


# --- request shape ------------------------------------------------------------------------------


@_register
class MalformedBody(RaftMQError):
    """The request body could not be decoded (not msgpack/JSON, or not an object)."""

    code = "MALFORMED_BODY"
    http_status = 400
    hint = "send a msgpack or JSON object with the Content-Type that names it"


@_register
class InvalidRequest(RaftMQError):
    """A field is missing, has the wrong type, or is out of range."""

    code = "INVALID_REQUEST"
    http_status = 400
    hint = "check the field named in details against docs/api.md"


@_register
class UnsupportedMediaType(RaftMQError):
    """The Content-Type is neither application/msgpack nor application/json."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


@_register
class RouteNotFound(RaftMQError):
    """No such endpoint."""

    code = "ROUTE_NOT_FOUND"
    http_status = 404


@_register
class MethodNotAllowed(RaftMQError):
    """The endpoint exists but not for this HTTP method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405


@_register
class InvalidAcks(RaftMQError):
    """acks must be 0, 1 or "all" (-1 is accepted as an alias of "all")."""

    code = "INVALID_ACKS"
    http_status = 400
    hint = "use acks=0, acks=1 or acks=all"


@_register
class InvalidOffset(RaftMQError):
    """An offset or timestamp argument is negative or not an integer."""

    code = "INVALID_OFFSET"
    http_status = 400


@_register
class RequestTooLarge(RaftMQError):
    """The HTTP request body is larger than the broker accepts."""

    code = "REQUEST_TOO_LARGE"
    http_status = 413


@_register
class RequestReadTimeout(RaftMQError):
    """The request body did not arrive in time (http_request_body_timeout_s)."""

    code = "REQUEST_READ_TIMEOUT"
    http_status = 408
    retriable = True
    hint = "check the network between client and broker; the request was not processed"


@_register
class TooManyConnections(RaftMQError):
    """The broker serves as many busy client connections as it allows (http_connections_max)."""

    code = "TOO_MANY_CONNECTIONS"
    http_status = 503
    retriable = True
    hint = "retry shortly, use another broker, or raise http_connections_max in the node config"


# --- topics and config --------------------------------------------------------------------------


@_register
class UnknownTopicOrPartition(RaftMQError):
    """The topic or partition does not exist (or this broker has not learned of it yet)."""

    code = "UNKNOWN_TOPIC_OR_PARTITION"
    http_status = 404
    retriable = True
    refresh_metadata = True
    hint = "create the topic first (raftmq topic create NAME), or check the partition number"


@_register
class TopicAlreadyExists(RaftMQError):
    """A topic with this name exists."""

    code = "TOPIC_ALREADY_EXISTS"
    http_status = 409


@_register
class InvalidTopic(RaftMQError):
    """Topic names are 1-249 characters of [a-zA-Z0-9._-] and not '.' or '..'."""

    code = "INVALID_TOPIC"
    http_status = 400


@_register
class InvalidConfig(RaftMQError):
    """A topic or node setting has an invalid value."""

    code = "INVALID_CONFIG"
    http_status = 400
    hint = "fix the setting named in details (node keys: deploy/node.example.toml; topic keys: docs/api.md)"


@_register
class InvalidReplicationFactor(RaftMQError):
    """The replication factor is not allowed (below 1, or more than the brokers that can host a replica)."""

    code = "INVALID_REPLICATION_FACTOR"
    http_status = 400


@_register
class InvalidPartitions(RaftMQError):
    """The partition count is out of range."""

    code = "INVALID_PARTITIONS"
    http_status = 400


# --- records ------------------------------------------------------------------------------------


@_register
class RecordTooLarge(RaftMQError):
    """One record (key + value + headers) is larger than the broker accepts."""

    code = "RECORD_TOO_LARGE"
    http_status = 413
    hint = "split the value, or raise record_bytes_max on the topic"


@_register
class BatchTooLarge(RaftMQError):
    """A record batch is larger than batch_bytes_max or holds too many records."""

    code = "BATCH_TOO_LARGE"
    http_status = 413
    hint = "send smaller batches (the client library splits them for you)"


@_register
class CorruptBatch(RaftMQError):
    """A record batch failed its CRC or header checks."""

    code = "CORRUPT_BATCH"
    http_status = 400


@_register
class UnsupportedCompression(RaftMQError):
    """A record batch is compressed with a codec this broker does not serve (Kafka's
    UNSUPPORTED_COMPRESSION_TYPE)."""

    code = "UNSUPPORTED_COMPRESSION_TYPE"
    http_status = 400
    hint = "produce with compression none, gzip, snappy, lz4 or zstd"


# --- leadership and replication -----------------------------------------------------------------


@_register
class NotLeader(RaftMQError):
    """This broker is not the leader of the partition; details name the leader if known."""

    code = "NOT_LEADER"
    http_status = 421
    retriable = True
    refresh_metadata = True


@_register
class NotController(RaftMQError):
    """This broker is not the controller (the metadata leader); details name the controller if known."""

    code = "NOT_CONTROLLER"
    http_status = 421
    retriable = True
    refresh_metadata = True


@_register
class UnknownBroker(RaftMQError):
    """No broker with this id is registered with the controller."""

    code = "UNKNOWN_BROKER"
    http_status = 404
    hint = "`raftmq cluster status` lists the registered brokers"


@_register
class NotEnoughBrokers(RaftMQError):
    """Too few live brokers for what was asked (a drain or a replication factor would leave replicas nowhere)."""

    code = "NOT_ENOUGH_BROKERS"
    http_status = 409
    hint = "add a broker (`raftmq cluster add-broker`) or lower the replication factor first"


@_register
class ReassignmentInProgress(RaftMQError):
    """The partition's replica set is already changing (one membership change at a time); retry when it ends."""

    code = "REASSIGNMENT_IN_PROGRESS"
    http_status = 409
    retriable = True


@_register
class StaleBrokerIncarnation(RaftMQError):
    """A newer start of this broker id is registered: this process is an old copy and must stop."""

    code = "STALE_BROKER_INCARNATION"
    http_status = 409
    hint = "two processes run with the same broker_id: stop the older one (each broker needs its own id)"


@_register
class ClusterIdMismatch(RaftMQError):
    """The request comes from a broker of another cluster (its cluster_id differs)."""

    code = "CLUSTER_ID_MISMATCH"
    http_status = 409
    hint = "check cluster_id in the node's config: every broker of a cluster uses the same one"


@_register
class LeaderNotAvailable(RaftMQError):
    """The partition has no leader right now (an election is in progress)."""

    code = "LEADER_NOT_AVAILABLE"
    http_status = 503
    retriable = True
    refresh_metadata = True


@_register
class NotEnoughReplicas(RaftMQError):
    """Fewer in-sync replicas than min_insync_replicas: the batch was NOT appended."""

    code = "NOT_ENOUGH_REPLICAS"
    http_status = 503
    retriable = True
    hint = "wait for brokers to come back, or lower min_insync_replicas"


@_register
class NotEnoughReplicasAfterAppend(RaftMQError):
    """The batch was committed by a majority, but fewer than min_insync_replicas confirmed it in time."""

    code = "NOT_ENOUGH_REPLICAS_AFTER_APPEND"
    http_status = 503
    retriable = True
    definite = False  # it IS stored; retrying with idempotence returns the original offset


@_register
class RequestTimedOut(RaftMQError):
    """The broker gave up waiting; the batch may or may not be committed (unknown outcome)."""

    code = "REQUEST_TIMED_OUT"
    http_status = 504
    retriable = True
    refresh_metadata = True
    definite = False


@_register
class OutcomeUnknown(RaftMQError):
    """Leadership changed after the batch was proposed; it may or may not be committed."""

    code = "OUTCOME_UNKNOWN"
    http_status = 503
    retriable = True
    refresh_metadata = True
    definite = False


@_register
class BufferFull(RaftMQError):
    """Too much data is waiting for replication on this partition; nothing was appended."""

    code = "BUFFER_FULL"
    http_status = 503
    retriable = True


@_register
class BrokerShuttingDown(RaftMQError):
    """The broker is stopping."""

    code = "BROKER_SHUTTING_DOWN"
    http_status = 503
    retriable = True
    refresh_metadata = True


@_register
class BrokerNotReady(RaftMQError):
    """The broker is starting and has not caught up with the metadata group yet."""

    code = "BROKER_NOT_READY"
    http_status = 503
    retriable = True


# --- idempotent producer ------------------------------------------------------------------------


@_register
class OutOfOrderSequence(RaftMQError):
    """The batch's sequence leaves a gap after the last one stored for this producer: rejected."""

    code = "OUT_OF_ORDER_SEQUENCE"
    http_status = 409


@_register
class DuplicateSequence(RaftMQError):
    """The batch is older than the broker's duplicate window: it was stored before, its offset is gone."""

    code = "DUPLICATE_SEQUENCE"
    http_status = 409


@_register
class UnknownProducerId(RaftMQError):
    """The cluster never allocated this producer id (and epoch), or this partition has no state for it."""

    code = "UNKNOWN_PRODUCER_ID"
    http_status = 409
    hint = "start a new producer session (POST /v1/producers)"


@_register
class ProducerFenced(RaftMQError):
    """A newer instance of this producer (same name, higher epoch) has started: this one may not write."""

    code = "PRODUCER_FENCED"
    http_status = 409
    hint = "another process started a producer with the same name; stop this one"


# --- fetch --------------------------------------------------------------------------------------


@_register
class OffsetOutOfRange(RaftMQError):
    """The offset is below the log start or above the log end; details give both."""

    code = "OFFSET_OUT_OF_RANGE"
    http_status = 416
    hint = "seek to a value between log_start_offset and log_end_offset"


# --- broker-side failures -----------------------------------------------------------------------


@_register
class StorageError(RaftMQError):
    """The broker could not read or write its log (disk full, I/O error)."""

    code = "STORAGE_ERROR"
    http_status = 500
    retriable = True
    refresh_metadata = True


@_register
class UnsupportedStorageFormat(RaftMQError):
    """A data directory was written in a storage format this broker does not read (details: found, expected)."""

    code = "UNSUPPORTED_STORAGE_FORMAT"
    http_status = 500
    hint = ("move the directory away and start the broker on an empty one: it receives its replicas from the "
            "other brokers (or read the data with the raftmq version that wrote it)")


@_register
class InternalError(RaftMQError):
    """An unexpected error inside the broker; see its log."""

    code = "INTERNAL_ERROR"
    http_status = 500


# --- client-side only (never sent by a broker) --------------------------------------------------


@_register
class ConnectionFailed(RaftMQError):
    """The client could not reach a broker, or the connection dropped (outcome unknown if sent)."""

    code = "CONNECTION_FAILED"
    http_status = 503
    retriable = True
    refresh_metadata = True
    definite = False
    hint = "check that the brokers are running (raftmq cluster status)"


@_register
class ClientTimeout(RaftMQError):
    """The client's own deadline passed (outcome unknown if the request was sent)."""

    code = "CLIENT_TIMEOUT"
    http_status = 504
    retriable = True
    refresh_metadata = True
    definite = False


@_register
class ProducerClosed(RaftMQError):
    """send() after the producer was closed."""

    code = "PRODUCER_CLOSED"
    http_status = 400


@_register
class BufferExhausted(RaftMQError):
    """The producer's bounded buffer stayed full until the send deadline."""

    code = "BUFFER_EXHAUSTED"
    http_status = 503
    retriable = True


@_register
class DeadLetterFailed(RaftMQError):
    """A record that kept failing could not be written to its dead-letter topic: the consumer stops before it."""

    code = "DEAD_LETTER_FAILED"
    retriable = True
    hint = "check that <topic>.DLT can be written (raftmq topic describe), then restart the consumer"


@_register
class UnexpectedResponse(RaftMQError):
    """The broker answered with something that is not a valid raftmq response."""

    code = "UNEXPECTED_RESPONSE"
    http_status = 502
    retriable = True
    definite = False


# --- consumer groups (cluster/consumer_groups.py) -----------------------------------------------------


@_register
class InvalidGroupId(RaftMQError):
    """A group id is empty, too long, or uses characters outside [a-zA-Z0-9._-]."""

    code = "INVALID_GROUP_ID"
    http_status = 400


@_register
class NotCoordinator(RaftMQError):
    """This broker is not the group's coordinator (the leader of its group-state partition); details name it."""

    code = "NOT_COORDINATOR"
    http_status = 421
    retriable = True
    refresh_metadata = True


@_register
class CoordinatorNotAvailable(RaftMQError):
    """The group's coordinator is being elected, is still loading the group state, or its topic is being created."""

    code = "COORDINATOR_NOT_AVAILABLE"
    http_status = 503
    retriable = True
    refresh_metadata = True


@_register
class UnknownMemberId(RaftMQError):
    """The member is not in the group (it left, or its session expired): nothing was done."""

    code = "UNKNOWN_MEMBER_ID"
    http_status = 409
    hint = "the member must join the group again (member epoch 0) and drop the partitions it held"


@_register
class FencedMemberEpoch(RaftMQError):
    """The member's epoch is not one the coordinator knows: another incarnation replaced it, or it fell behind."""

    code = "FENCED_MEMBER_EPOCH"
    http_status = 409
    hint = "the member must drop its partitions and join again with member epoch 0"


@_register
class StaleMemberEpoch(RaftMQError):
    """An offset commit from an older member epoch, or for a partition the member does not own: nothing committed."""

    code = "STALE_MEMBER_EPOCH"
    http_status = 409
    hint = "heartbeat to learn the current epoch and assignment; commit only partitions still assigned"


@_register
class GroupMaxSizeReached(RaftMQError):
    """The group has as many members as it may have."""

    code = "GROUP_MAX_SIZE_REACHED"
    http_status = 409


@_register
class GroupLimitReached(RaftMQError):
    """A coordinator partition holds as many groups, or a group as many committed offsets, as it may."""

    code = "GROUP_LIMIT_REACHED"
    http_status = 409
    hint = "delete unused groups' offsets (raftmq group reset-offsets) or use fewer groups"


@_register
class GroupIdNotFound(RaftMQError):
    """No group with this id has members or committed offsets."""

    code = "GROUP_ID_NOT_FOUND"
    http_status = 404
    hint = "`raftmq group list` shows the groups"


@_register
class NonEmptyGroup(RaftMQError):
    """The operation needs a group without members (e.g. resetting its offsets)."""

    code = "NON_EMPTY_GROUP"
    http_status = 409
    hint = "stop the group's consumers first"


@_register
class RebalanceInProgress(RaftMQError):
    """The group is rebalancing (Kafka's classic protocol): the member must rejoin with JoinGroup."""

    code = "REBALANCE_IN_PROGRESS"
    http_status = 409
    retriable = True
    hint = "rejoin the group; its members are being reassigned"


@_register
class IllegalGeneration(RaftMQError):
    """A classic-protocol request carried a generation that is not the group's current one."""

    code = "ILLEGAL_GENERATION"
    http_status = 409
    hint = "rejoin the group to learn the current generation"


@_register
class InconsistentGroupProtocol(RaftMQError):
    """A JoinGroup's protocol type or assignors have nothing in common with the group's other members."""

    code = "INCONSISTENT_GROUP_PROTOCOL"
    http_status = 409
    hint = "give every consumer of the group a common partition assignor (roundrobin is supported by all)"


@_register
class InvariantViolation(RaftMQError):
    """An internal invariant failed: a bug. The process should stop rather than continue."""

    code = "INVARIANT_VIOLATION"
    http_status = 500


# --- exchanges and routing ------------------------------------------------------------------------------


@_register
class InvalidExchange(RaftMQError):
    """An exchange name, type or alternate exchange is not valid."""

    code = "INVALID_EXCHANGE"
    http_status = 400
    hint = "exchange names use [a-zA-Z0-9._-]; types are direct, fanout, topic and headers"


@_register
class UnknownExchange(RaftMQError):
    """No exchange with this name exists."""

    code = "UNKNOWN_EXCHANGE"
    http_status = 404
    hint = "`raftmq exchange list` shows the exchanges; `raftmq exchange create` makes one"


@_register
class ExchangeAlreadyExists(RaftMQError):
    """An exchange with this name exists with another type or alternate exchange."""

    code = "EXCHANGE_ALREADY_EXISTS"
    http_status = 409
    hint = "delete it first, or declare it as it is (the same type and alternate is a success)"


@_register
class InvalidBinding(RaftMQError):
    """A binding does not suit its exchange (a key on a headers exchange, a malformed pattern, too many)."""

    code = "INVALID_BINDING"
    http_status = 400
    hint = "direct and topic exchanges bind with a key, headers exchanges with headers, fanout with neither"


@_register
class BindingNotFound(RaftMQError):
    """The exchange has no binding with this topic, key and headers."""

    code = "BINDING_NOT_FOUND"
    http_status = 404
    hint = "`raftmq exchange describe NAME` lists the bindings"


@_register
class Unroutable(RaftMQError):
    """A mandatory publish matched no binding (nor any alternate exchange's): nothing was appended."""

    code = "UNROUTABLE"
    http_status = 422
    hint = "bind a topic that matches the routing key, or give the exchange an alternate exchange"


@_register
class PublishIncomplete(RaftMQError):
    """A publish to an exchange was not acknowledged by every destination; details.destinations says, per
    topic partition, which appended it (ok), which certainly did not (failed) and which may have (unknown)."""

    code = "PUBLISH_INCOMPLETE"
    http_status = 503
    retriable = True
    definite = False
    hint = "retry with the same publish: the client sends it only to the destinations that did not acknowledge"


def invariant(condition: bool, message: str) -> None:
    """Assert that stays on under ``python -O``; raises InvariantViolation with the reason."""
    if not condition:
        raise InvariantViolation(message)
