"""Broker-to-broker requests on the client port: a create-topic request forwarded to the controller, and
``call`` for the rest (heartbeats, a learner's metadata, metadata proposals, move steps), msgpack both ways.

One aiohttp session per broker, explicit timeouts; the request carries ``FORWARDED_HEADER`` so the receiver
answers NOT_CONTROLLER instead of forwarding again. Failures map to the coded errors the original caller
must see: LEADER_NOT_AVAILABLE when the controller could not be reached (nothing was sent: definite), and
REQUEST_TIMED_OUT when the request was sent but no answer came (the topic may or may not exist).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgpack
from raftmq.cluster import limits
from raftmq.cluster.errors import LeaderNotAvailable, RequestTimedOut, UnexpectedResponse, error_from_wire
from raftmq.cluster.metadata import CreateTopicRequest
from raftmq.node.internal_api import INTERNAL_TOKEN_HEADER

FORWARDED_HEADER = "X-RaftMQ-Forwarded-By"
_MSGPACK = "application/msgpack"


class ControllerForwarder:
    def __init__(self, broker_id: int, internal_token: str = "") -> None:
        self.broker_id = broker_id
        self.internal_token = internal_token
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=limits.forward_connections_max, keepalive_timeout=limits.client_keepalive_timeout_s))
        return self._session

    async def call(self, url: str, method: str, path: str, body: Any, timeout_s: float) -> Any:
        """One request to another broker; its coded error is raised as that error. LEADER_NOT_AVAILABLE when
        it could not be reached (nothing sent), REQUEST_TIMED_OUT when no answer came (the outcome is unknown)."""
        session = self._open()
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, limits.forward_connect_timeout_s))
        headers = {FORWARDED_HEADER: str(self.broker_id), "Accept": _MSGPACK, "Content-Type": _MSGPACK,
                   INTERNAL_TOKEN_HEADER: self.internal_token}
        data = msgpack.packb(body, use_bin_type=True) if body is not None else None
        try:
            async with session.request(method, url.rstrip("/") + path, data=data, headers=headers,
                                       timeout=timeout) as response:
                status, raw = response.status, await response.content.read(limits.request_bytes_max)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise LeaderNotAvailable(f"cannot reach {url}: {exc}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RequestTimedOut(f"{url} did not answer {method} {path} ({exc!r})") from None
        try:
            payload = msgpack.unpackb(raw, raw=False) if raw else None
        except (ValueError, msgpack.UnpackException):
            raise UnexpectedResponse(f"{url} answered HTTP {status} without msgpack") from None
        if status >= 400:
            raise error_from_wire(payload, status)
        return payload

    async def __call__(self, controller_url: str, request: CreateTopicRequest, timeout_s: float) -> Any:
        self._open()
        assert self._session is not None
        body = {"name": request.name, "partitions": request.partitions, "config": dict(request.config)}
        if request.replication_factor is not None:
            body["replication_factor"] = request.replication_factor
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, limits.forward_connect_timeout_s))
        headers = {FORWARDED_HEADER: str(self.broker_id), "Accept": "application/json"}
        try:
            async with self._session.post(controller_url.rstrip("/") + "/v1/topics", json=body, headers=headers,
                                          timeout=timeout) as response:
                status, raw = response.status, await response.content.read(limits.request_bytes_max)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise LeaderNotAvailable(f"cannot reach the controller at {controller_url}: {exc}; nothing was "
                                     "created") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RequestTimedOut(f"the controller at {controller_url} did not answer ({exc!r}); the topic may or "
                                  "may not have been created", topic=request.name) from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise UnexpectedResponse(f"the controller answered HTTP {status} without JSON") from None
        if status >= 400:
            raise error_from_wire(payload, status)
        return payload
