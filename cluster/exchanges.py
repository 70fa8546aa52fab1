"""Exchanges and bindings (RabbitMQ's routing model on raftmq topics), and the pure routing decision.

An exchange is cluster metadata, replicated by the metadata group like a topic: a name, a type, its
bindings (exchange -> topic, each with a binding key or a header set) and an optional alternate exchange
that takes what no binding matches. Publishing to an exchange appends the record to every topic it routes
to (node/service.py); this module only decides *which* topics.

Types, as AMQP 0-9-1 defines them:

* ``direct``: a binding matches when its key equals the routing key.
* ``fanout``: every binding matches; keys are ignored.
* ``topic``: the binding key is a pattern of ``.``-separated words; ``*`` matches exactly one word and
  ``#`` zero or more words (``order.#`` matches ``order``, ``order.created`` and ``order.eu.created``).
  A routing key is split on every ``.``, so ``""`` is one empty word and ``a..b`` has three words.
* ``headers``: the routing key is ignored; a binding names header values and ``x-match``: ``all`` (every
  named header present with that value) or ``any`` (at least one). Header names starting with ``x-``
  are not compared (AMQP reserves them), and values compare as UTF-8 text.

``ExchangeTable.apply`` is the metadata state machine's part for exchanges: pure, result or error
instance (never raised), so every replica reaches the same state whatever the outcome.

No I/O here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC
from raftmq.cluster.errors import (
    BindingNotFound,
    ExchangeAlreadyExists,
    InvalidBinding,
    InvalidExchange,
    InvalidRequest,
    RaftMQError,
    UnknownExchange,
    UnknownTopicOrPartition,
)

_NAME = re.compile(r"[a-zA-Z0-9._-]+")  # the topic name alphabet; fullmatch ("$" would take a newline)
EXCHANGE_HEADER = "x-exchange"  # the headers a routed record carries (the AMQP properties' place)
ROUTING_KEY_HEADER = "x-routing-key"


class ExchangeType(enum.StrEnum):
    DIRECT = "direct"
    FANOUT = "fanout"
    TOPIC = "topic"
    HEADERS = "headers"


class HeadersMatch(enum.StrEnum):
    ALL = "all"
    ANY = "any"


@dataclass(frozen=True)
class Binding:
    """exchange -> topic. ``key`` for direct/topic exchanges; ``headers``/``match`` for headers exchanges."""

    topic: str
    key: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # sorted by name: the binding's identity does not depend on order
    match: HeadersMatch = HeadersMatch.ALL

    def to_wire(self) -> dict[str, Any]:
        return {"topic": self.topic, "key": self.key, "headers": {k: v for k, v in self.headers},
                "match": self.match.value}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Binding:
        headers = data.get("headers") or {}
        return cls(topic=str(data["topic"]), key=str(data.get("key") or ""),
                   headers=tuple(sorted((str(k), str(v)) for k, v in headers.items())),
                   match=HeadersMatch(data.get("match") or "all"))


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType
    alternate: str | None
    created_ms: int
    bindings: tuple[Binding, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.value, "alternate_exchange": self.alternate,
                "created_ms": self.created_ms, "bindings": [b.to_wire() for b in self.bindings]}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Exchange:
        return cls(name=str(data["name"]), type=ExchangeType(data["type"]),
                   alternate=data.get("alternate_exchange"), created_ms=int(data.get("created_ms", 0)),
                   bindings=tuple(Binding.from_wire(b) for b in data.get("bindings") or ()))


# --- matching -----------------------------------------------------------------------------------


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching of ``routing_key`` against binding ``pattern`` (see the module docstring).

    Dynamic programming over (pattern words x key words), O(p * k) time and O(k) memory, no recursion:
    ``reachable[j]`` says the pattern words seen so far can match exactly the first ``j`` key words.
    """
    words = routing_key.split(".")
    reachable = [True] + [False] * len(words)
    for part in pattern.split("."):
        if part == "#":  # zero or more words: j is reachable if any i <= j was
            seen = False
            for j in range(len(reachable)):
                seen = seen or reachable[j]
                reachable[j] = seen
        else:
            for j in range(len(words), 0, -1):
                reachable[j] = reachable[j - 1] and (part == "*" or part == words[j - 1])
            reachable[0] = False
    return reachable[-1]


def headers_match(binding: Binding, headers: Mapping[str, str]) -> bool:
    """Does a record with ``headers`` match a headers-exchange ``binding``? Headers named ``x-...`` are not
    compared. A binding with no comparable header matches everything under ``all`` and nothing under ``any``
    (RabbitMQ's behaviour)."""
    wanted = [(k, v) for k, v in binding.headers if not k.startswith("x-")]
    hits = (headers.get(k) == v for k, v in wanted)
    return all(hits) if binding.match is HeadersMatch.ALL else any(hits)


def binding_matches(kind: ExchangeType, binding: Binding, routing_key: str, headers: Mapping[str, str]) -> bool:
    if kind is ExchangeType.FANOUT:
        return True
    if kind is ExchangeType.DIRECT:
        return binding.key == routing_key
    if kind is ExchangeType.TOPIC:
        return topic_matches(binding.key, routing_key)
    return headers_match(binding, headers)


@dataclass(frozen=True)
class Route:
    """Where a publish goes: ``topics`` (sorted, each once) and the exchanges consulted in order (the
    published-to exchange first, then alternates). Empty ``topics``: unroutable."""

    topics: tuple[str, ...]
    exchanges: tuple[str, ...]

    @property
    def alternate_used(self) -> bool:
        return len(self.exchanges) > 1 and bool(self.topics)


def route(exchanges: Mapping[str, Exchange], name: str, routing_key: str,
          headers: Mapping[str, str] | None = None) -> Route:
    """The topics a record published to exchange ``name`` goes to. Raises UnknownExchange when ``name`` does
    not exist. Follows alternate exchanges while nothing matched (at most ``exchange_alternate_hops_max``
    hops; a cycle or a missing alternate ends the walk: the record is unroutable)."""
    exchange = exchanges.get(name)
    if exchange is None:
        raise UnknownExchange(f"exchange {name!r} does not exist", exchange=name)
    headers = headers or {}
    consulted: list[str] = []
    while exchange is not None and exchange.name not in consulted \
            and len(consulted) <= limits.exchange_alternate_hops_max:
        consulted.append(exchange.name)
        topics = {b.topic for b in exchange.bindings if binding_matches(exchange.type, b, routing_key, headers)}
        if topics:
            return Route(tuple(sorted(topics)), tuple(consulted))
        exchange = exchanges.get(exchange.alternate) if exchange.alternate is not None else None
    return Route((), tuple(consulted))


# --- request parsing (before anything is proposed) ------------------------------------------------


def validate_exchange_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidExchange("exchange name must be a non-empty string")
    if len(name) > limits.exchange_name_chars_max:
        raise InvalidExchange(f"exchange name longer than {limits.exchange_name_chars_max} characters",
                              exchange=name[:64])
    if name in (".", "..") or not _NAME.fullmatch(name):
        raise InvalidExchange("exchange names use only [a-zA-Z0-9._-] and are not '.' or '..'", exchange=name)
    return name


def _check_fields(body: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    return body


def parse_create_exchange(body: Any) -> dict[str, Any]:
    """The CREATE_EXCHANGE payload for a create request ``{name, type, alternate_exchange?}``."""
    body = _check_fields(body, {"name", "type", "alternate_exchange"})
    name = validate_exchange_name(body.get("name"))
    kind = body.get("type")
    if kind not in set(ExchangeType):
        raise InvalidExchange(f"type must be one of {', '.join(t.value for t in ExchangeType)}", field="type")
    alternate = body.get("alternate_exchange")
    if alternate is not None:
        validate_exchange_name(alternate)
        if alternate == name:
            raise InvalidExchange("an exchange cannot be its own alternate exchange", exchange=name)
    return {"name": name, "type": str(kind), "alternate_exchange": alternate}


def validate_routing_key(key: Any, field_name: str = "routing_key") -> str:
    if key is None:
        return ""
    if not isinstance(key, str) or len(key.encode("utf-8")) > limits.routing_key_bytes_max:
        raise InvalidRequest(f"{field_name} must be a string of at most {limits.routing_key_bytes_max} bytes "
                             "(AMQP's limit)", field=field_name)
    return key


def parse_binding(body: Any) -> Binding:
    """A bind/unbind request ``{topic, key?, headers?, match?}``. Whether it suits the exchange's type is
    checked against the exchange when the command applies (``ExchangeTable``)."""
    body = _check_fields(body, {"topic", "key", "headers", "match"})
    topic = body.get("topic")
    if not isinstance(topic, str) or not topic:
        raise InvalidBinding("topic (the bound topic's name) is required", field="topic")
    if topic == GROUP_STATE_TOPIC:
        raise InvalidBinding(f"{GROUP_STATE_TOPIC} is internal: only consumer groups write it", field="topic")
    key = validate_routing_key(body.get("key"), "key")
    raw = body.get("headers") or {}
    if not isinstance(raw, Mapping) or len(raw) > limits.binding_headers_max \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InvalidBinding(f"headers must be an object of at most {limits.binding_headers_max} string values",
                             field="headers")
    match = body.get("match", "all")
    if match not in set(HeadersMatch):
        raise InvalidBinding("match must be 'all' or 'any' (AMQP's x-match)", field="match")
    return Binding(topic, key, tuple(sorted(raw.items())), HeadersMatch(match))


def _check_binding_suits(exchange: Exchange, binding: Binding) -> RaftMQError | None:
    if exchange.type is ExchangeType.HEADERS:
        if binding.key:
            return InvalidBinding(f"{exchange.name!r} is a headers exchange: bind with headers, not a key",
                                  exchange=exchange.name)
    elif binding.headers:
        return InvalidBinding(f"{exchange.name!r} is a {exchange.type.value} exchange: headers are only for "
                              "headers exchanges", exchange=exchange.name)
    if exchange.type is ExchangeType.FANOUT and binding.key:
        return InvalidBinding(f"{exchange.name!r} is a fanout exchange: it ignores keys; bind without one",
                              exchange=exchange.name)
    if exchange.type is ExchangeType.TOPIC and any(("#" in w or "*" in w) and len(w) > 1
                                                   for w in binding.key.split(".")):
        return InvalidBinding("in a topic pattern '*' and '#' stand alone between dots (e.g. order.* or #.eu)",
                              exchange=exchange.name, key=binding.key)
    return None


# --- the replicated table -------------------------------------------------------------------------


@dataclass
class ExchangeTable:
    """Every exchange, by name; ``version`` bumps on each change (brokers publish a new view then)."""

    exchanges: dict[str, Exchange] = field(default_factory=dict)
    version: int = 0

    def create(self, time_ms: int, payload: Mapping[str, Any]) -> Exchange | RaftMQError:
        name = str(payload["name"])
        wanted = Exchange(name, ExchangeType(payload["type"]), payload.get("alternate_exchange"), time_ms)
        known = self.exchanges.get(name)
        if known is not None:
            if (known.type, known.alternate) == (wanted.type, wanted.alternate):
                return known  # AMQP's exchange.declare: declaring the same exchange again is a success
            return ExchangeAlreadyExists(f"exchange {name!r} exists as a {known.type.value} exchange with "
                                         f"alternate {known.alternate!r}", exchange=name)
        if len(self.exchanges) >= limits.exchanges_max:
            return InvalidRequest(f"the cluster already has {limits.exchanges_max} exchanges (exchanges_max)")
        self.exchanges[name] = wanted
        self.version += 1
        return wanted

    def delete(self, payload: Mapping[str, Any]) -> Exchange | RaftMQError:
        name = payload.get("name")
        exchange = self.exchanges.pop(name, None) if isinstance(name, str) else None
        if exchange is None:
            return UnknownExchange(f"exchange {name!r} does not exist", exchange=name)
        self.version += 1
        return exchange

    def bind(self, payload: Mapping[str, Any], topic_exists: Callable[[str], bool]) -> Exchange | RaftMQError:
        exchange = self.exchanges.get(str(payload["exchange"]))
        if exchange is None:
            return UnknownExchange(f"exchange {payload['exchange']!r} does not exist", exchange=payload["exchange"])
        binding = Binding.from_wire(payload["binding"])
        if not topic_exists(binding.topic):
            return UnknownTopicOrPartition(f"topic {binding.topic!r} does not exist: create it, then bind",
                                           topic=binding.topic)
        problem = _check_binding_suits(exchange, binding)
        if problem is not None:
            return problem
        if binding in exchange.bindings:
            return exchange  # AMQP's queue.bind is idempotent too
        if len(exchange.bindings) >= limits.exchange_bindings_max:
            return InvalidBinding(f"exchange {exchange.name!r} has {limits.exchange_bindings_max} bindings "
                                  "(exchange_bindings_max)", exchange=exchange.name)
        return self._put(replace(exchange, bindings=exchange.bindings + (binding,)))

    def unbind(self, payload: Mapping[str, Any]) -> Exchange | RaftMQError:
        exchange = self.exchanges.get(str(payload["exchange"]))
        if exchange is None:
            return UnknownExchange(f"exchange {payload['exchange']!r} does not exist", exchange=payload["exchange"])
        binding = Binding.from_wire(payload["binding"])
        if binding not in exchange.bindings:
            return BindingNotFound(f"exchange {exchange.name!r} has no such binding to {binding.topic!r}",
                                   exchange=exchange.name, topic=binding.topic)
        return self._put(replace(exchange, bindings=tuple(b for b in exchange.bindings if b != binding)))

    def forget_topic(self, topic: str) -> None:
        """A deleted topic takes its bindings with it (as a deleted queue does in AMQP)."""
        for exchange in list(self.exchanges.values()):
            kept = tuple(b for b in exchange.bindings if b.topic != topic)
            if len(kept) != len(exchange.bindings):
                self._put(replace(exchange, bindings=kept))

    def _put(self, exchange: Exchange) -> Exchange:
        self.exchanges[exchange.name] = exchange
        self.version += 1
        return exchange

    def to_wire(self) -> list[dict[str, Any]]:
        return [e.to_wire() for e in self.exchanges.values()]

    @classmethod
    def from_wire(cls, data: Iterable[Mapping[str, Any]], version: int) -> ExchangeTable:
        return cls({e.name: e for e in (Exchange.from_wire(d) for d in data)}, version)


def routed_headers(exchange: str, routing_key: str, headers: Sequence[tuple[str, bytes | None]]
                   ) -> list[tuple[str, bytes | None]]:
    """A routed record's headers: its own, then the exchange and routing key it was published with."""
    return [*headers, (EXCHANGE_HEADER, exchange.encode()), (ROUTING_KEY_HEADER, routing_key.encode())]
