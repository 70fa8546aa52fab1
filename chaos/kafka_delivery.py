"""How a Kafka client's delivery report becomes a send in the history (``--client kafka``). Pure: no I/O.

librdkafka reports every produced message exactly once, with no error (the broker acknowledged it at the
producer's acks level: ``ok``) or with an error. It retries retriable errors by itself until the message's
delivery timeout (``message.timeout.ms``), so the final error says little about the earlier attempts: an
attempt whose answer was lost (a request timeout, a dropped connection, a leader killed after appending) may
have stored the record even when the last attempt was refused. librdkafka knows this ("possibly persisted")
but confluent-kafka does not expose it. So, as the history demands (``chaos/history.py``: never record an
indeterminate send as ``fail``), every delivery error is ``unknown`` except the few that librdkafka raises
before any byte of the message went to a broker: those are definite ``fail``. The checker then treats a
Kafka send exactly as it treats the raftmq client's outcome-unknown sends (``unknown``, or ``recovered`` when
the drain finds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from raftmq.chaos.history import Outcome

# librdkafka errors (confluent_kafka.KafkaError names) that fail a message before it was ever sent: the
# topic or partition is unknown to the client, the message is too large or malformed, it was purged from
# the queue unsent (not _PURGE_INFLIGHT: that one was on the wire), or the local queue was full. (A message
# too large is MSG_SIZE_TOO_LARGE, the broker's code too, so it stays unknown; the workload's values are tiny.)
NEVER_SENT: Final = frozenset({
    "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "_INVALID_ARG", "_PURGE_QUEUE", "_QUEUE_FULL",
    "_KEY_SERIALIZATION", "_VALUE_SERIALIZATION",
})
# The history's error codes for Kafka errors carry this prefix, so that they cannot be mistaken for raftmq's
# own codes in the report (e.g. KAFKA_NOT_LEADER_FOR_PARTITION, KAFKA_MSG_TIMED_OUT).
ERROR_PREFIX: Final = "KAFKA_"
# A message the client never reported (its sender stopped first): nobody knows whether it was stored.
NO_REPORT: Final = "KAFKA_NO_DELIVERY_REPORT"


@dataclass(frozen=True)
class Delivery:
    """One send as the history records it."""

    outcome: Outcome
    partition: int | None
    offset: int | None
    error: str | None  # the history's error code (ERROR_PREFIX + the Kafka error's name), None when ok


def error_code(kafka_error_name: str) -> str:
    """``"_MSG_TIMED_OUT"`` -> ``"KAFKA_MSG_TIMED_OUT"``, ``"NOT_LEADER_FOR_PARTITION"`` ->
    ``"KAFKA_NOT_LEADER_FOR_PARTITION"``."""
    return ERROR_PREFIX + kafka_error_name.lstrip("_")


def delivery(error_name: str | None, partition: int | None, offset: int | None) -> Delivery:
    """A delivery report (error name or None, the message's partition and offset as librdkafka gives them:
    negative when unknown) as the history's outcome. An ok report keeps its offset only when there is one
    (acks=0 has none)."""
    partition = partition if partition is not None and partition >= 0 else None
    if error_name is None:
        return Delivery("ok", partition, offset if offset is not None and offset >= 0 else None, None)
    outcome: Outcome = "fail" if error_name in NEVER_SENT else "unknown"
    return Delivery(outcome, partition, None, error_code(error_name))


def refused(error_name: str) -> Delivery:
    """``produce()`` raised (BufferError: _QUEUE_FULL, or a KafkaException): nothing was queued, so nothing
    can be stored: a definite ``fail``."""
    return Delivery("fail", None, None, error_code(error_name))
