"""client.connection.Connection against real brokers: every failure becomes the right RaftMQError.

Method: real HTTP on loopback (tests/inprocess.py) with injected faults; a closed port for refused
connections. Deadlines are short so the module runs in well under a second or two.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raftmq.client.connection import Connection, MetadataFetcher
from raftmq.client.metadata import ClusterView
from raftmq.cluster.errors import (
    ClientTimeout,
    ConnectionFailed,
    NotLeader,
    OutcomeUnknown,
    RaftMQError,
    RouteNotFound,
    UnexpectedResponse,
)

from tests.inprocess import Fault, InProcessCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(tmp_path, brokers=2) as brokers:
        await brokers.create_topic("t", 2)
        yield brokers


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    connection = Connection(request_timeout_ms=2000, connect_timeout_ms=500)
    yield connection
    await connection.close()


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here now


async def test_ok_answer_is_decoded(cluster: InProcessCluster, conn: Connection) -> None:
    answer = await conn.request("GET", cluster.urls[0] + "/v1/health")
    assert {k: answer[k] for k in ("status", "broker_id", "ready", "cluster_id")} == {
        "status": "ok", "broker_id": 1, "ready": True, "cluster_id": "raftmq-inprocess"}
    assert cluster.requests[-1].path == "/v1/health"


async def test_error_body_becomes_its_class_with_details(cluster: InProcessCluster, conn: Connection) -> None:
    cluster.inject("health", Fault("error", "OUTCOME_UNKNOWN", {"raft_index": 12}))
    with pytest.raises(OutcomeUnknown) as info:
        await conn.request("GET", cluster.urls[0] + "/v1/health")
    assert info.value.details == {"raft_index": 12} and info.value.definite is False
    cluster.set_leader("t", 0, 2)
    with pytest.raises(NotLeader) as not_leader:
        await conn.request("GET", cluster.urls[0] + "/v1/topics/t/partitions/0/offsets",
                           params={"at": "latest"})
    assert not_leader.value.details["leader_url"] == cluster.urls[1]


async def test_unknown_route_is_not_msgpack_error(cluster: InProcessCluster, conn: Connection) -> None:
    # aiohttp's own 404 is text, not a raftmq error body: the client still raises a RaftMQError.
    with pytest.raises(RaftMQError) as info:
        await conn.request("GET", cluster.urls[0] + "/v1/nope")
    assert isinstance(info.value, UnexpectedResponse | RouteNotFound)


async def test_garbage_body_is_unexpected_response(cluster: InProcessCluster, conn: Connection) -> None:
    cluster.inject("health", Fault("garbage"))
    with pytest.raises(UnexpectedResponse):
        await conn.request("GET", cluster.urls[0] + "/v1/health")


async def test_refused_connection_is_definite_connection_failed(conn: Connection) -> None:
    with pytest.raises(ConnectionFailed) as info:
        await conn.request("GET", free_port_url() + "/v1/health")
    assert info.value.details["sent"] is False


async def test_dropped_connection_is_indefinite(cluster: InProcessCluster, conn: Connection) -> None:
    cluster.inject("producers", Fault("drop"))
    with pytest.raises(ConnectionFailed) as info:
        await conn.request("POST", cluster.urls[0] + "/v1/producers")
    assert "sent" not in info.value.details and info.value.definite is False
    assert len(cluster.requests_for("/v1/producers")) == 1  # a POST is never retried by the transport


async def test_dropped_get_is_retried_once_by_aiohttp(cluster: InProcessCluster, conn: Connection) -> None:
    # aiohttp resends an idempotent method once after a dropped connection; a second drop surfaces.
    cluster.inject("health", Fault("drop"))
    assert (await conn.request("GET", cluster.urls[0] + "/v1/health"))["status"] == "ok"
    cluster.inject("health", Fault("drop", times=2))
    with pytest.raises(ConnectionFailed):
        await conn.request("GET", cluster.urls[0] + "/v1/health")


async def test_hang_hits_the_client_deadline(cluster: InProcessCluster, conn: Connection) -> None:
    cluster.inject("health", Fault("hang"))
    with pytest.raises(ClientTimeout) as info:
        await conn.request("GET", cluster.urls[0] + "/v1/health", timeout_s=0.2)
    assert info.value.definite is False
    with pytest.raises(ClientTimeout):
        await conn.request("GET", cluster.urls[0] + "/v1/health", timeout_s=0)


async def test_closed_connection_refuses_requests(cluster: InProcessCluster) -> None:
    connection = Connection()
    await connection.close()
    with pytest.raises(ConnectionFailed):
        await connection.request("GET", cluster.urls[0] + "/v1/health")


async def test_metadata_fetcher_skips_dead_bootstrap(cluster: InProcessCluster, conn: Connection) -> None:
    view = ClusterView([free_port_url(), cluster.urls[1]])
    fetcher = MetadataFetcher(conn, view)
    await fetcher.refresh(timeout_s=2.0)
    assert view.partition_count("t") == 2
    assert view.candidate_urls()[0] == cluster.urls[1]  # the one that answered is asked first next time


async def test_metadata_fetcher_fails_when_nobody_answers(conn: Connection) -> None:
    fetcher = MetadataFetcher(conn, ClusterView([free_port_url()]))
    with pytest.raises(ConnectionFailed):
        await fetcher.refresh(timeout_s=1.0)
