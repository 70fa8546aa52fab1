"""Push consumers: the broker streams records over one WebSocket under a prefetch window.

``PushConsumer`` (a share group, queue mode): at most ``prefetch`` unacknowledged at a time; each is
acknowledged (``ack``), given back (``nack(requeue=True)``) or dead-lettered (``nack(requeue=False)``:
published to a dead-letter exchange with ``x-death-*`` headers, cluster/dead_lettering.py, else archived).

``GroupPushConsumer`` (a consumer group, Kafka-style): the broker is the group member for it and streams the
partitions the group assigns, each in offset order; the consumer commits offsets (``commit``), and at most
``prefetch`` records are sent and not committed. Protocol: docs/api.md "Push consumers".

The WebSocket goes to the group's coordinator: a refused upgrade is asked again as a plain GET to read its
coded error, and NOT_COORDINATOR is followed to the broker it names; COORDINATOR_NOT_AVAILABLE (an election)
is retried until the connect deadline. When the connection closes, the broker releases every record this
consumer held (a consumer group: the member leaves, its partitions go to the others); ``receive`` then
raises ConnectionFailed (reconnect with ``start`` again; a consumer-group session is also closed when the
group's coordinator moves).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import msgpack
from raftmq.client.connection import AsyncLifecycle
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    ClientTimeout,
    ConnectionFailed,
    CoordinatorNotAvailable,
    NotCoordinator,
    RaftMQError,
    UnexpectedResponse,
    error_from_wire,
)
from raftmq.cluster.group_push import commit_frame
from raftmq.cluster.push import ack_frame, parse_delivery_frame

__all__ = ["GroupPushConsumer", "PushConsumer", "PushRecord"]

_MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class PushRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    delivery_count: int


class _PushConnection(AsyncLifecycle):
    """One WebSocket to a group's coordinator at ``path`` (connect, refusals, frames in)."""

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, path: str, prefetch: int,
                 connect_timeout_s: float) -> None:
        self.urls = [bootstrap_urls] if isinstance(bootstrap_urls, str) else list(bootstrap_urls)
        if not 1 <= prefetch <= limits.push_prefetch_max:
            raise ValueError(f"prefetch must be in [1, {limits.push_prefetch_max}]")
        self.group_id = group_id
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.broker_url: str | None = None

    async def start(self) -> None:
        """Connect to the group's coordinator (idempotent while connected)."""
        if self._ws is not None and not self._ws.closed:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            await self._connect()
        except BaseException:
            await self.stop()  # a refused consumer keeps no session open
            raise

    async def _connect(self) -> None:
        assert self._session is not None
        deadline = time.monotonic() + self.connect_timeout_s
        urls = list(self.urls)
        last: RaftMQError = ConnectionFailed("no broker could be reached", sent=False)
        while time.monotonic() < deadline:
            for url in list(urls):
                try:
                    self._ws = await self._session.ws_connect(url.rstrip("/") + self.path,
                                                              timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                                              heartbeat=limits.push_heartbeat_s)
                    self.broker_url = url
                    return
                except aiohttp.WSServerHandshakeError:
                    last = await self._refusal(url)
                except (aiohttp.ClientError, OSError) as exc:
                    last = ConnectionFailed(f"cannot reach {url}: {exc}", sent=False)
                    continue
                target = last.details.get("coordinator_url") if isinstance(last, NotCoordinator) else None
                if isinstance(target, str):
                    urls.insert(0, target)
                    break
                if not isinstance(last, CoordinatorNotAvailable):
                    raise last
            await asyncio.sleep(0.1)  # a coordinator election: ask again within the deadline
        raise last

    async def _refusal(self, url: str) -> RaftMQError:
        """The coded error behind a refused upgrade (the same checks answer a plain GET)."""
        assert self._session is not None
        async with self._session.get(url.rstrip("/") + self.path, headers={"Accept": _MSGPACK}) as response:
            raw = await response.read()
        try:
            return error_from_wire(msgpack.unpackb(raw, raw=False), response.status)
        except (ValueError, msgpack.UnpackException):
            return UnexpectedResponse(f"{url} refused the push connection with HTTP {response.status}")

    async def stop(self) -> None:
        """Close the connection; the broker releases every record still held. Idempotent."""
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _frame(self, deadline: float | None) -> bytes | None:
        """The next frame's bytes, or None at ``deadline`` (monotonic; None: no deadline). Raises
        ConnectionFailed when the connection closed."""
        ws = self._ws
        if ws is None:
            raise ConnectionFailed("not connected: call start()")
        try:
            async with asyncio.timeout_at(None if deadline is None else _loop_time(deadline)):
                message = await ws.receive()
        except TimeoutError:
            return None
        if message.type is not aiohttp.WSMsgType.BINARY:
            raise ConnectionFailed(f"the push connection closed ({message.type.name}: {message.extra or ''})")
        data: bytes = message.data
        return data

    async def _send_frame(self, frame: bytes) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionFailed("the push connection is closed; the broker released what it held")
        await self._ws.send_bytes(frame)


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic`` deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _record(body: Mapping[str, Any]) -> PushRecord:
    return PushRecord(str(body["topic"]), int(body["partition"]), int(body["offset"]),
                      int(body.get("timestamp_ms") or 0), body.get("key"), body.get("value"),
                      tuple((str(k), v) for k, v in body.get("headers") or ()), int(body.get("delivery_count", 1)))


class PushConsumer(_PushConnection):
    """``async with PushConsumer(urls, "workers", topics=["orders"], prefetch=10) as consumer:``
    ``record = await consumer.receive(); ...; await consumer.ack(record)``."""

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, *, topics: Iterable[str],
                 prefetch: int = limits.push_prefetch_default, lock_ms: int = limits.share_lock_ms_default,
                 max_deliveries: int = limits.share_max_deliveries_default,
                 dead_letter_exchange: str | None = None, dead_letter_routing_key: str | None = None,
                 connect_timeout_s: float = 10.0) -> None:
        query: dict[str, Any] = {"topics": ",".join(sorted(set(topics))), "prefetch": prefetch, "lock_ms": lock_ms,
                                 "max_deliveries": max_deliveries}
        if dead_letter_exchange is not None:
            query["dead_letter_exchange"] = dead_letter_exchange
        if dead_letter_routing_key is not None:
            query["dead_letter_routing_key"] = dead_letter_routing_key
        super().__init__(bootstrap_urls, group_id, f"/v1/share-groups/{quote(group_id, safe='')}/push?"
                         f"{urlencode(query)}", prefetch, connect_timeout_s)

    async def receive(self, timeout_s: float | None = None) -> PushRecord | None:
        """The next record, or None when none arrived within ``timeout_s``. Raises ConnectionFailed when the
        connection closed."""
        data = await self._frame(None if timeout_s is None else time.monotonic() + timeout_s)
        return None if data is None else _record(parse_delivery_frame(data))

    async def ack(self, record: PushRecord) -> None:
        await self._send([(record, "accept")])

    async def nack(self, record: PushRecord, *, requeue: bool = True) -> None:
        """``requeue``: available again at once (its delivery counted); else dead-lettered."""
        await self._send([(record, "release" if requeue else "reject")])

    async def _send(self, acks: list[tuple[PushRecord, str]]) -> None:
        await self._send_frame(ack_frame(((r.topic, r.partition, r.offset), kind) for r, kind in acks))

    @staticmethod
    def headers_text(record: PushRecord) -> Mapping[str, str]:
        return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}


class GroupPushConsumer(_PushConnection):
    """``async with GroupPushConsumer(urls, "billing", topics=["orders"], prefetch=100) as consumer:``
    ``record = await consumer.receive(); ...; await consumer.commit(record)``.

    Records of a partition arrive in offset order. ``commit(record)`` commits the record's partition up to
    and including it (the next offset to read is ``record.offset + 1``), frees its window room and returns
    once the broker stored it (a synchronous commit: close right after and it holds); a commit for a
    partition the group has taken away since is ignored (left out of the answer). ``assignment`` is what
    this member owns, as the broker last said. Records that arrive while a commit waits for its answer are
    kept (at most the window's worth) for ``receive``."""

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, *, topics: Iterable[str],
                 prefetch: int = limits.push_prefetch_default,
                 session_timeout_ms: int = limits.group_session_timeout_ms_default, reset: str = "earliest",
                 connect_timeout_s: float = 10.0) -> None:
        query = {"topics": ",".join(sorted(set(topics))), "prefetch": prefetch,
                 "session_timeout_ms": session_timeout_ms, "reset": reset}
        super().__init__(bootstrap_urls, group_id, f"/v1/groups/{quote(group_id, safe='')}/push?{urlencode(query)}",
                         prefetch, connect_timeout_s)
        self.assignment: frozenset[tuple[str, int]] = frozenset()
        self.commit_timeout_s = connect_timeout_s
        self._received: deque[PushRecord] = deque()  # arrived while a commit waited for its answer

    async def receive(self, timeout_s: float | None = None) -> PushRecord | None:
        """The next record, or None when none arrived within ``timeout_s`` (assignment frames on the way
        update ``assignment``). Raises ConnectionFailed when the connection closed."""
        if self._received:
            return self._received.popleft()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            body = await self._body(deadline)
            if body is None:
                return None
            if "offset" in body:
                return _record(body)

    async def _body(self, deadline: float | None) -> dict[str, Any] | None:
        """The next frame as a map (assignment frames applied), None at the deadline."""
        data = await self._frame(deadline)
        if data is None:
            return None
        body = msgpack.unpackb(data, raw=False)
        if not isinstance(body, dict):
            raise UnexpectedResponse("a push frame is a msgpack map")
        if "assignment" in body:
            self.assignment = frozenset((str(t), int(p)) for t, p in body["assignment"])
        elif "offset" in body:
            parse_delivery_frame(data)  # the shape check
        return body

    async def commit(self, *records: PushRecord) -> list[tuple[str, int, int]]:
        """Commit each record's partition up to and including it (the highest offset per partition wins);
        what ``commit_offsets`` returns."""
        upto: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            upto[key] = max(upto.get(key, 0), record.offset + 1)
        return await self.commit_offsets(upto)

    async def commit_offsets(self, offsets: Mapping[tuple[str, int], int]) -> list[tuple[str, int, int]]:
        """Commit ``{(topic, partition): next offset to read}`` and wait for the broker's answer: the
        ``(topic, partition, offset)`` stored. Raises the broker's error when it stored nothing
        (STALE_MEMBER_EPOCH after a rebalance, ...), ClientTimeout after ``commit_timeout_s``."""
        await self._send_frame(commit_frame(sorted(offsets.items())))
        deadline = time.monotonic() + self.commit_timeout_s
        while True:
            body = await self._body(deadline)
            if body is None:
                raise ClientTimeout(f"no answer to a commit within {self.commit_timeout_s} s")
            if "offset" in body:
                self._received.append(_record(body))
            elif "committed" in body:
                if "error" in body:
                    raise error_from_wire(body["error"])
                return [(str(t), int(p), int(o)) for t, p, o in body["committed"]]
