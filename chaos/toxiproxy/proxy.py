"""A proxy: one listener and the connections it accepted, each with one asyncio task pair.

Per connection: the `upstream` task dials the upstream, then pumps client→upstream; once dialed it starts the
`downstream` task, which pumps upstream→client. Both are tracked by the connection and cancelled when it
closes; a proxy stops by closing its listener (new connects are refused at once) and closing every
connection (FIN both sides), waiting for them with a deadline.

Each connection is an explicit state machine (after TigerBeetle's Vortex proxy), every transition asserted:

    connecting ──▶ proxying ──▶ closing ──▶ closed
        └──────────────────────────▲
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Coroutine
from typing import Any, Final

from . import errors, limits
from .link import Endpoint, Link
from .toxics import Direction, ToxicWrapper

log: Final = logging.getLogger("raftmq.chaos.toxiproxy.proxy")

default_listen: Final = "127.0.0.1:0"  # Go Toxiproxy listens on all interfaces for ""; loopback is safer.
_listen_backlog: Final = 128


# --- addresses --------------------------------------------------------------------------------------


class AddressError(ValueError):
    """An address that is not `host:port` (Go's net.SplitHostPort / port parsing messages)."""


def split_host_port(address: str) -> tuple[str, int]:
    """Parse `host:port` or `[v6]:port` like Go's net.SplitHostPort; the port must be numeric."""
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise AddressError(f"address {address}: missing ']' in address")
        host, rest = address[1:close], address[close + 1 :]
        if not rest.startswith(":"):
            raise AddressError(f"address {address}: missing port in address")
        port_text = rest[1:]
    else:
        if ":" not in address:
            raise AddressError(f"address {address}: missing port in address")
        host, port_text = address.rsplit(":", 1)
        if ":" in host:
            raise AddressError(f"address {address}: too many colons in address")
    if not port_text.isdigit() or not port_text.isascii():
        raise AddressError(f"address {address}: invalid port")
    port = int(port_text)
    if port > 65535:
        raise AddressError(f"address {address}: invalid port")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_listen(listen: str) -> str:
    """The listen address as stored: "" becomes 127.0.0.1:0 and IP literals are written canonically.

    Raises AddressError for text that is not an address (the API answers 400).
    """
    if listen == "":
        return default_listen
    host, port = split_host_port(listen)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass  # A host name (or "" for all interfaces): kept as given, resolved when listening.
    return join_host_port(host, port)


async def open_listener(listen: str) -> socket.socket:
    """Bind and listen on `listen` (SO_REUSEADDR); ApiError 500 with Go's wording if that fails."""
    host, port = split_host_port(listen)
    loop = asyncio.get_running_loop()
    bind_host = host or "0.0.0.0"  # Go: an empty host means every interface.
    try:
        infos = await loop.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise errors.listen_failed(f"listen tcp: lookup {bind_host}: {error.strerror}") from error
    # Go listens on the first address of a name, preferring IPv4.
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    family, _type, proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_listen_backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        reason = os.strerror(error.errno).lower() if error.errno else str(error)
        raise errors.listen_failed(f"listen tcp {join_host_port(bind_host, port)}: bind: {reason}") from error
    return sock


# --- connections ------------------------------------------------------------------------------------


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"  # Client accepted; dialing the upstream.
    PROXYING = "proxying"  # Both links pumping.
    CLOSING = "closing"  # Sockets closing; tasks cancelled.
    CLOSED = "closed"  # Both sockets gone; forgotten by the proxy.


_transitions: Final = {
    ConnectionState.CONNECTING: {ConnectionState.PROXYING, ConnectionState.CLOSING},
    ConnectionState.PROXYING: {ConnectionState.CLOSING},
    ConnectionState.CLOSING: {ConnectionState.CLOSED},
    ConnectionState.CLOSED: set(),
}


class Connection:
    """One client connection through a proxy, with its upstream connection and its two links."""

    def __init__(self, proxy: Proxy, client: Endpoint, number: int) -> None:
        assert client.connection is None
        self.proxy = proxy
        self.number = number
        self.state = ConnectionState.CONNECTING
        self.client = client
        client.connection = self
        self.upstream: Endpoint | None = None
        self.links: dict[Direction, Link] = {}
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._abort_handle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.proxy.name}#{self.number} {self.state.value}>"

    @property
    def is_closing(self) -> bool:
        return self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    def _transition(self, target: ConnectionState) -> None:
        assert target in _transitions[self.state], f"{self!r}: {self.state.value} -> {target.value}"
        self.state = target

    def begin(self) -> None:
        assert self.state is ConnectionState.CONNECTING
        self._spawn(self._run_upstream(), "upstream")

    def _spawn(self, coroutine: Coroutine[Any, Any, None], direction: str) -> None:
        name = f"toxiproxy {self.proxy.name}#{self.number} {direction}"
        task = self._loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_upstream(self) -> None:
        try:
            if await self._dial_upstream():
                self._spawn(self._pump(self.links[Direction.DOWNSTREAM]), "downstream")
                await self._pump(self.links[Direction.UPSTREAM])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r: unexpected error", self)
            self.close(reset=False, reason="internal error")

    async def _dial_upstream(self) -> bool:
        try:
            host, port = split_host_port(self.proxy.upstream)
        except AddressError as error:
            log.warning("%r: bad upstream %r: %s", self, self.proxy.upstream, error)
            self.close(reset=False, reason="bad upstream")
            return False
        try:
            async with asyncio.timeout(limits.upstream_connect_timeout_s):
                _transport, endpoint = await self._loop.create_connection(
                    lambda: Endpoint("upstream"), host or "127.0.0.1", port
                )
        except (OSError, TimeoutError) as error:
            log.info("%r: cannot reach upstream %s: %s", self, self.proxy.upstream, error)
            self.close(reset=False, reason="upstream unreachable")
            return False
        assert isinstance(endpoint, Endpoint)
        if self.is_closing:  # Closed while dialing, without cancelling this task (it closed itself).
            endpoint.close(reset=False)
            return False
        endpoint.connection = self
        self.upstream = endpoint
        rng = self.proxy.rng
        forwarded = self.proxy.count_forwarded
        self.links[Direction.UPSTREAM] = Link(self, Direction.UPSTREAM, self.client, endpoint, rng, forwarded)
        self.links[Direction.DOWNSTREAM] = Link(
            self, Direction.DOWNSTREAM, endpoint, self.client, rng, forwarded
        )
        self._transition(ConnectionState.PROXYING)
        # The toxics start on the new links now: this is where toxicity is rolled for this connection.
        for wrapper in self.proxy.toxic_chain():
            self.links[wrapper.direction].add_toxic(wrapper)
        if endpoint.lost or self.client.lost:  # Lost before this connection took ownership.
            self.close(reset=False, reason="socket lost during setup")
            return False
        return True

    async def _pump(self, link: Link) -> None:
        try:
            await link.pump()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r: unexpected error on the %s link", self, link.direction.value)
            self.close(reset=False, reason="internal error")

    # --- toxic changes reach live links ------------------------------------------------------------

    def add_toxic(self, wrapper: ToxicWrapper) -> None:
        if self.state is ConnectionState.PROXYING:
            self.links[wrapper.direction].add_toxic(wrapper)

    def update_toxic(self, wrapper: ToxicWrapper) -> None:
        if self.state is ConnectionState.PROXYING:
            self.links[wrapper.direction].update_toxic(wrapper)

    def remove_toxic(self, wrapper: ToxicWrapper) -> None:
        if self.state is ConnectionState.PROXYING:
            self.links[wrapper.direction].remove_toxic(wrapper)

    # --- closing -----------------------------------------------------------------------------------

    def link_finished(self, link: Link) -> None:
        assert link.finished
        if all(each.finished for each in self.links.values()):
            self.close(reset=False, reason="both sides closed")

    def endpoint_lost(self, endpoint: Endpoint, exc: Exception | None) -> None:
        if not self.is_closing:
            self.close(reset=False, reason=f"{endpoint.side} socket lost: {exc}")
        self._check_closed()

    def close(self, *, reset: bool, reason: str) -> None:
        """Close both sockets (FIN, or RST if `reset`) and cancel the tasks; idempotent."""
        if self.is_closing:
            return
        log.debug("%r: closing (%s, %s)", self, "reset" if reset else "fin", reason)
        self._transition(ConnectionState.CLOSING)
        for link in self.links.values():
            link.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for endpoint in (self.client, self.upstream):
            if endpoint is not None:
                endpoint.close(reset=reset)
        if not reset:
            self._abort_handle = self._loop.call_later(limits.close_flush_deadline_s, self.abort)
        self._check_closed()

    def abort(self) -> None:
        """Drop whatever is still unsent and close now (after the flush deadline, or when stopping)."""
        for endpoint in (self.client, self.upstream):
            if endpoint is not None:
                endpoint.abort()

    def _check_closed(self) -> None:
        if self.state is not ConnectionState.CLOSING:
            return
        if not self.client.lost or (self.upstream is not None and not self.upstream.lost):
            return
        self._transition(ConnectionState.CLOSED)
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if not self._closed.done():
            self._closed.set_result(None)
        self.proxy.forget(self)

    async def wait_closed(self) -> None:
        """Wait until both sockets are gone and both tasks have ended."""
        await asyncio.shield(self._closed)
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# --- proxies ----------------------------------------------------------------------------------------


class Proxy:
    """A named listener forwarding to `upstream` through the toxics of both directions."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random) -> None:
        assert name, "a proxy has a name"
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.rng = rng
        self.enabled = False
        self.toxics: dict[str, ToxicWrapper] = {}
        self.bytes_forwarded: dict[Direction, int] = {direction: 0 for direction in Direction}
        self._next_toxic_sequence = 1
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._connections_accepted = 0

    def __repr__(self) -> str:
        return f"<Proxy {self.name} {self.listen} -> {self.upstream} {'on' if self.enabled else 'off'}>"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # --- listening ---------------------------------------------------------------------------------

    async def start(self) -> bool:
        """Listen (and show the bound address in `listen`); False if it was already listening."""
        if self.enabled:
            assert self._server is not None
            return False
        assert self._server is None
        sock = await open_listener(self.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Endpoint("client", self._accept), sock=sock, start_serving=True
            )
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        self.listen = join_host_port(host, port)
        self.enabled = True
        log.info("%r: listening", self)
        return True

    async def stop(self) -> None:
        """Stop listening (new connects are refused) and close every connection (FIN)."""
        if not self.enabled:
            return
        assert self._server is not None
        server, self._server = self._server, None
        self.enabled = False
        server.close()  # Closes the listening socket now: ECONNREFUSED from here on.
        connections = list(self._connections)
        for connection in connections:
            connection.close(reset=False, reason="proxy stopped")
        if connections:
            waits = [asyncio.ensure_future(connection.wait_closed()) for connection in connections]
            _done, pending = await asyncio.wait(waits, timeout=limits.proxy_stop_deadline_s)
            for wait in pending:
                wait.cancel()
            if pending:
                log.warning("%r: %d connections did not close in time", self, len(pending))
        log.info("%r: stopped", self)

    def _accept(self, client: Endpoint) -> None:
        assert client.transport is not None
        if not self.enabled or len(self._connections) >= limits.proxy_connections_max:
            log.warning("%r: refusing a connection (%d open)", self, len(self._connections))
            client.close(reset=False)
            return
        self._connections_accepted += 1
        connection = Connection(self, client, self._connections_accepted)
        self._connections.add(connection)
        connection.begin()

    def forget(self, connection: Connection) -> None:
        assert connection.state is ConnectionState.CLOSED
        self._connections.discard(connection)

    def count_forwarded(self, direction: Direction, byte_count: int) -> None:
        self.bytes_forwarded[direction] += byte_count

    # --- toxics ------------------------------------------------------------------------------------

    def toxic_chain(self) -> list[ToxicWrapper]:
        """All upstream toxics, then all downstream ones, each in insertion order (Toxiproxy's listing)."""
        ordered = sorted(self.toxics.values(), key=lambda wrapper: wrapper.sequence)
        return [wrapper for wrapper in ordered if wrapper.direction is Direction.UPSTREAM] + [
            wrapper for wrapper in ordered if wrapper.direction is Direction.DOWNSTREAM
        ]

    def add_toxic(self, wrapper: ToxicWrapper) -> None:
        assert wrapper.name not in self.toxics
        assert len(self.toxics) < limits.toxics_per_proxy_max
        wrapper.sequence = self._next_toxic_sequence
        self._next_toxic_sequence += 1
        self.toxics[wrapper.name] = wrapper
        for connection in list(self._connections):
            connection.add_toxic(wrapper)

    def update_toxic(self, wrapper: ToxicWrapper, attributes: dict[str, int], toxicity: float) -> None:
        assert self.toxics.get(wrapper.name) is wrapper
        assert set(attributes) == set(wrapper.toxic.attributes)
        wrapper.toxic.attributes = attributes
        wrapper.toxicity = toxicity
        for connection in list(self._connections):
            connection.update_toxic(wrapper)

    def remove_toxic(self, name: str) -> None:
        wrapper = self.toxics.pop(name)
        for connection in list(self._connections):
            connection.remove_toxic(wrapper)

    def remove_all_toxics(self) -> None:
        for wrapper in self.toxic_chain():
            self.remove_toxic(wrapper.name)
        assert not self.toxics

    def snapshot(self) -> dict[str, object]:
        # Key order follows Go's Proxy struct plus the `toxics` list.
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [wrapper.snapshot() for wrapper in self.toxic_chain()],
        }
