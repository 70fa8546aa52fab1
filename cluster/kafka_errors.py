"""The one table from raftmq's coded errors (``cluster/errors.py``) to Kafka error codes.

Kafka clients act on the code alone, so the mapping keeps raftmq's meaning, above all whether the write
certainly did not happen:

* NOT_LEADER_OR_FOLLOWER (6) and LEADER_NOT_AVAILABLE (5) are answered only when nothing was appended
  (raftmq's NOT_LEADER and LEADER_NOT_AVAILABLE are ``definite``); librdkafka treats them as "not
  persisted" and every client refreshes metadata and retries.
* REQUEST_TIMED_OUT (7) for an unknown outcome (REQUEST_TIMED_OUT, OUTCOME_UNKNOWN): the clients retry and
  librdkafka marks the message "possibly persisted"; an idempotent retry is then answered with the
  original offset.
* OUT_OF_ORDER_SEQUENCE_NUMBER (45) only for a real gap: it is fatal or near-fatal in every client.
* BUFFER_FULL (the partition's in-flight budget is spent; nothing appended) has no Kafka twin; it becomes
  REQUEST_TIMED_OUT, which every client retries after a backoff. (Kafka itself throttles instead.)
* A broker that is stopping answers NOT_LEADER_OR_FOLLOWER, so clients look for the partition elsewhere.

No I/O here.
"""

from __future__ import annotations

import enum
from typing import Final

from raftmq.cluster.errors import RaftMQError


class KafkaError(enum.IntEnum):
    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    MESSAGE_TOO_LARGE = 10
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    KAFKA_STORAGE_ERROR = 56
    UNKNOWN_PRODUCER_ID = 59
    REASSIGNMENT_IN_PROGRESS = 60
    UNSUPPORTED_COMPRESSION_TYPE = 76
    GROUP_MAX_SIZE_REACHED = 81
    INVALID_RECORD = 87


ERROR_CODES: Final[dict[str, KafkaError]] = {
    "UNKNOWN_TOPIC_OR_PARTITION": KafkaError.UNKNOWN_TOPIC_OR_PARTITION,
    "NOT_LEADER": KafkaError.NOT_LEADER_OR_FOLLOWER,
    "BROKER_SHUTTING_DOWN": KafkaError.NOT_LEADER_OR_FOLLOWER,
    "LEADER_NOT_AVAILABLE": KafkaError.LEADER_NOT_AVAILABLE,
    "BROKER_NOT_READY": KafkaError.LEADER_NOT_AVAILABLE,
    "REQUEST_TIMED_OUT": KafkaError.REQUEST_TIMED_OUT,
    "OUTCOME_UNKNOWN": KafkaError.REQUEST_TIMED_OUT,
    "BUFFER_FULL": KafkaError.REQUEST_TIMED_OUT,
    "NOT_ENOUGH_REPLICAS": KafkaError.NOT_ENOUGH_REPLICAS,
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND": KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    "OFFSET_OUT_OF_RANGE": KafkaError.OFFSET_OUT_OF_RANGE,
    "INVALID_OFFSET": KafkaError.OFFSET_OUT_OF_RANGE,
    # A batch that fails its checks fails the same way on every retry: INVALID_RECORD is permanent in every
    # client, where CORRUPT_MESSAGE would be retried.
    "CORRUPT_BATCH": KafkaError.INVALID_RECORD,
    "RECORD_TOO_LARGE": KafkaError.MESSAGE_TOO_LARGE,
    "BATCH_TOO_LARGE": KafkaError.MESSAGE_TOO_LARGE,
    "UNSUPPORTED_COMPRESSION_TYPE": KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
    "INVALID_ACKS": KafkaError.INVALID_REQUIRED_ACKS,
    "TOPIC_ALREADY_EXISTS": KafkaError.TOPIC_ALREADY_EXISTS,
    "INVALID_TOPIC": KafkaError.INVALID_TOPIC_EXCEPTION,
    "INVALID_PARTITIONS": KafkaError.INVALID_PARTITIONS,
    "INVALID_REPLICATION_FACTOR": KafkaError.INVALID_REPLICATION_FACTOR,
    "NOT_ENOUGH_BROKERS": KafkaError.INVALID_REPLICATION_FACTOR,
    "INVALID_CONFIG": KafkaError.INVALID_CONFIG,
    "NOT_CONTROLLER": KafkaError.NOT_CONTROLLER,
    "REASSIGNMENT_IN_PROGRESS": KafkaError.REASSIGNMENT_IN_PROGRESS,
    "INVALID_REQUEST": KafkaError.INVALID_REQUEST,
    "MALFORMED_BODY": KafkaError.INVALID_REQUEST,
    "OUT_OF_ORDER_SEQUENCE": KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    # A retry older than the remembered window: stored before, its offset no longer known. Every idempotent
    # client treats 46 as success.
    "DUPLICATE_SEQUENCE": KafkaError.DUPLICATE_SEQUENCE_NUMBER,
    "UNKNOWN_PRODUCER_ID": KafkaError.UNKNOWN_PRODUCER_ID,
    "PRODUCER_FENCED": KafkaError.INVALID_PRODUCER_EPOCH,
    "STORAGE_ERROR": KafkaError.KAFKA_STORAGE_ERROR,
    # Consumer groups (Kafka's classic protocol, node/kafka_groups.py). NOT_COORDINATOR and
    # COORDINATOR_NOT_AVAILABLE make every client look the coordinator up again and retry; the member
    # errors make it rejoin (UNKNOWN_MEMBER_ID: with a fresh member id).
    "NOT_COORDINATOR": KafkaError.NOT_COORDINATOR,
    "COORDINATOR_NOT_AVAILABLE": KafkaError.COORDINATOR_NOT_AVAILABLE,
    "UNKNOWN_MEMBER_ID": KafkaError.UNKNOWN_MEMBER_ID,
    "REBALANCE_IN_PROGRESS": KafkaError.REBALANCE_IN_PROGRESS,
    "ILLEGAL_GENERATION": KafkaError.ILLEGAL_GENERATION,
    "INCONSISTENT_GROUP_PROTOCOL": KafkaError.INCONSISTENT_GROUP_PROTOCOL,
    "INVALID_GROUP_ID": KafkaError.INVALID_GROUP_ID,
    "GROUP_MAX_SIZE_REACHED": KafkaError.GROUP_MAX_SIZE_REACHED,
    # A commit for a partition the member does not own (any more), or from an epoch the group moved past:
    # in the classic protocol the member's generation is stale, and it rejoins.
    "STALE_MEMBER_EPOCH": KafkaError.ILLEGAL_GENERATION,
    "FENCED_MEMBER_EPOCH": KafkaError.ILLEGAL_GENERATION,
    # The group-state partition holds as many groups as it may: nothing a client can fix by retrying soon.
    "GROUP_LIMIT_REACHED": KafkaError.GROUP_MAX_SIZE_REACHED,
}


def kafka_error_for(error: RaftMQError) -> KafkaError:
    """The Kafka code for a raftmq error; anything unmapped is UNKNOWN_SERVER_ERROR (clients give up)."""
    return ERROR_CODES.get(error.code, KafkaError.UNKNOWN_SERVER_ERROR)


__all__ = ["ERROR_CODES", "KafkaError", "kafka_error_for"]
