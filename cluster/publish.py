"""Publishing to an exchange: the request, which topic partitions it appends to, and its verdict.

Semantics (docs/api.md "Exchanges"):

* The broker routes the record(s) (``cluster/exchanges.route``) and appends them to EVERY bound topic:
  keyed records to ``partition_for(key)`` of each topic, as a plain produce would; unkeyed records of one
  publish to one partition per topic, chosen from the ``publish_id`` (so a retry of the same publish
  lands on the same partitions) or at random without one. Each routed record carries the ``x-exchange``
  and ``x-routing-key`` headers after its own.
* The publish is acknowledged (at the requested acks level) only when every destination (topic,
  partition) acknowledged it at that level. Otherwise the answer is PUBLISH_INCOMPLETE, whose
  ``destinations`` say per destination ``ok`` (appended and acknowledged), ``failed`` (certainly not
  appended: a definite error) or ``unknown`` (may or may not be appended: a timeout, a lost leader).
* A retry names the destinations still to do (``destinations``): the broker appends only to those. So a
  retry never appends again to a destination that acknowledged. The exact guarantee for the others:
  ``failed`` ones get the records once; ``unknown`` ones get them at least once (possibly twice), the same
  guarantee as retrying a plain non-idempotent produce. (Exactly once into ``unknown`` destinations would
  need per-destination producer sequences kept by the routing broker across its own failure; not built.)
* Unroutable (no binding matched, nor any alternate exchange's): ``mandatory`` publishes are refused
  with UNROUTABLE; others are answered ``routed: false`` and dropped, as AMQP does.

No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidRequest, RaftMQError
from raftmq.cluster.exchanges import routed_headers, validate_exchange_name, validate_routing_key
from raftmq.cluster.routing import partition_for
from raftmq.cluster.wire import Acks, parse_acks, records_to_batch, require_int

Item = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]  # key, value, headers, timestamp


@dataclass(frozen=True)
class PublishRequest:
    exchange: str
    routing_key: str
    records: tuple[Item, ...]
    acks: Acks
    timeout_ms: int
    mandatory: bool = False
    publish_id: str | None = None
    destinations: frozenset[tuple[str, int]] | None = None  # a retry: only these; None: every destination

    def headers_of_first(self) -> dict[str, str]:
        """What a headers exchange compares: the first record's headers as text (a publish is routed once,
        so a multi-record publish is routed by its first record)."""
        _key, _value, headers, _ts = self.records[0]
        return {name: value.decode("utf-8", "replace") for name, value in headers if value is not None}


def parse_publish(exchange: str, body: Any, now_ms: int) -> PublishRequest:
    """A ``POST /v1/exchanges/{exchange}/publish`` body; ``now_ms`` stamps records that carry no timestamp."""
    validate_exchange_name(exchange)
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - {"routing_key", "records", "acks", "timeout_ms", "mandatory", "publish_id",
                                  "destinations"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    routing_key = validate_routing_key(body.get("routing_key"))
    # records_to_batch validates every record exactly as a produce does; decode it back into items.
    raw = records_to_batch(body.get("records"), now_ms=now_ms)
    items = tuple((r.key, r.value, list(r.headers), r.timestamp_ms) for r in batches.decode_records(raw))
    acks = parse_acks(body.get("acks", "all"))
    timeout_ms = require_int(body, "timeout_ms", default=limits.produce_timeout_ms_default, minimum=1,
                             maximum=limits.produce_timeout_ms_max)
    mandatory = body.get("mandatory", False)
    if not isinstance(mandatory, bool):
        raise InvalidRequest("mandatory must be true or false", field="mandatory")
    publish_id = body.get("publish_id")
    if publish_id is not None and (not isinstance(publish_id, str) or not 1 <= len(publish_id) <= 64):
        raise InvalidRequest("publish_id must be a string of 1-64 characters", field="publish_id")
    return PublishRequest(exchange, routing_key, items, acks, timeout_ms, mandatory, publish_id,
                          _parse_destinations(body.get("destinations")))


def _parse_destinations(raw: Any) -> frozenset[tuple[str, int]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > limits.exchange_bindings_max * limits.partitions_per_topic_max:
        raise InvalidRequest("destinations must be a list of [topic, partition]", field="destinations")
    pairs = set()
    for pair in raw:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str) \
                or type(pair[1]) is not int:
            raise InvalidRequest("destinations entries are [topic, partition]", field="destinations")
        pairs.add((pair[0], pair[1]))
    return frozenset(pairs)


@dataclass(frozen=True)
class Destination:
    topic: str
    partition: int
    batch: bytes  # the records routed here, with the routing headers


def plan_destinations(request: PublishRequest, topics: Sequence[str], partitions_of: Mapping[str, int],
                      pick: int) -> list[Destination]:
    """One batch per (topic, partition) the publish appends to. ``pick`` chooses the unkeyed records'
    partition when there is no ``publish_id`` (the caller's random number)."""
    sticky = request.publish_id.encode() if request.publish_id is not None else None
    planned = []
    for topic in topics:
        count = partitions_of[topic]
        unkeyed = partition_for(sticky, count) if sticky is not None else pick % count
        by_partition: dict[int, list[Item]] = {}
        for key, value, headers, timestamp in request.records:
            partition = partition_for(key, count) if key is not None else unkeyed
            by_partition.setdefault(partition, []).append(
                (key, value, routed_headers(request.exchange, request.routing_key, headers), timestamp))
        for partition, items in sorted(by_partition.items()):
            if request.destinations is None or (topic, partition) in request.destinations:
                planned.append(Destination(topic, partition, batches.encode_batch(items)))
    return planned


class DestinationStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"    # certainly not appended
    UNKNOWN = "unknown"  # may or may not be appended


@dataclass(frozen=True)
class DestinationOutcome:
    topic: str
    partition: int
    status: DestinationStatus
    base_offset: int | None = None
    error: RaftMQError | None = None

    @classmethod
    def of_error(cls, topic: str, partition: int, error: RaftMQError) -> DestinationOutcome:
        status = DestinationStatus.FAILED if error.definite else DestinationStatus.UNKNOWN
        return cls(topic, partition, status, None, error)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"topic": self.topic, "partition": self.partition, "status": self.status.value,
                                "base_offset": self.base_offset}
        if self.error is not None:
            wire.update(code=self.error.code, message=self.error.message)
        return wire


def unfinished(outcomes: Iterable[DestinationOutcome]) -> list[list[Any]]:
    """The destinations a retry must name: every one that did not acknowledge."""
    return [[o.topic, o.partition] for o in outcomes if o.status is not DestinationStatus.OK]
