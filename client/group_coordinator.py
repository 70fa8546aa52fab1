"""Requests to a consumer group's coordinator, wherever it is: shared by the group consumer and the admin.

Which broker coordinates a group: the leader of partition ``group_partition_for(group_id, n)`` of the
internal ``__consumer_offsets`` topic (Kafka's hash rule, ``cluster/consumer_groups.py``), found in the
cluster view; before the topic exists (the first group request creates it), any broker. A
``NOT_COORDINATOR`` answer names the coordinator (``coordinator_url``) and is followed; retriable errors
(``COORDINATOR_NOT_AVAILABLE`` during an election, a broker that cannot be reached) are retried with
backoff on a fresh view until the caller's deadline; anything else is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from raftmq.client.connection import Connection, MetadataFetcher, backoff_s
from raftmq.client.metadata import ClusterView
from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import GROUP_STATE_TOPIC, group_partition_for
from raftmq.cluster.errors import ClientTimeout, NotCoordinator, RaftMQError

__all__ = ["CoordinatorClient"]


class CoordinatorClient:
    def __init__(self, conn: Connection, view: ClusterView, fetcher: MetadataFetcher, *, request_timeout_s: float,
                 retry_backoff_ms: int = limits.client_retry_backoff_ms_default,
                 retry_backoff_ms_max: int = limits.client_retry_backoff_ms_max,
                 rng: random.Random | None = None) -> None:
        self._conn = conn
        self._view = view
        self._fetcher = fetcher
        self.request_timeout_s = request_timeout_s
        self._backoff_ms = (retry_backoff_ms, max(retry_backoff_ms, retry_backoff_ms_max))
        self._rng = rng if rng is not None else random.Random()
        self._known: dict[str, str] = {}  # group id -> coordinator URL learned from NOT_COORDINATOR
        self._avoid: str | None = None  # the broker that just could not answer: ask another one next
        self._rotation = 0

    def coordinator_url(self, group_id: str) -> str | None:
        known = self._known.get(group_id)
        if known is not None:
            return known
        count = self._view.partition_count(GROUP_STATE_TOPIC)
        if count:
            url = self._view.leader_url(GROUP_STATE_TOPIC, group_partition_for(group_id, count))
            if url is not None and url != self._avoid:
                return url
        # No known coordinator, or the one the view names just failed (e.g. it restarted and has not loaded
        # the metadata yet): ask the others in turn; whoever knows the coordinator redirects.
        candidates = [u for u in self._view.candidate_urls() or list(self._view.bootstrap_urls) if u != self._avoid]
        if not candidates:
            return self._avoid
        self._rotation += 1
        return candidates[self._rotation % len(candidates)]

    async def call(self, group_id: str, method: str, suffix: str, body: Mapping[str, Any] | None, *,
                   deadline_s: float, kind: str = "groups") -> dict[str, Any]:
        """``method /v1/{kind}/{group_id}{suffix}`` at the coordinator, until ``deadline_s`` (monotonic);
        ``kind`` is ``groups`` (consumer groups) or ``share-groups``."""
        path = f"/v1/{kind}/{quote(group_id, safe='')}{suffix}"
        retry = 0
        last: RaftMQError | None = None
        while True:
            remaining = deadline_s - time.monotonic()
            if remaining <= 0:
                raise last or ClientTimeout(f"{method} {path}: deadline passed", sent=False)
            url = self.coordinator_url(group_id)
            if url is not None:
                try:
                    answer = await self._conn.request(method, url + path, body=body,
                                                      timeout_s=min(remaining, self.request_timeout_s))
                    if self._avoid == url:
                        self._avoid = None
                    return answer
                except NotCoordinator as exc:
                    last = exc
                    named = exc.details.get("coordinator_url")
                    if isinstance(named, str) and named != url and retry == 0:
                        self._known[group_id] = named
                        retry += 1
                        continue  # follow the redirect at once, the first time
                    self._known.pop(group_id, None)
                    self._view.mark_stale()
                except RaftMQError as exc:
                    last = exc
                    if not exc.retriable:
                        raise
                    self._known.pop(group_id, None)
                    self._avoid = url
                    self._view.mark_stale()
            retry += 1
            await self._refresh(deadline_s)
            pause = backoff_s(retry, base_ms=self._backoff_ms[0], max_ms=self._backoff_ms[1], rng=self._rng)
            await asyncio.sleep(min(pause, max(0.0, deadline_s - time.monotonic())))  # retry backoff

    async def _refresh(self, deadline_s: float) -> None:
        remaining = deadline_s - time.monotonic()
        if remaining > 0 and self._view.is_stale(time.monotonic()):
            with contextlib.suppress(RaftMQError):
                await self._fetcher.refresh(timeout_s=min(remaining, self.request_timeout_s))
