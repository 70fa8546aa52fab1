"""Fixtures for the chaos tests: a Toxiproxy server, a client for it, and loopback upstream servers.

The server is the one at `$TOXIPROXY_URL` when that is set (an already running server, e.g. a real
`toxiproxy-server`); otherwise `ToxiproxyServerProcess` starts one per test module on a free port: a real
`toxiproxy-server` if one is on PATH or named by `$TOXIPROXY_SERVER`, else `python -m raftmq.chaos.toxiproxy`.

Upstreams are plain threaded socket servers (the tests and toxiproxy-python block, so no event loop here).
Every blocking call in them has a timeout, and every wait is for a condition with a deadline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import pytest
from raftmq.chaos.proxy_client import ProxyClient, ToxiproxyServerProcess

# Long enough for a loaded CI machine, short enough that a hang fails fast.
io_timeout_s: Final = 5.0
condition_deadline_s: Final = 5.0
_upstream_read_bytes: Final = 64 * 1024
_thread_join_deadline_s: Final = 2.0


def wait_until(predicate: Callable[[], bool], what: str, deadline_s: float = condition_deadline_s) -> None:
    """Poll a condition until it holds; fail the test naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.01)


@dataclass(frozen=True)
class ToxiproxyServer:
    """The server under test: its URL and what it is ("raftmq", "toxiproxy-server" or "external")."""

    url: str
    kind: str

    @property
    def is_raftmq(self) -> bool:
        return self.kind == "raftmq"


@pytest.fixture(scope="module")
def toxiproxy_server() -> Iterator[ToxiproxyServer]:
    url = os.environ.get("TOXIPROXY_URL", "").strip()
    if url:
        ProxyClient.from_url(url).version()  # Fail here, clearly, if nothing answers.
        yield ToxiproxyServer(url, "external")
        return
    process = ToxiproxyServerProcess(seed=20240601)
    process.start()
    try:
        yield ToxiproxyServer(process.url, process.kind)
    finally:
        process.stop()


@pytest.fixture
def toxiproxy(toxiproxy_server: ToxiproxyServer) -> Iterator[ProxyClient]:
    """A client for the server under test; the server has no proxies before and after each test."""
    client = ProxyClient.from_url(toxiproxy_server.url)
    client.destroy_all()
    try:
        yield client
    finally:
        client.destroy_all()


@pytest.fixture
def raftmq_only(toxiproxy_server: ToxiproxyServer) -> None:
    """Skip a test of raftmq's server where it deliberately differs from (or goes beyond) Toxiproxy."""
    if not toxiproxy_server.is_raftmq:
        pytest.skip(f"checks raftmq's server, not {toxiproxy_server.kind}")


class Upstream:
    """A loopback TCP server on threads. `echo` sends back what it reads; `greet` sends `greeting` and closes.

    Counts connections and bytes received so tests can wait for them instead of sleeping.
    """

    def __init__(self, behaviour: str = "echo", greeting: bytes = b"hello\n") -> None:
        assert behaviour in ("echo", "greet"), behaviour
        self.behaviour = behaviour
        self.greeting = greeting
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._condition = threading.Condition()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.bytes_received = 0
        self._stopping = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"upstream {self.port}", daemon=True
        )
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, _peer = self._listener.accept()
            except OSError:
                return  # The listener was shut down.
            connection.settimeout(None)  # Blocking; stop() wakes it with shutdown().
            with self._condition:
                if self._stopping:
                    connection.close()
                    return
                self._sockets.append(connection)
                self.accepted += 1
                thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
                self._threads.append(thread)
                self._condition.notify_all()
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.behaviour == "greet":
                connection.sendall(self.greeting)
                return
            while True:
                data = connection.recv(_upstream_read_bytes)
                if not data:
                    return
                with self._condition:
                    self.bytes_received += len(data)
                    self._condition.notify_all()
                connection.sendall(data)
        except OSError:
            return  # Reset by the proxy, or shut down by stop().
        finally:
            connection.close()

    def wait_accepted(self, count: int) -> None:
        wait_until(lambda: self.accepted >= count, f"{count} connections at upstream {self.address}")

    def wait_received(self, byte_count: int) -> None:
        wait_until(
            lambda: self.bytes_received >= byte_count, f"{byte_count} bytes at upstream {self.address}"
        )

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # Wakes accept() (closing alone does not).
        except OSError:
            pass  # Not connected/listening any more.
        self._listener.close()
        self._accept_thread.join(_thread_join_deadline_s)
        for connection in sockets:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # Wakes its thread, which closes it.
            except OSError:
                pass  # Already closed by its thread.
        for thread in threads:
            thread.join(_thread_join_deadline_s)


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., Upstream]]:
    upstreams: list[Upstream] = []

    def make(behaviour: str = "echo", greeting: bytes = b"hello\n") -> Upstream:
        upstream = Upstream(behaviour, greeting)
        upstreams.append(upstream)
        return upstream

    try:
        yield make
    finally:
        for upstream in upstreams:
            upstream.stop()


@pytest.fixture
def echo_upstream(upstream_factory: Callable[..., Upstream]) -> Upstream:
    return upstream_factory("echo")
