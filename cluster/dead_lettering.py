"""Dead-lettering to an exchange, the pure part: where a dead record goes, why it died, and the record that is
published there.

A record of a share group dies (RabbitMQ's "dead-lettered") when a consumer rejects it, when it was delivered
``max_deliveries`` times already, or when it is older than its topic's ``message_ttl_ms``. It then goes to the
first dead-letter exchange named by, in order:

1. the push subscription (``dead_letter_exchange`` on ``GET /v1/share-groups/{group}/push``),
2. the share group (``PUT /v1/share-groups/{group}/dead-letter``, cluster metadata),
3. the topic (topic config ``dead_letter_exchange``, set at creation),

like RabbitMQ, where a consumer-side argument wins over a policy. It is published there (an exchange publish
at acks=all) with the routing key the same source names, or, when that is empty, the record's own
``x-routing-key``; it keeps its key, value, timestamp and headers and gets ``x-death-*`` headers saying why.
Once published it is accepted (done); if the publish fails it is released (delivered again, never lost), so
dead-lettering is at least once: a retried dead-letter publish may reach the exchange twice. With no
dead-letter exchange anywhere, a dead record is archived (never delivered again), except that a pulling
consumer's record over the delivery limit is handed out flagged ``dead_letter`` so the client parks it in
``<topic>.DLT`` (client/share_consumer.py), as before dead-letter exchanges existed.

No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.batch import Record
from raftmq.cluster.consumer_groups import validate_group_id
from raftmq.cluster.errors import InvalidRequest, RaftMQError
from raftmq.cluster.exchanges import ROUTING_KEY_HEADER, validate_exchange_name, validate_routing_key

DEATH_HEADER_PREFIX = "x-death-"
ORIGINAL_TIMESTAMP_HEADER = "x-death-original-timestamp-ms"  # the record's timestamp before its first death
DEATH_PATH_HEADER = "x-death-path"  # topics of automatic deaths since the last rejection, comma-separated
Item = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]  # key, value, headers, timestamp


class DeathReason(enum.StrEnum):
    """Why a record was dead-lettered (RabbitMQ's x-death reasons, plus the delivery limit)."""

    REJECTED = "rejected"
    DELIVERY_LIMIT = "delivery_limit"
    EXPIRED = "expired"


def death_headers(reason: DeathReason, *, count: int, topic: str, partition: int, offset: int,
                  time_ms: int) -> list[tuple[str, bytes | None]]:
    """The headers a dead-lettered record carries after its own (values UTF-8 text, numbers in decimal)."""
    fields = (("reason", reason.value), ("count", str(count)), ("topic", topic), ("partition", str(partition)),
              ("offset", str(offset)), ("time-ms", str(time_ms)))
    return [(f"{DEATH_HEADER_PREFIX}{name}", value.encode()) for name, value in fields]


def parse_death(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """The ``x-death-*`` headers of a record, by field name (``reason``, ``count``, ..., ``path``,
    ``original-timestamp-ms``)."""
    return {name[len(DEATH_HEADER_PREFIX):]: (value or b"").decode("utf-8", "replace") for name, value in headers
            if name.startswith(DEATH_HEADER_PREFIX)}


@dataclass(frozen=True)
class DeadLetterTarget:
    exchange: str
    routing_key: str = ""  # "": the dead record's own routing key (its x-routing-key header)

    def routing_key_for(self, record: Record) -> str:
        if self.routing_key:
            return self.routing_key
        own = dict(record.headers).get(ROUTING_KEY_HEADER)
        return (own or b"").decode("utf-8", "replace")

    def to_wire(self) -> dict[str, str]:
        return {"dead_letter_exchange": self.exchange, "dead_letter_routing_key": self.routing_key}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> DeadLetterTarget:
        return cls(str(data["dead_letter_exchange"]), str(data.get("dead_letter_routing_key") or ""))


def parse_dead_letter_target(exchange: Any, routing_key: Any) -> DeadLetterTarget | None:
    """``dead_letter_exchange`` / ``dead_letter_routing_key`` as a request names them; None without an
    exchange (a routing key alone is refused: it would silently do nothing)."""
    if exchange is None:
        if routing_key not in (None, ""):
            raise InvalidRequest("dead_letter_routing_key needs a dead_letter_exchange",
                                 field="dead_letter_routing_key")
        return None
    return DeadLetterTarget(validate_exchange_name(exchange),
                            validate_routing_key(routing_key, "dead_letter_routing_key"))


def choose_target(*candidates: DeadLetterTarget | None) -> DeadLetterTarget | None:
    """The first dead-letter exchange named, most specific source first (the module docstring's order)."""
    return next((target for target in candidates if target is not None), None)


def is_expired(record: Record, ttl_ms: int, now_ms: int) -> bool:
    """Older than the topic's message TTL (``ttl_ms`` <= 0: records do not expire). Age is measured from the
    record's own timestamp (the producer's clock, or the broker's when the producer gave none)."""
    return ttl_ms > 0 and now_ms - record.timestamp_ms > ttl_ms


def death_of(record: Record, *, over_limit: bool, ttl_ms: int, now_ms: int, park_over_limit: bool
             ) -> DeathReason | None:
    """Why an acquired record dies instead of being delivered, or None to deliver it. ``park_over_limit``:
    a record over the delivery limit dies here (push consumers, or a dead-letter exchange is named); else it
    is delivered flagged so a pulling client parks it in its dead-letter topic."""
    if is_expired(record, ttl_ms, now_ms):
        return DeathReason.EXPIRED
    if over_limit and park_over_limit:
        return DeathReason.DELIVERY_LIMIT
    return None


def _automatic_path(record: Record) -> list[str]:
    """The topics this record died in automatically (expired, delivery limit) since its last rejection."""
    raw = dict(record.headers).get(DEATH_PATH_HEADER)
    return [t for t in (raw or b"").decode("utf-8", "replace").split(",") if t]


def is_cycle(record: Record, topic: str, reason: DeathReason) -> bool:
    """Dead-lettering ``record`` out of ``topic`` again would loop: it already died automatically in
    ``topic`` with no rejection since (dead-letter exchanges routing back to where records expire), or it
    passed ``dead_letter_path_topics_max`` automatic deaths. RabbitMQ drops such cycles; so does the caller
    (the record is archived). A rejection is a consumer's decision each time, so it never counts as one."""
    if reason is DeathReason.REJECTED:
        return False
    path = _automatic_path(record)
    return topic in path or len(path) >= limits.dead_letter_path_topics_max


def dead_letter_item(record: Record, reason: DeathReason, *, count: int, topic: str, partition: int,
                     time_ms: int) -> Item:
    """The record published to the dead-letter exchange: its key and value, its own headers (an earlier
    death's ``x-death-*`` ones replaced), then this death's; its timestamp is the time of death, so a message
    TTL of the topic it lands in counts from its arrival there, as a RabbitMQ queue's does (the original
    timestamp is kept in ``x-death-original-timestamp-ms``). ``x-death-path`` lists the topics it died in
    automatically since its last rejection (``is_cycle``)."""
    own = [(name, value) for name, value in record.headers if not name.startswith(DEATH_HEADER_PREFIX)]
    path = [] if reason is DeathReason.REJECTED else [*_automatic_path(record), topic]
    original = dict(record.headers).get(ORIGINAL_TIMESTAMP_HEADER) or str(record.timestamp_ms).encode()
    death = death_headers(reason, count=count, topic=topic, partition=partition, offset=record.offset,
                          time_ms=time_ms)
    death += [(ORIGINAL_TIMESTAMP_HEADER, original), (DEATH_PATH_HEADER, ",".join(path).encode())]
    return record.key, record.value, [*own, *death], time_ms


@dataclass
class GroupDeadLetters:
    """The share groups that name a dead-letter exchange (replicated in the cluster metadata); ``version``
    bumps on each change."""

    targets: dict[str, DeadLetterTarget] = field(default_factory=dict)
    version: int = 0

    def set(self, payload: Mapping[str, Any]) -> dict[str, Any] | RaftMQError:
        group_id = str(payload["group_id"])
        raw = payload.get("target")
        if raw is None:
            self.targets.pop(group_id, None)
        else:
            if group_id not in self.targets and len(self.targets) >= limits.group_dead_letters_max:
                return InvalidRequest(f"{limits.group_dead_letters_max} share groups name a dead-letter exchange "
                                      "already (group_dead_letters_max); clear one first")
            self.targets[group_id] = DeadLetterTarget.from_wire(raw)
        self.version += 1
        return describe_group_dead_letter(group_id, self.targets.get(group_id))

    def to_wire(self) -> list[list[Any]]:
        return [[group_id, target.to_wire()] for group_id, target in self.targets.items()]

    @classmethod
    def from_wire(cls, data: Iterable[list[Any]], version: int) -> GroupDeadLetters:
        return cls({str(group_id): DeadLetterTarget.from_wire(raw) for group_id, raw in data}, version)


def parse_group_dead_letter(group_id: str, body: Any) -> dict[str, Any]:
    """The payload of ``PUT /v1/share-groups/{group}/dead-letter`` ``{"dead_letter_exchange": name | null,
    "dead_letter_routing_key"?: key}`` (null clears it)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - {"dead_letter_exchange", "dead_letter_routing_key"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    target = parse_dead_letter_target(body.get("dead_letter_exchange"), body.get("dead_letter_routing_key"))
    return {"group_id": validate_group_id(group_id), "target": target.to_wire() if target is not None else None}


def describe_group_dead_letter(group_id: str, target: DeadLetterTarget | None) -> dict[str, Any]:
    return {"group_id": group_id, "dead_letter_exchange": target.exchange if target is not None else None,
            "dead_letter_routing_key": target.routing_key if target is not None else ""}
