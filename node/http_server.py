"""The client port's HTTP server: aiohttp with the limits a port open to the network needs.

aiohttp serves the requests; this module bounds what one client can hold on to:

* ``http_connections_max`` connections at once. At the cap, of the connections not busy with a request
  (idle between requests, or still sending one) the one quiet the longest is closed to make room; if every
  one is busy, the new connection is answered ``503 TOO_MANY_CONNECTIONS`` and closed. So idle or stalled
  connections cannot lock clients out, and the file descriptors a client port uses are bounded.
* A request head (request line and headers) must arrive within ``http_request_head_timeout_s`` of the
  connection opening or of its first byte; a slowloris connection that dribbles headers is closed.
* A keep-alive connection idle for ``http_idle_timeout_s`` is closed (above the client library's own
  idle timeout, so the client closes first and never reuses a connection the broker is closing).
* The body must arrive within ``http_request_body_timeout_s`` (enforced where it is read: ``node/api.py``).

aiohttp has no hook for the first two, so ``GuardedRequestHandler`` watches two fields of its
``RequestHandler`` (``_request_count``, bumped when a request head has been parsed, and
``_request_in_progress``); ``tests/integration/test_http_limits.py`` fails if an aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from raftmq.cluster import limits
from raftmq.cluster.errors import TooManyConnections

log = logging.getLogger(__name__)


class ConnectionGuard:
    """Counts and limits the connections of one client port (asyncio thread only)."""

    def __init__(self, *, connections_max: int, head_timeout_s: float) -> None:
        self.connections_max = connections_max
        self.head_timeout_s = head_timeout_s
        self.open: set[GuardedRequestHandler] = set()
        self.closed = False  # the port was shut down: a connection accepted in the race is closed at once
        self.stats = {"connections_refused": 0, "idle_evicted": 0, "head_timeouts": 0}

    def admit(self, handler: GuardedRequestHandler) -> bool:
        """Make room for ``handler`` if needed; False when every open connection is busy."""
        if len(self.open) >= self.connections_max:
            quiet = [other for other in self.open if not other.busy]
            if not quiet:
                self.stats["connections_refused"] += 1
                return False
            victim = min(quiet, key=lambda other: other.last_activity)
            self.stats["idle_evicted"] += 1
            self.open.discard(victim)
            victim.drop()
        self.open.add(handler)
        return True


def _refusal() -> bytes:
    error = TooManyConnections(f"this broker already serves {limits.http_connections_max} busy client "
                               "connections; retry shortly or use another broker")
    body = json.dumps({"error": error.to_wire()}).encode() + b"\n"
    head = (f"HTTP/1.1 {error.http_status} Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol plus the connection cap and the request-head deadline."""

    def __init__(self, manager: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self.last_activity = 0.0
        # aiohttp forgets the transport when it closes it, but a close waits for buffered output to drain:
        # the port's cleanup aborts what a peer that stopped reading would otherwise keep open forever.
        self.raw_transport: asyncio.BaseTransport | None = None

    @property
    def busy(self) -> bool:
        """A request is being handled (its handler runs): the connection is doing useful work."""
        return bool(self._request_in_progress)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.last_activity = self._loop.time()
        if self._guard.closed:
            # Accepted just as the port shut down: aiohttp no longer tracks it, so nobody else would close it.
            transport.close()
            return
        self.raw_transport = transport
        super().connection_made(transport)
        if not self._guard.admit(self):
            transport.write(_refusal())  # type: ignore[attr-defined]
            self.force_close()
            return
        # A new connection must send a whole request head in time, like any other.
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.open.discard(self)
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        if not self._request_in_progress and self._head_timer is None:
            self._start_head_timer()  # the first byte of the next request head
        super().data_received(data)
        if self._request_count != self._head_count:
            self._cancel_head_timer()  # a head arrived: the body deadline takes over (node/api.py)

    def drop(self) -> None:
        self._cancel_head_timer()
        self.force_close()

    def _start_head_timer(self) -> None:
        self._head_count = self._request_count
        self._head_timer = self._loop.call_later(self._guard.head_timeout_s, self._head_deadline)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and not self._request_in_progress:
            self._guard.stats["head_timeouts"] += 1
            log.debug("closing a client connection: no complete request head within %.1f s",
                      self._guard.head_timeout_s)
            self.force_close()


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedRequestHandler``s sharing one ConnectionGuard."""

    def __init__(self, app: web.Application, *, connections_max: int = limits.http_connections_max,
                 head_timeout_s: float = limits.http_request_head_timeout_s, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.http_idle_timeout_s)
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(connections_max=connections_max, head_timeout_s=head_timeout_s)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        guarded = _GuardedServer(server.request_handler, request_factory=server.request_factory,
                                 handler_cancellation=server.handler_cancellation, loop=server._loop,
                                 guard=self.guard, **server._kwargs)
        return guarded

    async def cleanup(self) -> None:
        """aiohttp's shutdown, then abort every connection still open: one accepted while the port was closing
        (aiohttp no longer tracks it), or one whose close waits for a peer that stopped reading to take the
        buffered output (a push consumer that went silent)."""
        self.guard.closed = True
        try:
            await super().cleanup()
        finally:
            for handler in list(self.guard.open):
                self.guard.open.discard(handler)
                if handler.raw_transport is not None:
                    handler.raw_transport.abort()  # type: ignore[attr-defined]


__all__ = ["ConnectionGuard", "GuardedAppRunner", "GuardedRequestHandler"]
