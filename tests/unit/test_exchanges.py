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
    route_publish,
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
    planned = plan_destinations(request, [["audit", "orders"]] * 3, {"audit": 1, "orders": 4}, pick=0)
    unkeyed = partition_for(b"p1", 4)
    expected = sorted({partition_for(b"customer-1", 4), partition_for(b"customer-2", 4), unkeyed})
    assert [(d.topic, d.partition) for d in planned] == [("audit", 0)] + [("orders", p) for p in expected]
    records = batches.decode_records(planned[0].batch)
    assert [r.value for r in records] == [b"a", b"b", b"c"]
    assert records[0].headers == (("x-exchange", b"orders-x"), ("x-routing-key", b"order.created"))
    # A retry names what is left: only those destinations get the records again.
    retry = parse_publish("orders-x", {"routing_key": "order.created", "publish_id": "p1",
                                       "records": [{"value": "c"}], "destinations": [["orders", unkeyed]]}, now_ms=1)
    assert [(d.topic, d.partition) for d in plan_destinations(retry, [["audit", "orders"]],
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
    planned_first = plan_destinations(first, [["a", "b"]], {"a": 1, "b": 2}, pick=0)
    headers = [batches.parse_batch_header(d.batch) for d in planned_first]
    assert {(h.producer_id, h.base_sequence) for h in headers} == {(publish_producer_id(first), 0)}
    for plain in (parse_publish("x", {"records": [{"value": "a"}], "publish_id": "p1", "acks": 1}, now_ms=1),
                  parse_publish("x", {"records": [{"value": "a"}]}, now_ms=1)):
        planned = plan_destinations(plain, [["a"]], {"a": 1}, pick=0)
        assert batches.parse_batch_header(planned[0].batch).producer_id == batches.NO_PRODUCER_ID


def test_a_headers_exchange_routes_each_record_by_its_own_headers() -> None:
    """A batch whose records route differently is split: each destination gets exactly the records routed
    to it, in publish order; a record nothing matched falls to the alternate exchange, one matching
    nothing at all is listed unroutable."""
    state = _table(_topic("pdf"), _topic("csv"), _topic("everything"), _topic("rest"),
                   _exchange("rest-x", "fanout"), _bind("rest-x", topic="rest"),
                   _exchange("hdr", "headers", alternate="rest-x"),
                   _bind("hdr", topic="pdf", headers={"format": "pdf"}),
                   _bind("hdr", topic="csv", headers={"format": "csv"}),
                   _bind("hdr", topic="everything", headers={"format": "pdf", "lang": "en"}, match="any"),
                   _exchange("strict", "headers"), _bind("strict", topic="pdf", headers={"format": "pdf"}))
    table = state.exchanges.exchanges
    records = [{"value": "a", "headers": [["format", "pdf"]]}, {"value": "b", "headers": [["format", "csv"]]},
               {"value": "c", "headers": [["lang", "en"]]}, {"value": "d"},
               {"value": "e", "headers": [["format", "pdf"]]}]
    request = parse_publish("hdr", {"records": records}, now_ms=1)
    routed = route_publish(table, request)
    assert routed.topics_of == (("everything", "pdf"), ("csv",), ("everything",), ("rest",), ("everything", "pdf"))
    assert routed.exchanges == ("hdr", "rest-x") and routed.unroutable == []
    planned = plan_destinations(request, routed.topics_of, dict.fromkeys(routed.topics, 1), pick=0)
    got = {d.topic: [r.value for r in batches.decode_records(d.batch)] for d in planned}
    assert got == {"csv": [b"b"], "everything": [b"a", b"c", b"e"], "pdf": [b"a", b"e"], "rest": [b"d"]}
    strict = route_publish(table, parse_publish("strict", {"records": records}, now_ms=1))
    assert strict.unroutable == [1, 2, 3] and strict.topics == ("pdf",)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["pdf", "csv", "txt", None]), min_size=1, max_size=20))
def test_per_record_routing_puts_every_record_exactly_where_it_routes_alone(formats: list[str | None]) -> None:
    """Splitting changes nothing about where a record goes: publishing the records together stores each in
    exactly the topics a publish of it alone would."""
    state = _table(_topic("pdf"), _topic("csv"), _exchange("hdr", "headers"),
                   _bind("hdr", topic="pdf", headers={"format": "pdf"}),
                   _bind("hdr", topic="csv", headers={"format": "csv"}))
    table = state.exchanges.exchanges
    records = [{"value": str(i), **({"headers": [["format", f]]} if f else {})} for i, f in enumerate(formats)]
    together = route_publish(table, parse_publish("hdr", {"records": records}, now_ms=1))
    alone = [route_publish(table, parse_publish("hdr", {"records": [r]}, now_ms=1)).topics_of[0] for r in records]
    assert list(together.topics_of) == alone
    planned = plan_destinations(parse_publish("hdr", {"records": records}, now_ms=1), together.topics_of,
                                {"pdf": 1, "csv": 1}, pick=0)
    stored = {d.topic: [int(r.value or b"") for r in batches.decode_records(d.batch)] for d in planned}
    for topic in ("pdf", "csv"):
        assert stored.get(topic, []) == [i for i, topics in enumerate(alone) if topic in topics]
