"""Publishing to an exchange: the request, which topic partitions it appends to, and its verdict.

Semantics (docs/api.md "Exchanges"):

* The broker routes each record by itself (``route_publish``): by the publish's routing key, and, at a
  headers exchange (the published-to one or an alternate), by the record's own headers. A publish of
  several records whose headers route them differently is split: each destination gets the records routed
  to it, in publish order, as one batch (AMQP routes every message on its own; a batch publish is several
  messages sent together, so refusing a mixed batch would make batching change the meaning).
* It appends them to EVERY bound topic:
  keyed records to ``partition_for(key)`` of each topic, as a plain produce would; unkeyed records of one
  publish to one partition per topic, chosen from the ``publish_id`` (so a retry of the same publish
  lands on the same partitions) or at random without one. Each routed record carries the ``x-exchange``
  and ``x-routing-key`` headers after its own.
* The publish is acknowledged (at the requested acks level) only when every destination (topic,
  partition) acknowledged it at that level. Otherwise the answer is PUBLISH_INCOMPLETE, whose
  ``destinations`` say per destination ``ok`` (appended and acknowledged), ``failed`` (certainly not
  appended: a definite error) or ``unknown`` (may or may not be appended: a timeout, a lost leader).
* A retry names the destinations still to do (``destinations``): the broker appends only to those. So a
  retry never appends again to a destination that acknowledged. A publish with a ``publish_id`` at
  acks=all is idempotent: each destination's batch carries a producer id derived from the publish
  (``publish_producer_id``: a hash of the publish id, exchange, routing key and the records' keys, values
  and headers, in the range cluster/producer_state.py reserves for publishes) at sequence 0, so the
  partition's idempotent-producer table answers a retry that reaches a destination which already stored
  it (an ``unknown`` outcome that was in fact appended) with the original offset instead of storing it
  twice. The window: each partition remembers its last ``publish_producers_per_partition_max`` idempotent
  publishes. Without a ``publish_id`` (or at acks 0/1) a retry into an ``unknown`` destination may
  duplicate, as retrying a plain non-idempotent produce may.
* Unroutable records (no binding matched, nor any alternate exchange's): a ``mandatory`` publish with one
  is refused whole with UNROUTABLE (nothing appended); otherwise they are dropped, as AMQP does, and
  listed (their indices) in the answer's ``unroutable``; ``routed: false`` when no record was routed.

No I/O here.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidRequest, RaftMQError
from raftmq.cluster.exchanges import (
    Exchange,
    Route,
    route,
    routed_headers,
    validate_exchange_name,
    validate_routing_key,
)
from raftmq.cluster.producer_state import PUBLISH_PRODUCER_ID_MIN
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

    @property
    def idempotent(self) -> bool:
        """Appends are deduplicated per destination (see the module docstring): a publish id names the
        publish, and acks=all lets the partition's verdict (append or duplicate) reach the answer."""
        return self.publish_id is not None and self.acks is Acks.ALL


def publish_producer_id(request: PublishRequest) -> int:
    """The producer id of an idempotent publish's appends: the same for every retry of the same publish.

    Record timestamps are left out: a record sent without one is stamped by the broker that receives the
    request, so a retry's copy differs there. The records' content is in, so a publish id reused for a
    different message is a different publish, not a duplicate. 62 bits of BLAKE2b: two different publishes
    reaching one partition inside its window share an id with probability about window**2 / 2**63."""
    identity = [request.publish_id, request.exchange, request.routing_key,
                [[key, value, [list(h) for h in headers]] for key, value, headers, _ts in request.records]]
    digest = hashlib.blake2b(msgpack.packb(identity, use_bin_type=True), digest_size=8).digest()
    return PUBLISH_PRODUCER_ID_MIN | (int.from_bytes(digest, "big") & (PUBLISH_PRODUCER_ID_MIN - 1))


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


def header_text(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """What a headers exchange compares: a record's headers as text (UTF-8; a header without a value is
    not compared)."""
    return {name: value.decode("utf-8", "replace") for name, value in headers if value is not None}


@dataclass(frozen=True)
class PublishRoute:
    """Where each record of a publish goes: ``topics_of[i]`` for record ``i`` (empty: unroutable), and every
    exchange consulted (the published-to one first, then alternates, each once)."""

    topics_of: tuple[tuple[str, ...], ...]
    exchanges: tuple[str, ...]

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(sorted({t for topics in self.topics_of for t in topics}))

    @property
    def unroutable(self) -> list[int]:
        return [index for index, topics in enumerate(self.topics_of) if not topics]

    def describe(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "exchanges": list(self.exchanges)}


def route_publish(exchanges: Mapping[str, Exchange], request: PublishRequest) -> PublishRoute:
    """Route every record of ``request`` (raises UnknownExchange). Records with the same headers route
    alike, so each distinct header set is routed once."""
    routes: dict[tuple[tuple[str, str], ...], Route] = {}
    topics_of = []
    consulted: dict[str, None] = {}
    for _key, _value, headers, _ts in request.records:
        text = header_text(headers)
        identity = tuple(sorted(text.items()))
        routed = routes.get(identity)
        if routed is None:
            routed = routes[identity] = route(exchanges, request.exchange, request.routing_key, text)
            consulted.update(dict.fromkeys(routed.exchanges))
        topics_of.append(routed.topics)
    return PublishRoute(tuple(topics_of), tuple(consulted))


def plan_destinations(request: PublishRequest, topics_of: Sequence[Sequence[str]], partitions_of: Mapping[str, int],
                      pick: int) -> list[Destination]:
    """One batch per (topic, partition) the publish appends to: the records routed there (``topics_of[i]``:
    record ``i``'s topics; topics missing from ``partitions_of``, deleted since, are skipped), in publish
    order. ``pick`` chooses the unkeyed records' partition when there is no ``publish_id`` (the caller's
    random number)."""
    sticky = request.publish_id.encode() if request.publish_id is not None else None
    # Every destination's batch is the first (sequence 0) and only one of a producer derived from the publish.
    producer_id, base_sequence = (publish_producer_id(request), 0) if request.idempotent \
        else (batches.NO_PRODUCER_ID, batches.NO_SEQUENCE)
    by_destination: dict[tuple[str, int], list[Item]] = {}
    for (key, value, headers, timestamp), topics in zip(request.records, topics_of, strict=True):
        item = (key, value, routed_headers(request.exchange, request.routing_key, headers), timestamp)
        for topic in topics:
            count = partitions_of.get(topic)
            if count is None:
                continue
            unkeyed = partition_for(sticky, count) if sticky is not None else pick % count
            partition = partition_for(key, count) if key is not None else unkeyed
            by_destination.setdefault((topic, partition), []).append(item)
    return [Destination(topic, partition, batches.encode_batch(items, producer_id=producer_id,
                                                               base_sequence=base_sequence))
            for (topic, partition), items in sorted(by_destination.items())
            if request.destinations is None or (topic, partition) in request.destinations]


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
