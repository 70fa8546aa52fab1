"""The hostile neighbour's own behaviour, against small loopback servers instead of a cluster.

Goal: every class of abuse runs and its outcomes are counted the way the verdict reads them: a peer port that
hangs up on garbage gives ``closed``; malformed requests get status classes; slow and idle connections that
the broker's HTTP guard (short head deadline here) cuts give ``closed_by_broker``; the report is written.
Method: ``chaos.hostile.run`` for a few seconds against a TCP server that closes after the first bytes and
the broker's own guarded aiohttp runner with a 1 s head deadline; the outcome counts are asserted as
classes present, not exact numbers (they depend on the machine's speed).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from raftmq.chaos import hostile
from raftmq.node.http_server import GuardedAppRunner

RUN_S = 3.0


async def _hang_up_on_first_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.close()


async def test_every_class_of_abuse_runs_and_is_counted() -> None:
    peer = await asyncio.start_server(_hang_up_on_first_bytes, "127.0.0.1", 0)
    peer_port = peer.sockets[0].getsockname()[1]
    app = web.Application()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/v1/health", health)
    runner = GuardedAppRunner(app, connections_max=1024, head_timeout_s=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    try:
        report = await hostile.run(f"127.0.0.1:{peer_port}", [f"http://127.0.0.1:{http_port}"], "chaos", RUN_S, 5)
    finally:
        await runner.cleanup()
        peer.close()
        await peer.wait_closed()
    classes = report["classes"]
    assert set(classes) == {"peer_garbage", "http_malformed", "slow_connections", "stuck_consumers"}
    assert classes["peer_garbage"].get("closed", 0) > 0 and "held" not in classes["peer_garbage"]
    assert classes["http_malformed"].get("4xx", 0) > 0  # unknown paths and bad requests
    assert classes["slow_connections"].get("closed_by_broker", 0) > 0  # the 1 s head deadline
    assert sum(classes["stuck_consumers"].values()) == hostile.limits.hostile_stuck_consumers_max
