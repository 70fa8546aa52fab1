"""Exchanges over the HTTP API on an in-process cluster (node/exchanges.py, node/api.py): admin through
the metadata group, publish to every bound topic (forwarded to partition leaders on other brokers), the
per-destination verdict of a partial failure, a retry that skips acknowledged destinations, and the
unroutable cases.

Method: raw msgpack HTTP against real brokers; destinations are led by other brokers than the one
published to, so every append is forwarded; failures are injected at the leaders' HTTP edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from raftmq.client.admin import Admin
from raftmq.client.publisher import ExchangePublisher
from raftmq.cluster import limits
from raftmq.cluster.batch import decode_records, iter_stored
from raftmq.cluster.errors import PublishIncomplete

from tests.inprocess import Fault, InProcessCluster, RequestLog, wait_until

pytestmark = pytest.mark.asyncio
MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


async def call(session: aiohttp.ClientSession, url: str, method: str, path: str,
               body: Any = None) -> tuple[int, dict[str, Any]]:
    data = msgpack.packb(body, use_bin_type=True) if body is not None else None
    async with session.request(method, url + path, data=data, headers=MSGPACK) as response:
        return response.status, msgpack.unpackb(await response.read(), raw=False)


def records(cluster: InProcessCluster, topic: str) -> list[tuple[bytes | None, dict[str, bytes | None]]]:
    log = cluster.leader(topic, 0).state_machine.log
    data = log.read(log.log_start_offset, 1 << 30)
    return [(r.value, dict(r.headers)) for h, chunk in iter_stored(data) for r in decode_records(chunk, h)]


async def test_fanout_admin_publish_partial_failure_and_retry(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster, aiohttp.ClientSession() as session:
        await cluster.create_topic("orders", leaders=[2])
        await cluster.create_topic("audit", leaders=[3])
        one, three = cluster.urls[0], cluster.urls[2]
        status, answer = await call(session, one, "POST", "/v1/exchanges", {"name": "notify", "type": "fanout"})
        assert status == 201, answer
        for topic in ("orders", "audit"):
            status, answer = await call(session, one, "POST", "/v1/exchanges/notify/bindings", {"topic": topic})
            assert status == 201, answer
        await wait_until(lambda: len(cluster.service(3).metadata.exchanges.get("notify").bindings) == 2,
                         what="broker 3 to learn the bindings")
        status, answer = await call(session, three, "GET", "/v1/exchanges/notify")
        assert [b["topic"] for b in answer["exchange"]["bindings"]] == ["orders", "audit"]

        body = {"routing_key": "order.created", "records": [{"value": "first"}], "acks": "all"}
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish", body)
        assert status == 200, answer
        assert sorted((d["topic"], d["status"]) for d in answer["destinations"]) == [("audit", "ok"), ("orders", "ok")]
        for topic in ("orders", "audit"):
            assert records(cluster, topic) == [(b"first", {"x-exchange": b"notify", "x-routing-key": b"order.created"})]

        # audit's leader appends the forwarded batch but the answer is lost: that destination is "unknown".
        def to_audit(entry: RequestLog) -> bool:
            return entry.path.startswith("/v1/topics/audit/")

        cluster.inject("produce", Fault("error", code="REQUEST_TIMED_OUT", apply=True, match=to_audit))
        body = {"routing_key": "k", "records": [{"value": "second"}], "publish_id": "p-2"}
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish", body)
        assert (status, answer["error"]["code"]) == (503, "PUBLISH_INCOMPLETE"), answer
        outcome = {d["topic"]: d["status"] for d in answer["error"]["details"]["destinations"]}
        assert outcome == {"orders": "ok", "audit": "unknown"}
        retry = answer["error"]["details"]["retry"]
        assert retry == [["audit", 0]]
        # The retry names only the destinations left: orders does not get the record twice. The publish is
        # idempotent (a publish_id at acks=all): audit, which did store it, answers with the original offset.
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish",
                                    {**body, "destinations": retry})
        assert status == 200, answer
        assert [(d["topic"], d["base_offset"]) for d in answer["destinations"]] == [("audit", 1)]
        assert [v for v, _ in records(cluster, "orders")] == [b"first", b"second"]
        assert [v for v, _ in records(cluster, "audit")] == [b"first", b"second"]

        # Without a publish_id the publish is not idempotent: an "unknown" destination may get it twice.
        cluster.inject("produce", Fault("error", code="REQUEST_TIMED_OUT", apply=True, match=to_audit))
        body = {"routing_key": "k", "records": [{"value": "again"}]}
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish", body)
        assert answer["error"]["details"]["retry"] == [["audit", 0]]
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish",
                                    {**body, "destinations": [["audit", 0]]})
        assert status == 200, answer
        assert [v for v, _ in records(cluster, "audit")][-2:] == [b"again", b"again"]

        # A definite failure is "failed": nothing was appended there.
        cluster.inject("produce", Fault("error", code="LEADER_NOT_AVAILABLE", match=to_audit))
        status, answer = await call(session, one, "POST", "/v1/exchanges/notify/publish",
                                    {"records": [{"value": "third"}]})
        outcome = {d["topic"]: d["status"] for d in answer["error"]["details"]["destinations"]}
        assert outcome == {"orders": "ok", "audit": "failed"}
        assert [v for v, _ in records(cluster, "audit")] == [b"first", b"second", b"again", b"again"]


async def test_unroutable_and_bad_requests_are_coded(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster, aiohttp.ClientSession() as session:
        url = cluster.urls[0]
        await cluster.create_topic("orders")
        assert (await call(session, url, "POST", "/v1/exchanges", {"name": "d", "type": "direct"}))[0] == 201
        status, answer = await call(session, url, "POST", "/v1/exchanges/d/bindings", {"topic": "orders", "key": "a"})
        assert status == 201
        cases = [
            ("POST", "/v1/exchanges/d/publish", {"routing_key": "b", "records": [{"value": "x"}], "mandatory": True},
             422, "UNROUTABLE"),
            ("POST", "/v1/exchanges/missing/publish", {"records": [{"value": "x"}]}, 404, "UNKNOWN_EXCHANGE"),
            ("POST", "/v1/exchanges/d/publish", {"records": []}, 400, "INVALID_REQUEST"),
            ("POST", "/v1/exchanges", {"name": "d", "type": "fanout"}, 409, "EXCHANGE_ALREADY_EXISTS"),
            ("POST", "/v1/exchanges", {"name": "x", "type": "queue"}, 400, "INVALID_EXCHANGE"),
            ("POST", "/v1/exchanges/d/bindings", {"topic": "nope", "key": "a"}, 404, "UNKNOWN_TOPIC_OR_PARTITION"),
            ("POST", "/v1/exchanges/d/bindings", {"topic": "orders", "headers": {"a": "b"}}, 400, "INVALID_BINDING"),
            ("DELETE", "/v1/exchanges/d/bindings", {"topic": "orders", "key": "zzz"}, 404, "BINDING_NOT_FOUND"),
            ("GET", "/v1/exchanges/nope", None, 404, "UNKNOWN_EXCHANGE"),
        ]
        for method, path, body, want_status, code in cases:
            status, answer = await call(session, url, method, path, body)
            assert (status, answer["error"]["code"]) == (want_status, code), (path, body, answer)
        status, answer = await call(session, url, "POST", "/v1/exchanges/d/publish",
                                    {"routing_key": "b", "records": [{"value": "x"}]})
        assert (status, answer["routed"], answer["destinations"]) == (200, False, [])
        assert records(cluster, "orders") == []
        status, answer = await call(session, url, "DELETE", "/v1/exchanges/d")
        assert (status, answer) == (200, {"deleted": "d"})
        assert (await call(session, url, "GET", "/v1/exchanges"))[1] == {"exchanges": []}


async def test_publishes_acknowledged_across_a_leader_loss_are_in_every_topic(tmp_path: Path) -> None:
    """acks=all to three topics while the leader of one is cut off from its replicas and another is elected:
    the publish that hit the cut-off leader is reported per destination (never acknowledged whole), and every
    publish the client saw acknowledged is in all three topics after the partition heals."""
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        for name, leader in (("a", 1), ("b", 2), ("c", 3)):
            await cluster.create_topic(name, leaders=[leader])
        async with Admin(cluster.urls) as admin:
            await admin.create_exchange("all", "fanout")
            for name in "abc":
                await admin.bind("all", name)
        acknowledged: list[bytes] = []
        incomplete: list[dict[str, str]] = []
        async with ExchangePublisher(cluster.urls[:1], request_timeout_ms=2_000) as publisher:
            for i in range(6):
                await publisher.publish("all", b"before-%d" % i, timeout_s=5.0)
                acknowledged.append(b"before-%d" % i)
            cluster.partition({3}, {1, 2})  # c's leader (broker 3) can no longer commit
            try:
                await publisher.publish("all", b"during", timeout_s=0.5)
                acknowledged.append(b"during")
            except PublishIncomplete as exc:
                incomplete = [{d["topic"]: d["status"]} for d in exc.details["destinations"]]
            cluster.advance(limits.raft_leader_fallback_timeout_s + limits.raft_election_timeout_min_s)
            await wait_until(lambda: cluster.leader("c", 0).group.status.leader_id in (1, 2),
                             what="a new leader of c")
            for i in range(6):
                await publisher.publish("all", b"after-%d" % i, timeout_s=5.0)
                acknowledged.append(b"after-%d" % i)
        cluster.heal()
        assert b"during" not in acknowledged and {"c": "ok"} not in incomplete and {"a": "ok"} in incomplete
        for name in "abc":
            stored = [value for _offset, _key, value in cluster.stored(name, 0)]
            assert set(acknowledged) <= set(stored), (name, stored)
            assert all(stored.count(v) == 1 for v in acknowledged)


async def test_a_mixed_batch_to_a_headers_exchange_is_split_per_destination(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster, aiohttp.ClientSession() as session:
        url = cluster.urls[0]
        for topic in ("pdf", "csv"):
            await cluster.create_topic(topic)
        assert (await call(session, url, "POST", "/v1/exchanges", {"name": "docs", "type": "headers"}))[0] == 201
        for topic in ("pdf", "csv"):
            status, _ = await call(session, url, "POST", "/v1/exchanges/docs/bindings",
                                   {"topic": topic, "headers": {"format": topic}})
            assert status == 201
        records = [{"value": "a", "headers": [["format", "pdf"]]}, {"value": "b", "headers": [["format", "csv"]]},
                   {"value": "c", "headers": [["format", "zip"]]}, {"value": "d", "headers": [["format", "pdf"]]}]
        # mandatory: one unroutable record refuses the whole publish; nothing is appended anywhere.
        status, answer = await call(session, url, "POST", "/v1/exchanges/docs/publish",
                                    {"records": records, "mandatory": True})
        assert (status, answer["error"]["code"], answer["error"]["details"]["records"]) == (422, "UNROUTABLE", [2])
        assert records_of(cluster, "pdf") == records_of(cluster, "csv") == []
        status, answer = await call(session, url, "POST", "/v1/exchanges/docs/publish", {"records": records})
        assert status == 200, answer
        assert (answer["routed"], answer["unroutable"], answer["route"]["topics"]) == (True, [2], ["csv", "pdf"])
        assert records_of(cluster, "pdf") == [b"a", b"d"] and records_of(cluster, "csv") == [b"b"]


def records_of(cluster: InProcessCluster, topic: str) -> list[bytes | None]:
    return [value for value, _headers in records(cluster, topic)]
