"""Push consumers of share groups, the pure part: the subscription, the prefetch window and the frames on the
WebSocket.

A push consumer opens one WebSocket to its share group's coordinator (``GET /v1/share-groups/{group}/push``,
docs/api.md "Push consumers"). The broker locks records for it (share-group acquire, as a pulling share
consumer would) and sends each as one binary frame, never more than ``prefetch`` unacknowledged at once: a
consumer that stops acknowledging stops receiving, and the broker holds at most ``prefetch`` records for it.
The consumer answers with ack frames: ``accept`` (done), ``release`` (a nack that requeues) or ``reject``
(a nack that dead-letters: cluster/dead_lettering.py says where to). Records delivered ``max_deliveries``
times and records older than the topic's ``message_ttl_ms`` are dead-lettered the same way, reasons
``delivery_limit`` and ``expired``, instead of being sent.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.batch import Record
from raftmq.cluster.consumer_groups import validate_group_id
from raftmq.cluster.dead_lettering import DeadLetterTarget, parse_dead_letter_target
from raftmq.cluster.errors import InvalidRequest
from raftmq.cluster.metadata import validate_topic_name
from raftmq.cluster.share_groups import AckKind

Delivery = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True)
class PushSubscription:
    group_id: str
    topics: tuple[str, ...]
    prefetch: int
    lock_ms: int
    max_deliveries: int
    dead_letter: DeadLetterTarget | None = None  # the subscription's own; else its group's, else its topic's


def query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``[low, high]`` (plain decimal digits), or ``default`` when absent."""
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        raise InvalidRequest(f"{name} must be an integer in [{low}, {high}]", field=name)
    return int(text)


def query_topics(query: Mapping[str, str], allowed: set[str]) -> tuple[str, ...]:
    """A push subscription's ``topics`` (sorted, each once), after refusing parameters not in ``allowed``."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown parameters: {', '.join(unknown)}", fields=unknown)
    topics = tuple(sorted({validate_topic_name(t) for t in (query.get("topics") or "").split(",") if t}))
    if not topics or len(topics) > limits.push_topics_max:
        raise InvalidRequest(f"topics: 1-{limits.push_topics_max} comma-separated topic names", field="topics")
    return topics


def parse_subscription(group_id: str, query: Mapping[str, str]) -> PushSubscription:
    """The query string of ``GET /v1/share-groups/{group}/push``."""
    topics = query_topics(query, {"topics", "prefetch", "lock_ms", "max_deliveries", "dead_letter_exchange",
                                  "dead_letter_routing_key"})
    return PushSubscription(
        validate_group_id(group_id), topics,
        query_int(query, "prefetch", limits.push_prefetch_default, 1, limits.push_prefetch_max),
        query_int(query, "lock_ms", limits.share_lock_ms_default, limits.share_lock_ms_min, limits.share_lock_ms_max),
        query_int(query, "max_deliveries", limits.share_max_deliveries_default, 1, 1000),
        parse_dead_letter_target(query.get("dead_letter_exchange"), query.get("dead_letter_routing_key")))


@dataclass
class PrefetchWindow:
    """The records delivered to one push consumer and not acknowledged yet: at most ``prefetch``."""

    prefetch: int
    in_flight: dict[Delivery, int] = field(default_factory=dict)  # -> delivery count

    @property
    def room(self) -> int:
        return self.prefetch - len(self.in_flight)

    def deliver(self, delivery: Delivery, count: int) -> None:
        if self.room <= 0:
            raise AssertionError("a delivery past the prefetch window")  # the sender checks room first
        self.in_flight[delivery] = count

    def settle(self, delivery: Delivery) -> int | None:
        """Forget an acknowledged delivery; its delivery count, or None when it was not in flight."""
        return self.in_flight.pop(delivery, None)


def parse_ack_frame(data: bytes) -> list[tuple[Delivery, AckKind]]:
    """A consumer's frame: msgpack ``{"acks": [[topic, partition, offset, "accept"|"release"|"reject"], ...]}``."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise InvalidRequest("an ack frame is a msgpack object") from None
    acks = body.get("acks") if isinstance(body, dict) else None
    if not isinstance(acks, list) or len(acks) > limits.push_prefetch_max:
        raise InvalidRequest(f"acks must be a list of at most {limits.push_prefetch_max} entries", field="acks")
    parsed = []
    for entry in acks:
        if not isinstance(entry, list) or len(entry) != 4 or not isinstance(entry[0], str) \
                or type(entry[1]) is not int or type(entry[2]) is not int or entry[3] not in set(AckKind):
            raise InvalidRequest("acks entries are [topic, partition, offset, accept|release|reject]", field="acks")
        parsed.append(((entry[0], entry[1], entry[2]), AckKind(entry[3])))
    return parsed


def ack_frame(acks: Iterable[tuple[Delivery, AckKind | str]]) -> bytes:
    frame: bytes = msgpack.packb({"acks": [[t, p, o, str(kind)] for (t, p, o), kind in acks]}, use_bin_type=True)
    return frame


def delivery_frame(topic: str, partition: int, record: Record, delivery_count: int | None) -> bytes:
    """One record. ``delivery_count`` None (consumer-group push: a record is not counted) leaves it out."""
    body = {"topic": topic, "partition": partition, "offset": record.offset, "timestamp_ms": record.timestamp_ms,
            "key": record.key, "value": record.value, "headers": [list(h) for h in record.headers]}
    if delivery_count is not None:
        body["delivery_count"] = delivery_count
    frame: bytes = msgpack.packb(body, use_bin_type=True)
    return frame


def parse_delivery_frame(data: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(data, raw=False)
    if not isinstance(body, dict) or not {"topic", "partition", "offset", "value"} <= set(body):
        raise InvalidRequest("a delivery frame is a msgpack object with topic, partition, offset and value")
    return body
