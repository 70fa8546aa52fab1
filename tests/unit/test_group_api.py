"""The consumer-group and share-group HTTP routes (node/api.py) on an in-process cluster: msgpack bodies are
validated before anything is proposed, and every refusal is a coded error with its HTTP status.

Method: raw HTTP requests (aiohttp) with msgpack bodies, good and bad, against a real broker's API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from tests.inprocess import InProcessCluster

pytestmark = pytest.mark.asyncio
MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


async def call(session: aiohttp.ClientSession, cluster: InProcessCluster, method: str, path: str,
               body: Any = None) -> tuple[int, dict[str, Any]]:
    """Ask every broker until one is not a redirect (NOT_COORDINATOR); returns (status, decoded body)."""
    answer: tuple[int, dict[str, Any]] = (0, {})
    for url in cluster.urls:
        data = msgpack.packb(body, use_bin_type=True) if body is not None else None
        async with session.request(method, url + path, data=data, headers=MSGPACK) as response:
            answer = (response.status, msgpack.unpackb(await response.read(), raw=False))
        if answer[1].get("error", {}).get("code") != "NOT_COORDINATOR":
            return answer
    return answer


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/groups/bad%20id/heartbeat", {"member_epoch": 0, "subscription": {"topics": ["t"]}}, 400, "INVALID_GROUP_ID"),
    ("/v1/groups/g/heartbeat", {"member_epoch": 0}, 400, "INVALID_REQUEST"),  # joining needs a subscription
    ("/v1/groups/g/heartbeat", {"member_epoch": 3}, 400, "INVALID_REQUEST"),  # and later a member id
    ("/v1/groups/g/heartbeat", {"member_epoch": -7, "member_id": "m"}, 400, "INVALID_REQUEST"),
    ("/v1/groups/g/heartbeat", {"member_epoch": 0, "subscription": {"pattern": "a b"}}, 400, "INVALID_REQUEST"),
    ("/v1/groups/g/heartbeat", {"member_epoch": 0, "subscription": {"topics": ["t"]}, "extra": 1}, 400,
     "INVALID_REQUEST"),
    ("/v1/groups/g/offsets", {"offsets": []}, 400, "INVALID_REQUEST"),
    ("/v1/groups/g/offsets", {"offsets": [{"topic": "t", "partition": 0, "offset": -1}]}, 400, "INVALID_REQUEST"),
    ("/v1/groups/g/offsets", {"offsets": [{"topic": "t", "partition": 0, "offset": 1, "metadata": "x" * 5000}]},
     400, "INVALID_REQUEST"),
    ("/v1/share-groups/g/acquire", {"member_id": "m", "topic": "t", "partition": 0, "log_end": 5,
                                    "max_records": 0, "lock_ms": 1000, "max_deliveries": 3}, 400, "INVALID_REQUEST"),
    ("/v1/share-groups/g/acknowledge", {"member_id": "m", "topic": "t", "partition": 0, "acks": [[0, "maybe"]]},
     400, "INVALID_REQUEST"),
])
async def test_bad_group_requests_are_refused_with_codes(tmp_path: Path, path: str, body: Any, status: int,
                                                         code: str) -> None:
    async with InProcessCluster(tmp_path, brokers=1) as cluster, aiohttp.ClientSession() as session:
        got_status, answer = await call(session, cluster, "POST", path, body)
        assert (got_status, answer["error"]["code"]) == (status, code), answer


async def test_a_group_round_trip_over_http(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster, aiohttp.ClientSession() as session:
        await cluster.create_topic("t", partitions=2)
        status, joined = await call(session, cluster, "POST", "/v1/groups/g/heartbeat",
                                    {"member_epoch": 0, "member_id": "m1", "subscription": {"topics": ["t"]},
                                     "session_timeout_ms": 5000})
        assert status == 200 and joined["assignment"] == [["t", 0], ["t", 1]]
        assert joined["heartbeat_interval_ms"] == 5000 // 3 and joined["reconciling"] is False
        status, committed = await call(session, cluster, "POST", "/v1/groups/g/offsets",
                                       {"member_id": "m1", "member_epoch": joined["member_epoch"],
                                        "offsets": [{"topic": "t", "partition": 1, "offset": 7, "metadata": "m"}]})
        assert (status, committed) == (200, {"committed": 1})
        status, fenced = await call(session, cluster, "POST", "/v1/groups/g/offsets",
                                    {"member_id": "m1", "member_epoch": joined["member_epoch"] + 5,
                                     "offsets": [{"topic": "t", "partition": 1, "offset": 9}]})
        assert (status, fenced["error"]["code"]) == (409, "STALE_MEMBER_EPOCH")
        status, offsets = await call(session, cluster, "GET", "/v1/groups/g/offsets")
        assert [(o["partition"], o["offset"], o["metadata"]) for o in offsets["offsets"]] == [(1, 7, "m")]
        status, described = await call(session, cluster, "GET", "/v1/groups/g")
        assert status == 200 and described["group"]["members"][0]["member_id"] == "m1"
        status, missing = await call(session, cluster, "GET", "/v1/groups/nobody")
        assert (status, missing["error"]["code"]) == (404, "GROUP_ID_NOT_FOUND")
        status, left = await call(session, cluster, "POST", "/v1/groups/g/heartbeat",
                                  {"member_epoch": -1, "member_id": "m1"})
        assert status == 200 and left["member_epoch"] == -1
        status, gone = await call(session, cluster, "POST", "/v1/groups/g/heartbeat",
                                  {"member_epoch": 2, "member_id": "m1"})
        assert (status, gone["error"]["code"]) == (409, "UNKNOWN_MEMBER_ID")
