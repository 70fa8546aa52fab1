"""Hostile input at every endpoint of a real broker: always a coded 4xx (never a 500, never a crash), and the
stored records stay exactly as they were.

Method: one real single-broker node (Broker, api.py and the guarded HTTP server) in this process, on its own
event loop thread; a few records stored first. Then the inputs that used to get 500 (a "²" partition,
5,000-digit numbers, timestamps of 2**63, JSON nested 200,000 deep, a gzip header on a plain body, a topic
name with a trailing newline, a 1 MiB + 1 record), followed by hypothesis: random bodies (bytes, JSON,
msgpack) and random path and query text at each endpoint. At the end the stored records read back unchanged
and a good request still works.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.deploy.local_cluster import find_free_ports, wait_until
from raftmq.node.api import build_app
from raftmq.node.broker import Broker
from raftmq.node.config import BrokerEntry, NodeConfig, PeerAddress
from raftmq.node.http_server import GuardedAppRunner

TOPIC = "hostile"


class InProcessBroker:
    """A one-broker cluster in a thread of this process (real Raft group, real storage, real HTTP)."""

    def __init__(self, root: Path) -> None:
        client_port, peer_port = find_free_ports(2)
        self.port = client_port
        entry = BrokerEntry(1, PeerAddress("127.0.0.1", peer_port), f"http://127.0.0.1:{client_port}")
        self.config = NodeConfig(broker_id=1, cluster_id="hostile-http", data_dir=root / "data",
                                 client_listen=PeerAddress("127.0.0.1", client_port),
                                 peer_listen=PeerAddress("127.0.0.1", peer_port),
                                 advertised_url=entry.url, brokers=(entry,))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker: Broker | None = None
        self.runner: GuardedAppRunner | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        self.broker = Broker(self.config)
        await self.broker.start()
        self.runner = GuardedAppRunner(build_app(self.broker), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        async def stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
            if self.broker is not None:
                await self.broker.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def alive(self) -> bool:
        broker = self.broker
        return self.thread.is_alive() and broker is not None and broker.engine is not None \
            and broker.engine.failure is None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        kind = response.getheader("Content-Type", "")
        decoded = msgpack.unpackb(data, raw=False) if "msgpack" in kind else json.loads(data) if data else None
        return response.status, decoded

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else None
        return self.request(method, path, raw, {"Content-Type": "application/json", "Accept": "application/json"})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBroker]:
    broker = InProcessBroker(tmp_path_factory.mktemp("hostile-http"))
    broker.start()
    try:
        wait_until(lambda: broker.json("GET", "/v1/health")[1]["ready"], timeout_s=30, what="the broker to be ready")
        status, body = broker.json("POST", "/v1/topics", {"name": TOPIC, "partitions": 2})
        assert status == 201, body
        status, body = broker.json("POST", f"/v1/topics/{TOPIC}/partitions/0/records",
                                   {"acks": "all", "records": [{"value": f"r{i}"} for i in range(5)]})
        assert status == 200, body
        yield broker
    finally:
        broker.stop()


def assert_coded(result: tuple[int, Any], what: str = "") -> None:
    status, body = result
    assert status < 500, f"{what}: HTTP {status} {body}"
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body["error"]["code"], str) and body["error"]["message"], body


def stored(node: InProcessBroker) -> list[Any]:
    status, body = node.json("GET", f"/v1/topics/{TOPIC}/partitions/0/records?offset=0")
    assert status == 200, body
    return [(r["offset"], r["value"]) for r in body["records"]]


EXPECTED = [(i, f"r{i}") for i in range(5)]


@pytest.mark.parametrize("path", [
    f"/v1/topics/{TOPIC}/partitions/%C2%B2/records?offset=0",
    f"/v1/topics/{TOPIC}/partitions/{'9' * 5000}/records?offset=0",
    f"/v1/topics/{TOPIC}/partitions/{'9' * 5000}/offsets",
    f"/v1/topics/{TOPIC}/partitions/0/records?offset={'9' * 5000}",
    f"/v1/topics/{TOPIC}/partitions/0/records?offset=%C2%B2",
    f"/v1/topics/{TOPIC}/partitions/0/offsets?at={'9' * 5000}",
    f"/v1/topics/{TOPIC}/partitions/0/records?offset=0&max_bytes=1_0",
])
def test_numbers_int_would_misread_are_4xx(node: InProcessBroker, path: str) -> None:
    status, body = node.json("GET", path)
    assert status == 400, body
    assert body["error"]["code"] in ("INVALID_REQUEST", "INVALID_OFFSET")


def test_produce_with_a_huge_partition_number(node: InProcessBroker) -> None:
    status, body = node.json("POST", f"/v1/topics/{TOPIC}/partitions/{'9' * 5000}/records",
                             {"records": [{"value": "x"}]})
    assert (status, body["error"]["code"]) == (400, "INVALID_REQUEST")


@pytest.mark.parametrize("timestamp", [2**63, 2**64 - 1])
def test_timestamps_beyond_int64(node: InProcessBroker, timestamp: int) -> None:
    status, body = node.json("POST", f"/v1/topics/{TOPIC}/partitions/1/records",
                             {"records": [{"value": "x", "timestamp_ms": timestamp}]})
    assert (status, body["error"]["code"]) == (400, "INVALID_REQUEST")


def test_json_nested_200000_deep(node: InProcessBroker) -> None:
    for path in ["/v1/topics", "/v1/producers", f"/v1/topics/{TOPIC}/records",
                 f"/v1/topics/{TOPIC}/partitions/0/records"]:
        status, body = node.request("POST", path, b"[" * 200_000, {"Content-Type": "application/json"})
        assert (status, body["error"]["code"]) == (400, "MALFORMED_BODY"), path


def test_gzip_header_on_a_plain_body(node: InProcessBroker) -> None:
    status, body = node.request("POST", "/v1/topics", b'{"name": "gz"}',
                                {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert (status, body["error"]["code"]) == (400, "MALFORMED_BODY")


def test_topic_name_with_a_trailing_newline(node: InProcessBroker) -> None:
    status, body = node.json("POST", "/v1/topics", {"name": "probe\n"})
    assert (status, body["error"]["code"]) == (400, "INVALID_TOPIC")
    assert not any("\n" in p.name for p in (node.config.data_dir / "partitions").iterdir())


def test_a_record_of_one_mib_plus_one(node: InProcessBroker) -> None:
    # Forged with a Kafka client's encoder: raftmq's refuses to encode it.
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 22)
    builder.append(0, timestamp=1, key=None, value=b"x" * (limits.record_bytes_max + 1), headers=[])
    batch = bytes(builder.build())
    status, answer = node.request("POST", f"/v1/topics/{TOPIC}/partitions/1/records",
                                  msgpack.packb({"acks": "all", "batch": batch}, use_bin_type=True),
                                  {"Content-Type": "application/msgpack", "Accept": "application/json"})
    assert (status, answer["error"]["code"]) == (413, "RECORD_TOO_LARGE")


def test_unallocated_producer_ids_are_refused(node: InProcessBroker) -> None:
    batch = batches.encode_batch([(None, b"x", (), 1)], producer_id=10**12, base_sequence=0)
    status, body = node.request("POST", f"/v1/topics/{TOPIC}/partitions/1/records",
                                msgpack.packb({"acks": "all", "batch": batch}, use_bin_type=True),
                                {"Content-Type": "application/msgpack", "Accept": "application/json"})
    assert (status, body["error"]["code"]) == (409, "UNKNOWN_PRODUCER_ID")


_bodies = st.one_of(
    st.binary(max_size=120).map(lambda b: (b, "application/msgpack")),
    st.binary(max_size=120).map(lambda b: (b, "application/json")),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
                           st.text(max_size=12)),
                 lambda c: st.one_of(st.lists(c, max_size=4),
                                     st.dictionaries(st.sampled_from(["name", "acks", "records", "batch", "key",
                                                                      "partitions", "config", "timeout_ms",
                                                                      "value", "timestamp_ms"]), c, max_size=5)),
                 max_leaves=20).map(lambda v: (json.dumps(v).encode(), "application/json")),
    st.dictionaries(st.sampled_from(["acks", "batch", "records", "key", "timeout_ms", "name"]),
                    st.one_of(st.binary(max_size=100), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                              st.text(max_size=10), st.none()), max_size=4)
    .map(lambda v: (msgpack.packb(v, use_bin_type=True), "application/msgpack")),
)
_endpoints = st.sampled_from(["/v1/topics", "/v1/producers", f"/v1/topics/{TOPIC}/records",
                              f"/v1/topics/{TOPIC}/partitions/1/records"])
_fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                 deadline=None)


@_fuzz
@given(endpoint=_endpoints, body=_bodies)
def test_random_bodies_at_every_post_endpoint(node: InProcessBroker, endpoint: str, body: tuple[bytes, str]) -> None:
    raw, content_type = body
    assert_coded(node.request("POST", endpoint, raw, {"Content-Type": content_type, "Accept": "application/json"}),
                 f"POST {endpoint} {raw[:60]!r}")


@_fuzz
@given(topic=st.text(min_size=1, max_size=12), partition=st.text(min_size=1, max_size=12),
       query=st.dictionaries(st.sampled_from(["offset", "max_bytes", "max_wait_ms", "replica", "at"]),
                             st.text(max_size=12), max_size=4),
       kind=st.sampled_from(["records", "offsets"]))
def test_random_paths_and_queries(node: InProcessBroker, topic: str, partition: str, query: dict[str, str],
                                  kind: str) -> None:
    if "max_wait_ms" in query:
        query["max_wait_ms"] = "0"  # a long-poll would only make the test slow
    text = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query.items())
    path = f"/v1/topics/{quote(topic, safe='')}/partitions/{quote(partition, safe='')}/{kind}?{text}"
    assert_coded(node.json("GET", path), path)


def test_afterwards_the_broker_is_alive_and_the_data_intact(node: InProcessBroker) -> None:
    assert node.alive()
    assert stored(node) == EXPECTED
    status, body = node.json("POST", f"/v1/topics/{TOPIC}/partitions/0/records",
                             {"acks": "all", "records": [{"value": "after"}]})
    assert status == 200 and body["base_offset"] == 5, body
