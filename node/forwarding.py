"""Broker-to-broker requests on the client port: today, a create-topic request forwarded to the controller.

One aiohttp session per broker, explicit timeouts; the request carries ``FORWARDED_HEADER`` so the receiver
answers NOT_CONTROLLER instead of forwarding again. Failures map to the coded errors the original caller
must see: LEADER_NOT_AVAILABLE when the controller could not be reached (nothing was sent: definite), and
REQUEST_TIMED_OUT when the request was sent but no answer came (the topic may or may not exist).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from raftmq.cluster import limits
from raftmq.cluster.errors import LeaderNotAvailable, RequestTimedOut, UnexpectedResponse, error_from_wire
from raftmq.cluster.metadata import CreateTopicRequest

FORWARDED_HEADER = "X-RaftMQ-Forwarded-By"


class ControllerForwarder:
    def __init__(self, broker_id: int) -> None:
        self.broker_id = broker_id
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, controller_url: str, request: CreateTopicRequest, timeout_s: float) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=limits.forward_connections_max, keepalive_timeout=limits.client_keepalive_timeout_s))
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
