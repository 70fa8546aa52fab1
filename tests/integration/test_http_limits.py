"""The client port's limits (node/http_server.py, node/api.py read_body): slowloris heads and silent connections
are closed, the connection cap makes room by closing the quietest connection and answers 503 when all are busy,
and a body that does not arrive in time is a coded 408.

Method: the real GuardedAppRunner and error middleware serving a small app on loopback with short deadlines;
raw sockets play the slow or greedy clients. These tests also fail if an aiohttp upgrade renames the two
RequestHandler fields the guard relies on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from raftmq.cluster import limits
from raftmq.deploy.local_cluster import find_free_ports
from raftmq.node.api import error_middleware, read_body
from raftmq.node.http_server import GuardedAppRunner

from tests.conftest import wait_for_condition

HEAD_TIMEOUT_S = 0.5
CONNECTIONS_MAX = 8


class Server:
    def __init__(self, runner: GuardedAppRunner, port: int, release: asyncio.Event) -> None:
        self.runner = runner
        self.port = port
        self.release = release

    @property
    def stats(self) -> dict[str, int]:
        return self.runner.guard.stats


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await release.wait()  # busy until the test lets go
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await read_body(request))

    app = web.Application(middlewares=[error_middleware], client_max_size=limits.request_bytes_max)
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    runner = GuardedAppRunner(app, connections_max=CONNECTIONS_MAX, head_timeout_s=HEAD_TIMEOUT_S,
                              keepalive_timeout=30.0, access_log=None)
    await runner.setup()
    port = find_free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Server(runner, port, release)
    finally:
        release.set()
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5)


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sent until it closed; fails if it did not close in time."""
    data = b""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


async def _get(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), timeout=5)


async def test_slowloris_head_is_cut(server: Server) -> None:
    reader, writer = await _connect(server.port)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    await writer.drain()
    assert await _closed_within(reader, 5) == b""
    assert server.stats["head_timeouts"] == 1
    writer.close()


async def test_silent_connection_is_cut(server: Server) -> None:
    reader, writer = await _connect(server.port)
    assert await _closed_within(reader, 5) == b""
    writer.close()


async def test_kept_alive_connection_serves_many_requests_then_a_slow_head_is_cut(server: Server) -> None:
    reader, writer = await _connect(server.port)
    for _ in range(3):
        assert b"200 OK" in await _get(writer, reader, "/ok")
        await asyncio.sleep(HEAD_TIMEOUT_S * 1.5)  # the behaviour under test: idling between requests is allowed
    writer.write(b"GET /ok HTTP/1.1\r\n")
    await writer.drain()
    assert await _closed_within(reader, 5) == b""
    writer.close()


async def test_the_cap_closes_the_quietest_connection(server: Server) -> None:
    conns = [await _connect(server.port) for _ in range(CONNECTIONS_MAX)]
    await wait_for_condition(lambda: len(server.runner.guard.open) == CONNECTIONS_MAX, timeout_s=5,
                             what="every connection to be accepted")
    newcomer = await _connect(server.port)
    assert b"200 OK" in await _get(newcomer[1], newcomer[0], "/ok")
    assert await _closed_within(conns[0][0], 5) == b""  # the oldest quiet one made room
    assert server.stats["idle_evicted"] >= 1
    for _, writer in [*conns, newcomer]:
        writer.close()


async def test_the_cap_refuses_when_every_connection_is_busy(server: Server) -> None:
    busy = []
    for _ in range(CONNECTIONS_MAX):
        reader, writer = await _connect(server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        busy.append((reader, writer))
    guard = server.runner.guard
    await wait_for_condition(lambda: len(guard.open) == CONNECTIONS_MAX and all(h.busy for h in guard.open),
                             timeout_s=5, what="every connection to be busy")
    reader, writer = await _connect(server.port)
    answer = await _closed_within(reader, 5)
    assert answer.startswith(b"HTTP/1.1 503")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "TOO_MANY_CONNECTIONS"
    assert server.stats["connections_refused"] == 1
    server.release.set()
    for busy_reader, busy_writer in busy:
        assert b"200 OK" in await asyncio.wait_for(busy_reader.readuntil(b"\r\n\r\n"), timeout=5)
        busy_writer.close()
    writer.close()


async def test_a_body_that_does_not_arrive_is_a_coded_408(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "http_request_body_timeout_s", 0.3)
    reader, writer = await _connect(server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()


@pytest.mark.parametrize("content_encoding", ["gzip", "deflate", "br"])
async def test_a_body_that_is_not_what_its_encoding_says(server: Server, content_encoding: str) -> None:
    reader, writer = await _connect(server.port)
    body = b'{"a": 1}'
    writer.write(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: "
                 f"{content_encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    status = int(head.split(b" ")[1])
    assert 400 <= status < 500, head
    writer.close()



async def test_shutdown_releases_a_connection_whose_peer_stopped_reading() -> None:
    """A response streamed to a client that stopped reading fills the socket buffers; closing such a transport
    would wait for the buffered output forever. The port's cleanup aborts it: its socket is released at once."""
    flooding = asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65_536
        for _ in range(1_000):  # 64 MiB at most: far more than the socket buffers hold
            flooding.set()
            await response.write(chunk)  # blocks in drain once the peer's buffers are full
        return response

    app = web.Application()
    app.router.add_get("/flood", flood)
    runner = GuardedAppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    port = find_free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    try:
        writer.write(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(flooding.wait(), 10)
        (handler,) = runner.guard.open
        transport = handler.raw_transport
        assert transport is not None
        await wait_for_condition(lambda: transport.get_write_buffer_size() > 0, timeout_s=10,  # type: ignore[attr-defined]
                                 what="output buffered for a peer that does not read")
        await asyncio.wait_for(runner.cleanup(), 10)
        await wait_for_condition(lambda: transport.get_extra_info("socket") is None or
                                 transport.get_extra_info("socket").fileno() == -1, timeout_s=5,
                                 what="the server's socket released")
    finally:
        writer.close()
