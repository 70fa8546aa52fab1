"""A push consumer of a share group: the broker streams records over one WebSocket, at most ``prefetch``
unacknowledged at a time; each is acknowledged (``ack``), given back (``nack(requeue=True)``) or
dead-lettered (``nack(requeue=False)``: published to ``dead_letter_exchange`` with ``x-death-*`` headers
when the subscription names one, else archived). Protocol: docs/api.md "Push consumers".

The WebSocket goes to the group's coordinator: a refused upgrade is asked again as a plain GET to read its
coded error, and NOT_COORDINATOR is followed to the broker it names; COORDINATOR_NOT_AVAILABLE (an election)
is retried until the connect deadline. When the connection closes, the broker releases every record this
consumer held; ``receive`` then raises ConnectionFailed (reconnect with ``start`` again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import msgpack
from raftmq.client.connection import AsyncLifecycle
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    ConnectionFailed,
    CoordinatorNotAvailable,
    NotCoordinator,
    RaftMQError,
    UnexpectedResponse,
    error_from_wire,
)
from raftmq.cluster.push import ack_frame, parse_delivery_frame

__all__ = ["PushConsumer", "PushRecord"]

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


class PushConsumer(AsyncLifecycle):
    """``async with PushConsumer(urls, "workers", topics=["orders"], prefetch=10) as consumer:``
    ``record = await consumer.receive(); ...; await consumer.ack(record)``."""

    def __init__(self, bootstrap_urls: str | Iterable[str], group_id: str, *, topics: Iterable[str],
                 prefetch: int = limits.push_prefetch_default, lock_ms: int = limits.share_lock_ms_default,
                 max_deliveries: int = limits.share_max_deliveries_default,
                 dead_letter_exchange: str | None = None, dead_letter_routing_key: str | None = None,
                 connect_timeout_s: float = 10.0) -> None:
        self.urls = [bootstrap_urls] if isinstance(bootstrap_urls, str) else list(bootstrap_urls)
        if not 1 <= prefetch <= limits.push_prefetch_max:
            raise ValueError(f"prefetch must be in [1, {limits.push_prefetch_max}]")
        query: dict[str, Any] = {"topics": ",".join(sorted(set(topics))), "prefetch": prefetch, "lock_ms": lock_ms,
                                 "max_deliveries": max_deliveries}
        if dead_letter_exchange is not None:
            query["dead_letter_exchange"] = dead_letter_exchange
        if dead_letter_routing_key is not None:
            query["dead_letter_routing_key"] = dead_letter_routing_key
        self.group_id = group_id
        self.path = f"/v1/share-groups/{quote(group_id, safe='')}/push?{urlencode(query)}"
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

    async def receive(self, timeout_s: float | None = None) -> PushRecord | None:
        """The next record, or None when none arrived within ``timeout_s``. Raises ConnectionFailed when the
        connection closed."""
        ws = self._ws
        if ws is None:
            raise ConnectionFailed("not connected: call start()")
        try:
            async with asyncio.timeout(timeout_s):
                message = await ws.receive()
        except TimeoutError:
            return None
        if message.type is not aiohttp.WSMsgType.BINARY:
            raise ConnectionFailed(f"the push connection closed ({message.type.name}: {message.extra or ''})")
        body = parse_delivery_frame(message.data)
        return PushRecord(str(body["topic"]), int(body["partition"]), int(body["offset"]),
                          int(body.get("timestamp_ms") or 0), body.get("key"), body.get("value"),
                          tuple((str(k), v) for k, v in body.get("headers") or ()), int(body.get("delivery_count", 1)))

    async def ack(self, record: PushRecord) -> None:
        await self._send([(record, "accept")])

    async def nack(self, record: PushRecord, *, requeue: bool = True) -> None:
        """``requeue``: available again at once (its delivery counted); else dead-lettered."""
        await self._send([(record, "release" if requeue else "reject")])

    async def _send(self, acks: list[tuple[PushRecord, str]]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionFailed("the push connection is closed; the broker released the records it held")
        await self._ws.send_bytes(ack_frame(((r.topic, r.partition, r.offset), kind) for r, kind in acks))

    @staticmethod
    def headers_text(record: PushRecord) -> Mapping[str, str]:
        return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
