"""Exchanges as pure state (cluster/exchanges.py, cluster/publish.py): AMQP topic matching against a
reference matcher, each exchange type's routing, alternate exchanges, the replicated table (create, bind,
unbind, delete, snapshot round trip through MetadataState) and how a publish is planned per destination.

Method: plain cases from the AMQP 0-9-1 spec and RabbitMQ's tutorials, plus hypothesis property tests: the
dynamic-programming matcher agrees with a recursive reference written straight from the definition.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as batches
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import (
    BindingNotFound,
    ExchangeAlreadyExists,
    InvalidBinding,
    InvalidExchange,
    InvalidRequest,
    LeaderNotAvailable,
    RequestTimedOut,
    UnknownExchange,
    UnknownTopicOrPartition,
)
from raftmq.cluster.exchanges import (
    Binding,
    HeadersMatch,
    headers_match,
    parse_binding,
    parse_create_exchange,
    route,
    topic_matches,
)
from raftmq.cluster.metadata import MetadataState
from raftmq.cluster.producer_state import is_publish_producer_id
from raftmq.cluster.publish import (
    DestinationOutcome,
    DestinationStatus,
    parse_publish,
    plan_destinations,
    publish_producer_id,
    unfinished,
)
from raftmq.cluster.routing import partition_for


def reference_match(pattern: str, key: str) -> bool:
    """The definition, recursively: '#' takes zero or more words, '*' exactly one, a word itself."""
    pwords, kwords = tuple(pattern.split(".")), tuple(key.split("."))

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(pwords):
            return j == len(kwords)
        if pwords[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(kwords) + 1))
        return j < len(kwords) and pwords[i] in ("*", kwords[j]) and match(i + 1, j + 1)

    return match(0, 0)


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("order.*", "order.created", True),
    ("order.*", "order", False),
    ("order.*", "order.eu.created", False),
    ("order.#", "order", True),
    ("order.#", "order.created", True),
    ("order.#", "order.eu.created", True),
    ("order.#", "orders.created", False),
    ("#", "", True),
    ("#", "anything.at.all", True),
    ("*", "", True),  # "" is one (empty) word
    ("*.*", "a", False),
    ("#.created", "created", True),
    ("#.created", "order.eu.created", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("*.orange.*", "quick.orange.rabbit", True),  # RabbitMQ's topics tutorial
    ("*.*.rabbit", "lazy.orange.elephant", False),
    ("lazy.#", "lazy.orange.male.rabbit", True),
])
def test_topic_patterns(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
    assert reference_match(pattern, key) is expected


words = st.sampled_from(["a", "b", "order", ""])
pattern_words = st.sampled_from(["a", "b", "order", "*", "#", ""])


@settings(max_examples=400, deadline=None)
@given(st.lists(pattern_words, min_size=1, max_size=6), st.lists(words, min_size=1, max_size=6))
def test_topic_matcher_agrees_with_the_reference(pattern: list[str], key: list[str]) -> None:
    assert topic_matches(".".join(pattern), ".".join(key)) == reference_match(".".join(pattern), ".".join(key))


@settings(max_examples=200, deadline=None)
@given(st.lists(words, min_size=1, max_size=6))
def test_a_key_matches_itself_and_hash(key: list[str]) -> None:
    text = ".".join(key)
    assert topic_matches(text, text)
    assert topic_matches("#", text)
    assert topic_matches(".".join("*" for _ in key), text)


def test_headers_all_and_any() -> None:
    binding = Binding("t", headers=(("format", "pdf"), ("type", "report"), ("x-ignored", "1")))
    assert headers_match(binding, {"format": "pdf", "type": "report"})
    assert not headers_match(binding, {"format": "pdf"})
    any_binding = Binding("t", headers=binding.headers, match=HeadersMatch.ANY)
    assert headers_match(any_binding, {"format": "pdf"})
    assert not headers_match(any_binding, {"format": "zip", "x-ignored": "1"})


def _table(*commands: tuple[MetadataOp, dict[str, Any]]) -> MetadataState:
    state = MetadataState()
    for index, (op, payload) in enumerate(commands, start=1):
        result = state.apply(index, op, 1000 + index, payload)
        assert not isinstance(result, Exception), result
    return state


def _topic(name: str, partitions: int = 1) -> tuple[MetadataOp, dict[str, Any]]:
    return MetadataOp.CREATE_TOPIC, {"name": name, "partitions": partitions, "replication_factor": 1,
                                     "config": {"min_insync_replicas": 1}, "replicas": [[1]] * partitions}


def _exchange(name: str, kind: str, alternate: str | None = None) -> tuple[MetadataOp, dict[str, Any]]:
    return MetadataOp.CREATE_EXCHANGE, parse_create_exchange({"name": name, "type": kind,
                                                              "alternate_exchange": alternate})


def _bind(exchange: str, **binding: Any) -> tuple[MetadataOp, dict[str, Any]]:
    return MetadataOp.BIND_EXCHANGE, {"exchange": exchange, "binding": parse_binding(binding).to_wire()}


def test_each_exchange_type_routes() -> None:
    state = _table(_topic("orders"), _topic("audit"), _topic("eu"), _topic("pdf"),
                   _exchange("direct", "direct"), _bind("direct", topic="orders", key="order.created"),
                   _exchange("fan", "fanout"), _bind("fan", topic="orders"), _bind("fan", topic="audit"),
                   _exchange("top", "topic"), _bind("top", topic="orders", key="order.*"),
                   _bind("top", topic="audit", key="order.#"), _bind("top", topic="eu", key="*.eu.#"),
                   _exchange("hdr", "headers"), _bind("hdr", topic="pdf", headers={"format": "pdf"}))
    table = state.exchanges.exchanges
    assert route(table, "direct", "order.created").topics == ("orders",)
    assert route(table, "direct", "order.deleted").topics == ()
    assert route(table, "fan", "whatever").topics == ("audit", "orders")
    assert route(table, "top", "order.created").topics == ("audit", "orders")
    assert route(table, "top", "order").topics == ("audit",)
    assert route(table, "top", "order.eu.created").topics == ("audit", "eu")
    assert route(table, "hdr", "", {"format": "pdf"}).topics == ("pdf",)
    assert route(table, "hdr", "", {"format": "doc"}).topics == ()
    with pytest.raises(UnknownExchange):
        route(table, "nope", "k")


def test_alternate_exchanges_take_the_unroutable_and_cycles_end() -> None:
    state = _table(_topic("orders"), _topic("unrouted"),
                   _exchange("alt", "fanout"), _bind("alt", topic="unrouted"),
                   _exchange("main", "direct", alternate="alt"), _bind("main", topic="orders", key="k"),
                   _exchange("a", "direct", alternate="b"), _exchange("b", "direct", alternate="a"))
    table = state.exchanges.exchanges
    assert route(table, "main", "k").topics == ("orders",)
    routed = route(table, "main", "other")
    assert (routed.topics, routed.exchanges, routed.alternate_used) == (("unrouted",), ("main", "alt"), True)
    looped = route(table, "a", "x")
    assert (looped.topics, looped.exchanges) == ((), ("a", "b"))


def test_table_changes_are_checked_when_they_apply() -> None:
    state = _table(_topic("orders"), _exchange("e", "direct"), _exchange("h", "headers"), _exchange("f", "fanout"),
                   _exchange("t", "topic"))

    def apply(index: int, op: MetadataOp, payload: dict[str, Any], time_ms: int = 0) -> Any:
        return state.apply(index, op, time_ms, payload)

    assert apply(10, *_exchange("e", "direct")).name == "e"  # declaring it again as it is: a success
    assert isinstance(apply(11, *_exchange("e", "fanout")), ExchangeAlreadyExists)
    assert isinstance(apply(12, *_bind("e", topic="missing", key="k")), UnknownTopicOrPartition)
    assert isinstance(apply(13, *_bind("nope", topic="orders", key="k")), UnknownExchange)
    assert isinstance(apply(14, *_bind("h", topic="orders", key="k")), InvalidBinding)
    assert isinstance(apply(15, *_bind("e", topic="orders", headers={"a": "b"})), InvalidBinding)
    assert isinstance(apply(16, *_bind("f", topic="orders", key="k")), InvalidBinding)
    assert isinstance(apply(17, *_bind("t", topic="orders", key="order.#x")), InvalidBinding)
    version = state.exchanges.version
    assert len(apply(18, *_bind("e", topic="orders", key="k")).bindings) == 1
    assert len(apply(19, *_bind("e", topic="orders", key="k")).bindings) == 1  # binding twice: idempotent
    assert state.exchanges.version == version + 1
    unbind = {"exchange": "e", "binding": Binding("orders", "other").to_wire()}
    assert isinstance(apply(20, MetadataOp.UNBIND_EXCHANGE, unbind), BindingNotFound)
    unbind["binding"] = Binding("orders", "k").to_wire()
    assert apply(21, MetadataOp.UNBIND_EXCHANGE, unbind).bindings == ()
    assert apply(22, MetadataOp.DELETE_EXCHANGE, {"name": "e"}).name == "e"
    assert isinstance(apply(23, MetadataOp.DELETE_EXCHANGE, {"name": "e"}), UnknownExchange)


def test_deleting_a_topic_drops_its_bindings_and_snapshots_keep_exchanges() -> None:
    state = _table(_topic("orders"), _topic("audit"), _exchange("fan", "fanout", alternate="x"),
                   _bind("fan", topic="orders"), _bind("fan", topic="audit"))
    state.apply(10, MetadataOp.DELETE_TOPIC, 0, {"name": "audit"})
    assert [b.topic for b in state.exchanges.exchanges["fan"].bindings] == ["orders"]
    restored = MetadataState.from_bytes(state.to_bytes())
    assert restored.exchanges == state.exchanges
    old = msgpack.unpackb(state.to_bytes(), raw=False)
    del old["exchanges"], old["exchanges_version"]  # a snapshot written before exchanges existed
    assert MetadataState.from_bytes(msgpack.packb(old)).exchanges.exchanges == {}


@pytest.mark.parametrize(("body", "error"), [
    ({"name": "e"}, InvalidExchange),
    ({"name": "e", "type": "match"}, InvalidExchange),
    ({"name": "a b", "type": "direct"}, InvalidExchange),
    ({"name": "e", "type": "direct", "alternate_exchange": "e"}, InvalidExchange),
    ({"name": "e", "type": "direct", "durable": True}, InvalidRequest),
])
def test_bad_create_requests(body: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_create_exchange(body)


@pytest.mark.parametrize("body", [{}, {"topic": "__consumer_offsets"}, {"topic": "t", "key": 5},
                                  {"topic": "t", "headers": {"a": 1}}, {"topic": "t", "match": "some"},
                                  {"topic": "t", "key": "k" * 256}])
def test_bad_bindings(body: dict[str, Any]) -> None:
    with pytest.raises((InvalidBinding, InvalidRequest)):
        parse_binding(body)


def test_a_publish_is_planned_per_destination_with_routing_headers() -> None:
    request = parse_publish("orders-x", {"routing_key": "order.created", "publish_id": "p1", "records": [
        {"key": "customer-1", "value": "a"}, {"key": "customer-2", "value": "b"}, {"value": "c"}]}, now_ms=1)
    planned = plan_destinations(request, ["audit", "orders"], {"audit": 1, "orders": 4}, pick=0)
    unkeyed = partition_for(b"p1", 4)
    expected = sorted({partition_for(b"customer-1", 4), partition_for(b"customer-2", 4), unkeyed})
    assert [(d.topic, d.partition) for d in planned] == [("audit", 0)] + [("orders", p) for p in expected]
    records = batches.decode_records(planned[0].batch)
    assert [r.value for r in records] == [b"a", b"b", b"c"]
    assert records[0].headers == (("x-exchange", b"orders-x"), ("x-routing-key", b"order.created"))
    # A retry names what is left: only those destinations get the records again.
    retry = parse_publish("orders-x", {"routing_key": "order.created", "publish_id": "p1",
                                       "records": [{"value": "c"}], "destinations": [["orders", unkeyed]]}, now_ms=1)
    assert [(d.topic, d.partition) for d in plan_destinations(retry, ["audit", "orders"],
                                                              {"audit": 1, "orders": 4}, pick=3)] == \
        [("orders", unkeyed)]


def test_outcomes_say_what_a_retry_must_do() -> None:
    outcomes = [DestinationOutcome("a", 0, DestinationStatus.OK, 5),
                DestinationOutcome.of_error("b", 0, LeaderNotAvailable("no leader")),
                DestinationOutcome.of_error("c", 1, RequestTimedOut("no answer"))]
    assert [o.status for o in outcomes] == [DestinationStatus.OK, DestinationStatus.FAILED, DestinationStatus.UNKNOWN]
    assert unfinished(outcomes) == [["b", 0], ["c", 1]]
    assert outcomes[1].to_wire()["code"] == "LEADER_NOT_AVAILABLE"


def test_an_idempotent_publish_derives_one_producer_id_per_publish() -> None:
    """Every destination's batch of a publish with a publish_id at acks=all carries the same derived producer
    id at sequence 0, stable across a retry (whose records the receiving broker stamps anew) and different
    for different content under the same publish id; without a publish_id, or at acks=1, no producer id."""
    def body(value: str, **extra: Any) -> dict[str, Any]:
        return {"routing_key": "k", "publish_id": "p1", "records": [{"value": value}], **extra}

    first, retry = parse_publish("x", body("a"), now_ms=1), parse_publish("x", body("a"), now_ms=99)
    assert publish_producer_id(first) == publish_producer_id(retry)
    assert is_publish_producer_id(publish_producer_id(first))
    assert publish_producer_id(first) != publish_producer_id(parse_publish("x", body("b"), now_ms=1))
    assert publish_producer_id(first) != publish_producer_id(parse_publish("y", body("a"), now_ms=1))
    headers = [batches.parse_header(d.batch) for d in plan_destinations(first, ["a", "b"], {"a": 1, "b": 2}, pick=0)]
    assert {(h.producer_id, h.base_sequence) for h in headers} == {(publish_producer_id(first), 0)}
    for plain in (parse_publish("x", {"records": [{"value": "a"}], "publish_id": "p1", "acks": 1}, now_ms=1),
                  parse_publish("x", {"records": [{"value": "a"}]}, now_ms=1)):
        planned = plan_destinations(plain, ["a"], {"a": 1}, pick=0)
        assert batches.parse_header(planned[0].batch).producer_id == batches.NO_PRODUCER_ID
