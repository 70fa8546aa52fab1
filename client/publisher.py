"""Publishing to an exchange (``POST /v1/exchanges/{exchange}/publish``; docs/api.md "Exchanges").

The broker routes the record to every bound topic and answers only when every destination acknowledged
(at ``acks``). A partial failure comes back as PUBLISH_INCOMPLETE naming, per destination, ``ok``,
``failed`` or ``unknown``; this client then retries the same publish (same ``publish_id``, so unkeyed
records land on the same partitions) naming only the destinations left, with backoff, until its deadline.
So a destination that acknowledged never gets the record again and a ``failed`` one gets it once. At
acks=all (the default) the publish is idempotent: an ``unknown`` one (a timeout) that did store it answers
the retry with its original offset (cluster/publish.py), and a request whose whole answer was lost (a
ClientTimeout or broken connection after it was sent) is retried too, with the same destinations. At acks
0/1 an ``unknown`` destination gets the record at least once, and a lost answer is raised as is: which
destinations have it is unknown.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from raftmq.client.connection import AsyncLifecycle, Connection, MetadataFetcher, backoff_s
from raftmq.client.metadata import ClusterView
from raftmq.cluster import limits
from raftmq.cluster.errors import ClientTimeout, ConnectionFailed, PublishIncomplete, UnexpectedResponse
from raftmq.cluster.wire import Acks, parse_acks

__all__ = ["ExchangePublisher", "PublishReceipt"]


@dataclass(frozen=True)
class PublishReceipt:
    routed: bool  # False: no binding matched and the publish was not mandatory (dropped, as AMQP does)
    topics: tuple[str, ...]  # where it went
    destinations: tuple[tuple[str, int, int | None], ...]  # (topic, partition, base offset) of every append
    attempts: int


class ExchangePublisher(AsyncLifecycle):
    """``async with ExchangePublisher(urls) as p: await p.publish("orders", b"..", "order.created")``."""

    def __init__(self, bootstrap_urls: str | Iterable[str], *,
                 request_timeout_ms: int = limits.client_request_timeout_ms_default,
                 retry_backoff_ms: int = limits.client_retry_backoff_ms_default,
                 rng: random.Random | None = None) -> None:
        if isinstance(bootstrap_urls, str):
            bootstrap_urls = [bootstrap_urls]
        self.request_timeout_s = request_timeout_ms / 1000.0
        self.retry_backoff_ms = retry_backoff_ms
        self._rng = rng if rng is not None else random.Random()
        self._view = ClusterView(list(bootstrap_urls))
        self._conn = Connection(request_timeout_ms=request_timeout_ms)
        self._fetcher = MetadataFetcher(self._conn, self._view)

    async def start(self) -> None:
        """Nothing to connect eagerly (idempotent)."""

    async def stop(self) -> None:
        await self._conn.close()

    async def publish(self, exchange: str, value: bytes | str | None, routing_key: str = "", *,
                      key: bytes | str | None = None, headers: Mapping[str, bytes | str] | None = None,
                      mandatory: bool = False, acks: int | str = "all",
                      timeout_s: float | None = None) -> PublishReceipt:
        """Publish one record. Raises: UnknownExchange, Unroutable (``mandatory``), PublishIncomplete (the
        deadline passed with destinations left; ``details['destinations']`` says which), the usual request
        errors."""
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        record: dict[str, Any] = {"value": value, "headers": [[k, v] for k, v in (headers or {}).items()]}
        if key is not None:
            record["key"] = key
        body: dict[str, Any] = {"routing_key": routing_key, "records": [record], "mandatory": mandatory,
                                "acks": acks, "publish_id": secrets.token_hex(8),
                                "timeout_ms": max(1, min(int(timeout * 1000), limits.produce_timeout_ms_max))}
        path = f"/v1/exchanges/{quote(exchange, safe='')}/publish"
        idempotent = parse_acks(acks) is Acks.ALL  # with the publish_id: the broker deduplicates retries
        done: list[tuple[str, int, int | None]] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._fetcher.any_broker_request("POST", path, body=body,
                                                                timeout_s=max(0.01, deadline - time.monotonic()))
            except (ClientTimeout, ConnectionFailed):
                # The answer was lost: only an idempotent publish can be sent again without duplicating.
                pause = backoff_s(attempt, base_ms=self.retry_backoff_ms, max_ms=limits.client_retry_backoff_ms_max,
                                  rng=self._rng)
                if not idempotent or time.monotonic() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)  # the retry's backoff
                continue
            except PublishIncomplete as exc:
                done.extend(_acknowledged(exc.details.get("destinations")))
                retry = exc.details.get("retry")
                pause = backoff_s(attempt, base_ms=self.retry_backoff_ms, max_ms=limits.client_retry_backoff_ms_max,
                                  rng=self._rng)
                if not isinstance(retry, list) or not retry or time.monotonic() + pause >= deadline:
                    # The whole picture: destinations earlier attempts appended, then the last attempt's.
                    last = [d for d in exc.details.get("destinations") or () if d.get("status") != "ok"]
                    exc.details["destinations"] = [{"topic": t, "partition": p, "status": "ok", "base_offset": o}
                                                   for t, p, o in done] + last
                    raise
                body["destinations"] = retry
                await asyncio.sleep(pause)  # the retry's backoff
                continue
            if not isinstance(answer.get("destinations"), list):
                raise UnexpectedResponse("publish answer without destinations")
            done.extend(_acknowledged(answer["destinations"]))
            topics = tuple(answer.get("route", {}).get("topics", ()))
            return PublishReceipt(bool(answer.get("routed")), topics, tuple(sorted(done, key=str)), attempt)


def _acknowledged(destinations: Any) -> list[tuple[str, int, int | None]]:
    if not isinstance(destinations, list):
        return []
    return [(str(d["topic"]), int(d["partition"]), d.get("base_offset")) for d in destinations
            if isinstance(d, dict) and d.get("status") == "ok"]
