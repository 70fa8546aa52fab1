"""The seed's routing examples end to end on an in-process cluster, through the client library (Admin,
ExchangePublisher) and the CLI (``raftmq exchange ...``, ``raftmq produce --exchange``): an order exchange
(direct), a notification fanout to two topics, a topic exchange with ``order.*`` and ``order.#``, a headers
exchange, and an alternate exchange taking what nothing else matched.

Method: create topics and exchanges, publish, then read every topic's leader log and compare with what the
AMQP routing rules say each topic must hold (and nothing more).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from raftmq.client.admin import Admin
from raftmq.client.publisher import ExchangePublisher
from raftmq.cluster.batch import decode_records, iter_stored
from raftmq.cluster.errors import ClientTimeout, ConnectionFailed, InvalidBinding, UnknownExchange, Unroutable

from raftmq.cli import cli
from tests.inprocess import Fault, InProcessCluster, RequestLog, wait_until

pytestmark = pytest.mark.asyncio


def values(cluster: InProcessCluster, topic: str) -> list[bytes | None]:
    log = cluster.leader(topic, 0).state_machine.log
    data = log.read(log.log_start_offset, 1 << 30)
    return [r.value for h, chunk in iter_stored(data) for r in decode_records(chunk, h)]


async def test_the_seed_examples_route_as_amqp_says(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        for name in ("orders", "email", "sms", "all-orders", "order-events", "reports", "unrouted"):
            await cluster.create_topic(name)
        async with Admin(cluster.urls) as admin, ExchangePublisher(cluster.urls) as publisher:
            await admin.create_exchange("unrouted", "fanout")
            await admin.bind("unrouted", "unrouted")
            await admin.create_exchange("order", "direct", alternate_exchange="unrouted")
            await admin.bind("order", "orders", key="order.created")
            await admin.create_exchange("notify", "fanout")
            await admin.bind("notify", "email")
            await admin.bind("notify", "sms")
            await admin.create_exchange("events", "topic")
            await admin.bind("events", "order-events", key="order.*")
            await admin.bind("events", "all-orders", key="order.#")
            await admin.create_exchange("docs", "headers")
            await admin.bind("docs", "reports", headers={"format": "pdf", "type": "report"}, match="all")
            with pytest.raises(InvalidBinding):
                await admin.bind("docs", "reports", key="k")
            assert [e["name"] for e in await admin.list_exchanges()] == ["docs", "events", "notify", "order",
                                                                         "unrouted"]
            # A publish routes on the receiving broker's copy of the metadata: let every broker apply the binds.
            def learned(broker_id: int) -> bool:
                docs = cluster.service(broker_id).metadata.exchanges.get("docs")
                return docs is not None and len(docs.bindings) == 1

            await wait_until(lambda: all(learned(b) for b in (1, 2, 3)), what="every broker to learn the bindings")

            receipt = await publisher.publish("order", b"o1", "order.created", key="customer-7")
            assert (receipt.routed, receipt.topics) == (True, ("orders",))
            receipt = await publisher.publish("order", b"o2", "order.deleted")  # -> the alternate exchange
            assert receipt.topics == ("unrouted",)
            assert set((await publisher.publish("notify", b"n1")).topics) == {"email", "sms"}
            await publisher.publish("events", b"e1", "order.created")
            await publisher.publish("events", b"e2", "order")
            await publisher.publish("events", b"e3", "order.eu.created")
            await publisher.publish("docs", b"d1", headers={"format": "pdf", "type": "report"})
            assert not (await publisher.publish("docs", b"d2", headers={"format": "pdf"})).routed
            with pytest.raises(Unroutable):
                await publisher.publish("docs", b"d3", headers={"format": "zip"}, mandatory=True)
            with pytest.raises(UnknownExchange):
                await publisher.publish("nope", b"x")

        assert values(cluster, "orders") == [b"o1"]
        assert values(cluster, "unrouted") == [b"o2"]
        assert values(cluster, "email") == values(cluster, "sms") == [b"n1"]
        assert values(cluster, "order-events") == [b"e1"]
        assert values(cluster, "all-orders") == [b"e1", b"e2", b"e3"]
        assert values(cluster, "reports") == [b"d1"]


async def test_the_cli_manages_exchanges_and_produces_to_them(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("orders")
        await cluster.create_topic("audit")
        bootstrap = ["-b", cluster.urls[0]]

        async def run(*args: str, stdin: str | None = None) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, *bootstrap], input=stdin,
                                             env={"COLUMNS": "200"})
            assert result.exit_code == 0, result.output
            return result.stdout

        assert "exchange shop: topic" in await run("exchange", "create", "shop", "--type", "topic")
        await run("exchange", "bind", "shop", "orders", "--key", "order.*")
        assert "order.#" in await run("exchange", "bind", "shop", "audit", "--key", "order.#")
        listing = await run("exchange", "list")
        assert "shop" in listing and "topic" in listing
        described = await run("exchange", "describe", "shop")
        assert "order.*" in described and "audit" in described
        summary = await run("produce", "--exchange", "shop", "--routing-key", "order.created", stdin="a\nb\n")
        assert "published" in summary and "4" in summary  # 2 records x 2 topics
        assert values(cluster, "orders") == values(cluster, "audit") == [b"a", b"b"]
        await run("exchange", "unbind", "shop", "audit", "--key", "order.#")
        await run("produce", "--exchange", "shop", "--routing-key", "order.deleted", "--count", "1", "--size", "3")
        assert len(values(cluster, "orders")) == 3 and len(values(cluster, "audit")) == 2
        assert "deleted exchange shop" in await run("exchange", "delete", "shop")


async def test_a_publish_whose_answer_was_lost_is_retried_without_duplicates(tmp_path: Path) -> None:
    """The broker publishes to both topics but the connection drops before the answer: at acks=all the
    client sends the same publish again and every topic answers with the original offset; at acks=1 the
    loss is raised (which destinations have it is unknown)."""
    async with InProcessCluster(tmp_path, brokers=1) as cluster:
        await cluster.create_topic("orders")
        await cluster.create_topic("audit")
        async with Admin(cluster.urls) as admin, ExchangePublisher(cluster.urls, retry_backoff_ms=1) as publisher:
            await admin.create_exchange("fan", "fanout")
            for topic in ("orders", "audit"):
                await admin.bind("fan", topic)
            await publisher.publish("fan", b"zero")

            def to_publish(entry: RequestLog) -> bool:
                return entry.path.endswith("/publish")

            cluster.inject("topics", Fault("drop", apply=True, match=to_publish))
            receipt = await publisher.publish("fan", b"one", timeout_s=10.0)
            assert receipt.attempts == 2
            assert sorted(receipt.destinations) == [("audit", 0, 1), ("orders", 0, 1)]
            assert values(cluster, "orders") == values(cluster, "audit") == [b"zero", b"one"]

            cluster.inject("topics", Fault("drop", apply=True, match=to_publish))
            with pytest.raises((ClientTimeout, ConnectionFailed)):
                await publisher.publish("fan", b"two", acks=1, timeout_s=10.0)
            assert values(cluster, "orders") == values(cluster, "audit") == [b"zero", b"one", b"two"]
