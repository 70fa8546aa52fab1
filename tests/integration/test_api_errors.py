"""Bad input at every endpoint of a real broker gets a 4xx with the documented code, and never touches stored
data. Method: one 3-broker cluster; store some records; fire every bad request (JSON and msgpack); then
check that every replica's log is exactly what it was and a good request still works."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.deploy.local_cluster import LocalCluster

from tests.conftest import wait_for_condition

pytestmark = pytest.mark.cluster
TOPIC = "errors"


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, *, json_body: Any = None, raw: bytes | None = None,
                   content_type: str | None = None, msgpack_body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        data = raw
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if msgpack_body is not None:
            data = msgpack.packb(msgpack_body, use_bin_type=True)
            headers["Content-Type"] = "application/msgpack"
        if content_type is not None:
            headers["Content-Type"] = content_type
        payload: Any = io.BytesIO(data) if data is not None and len(data) > 512 * 1024 else data
        async with self.session.request(method, self.url + path, data=payload, headers=headers) as response:
            body = await response.read()
            return response.status, json.loads(body) if body else {}


@pytest.fixture
async def api(shared_cluster: LocalCluster) -> AsyncIterator[tuple[Api, Api, LocalCluster]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        first = Api(session, shared_cluster.nodes[1].url)
        status, _ = await first.call("GET", f"/v1/topics/{TOPIC}")
        if status == 404:
            status, body = await first.call("POST", "/v1/topics", json_body={"name": TOPIC, "partitions": 2})
            assert status == 201, body
        leader_id = shared_cluster.wait_for_leader(TOPIC, 0)
        leader = Api(session, shared_cluster.nodes[leader_id].url)
        yield first, leader, shared_cluster


def _expect(result: tuple[int, dict[str, Any]], status: int, code: str) -> None:
    got_status, body = result
    assert (got_status, body.get("error", {}).get("code")) == (status, code), body
    assert body["error"]["message"]


async def _log_ends(cluster: LocalCluster) -> list[tuple[int, int, int]]:
    ends = []
    for broker_id in cluster.nodes:
        for partition in (0, 1):
            view = cluster.partition_view(broker_id, TOPIC, partition)
            assert view is not None
            ends.append((broker_id, partition, view["high_watermark"]))
    return ends


async def test_bad_input_is_rejected_with_stable_codes(api: tuple[Api, Api, LocalCluster]) -> None:
    first, leader, cluster = api
    produce = f"/v1/topics/{TOPIC}/partitions/0/records"
    status, body = await leader.call("POST", produce, json_body={"acks": "all", "records": [{"value": "before"}]})
    assert status == 200, body

    async def replicas_agree() -> bool:
        # acks=all answers once a majority has the record; a follower learns the new high watermark with the
        # leader's next message, so the baseline waits until every replica shows the same one.
        ends = await _log_ends(cluster)
        return all(len({end for _, p, end in ends if p == partition}) == 1 for partition in (0, 1))

    await wait_for_condition(replicas_agree, timeout_s=10, what="every replica's high watermark to agree")
    cluster_ends = await _log_ends(cluster)

    # routes and methods
    _expect(await first.call("GET", "/v1/nothing"), 404, "ROUTE_NOT_FOUND")
    _expect(await first.call("PUT", "/v1/topics"), 405, "METHOD_NOT_ALLOWED")
    # topics
    _expect(await first.call("POST", "/v1/topics", raw=b"{not json", content_type="application/json"), 400,
            "MALFORMED_BODY")
    _expect(await first.call("POST", "/v1/topics", json_body=[1, 2]), 400, "MALFORMED_BODY")
    _expect(await first.call("POST", "/v1/topics", raw=b"\xc1\xc1", content_type="application/msgpack"), 400,
            "MALFORMED_BODY")
    _expect(await first.call("POST", "/v1/topics", raw=b"name=x", content_type="text/plain"), 415,
            "UNSUPPORTED_MEDIA_TYPE")
    _expect(await first.call("POST", "/v1/topics", json_body={}), 400, "INVALID_TOPIC")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "bad/name"}), 400, "INVALID_TOPIC")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "t1", "partitions": 0}), 400,
            "INVALID_PARTITIONS")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "t1", "partitions": "2"}), 400, "INVALID_REQUEST")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "t1", "replication_factor": 4}), 400,
            "INVALID_REPLICATION_FACTOR")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "t1", "config": {"nope": 1}}), 400,
            "INVALID_CONFIG")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": "t1", "config": {"min_insync_replicas": 1}}),
            400, "INVALID_CONFIG")
    _expect(await first.call("POST", "/v1/topics", json_body={"name": TOPIC}), 409, "TOPIC_ALREADY_EXISTS")
    _expect(await first.call("GET", "/v1/topics/missing"), 404, "UNKNOWN_TOPIC_OR_PARTITION")
    _expect(await first.call("DELETE", "/v1/topics/missing"), 404, "UNKNOWN_TOPIC_OR_PARTITION")
    _expect(await first.call("POST", "/v1/producers", raw=b"[", content_type="application/json"), 400, "MALFORMED_BODY")
    # produce
    good_records = {"acks": "all", "records": [{"value": "x"}]}
    _expect(await leader.call("POST", "/v1/topics/missing/partitions/0/records", json_body=good_records), 404,
            "UNKNOWN_TOPIC_OR_PARTITION")
    _expect(await leader.call("POST", f"/v1/topics/{TOPIC}/partitions/9/records", json_body=good_records), 404,
            "UNKNOWN_TOPIC_OR_PARTITION")
    _expect(await leader.call("POST", f"/v1/topics/{TOPIC}/partitions/x/records", json_body=good_records), 400,
            "INVALID_REQUEST")
    for acks in (2, "some", None, 1.5):
        _expect(await leader.call("POST", produce, json_body={"acks": acks, "records": [{"value": "x"}]}), 400,
                "INVALID_ACKS")
    _expect(await leader.call("POST", produce, json_body={"acks": 1}), 400, "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "records": []}), 400, "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "records": [{"value": 5}]}), 400,
            "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "records": ["x"]}), 400, "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "batch": "not-bytes"}), 400, "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "timeout_ms": -5, "records": [{"value": "x"}]}),
            400, "INVALID_REQUEST")
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "records": [{"value": "x"}], "extra": 1}), 400,
            "INVALID_REQUEST")
    batch = batches.encode_batch([(b"k", b"v", [], 1)])
    corrupt = bytearray(batch)
    corrupt[-1] ^= 0x55
    _expect(await leader.call("POST", produce, msgpack_body={"acks": "all", "batch": bytes(corrupt)}), 400,
            "CORRUPT_BATCH")
    _expect(await leader.call("POST", produce, msgpack_body={"acks": "all", "batch": batch[:40]}), 400, "CORRUPT_BATCH")
    idempotent = batches.encode_batch([(b"k", b"v", [], 1)], producer_id=1, base_sequence=0)
    _expect(await leader.call("POST", produce, msgpack_body={"acks": 1, "batch": idempotent}), 400, "INVALID_ACKS")
    big_value = "x" * (limits.record_bytes_max + 10)
    _expect(await leader.call("POST", produce, json_body={"acks": 1, "records": [{"value": big_value}]}), 413,
            "RECORD_TOO_LARGE")
    _expect(await leader.call("POST", produce, raw=b"x" * (limits.request_bytes_max + 10),
                              content_type="application/msgpack"), 413, "REQUEST_TOO_LARGE")
    _expect(await leader.call("POST", f"/v1/topics/{TOPIC}/records", json_body=good_records), 400, "INVALID_REQUEST")
    follower_id = next(b for b in cluster.nodes if cluster.nodes[b].url != leader.url)
    follower = Api(leader.session, cluster.nodes[follower_id].url)
    status, body = await follower.call("POST", produce, json_body=good_records)
    assert status == 421 and body["error"]["code"] == "NOT_LEADER", body
    assert body["error"]["details"]["leader_url"] == leader.url
    # fetch and offsets
    fetch = f"/v1/topics/{TOPIC}/partitions/0/records"
    _expect(await leader.call("GET", fetch), 400, "INVALID_OFFSET")
    _expect(await leader.call("GET", fetch + "?offset=-1"), 400, "INVALID_OFFSET")
    _expect(await leader.call("GET", fetch + "?offset=abc"), 400, "INVALID_OFFSET")
    _expect(await leader.call("GET", fetch + "?offset=999999"), 416, "OFFSET_OUT_OF_RANGE")
    _expect(await leader.call("GET", fetch + "?offset=0&max_bytes=0"), 400, "INVALID_REQUEST")
    _expect(await leader.call("GET", fetch + "?offset=0&max_wait_ms=99999999"), 400, "INVALID_REQUEST")
    _expect(await leader.call("GET", fetch + "?offset=0&replica=mine"), 400, "INVALID_REQUEST")
    _expect(await follower.call("GET", fetch + "?offset=0"), 421, "NOT_LEADER")
    offsets = f"/v1/topics/{TOPIC}/partitions/0/offsets"
    _expect(await leader.call("GET", offsets + "?at=-4"), 400, "INVALID_OFFSET")
    _expect(await leader.call("GET", offsets + "?at=soon"), 400, "INVALID_OFFSET")

    # Nothing above changed any replica, and a good request still works.
    assert await _log_ends(cluster) == cluster_ends
    status, body = await leader.call("POST", produce, json_body={"acks": "all", "records": [{"value": "after"}]})
    assert status == 200 and body["base_offset"] == dict(((b, p), e) for b, p, e in cluster_ends)[(1, 0)], body
    status, body = await leader.call("GET", fetch + f"?offset={body['base_offset'] - 1}")
    assert [r["value"] for r in body["records"]] == ["before", "after"]


async def test_json_produce_by_key_and_offsets(api: tuple[Api, Api, LocalCluster]) -> None:
    first, _leader, cluster = api
    from raftmq.cluster.routing import partition_for

    partition = partition_for(b"user-42", 2)
    leader_id = cluster.wait_for_leader(TOPIC, partition)
    leader = Api(first.session, cluster.nodes[leader_id].url)
    status, body = await leader.call("POST", f"/v1/topics/{TOPIC}/records",
                                     json_body={"key": "user-42", "acks": "all",
                                                "records": [{"value": "a"}, {"value": "b"}]})
    assert status == 200 and body["partition"] == partition and body["record_count"] == 2, body
    status, earliest = await leader.call("GET", f"/v1/topics/{TOPIC}/partitions/{partition}/offsets?at=earliest")
    status2, latest = await leader.call("GET", f"/v1/topics/{TOPIC}/partitions/{partition}/offsets?at=latest")
    assert status == status2 == 200 and earliest["offset"] == 0 and latest["offset"] >= 2
    status, by_time = await leader.call("GET", f"/v1/topics/{TOPIC}/partitions/{partition}/offsets?at=0")
    assert status == 200 and by_time["offset"] == 0
    status, future = await leader.call("GET", f"/v1/topics/{TOPIC}/partitions/{partition}/offsets?at=99999999999999")
    assert status == 200 and future["offset"] is None
