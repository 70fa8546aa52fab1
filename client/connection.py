"""HTTP transport to raftmq brokers, plus the small plumbing the producer, consumer and admin share.

* :class:`Connection`: ONE ``aiohttp.ClientSession`` per client object, an explicit ``aiohttp.ClientTimeout``
  and a bounded connection pool. :meth:`Connection.request` sends and accepts msgpack and turns every
  failure into a :class:`~cluster.errors.RaftMQError`:

  ======================================================  ===============================================
  what happened                                           raised
  ======================================================  ===============================================
  error body ``{"error": {"code", ...}}``                 that code's class (``error_from_wire``)
  could not connect (refused, DNS, connect timeout)       ``ConnectionFailed`` with ``details["sent"]=False``
  connection dropped / reset / truncated after sending    ``ConnectionFailed`` (``sent`` True: maybe applied)
  the caller's deadline (``timeout_s``) passed            ``ClientTimeout`` (outcome unknown)
  body is not a msgpack/JSON object, or too large         ``UnexpectedResponse``
  ======================================================  ===============================================

  ``ConnectionFailed`` and ``ClientTimeout`` have ``definite=False`` (the class flag). A connect failure is
  the one case where the client KNOWS the request never left: :func:`attempt_was_definite` reads the
  ``sent=False`` detail so the producer can report such a send as ``failed`` instead of ``unknown``.

* :class:`MetadataFetcher`: fetches ``/v1/metadata`` into a :class:`~client.metadata.ClusterView`,
  single-flight (concurrent callers share one refresh), trying brokers best first.
* :class:`ByteBudget`: a FIFO byte semaphore with deadlines (producer buffer, consumer prefetch).
* :func:`backoff_s`: capped exponential backoff with jitter.

The client never retries a request inside this module; retry policy belongs to the caller, which knows
whether a request is idempotent. One exception is aiohttp's own: it resends an idempotent method (GET,
DELETE) once when a pooled keep-alive connection turns out to be closed; POST is never resent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
import msgpack
from raftmq.client.metadata import ClusterView
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    ClientTimeout,
    ConnectionFailed,
    RaftMQError,
    UnexpectedResponse,
    error_from_wire,
)

MSGPACK: Final = "application/msgpack"



class AsyncLifecycle:
    """``async with`` for the client objects: ``start()`` on entry, ``stop()`` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def attempt_was_definite(error: RaftMQError) -> bool:
    """Whether ``error`` proves the request did NOT take effect.

    The class flag ``definite`` says so for broker errors; a ``ConnectionFailed``/``ClientTimeout`` raised
    before the request was written (``details["sent"] is False``) is definite too.
    """
    return error.definite or error.details.get("sent") is False


def backoff_s(attempt: int, *, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Backoff before retry number ``attempt`` (1 = first retry): ``base * 2**(attempt-1)`` capped at
    ``max_ms``, then "equal jitter" (a uniform draw in [cap/2, cap]) so that clients spread out."""
    cap_ms = min(float(max_ms), base_ms * (2.0 ** max(0, min(attempt - 1, 30))))
    return rng.uniform(cap_ms / 2.0, cap_ms) / 1000.0


class _Progress:
    """How far one request got, filled in by aiohttp trace callbacks (``trace_request_ctx``)."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


async def _on_connected(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
    progress = context.trace_request_ctx
    if isinstance(progress, _Progress):
        progress.connected = True


def _trace_config() -> aiohttp.TraceConfig:
    # A request whose deadline passes before it has a connection was certainly not sent: knowing that
    # lets the producer report "failed" rather than "unknown" for a broker that cannot be reached.
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_on_connected)
    trace.on_connection_reuseconn.append(_on_connected)
    return trace


def _decode_body(data: bytes, content_type: str) -> Any:
    if not data:
        return None
    if "json" in content_type:
        return json.loads(data)
    return msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=limits.client_response_bytes_max)


class Connection:
    """One shared HTTP session to every broker (aiohttp pools connections per host).

    Args:
        request_timeout_ms: default deadline of one request (connect + send + answer).
        connect_timeout_ms: TCP connect deadline, capped by the request deadline.
        pool_connections_max / pool_connections_per_broker_max: the connection pool bounds.

    The session is created on first use inside the running event loop and closed by :meth:`close`
    (idempotent). Not thread-safe: use it from the loop that created it.
    """

    def __init__(
        self,
        *,
        request_timeout_ms: int = limits.client_request_timeout_ms_default,
        connect_timeout_ms: int = limits.client_connect_timeout_ms_default,
        pool_connections_max: int = limits.client_pool_connections_max,
        pool_connections_per_broker_max: int = limits.client_pool_connections_per_broker_max,
    ) -> None:
        if request_timeout_ms <= 0 or connect_timeout_ms <= 0:
            raise ValueError("timeouts must be > 0")
        if pool_connections_max < 1 or pool_connections_per_broker_max < 1:
            raise ValueError("pool sizes must be >= 1")
        self.request_timeout_s = request_timeout_ms / 1000.0
        self.connect_timeout_s = connect_timeout_ms / 1000.0
        self._pool_connections_max = pool_connections_max
        self._pool_connections_per_broker_max = pool_connections_per_broker_max
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ConnectionFailed("connection closed", sent=False)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_connections_max,
                limit_per_host=self._pool_connections_per_broker_max,
                keepalive_timeout=limits.client_keepalive_timeout_s,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self.request_timeout_s,
                    connect=min(self.connect_timeout_s, self.request_timeout_s),
                    sock_read=self.request_timeout_s,
                ),
                headers={"Accept": MSGPACK},
                raise_for_status=False,
                trace_configs=[_trace_config()],
            )
        return self._session

    async def close(self) -> None:
        """Close the session and its pooled connections. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the decoded msgpack object of a 2xx answer.

        Args:
            method: ``GET``, ``POST`` or ``DELETE``.
            url: absolute URL (broker URL + path).
            body: encoded as msgpack (bytes values travel as bin); None sends no body.
            params: query parameters (values are turned into strings).
            timeout_s: deadline for the whole exchange; default ``request_timeout_ms``.

        Raises:
            RaftMQError subclass named by an error body; ConnectionFailed; ClientTimeout; UnexpectedResponse.
        """
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        if timeout_s <= 0:
            raise ClientTimeout("deadline passed before the request was sent", sent=False, url=url)
        session = self._get_session()
        data = None
        headers = None
        if body is not None:
            packed = msgpack.packb(body, use_bin_type=True)
            # aiohttp warns (and may block the loop) when given raw bytes above 1 MiB; a file object streams.
            data = io.BytesIO(packed) if len(packed) > limits.client_stream_body_bytes else packed
            headers = {"Content-Type": MSGPACK}
        query = None if params is None else {k: str(v) for k, v in params.items() if v is not None}
        per_request = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(self.connect_timeout_s, timeout_s), sock_read=timeout_s
        )
        progress = _Progress()
        try:
            async with asyncio.timeout(timeout_s):
                async with session.request(method, url, data=data, params=query, headers=headers,
                                           timeout=per_request, trace_request_ctx=progress) as response:
                    status = response.status
                    content_type = response.headers.get("Content-Type", "")
                    raw = await self._read_bounded(response, url)
        except aiohttp.ConnectionTimeoutError as exc:
            raise ClientTimeout(f"connect to {url} timed out", sent=False, url=url) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailed(f"cannot connect to {url}: {exc.os_error}", sent=False, url=url) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            if not progress.connected:
                raise ClientTimeout(f"{method} {url}: no connection within {timeout_s:.3f} s", sent=False,
                                    url=url) from exc
            raise ClientTimeout(f"{method} {url} timed out after {timeout_s:.3f} s", url=url) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise ConnectionFailed(f"{method} {url}: connection lost: {exc!r}", url=url) from exc
        except aiohttp.InvalidURL as exc:
            raise ConnectionFailed(f"invalid URL {url}", sent=False, url=url) from exc
        try:
            payload = _decode_body(raw, content_type)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise UnexpectedResponse(f"{method} {url}: HTTP {status} body is not msgpack/JSON: {exc}",
                                     http_status=status, url=url) from None
        if status >= 400:
            raise error_from_wire(payload, status)
        if not isinstance(payload, dict):
            raise UnexpectedResponse(f"{method} {url}: HTTP {status} body is not an object",
                                     http_status=status, url=url)
        if isinstance(payload.get("error"), dict):
            raise error_from_wire(payload, status)
        return payload

    @staticmethod
    async def _read_bounded(response: aiohttp.ClientResponse, url: str) -> bytes:
        length = response.content_length
        if length is not None:
            if length > limits.client_response_bytes_max:
                raise UnexpectedResponse("response too large", size_bytes=length,
                                         size_bytes_max=limits.client_response_bytes_max, url=url)
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(256 * limits.KIB):
            size += len(chunk)
            if size > limits.client_response_bytes_max:
                raise UnexpectedResponse("response too large", size_bytes_max=limits.client_response_bytes_max,
                                         url=url)
            chunks.append(chunk)
        return b"".join(chunks)


class MetadataFetcher:
    """Keeps a :class:`ClusterView` fresh: ``GET /v1/metadata`` from the best broker that answers.

    Single-flight: callers that asked while a refresh ran take its result instead of sending their own.
    """

    def __init__(self, connection: Connection, view: ClusterView) -> None:
        self.connection = connection
        self.view = view
        self._lock = asyncio.Lock()
        self._probes: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def refresh(self, *, timeout_s: float, force: bool = True) -> None:
        """Refresh the view (``force=False``: only when stale).

        Raises:
            ConnectionFailed: no broker answered (the last error is chained).
            ClientTimeout: the deadline passed first.
            UnexpectedResponse: every answer was malformed.
        """
        now = time.monotonic()
        if not force and not self.view.is_stale(now):
            return
        version = self.view.version
        deadline = now + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:
                    if self.view.version != version and not self.view.is_stale(time.monotonic()):
                        return  # someone refreshed while we waited
                    await self._refresh_locked(deadline)
        except TimeoutError:
            raise ClientTimeout("metadata refresh timed out", timeout_s=timeout_s) from None

    async def _refresh_locked(self, deadline: float) -> None:
        """Ask brokers in turn; stop at the first answer in which every partition has a leader. A broker only
        knows leaders from its own replicas' Raft view (an isolated old leader reports none), so when an
        answer leaves partitions leaderless the next broker is asked too and the views are merged by
        leader epoch (ClusterView.update keeps the newer one)."""
        last_error: RaftMQError | None = None
        answered = False
        candidates = self.view.candidate_urls()
        for position, url in enumerate(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A paused or black-holed broker must not use up the whole refresh: each gets a fair share.
            share = max(limits.client_metadata_broker_s_min, remaining / (len(candidates) - position))
            try:
                response = await self.connection.request(
                    "GET", url + "/v1/metadata", timeout_s=min(remaining, share, self.connection.request_timeout_s)
                )
                self.view.update(response, now_s=time.monotonic(), source_url=url)
                answered = True
                if not self.view.leaderless_partitions():
                    return
            except RaftMQError as exc:
                last_error = exc
        if answered:
            return
        error = ConnectionFailed("no broker answered /v1/metadata", sent=False,
                                 tried=self.view.candidate_urls())
        raise error from last_error

    async def probe_leaders(self, topic: str, *, avoid_url: str, timeout_s: float) -> None:
        """Ask every known broker but ``avoid_url`` how it sees ``topic`` (``GET /v1/topics/{topic}``: each
        partition's leader and leader epoch from that broker's replicas) and merge the answers by leader epoch,
        so a newer leader replaces the view's. Used while a request waits at ``avoid_url`` without an answer.
        Single-flight per (topic, broker); errors are ignored (the request that waits keeps its deadline)."""
        key = (topic, avoid_url)
        probe = self._probes.get(key)
        if probe is None:
            probe = asyncio.ensure_future(self._probe(topic, avoid_url, timeout_s))
            self._probes[key] = probe
            probe.add_done_callback(lambda _: self._probes.pop(key, None))
        await asyncio.shield(probe)

    async def _probe(self, topic: str, avoid_url: str, timeout_s: float) -> None:
        urls = [url for url in dict.fromkeys(self.view.brokers.values()) if url != avoid_url]
        path = "/v1/topics/" + quote(topic, safe="")

        async def ask(url: str) -> None:
            try:
                response = await self.connection.request("GET", url + path, timeout_s=timeout_s)
            except RaftMQError:
                return
            with contextlib.suppress(UnexpectedResponse):
                self.view.merge_topic(response.get("topic") if isinstance(response, dict) else None, source_url=url)

        await asyncio.gather(*(ask(url) for url in urls))

    async def any_broker_request(
        self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None, timeout_s: float, prefer_url: str | None = None,
    ) -> dict[str, Any]:
        """Send a request that any broker can answer, moving to the next broker only when the previous one
        was certainly not reached (``sent=False``) or answered a retriable, definite error.

        Raises:
            the broker's error, or ConnectionFailed/ClientTimeout when none could be reached in time.
        """
        deadline = time.monotonic() + timeout_s
        urls = self.view.candidate_urls()
        if prefer_url is not None:
            urls = list(dict.fromkeys([prefer_url, *urls]))
        last_error: RaftMQError | None = None
        for url in urls:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                timeout = min(remaining, self.connection.request_timeout_s)
                return await self.connection.request(method, url + path, body=body, params=params,
                                                     timeout_s=timeout)
            except RaftMQError as exc:
                last_error = exc
                if not (exc.details.get("sent") is False or (exc.retriable and exc.definite)):
                    raise
        if last_error is not None:
            raise last_error
        raise ClientTimeout(f"{method} {path}: deadline passed", sent=False)


class ByteBudget:
    """A FIFO semaphore counted in bytes, with deadlines: the bounded producer buffer and consumer prefetch.

    Waiters are served in arrival order (no barging), so a large request is not starved by small ones.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be > 0")
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._closed_error: RaftMQError | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, size_bytes: int) -> bool:
        """Take ``size_bytes`` now if they fit and nobody is waiting (the fast path)."""
        if self._waiters or self.used_bytes + size_bytes > self.capacity_bytes:
            return False
        self.used_bytes += size_bytes
        return True

    async def acquire(self, size_bytes: int, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for ``size_bytes``.

        Raises:
            TimeoutError: no room in time (callers map it to their error).
            RaftMQError: the budget was closed (:meth:`close`) while waiting.
            ValueError: ``size_bytes`` can never fit.
        """
        if self._closed_error is not None:
            raise self._closed_error
        if size_bytes > self.capacity_bytes:
            raise ValueError(f"{size_bytes} bytes exceed the capacity of {self.capacity_bytes}")
        if self.try_acquire(size_bytes):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size_bytes, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(size_bytes)  # granted just as we gave up: hand it on
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._wake()
            raise

    def release(self, size_bytes: int) -> None:
        self.used_bytes -= size_bytes
        if self.used_bytes < 0:
            self.used_bytes = 0
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used_bytes + size > self.capacity_bytes:
                return
            self._waiters.popleft()
            self.used_bytes += size
            future.set_result(None)

    def close(self, error: RaftMQError) -> None:
        """Fail every waiter (and future acquirers) with ``error``."""
        self._closed_error = error
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)
