"""Cluster administration: topics, brokers (drain), metadata, health.

Where requests go: topic and broker changes go to the controller (the metadata group leader, from
``/v1/metadata``) when it is known, else to any broker; a ``NOT_LEADER``/``NOT_CONTROLLER`` answer whose
details name another broker (``leader_url``/``leader_id``, ``controller_url``/``controller_id``) is followed
once. Reads (list/describe/metadata) go to any broker, except :meth:`Admin.controller_metadata`: only the
controller fills in move progress and heartbeat ages (docs/api.md "Health and metadata").

Retries: an admin call moves to the next broker only when the previous one certainly did not act (a
connect failure, or a retriable definite error such as ``BROKER_NOT_READY``). A timeout on
``create_topic``/``delete_topic`` is raised as is (``ClientTimeout``, outcome unknown): retrying a create
blindly could answer ``TOPIC_ALREADY_EXISTS`` for the caller's own topic. Use ``describe_topic`` to learn.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from raftmq.client.connection import AsyncLifecycle, Connection, MetadataFetcher, backoff_s
from raftmq.client.group_coordinator import CoordinatorClient
from raftmq.client.metadata import (
    BrokerInfo,
    ClusterMetadata,
    ClusterView,
    TopicInfo,
    normalize_url,
    parse_broker,
    parse_metadata,
    parse_topic,
)
from raftmq.client.types import HealthInfo, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import (
    ClientTimeout,
    NotController,
    NotLeader,
    RaftMQError,
    UnexpectedResponse,
    UnknownTopicOrPartition,
)

__all__ = ["Admin", "TopicInfo", "ClusterMetadata", "HealthInfo", "drain_finished", "hosted_partitions",
           "moves_finished"]

# How often the wait_for_drain / wait_for_moves polls ask the controller (a poll interval, not a pause that
# orders anything): moves take seconds, and each poll is one small GET.
MOVE_POLL_INTERVAL_S = 0.5


class Admin(AsyncLifecycle):
    """Admin client. ``async with Admin([...]) as admin:`` or ``start()``/``stop()``.

    Args:
        bootstrap_urls: one or more broker client URLs.
        request_timeout_ms: default deadline of each call (overridable per call with ``timeout_s``).
        retry_backoff_ms: first backoff of :meth:`wait_for_topic` polls.
    """

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
        self._groups = CoordinatorClient(self._conn, self._view, self._fetcher,
                                         request_timeout_s=self.request_timeout_s, retry_backoff_ms=retry_backoff_ms,
                                         rng=self._rng)

    async def start(self) -> None:
        """Nothing to connect eagerly; present for symmetry with Producer/Consumer (idempotent)."""

    async def stop(self) -> None:
        """Close connections. Idempotent."""
        await self._conn.close()

    @property
    def cluster(self) -> ClusterView:
        return self._view

    def _timeout(self, timeout_s: float | None) -> float:
        return self.request_timeout_s if timeout_s is None else timeout_s

    # --- topics ------------------------------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                           config: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
                           ) -> TopicInfo:
        """``POST /v1/topics``. ``replication_factor`` None = the number of brokers (broker default);
        ``config`` keys: ``retention_ms``, ``retention_bytes``, ``segment_bytes``, ``segment_ms``,
        ``min_insync_replicas``, ``message_ttl_ms``, ``dead_letter_exchange``, ``dead_letter_routing_key``.
        Returns the created topic as the broker reported it (its partitions may not have leaders yet: see
        :meth:`wait_for_topic`).

        Raises:
            TopicAlreadyExists, InvalidTopic, InvalidPartitions, InvalidReplicationFactor, InvalidConfig,
            InvalidRequest; ClientTimeout / ConnectionFailed (outcome unknown unless ``sent=False``).
        """
        body: dict[str, Any] = {"name": name, "partitions": partitions}
        if replication_factor is not None:
            body["replication_factor"] = replication_factor
        if config:
            body["config"] = dict(config)
        response = await self._controller_request("POST", "/v1/topics", body, self._timeout(timeout_s))
        self._view.mark_stale()
        return parse_topic(response.get("topic"))

    async def delete_topic(self, name: str, *, timeout_s: float | None = None) -> None:
        """``DELETE /v1/topics/{name}``.

        Raises: UnknownTopicOrPartition; ClientTimeout / ConnectionFailed (outcome unknown unless sent=False).
        """
        response = await self._controller_request("DELETE", f"/v1/topics/{quote(name, safe='')}", None,
                                                  self._timeout(timeout_s))
        if response.get("deleted") not in (name, None):
            raise UnexpectedResponse("delete answered for another topic", deleted=response.get("deleted"))
        self._view.forget_topics([name])
        self._view.mark_stale()

    async def list_topics(self, *, timeout_s: float | None = None) -> list[TopicInfo]:
        """``GET /v1/topics``: every topic, sorted by name. Raises: ConnectionFailed, ClientTimeout."""
        response = await self._fetcher.any_broker_request("GET", "/v1/topics",
                                                          timeout_s=self._timeout(timeout_s))
        topics = response.get("topics")
        if not isinstance(topics, list):
            raise UnexpectedResponse("GET /v1/topics answer without a topics list")
        return sorted((parse_topic(t) for t in topics), key=lambda t: t.name)

    async def describe_topic(self, name: str, *, timeout_s: float | None = None) -> TopicInfo:
        """``GET /v1/topics/{name}``. Raises: UnknownTopicOrPartition, ConnectionFailed, ClientTimeout."""
        response = await self._fetcher.any_broker_request("GET", f"/v1/topics/{quote(name, safe='')}",
                                                          timeout_s=self._timeout(timeout_s))
        return parse_topic(response.get("topic"))

    async def wait_for_topic(self, name: str, *, timeout_s: float = 10.0, preferred_leaders: bool = False,
                             on_progress: Callable[[int, int], None] | None = None) -> TopicInfo:
        """Poll ``/v1/metadata`` (with backoff) until ``name`` exists and every partition has a leader whose
        URL is known; with ``preferred_leaders``, until every leader is also its partition's preferred (first)
        replica, i.e. the brokers' leader balancing has settled. Returns the topic as last seen.
        ``on_progress(led, partitions)`` is called after every poll that found the topic.

        Raises:
            ClientTimeout: not ready within ``timeout_s`` (the last error is chained).
        """
        deadline = time.monotonic() + timeout_s
        attempt = 0
        last_error: RaftMQError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f" ({last_error.message})" if last_error is not None else ""
                raise ClientTimeout(f"topic {name!r} not ready after {timeout_s} s{why}",
                                    topic=name) from last_error
            try:
                await self._fetcher.refresh(timeout_s=min(remaining, self.request_timeout_s))
                info = self._view.topic(name)
                if info is not None and on_progress is not None:
                    on_progress(sum(1 for p in info.partitions if self._view.leader_url(name, p.partition)),
                                len(info.partitions))
                if info is not None and info.partitions and all(
                        self._view.leader_url(name, p.partition) is not None for p in info.partitions):
                    if not preferred_leaders or all(
                            p.replicas and p.leader_id == p.replicas[0] for p in info.partitions):
                        return info
                    last_error = ClientTimeout("leaders not yet on their preferred replicas", topic=name)
                else:
                    last_error = UnknownTopicOrPartition("no leader known for every partition yet", topic=name)
            except RaftMQError as exc:
                last_error = exc
            attempt += 1
            pause = backoff_s(attempt, base_ms=max(1, self.retry_backoff_ms // 4), max_ms=500, rng=self._rng)
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # poll interval

    # --- cluster -------------------------------------------------------------------------------------------

    async def metadata(self, *, url: str | None = None, timeout_s: float | None = None) -> ClusterMetadata:
        """``GET /v1/metadata`` from ``url`` (default: the best broker that answers), i.e. the cluster as
        THAT broker sees it. Also refreshes this client's view.

        Raises: ConnectionFailed, ClientTimeout, UnexpectedResponse.
        """
        timeout = self._timeout(timeout_s)
        if url is None:
            response = await self._fetcher.any_broker_request("GET", "/v1/metadata", timeout_s=timeout)
        else:
            url = normalize_url(url)
            response = await self._conn.request("GET", url + "/v1/metadata", timeout_s=timeout)
        parsed = parse_metadata(response)
        with contextlib.suppress(RaftMQError):
            self._view.update(response, now_s=time.monotonic(), source_url=url)
        return parsed

    async def health(self, url: str | None = None, *, timeout_s: float | None = None) -> HealthInfo:
        """``GET /v1/health`` of one broker (default: the first bootstrap URL).

        Raises: ConnectionFailed, ClientTimeout, UnexpectedResponse.
        """
        url = normalize_url(url) if url is not None else self._view.bootstrap_urls[0]
        response = await self._conn.request("GET", url + "/v1/health", timeout_s=self._timeout(timeout_s))
        status, broker_id = response.get("status"), response.get("broker_id")
        if not isinstance(status, str):
            raise UnexpectedResponse("health answer without a status", url=url)
        return HealthInfo(url, status, broker_id if type(broker_id) is int else None,
                          bool(response.get("ready")))

    async def controller_metadata(self, *, timeout_s: float | None = None) -> ClusterMetadata:
        """``GET /v1/metadata`` from the controller (the ``controller_url`` the metadata names): only its
        answer has move progress, running times and heartbeat ages. Falls back to any broker's answer (check
        ``.from_controller``) when the controller cannot be reached.

        Raises: ConnectionFailed, ClientTimeout, UnexpectedResponse (no broker answered at all).
        """
        deadline = time.monotonic() + self._timeout(timeout_s)
        fallback: ClusterMetadata | None = None
        url = None if self._view.is_stale(time.monotonic()) else self._view.controller_url()
        tried: set[str] = {url} if url is not None else set()
        last_error: RaftMQError | None = None
        # At most three answers: any broker (to learn the controller), the controller, and, if the controller
        # changed in between, the new one.
        for _hop in range(3):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # A controller that does not answer may use half of what is left: the fallback needs the rest.
                meta = await self.metadata(url=url, timeout_s=remaining if url is None else remaining / 2)
            except RaftMQError as exc:
                if url is None:
                    raise
                last_error, url = exc, None  # the controller did not answer: ask any broker
                if fallback is not None:
                    break
                continue
            if meta.from_controller:
                return meta
            fallback = meta
            url = meta.controller_url or self._view.controller_url()
            if url is None or url in tried:
                break
            tried.add(url)
        if fallback is not None:
            return fallback
        raise last_error or ClientTimeout("controller metadata: deadline passed", sent=False)

    # --- topic and broker changes (the controller) ----------------------------------------------------------

    async def alter_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                          *, timeout_s: float | None = None) -> TopicInfo:
        """``PATCH /v1/topics/{name}``: raise the partition count and/or change the replication factor.
        Answers once the controller committed the change; a new replication factor is then reached by moves
        (:meth:`wait_for_moves`).

        Raises:
            ValueError: neither ``partitions`` nor ``replication_factor`` given.
            UnknownTopicOrPartition, InvalidPartitions (the count can only grow), InvalidReplicationFactor,
            NotEnoughBrokers, ReassignmentInProgress; ClientTimeout / ConnectionFailed (outcome unknown unless
            ``sent=False``; the same PATCH may be sent again: it names the end state).
        """
        if partitions is None and replication_factor is None:
            raise ValueError("alter_topic needs partitions and/or replication_factor")
        body = {k: v for k, v in (("partitions", partitions), ("replication_factor", replication_factor))
                if v is not None}
        response = await self._controller_request("PATCH", f"/v1/topics/{quote(name, safe='')}", body,
                                                  self._timeout(timeout_s))
        self._view.mark_stale()
        return parse_topic(response.get("topic"))

    async def drain_broker(self, broker_id: int, *, timeout_s: float | None = None) -> BrokerInfo:
        """``POST /v1/brokers/{id}/drain``: the controller moves every replica off the broker (a few at a
        time); :meth:`wait_for_drain` waits for the end. Returns the broker (state ``draining``).

        Raises:
            UnknownBroker, NotEnoughBrokers (the other live brokers cannot hold its replicas), InvalidRequest
            (the broker is neither alive nor draining); ClientTimeout / ConnectionFailed (asking again is safe).
        """
        response = await self._controller_request("POST", f"/v1/brokers/{broker_id}/drain", None,
                                                  self._timeout(timeout_s))
        self._view.mark_stale()
        return parse_broker(response.get("broker"))

    async def cancel_drain(self, broker_id: int, *, timeout_s: float | None = None) -> BrokerInfo | None:
        """``DELETE /v1/brokers/{id}/drain``: the broker is ``alive`` again; moves not yet started are
        dropped (running ones finish). Returns the broker when the answer includes it.

        Raises: UnknownBroker, InvalidRequest; ClientTimeout / ConnectionFailed.
        """
        response = await self._controller_request("DELETE", f"/v1/brokers/{broker_id}/drain", None,
                                                  self._timeout(timeout_s))
        self._view.mark_stale()
        return parse_broker(response["broker"]) if response.get("broker") is not None else None

    async def wait_for_drain(self, broker_id: int, *, timeout_s: float,
                             on_progress: Callable[[ClusterMetadata], None] | None = None,
                             poll_interval_s: float = MOVE_POLL_INTERVAL_S) -> ClusterMetadata:
        """Poll the controller until :func:`drain_finished` (the broker hosts nothing, is removed, or is
        ``alive`` again because the drain was cancelled: check ``meta.broker(id).state``).
        ``on_progress`` gets every answer. Raises ClientTimeout after ``timeout_s`` (the drain goes on)."""
        return await self._poll_controller(lambda m: drain_finished(m, broker_id), f"drain of broker {broker_id}",
                                           timeout_s, on_progress, poll_interval_s)

    async def wait_for_moves(self, topic: str, *, timeout_s: float, partitions: int | None = None,
                             replication_factor: int | None = None,
                             on_progress: Callable[[ClusterMetadata], None] | None = None,
                             poll_interval_s: float = MOVE_POLL_INTERVAL_S) -> ClusterMetadata:
        """Poll the controller until :func:`moves_finished` for ``topic``. Raises ClientTimeout after
        ``timeout_s`` (the moves go on)."""
        return await self._poll_controller(
            lambda m: moves_finished(m, topic, partitions=partitions, replication_factor=replication_factor),
            f"moves of topic {topic!r}", timeout_s, on_progress, poll_interval_s)

    async def _poll_controller(self, done: Callable[[ClusterMetadata], bool], what: str, timeout_s: float,
                               on_progress: Callable[[ClusterMetadata], None] | None,
                               poll_interval_s: float) -> ClusterMetadata:
        """Ask the controller every ``poll_interval_s`` until ``done``; errors of single polls are kept and
        named in the ClientTimeout (a controller election in between must not end the wait)."""
        deadline = time.monotonic() + timeout_s
        last_error: RaftMQError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f" (last error: {last_error.message})" if last_error is not None else ""
                raise ClientTimeout(f"{what} not finished after {timeout_s:g} s{why}") from last_error
            try:
                meta = await self.controller_metadata(timeout_s=min(remaining, self.request_timeout_s))
                if on_progress is not None:
                    on_progress(meta)
                if done(meta):
                    return meta
            except RaftMQError as exc:
                if exc.definite and not exc.retriable:
                    raise  # a broker's final answer: waiting longer cannot change it
                last_error = exc
            await asyncio.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))  # poll interval

    # --- internals ------------------------------------------------------------------------------------------

    # --- consumer groups -----------------------------------------------------------------------------------

    async def list_groups(self, *, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Every consumer group (``group_id``, ``state``, ``members``), sorted: each broker lists the groups of
        the group-state partitions it leads, so brokers are asked until every partition was covered.

        Raises: ConnectionFailed / ClientTimeout when no broker answered."""
        deadline = time.monotonic() + self._timeout(timeout_s)
        with contextlib.suppress(RaftMQError):
            await self._fetcher.refresh(timeout_s=self._timeout(timeout_s) / 2)
        groups: dict[str, dict[str, Any]] = {}
        covered: set[int] = set()
        count: int | None = None
        last: RaftMQError | None = None
        for url in self._view.candidate_urls():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (count is not None and len(covered) >= count):
                break
            try:
                answer = await self._conn.request("GET", url + "/v1/groups", timeout_s=remaining)
            except RaftMQError as exc:
                last = exc
                continue
            count = int(answer.get("partition_count") or 0)
            covered.update(int(p) for p in answer.get("partitions") or [])
            for group in answer.get("groups") or []:
                groups[str(group["group_id"])] = dict(group)
        if count is None:
            raise last or ClientTimeout("no broker answered GET /v1/groups", sent=False)
        return [groups[g] for g in sorted(groups)]

    async def describe_group(self, group_id: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The group as its coordinator sees it: state, epoch, members (each with its assignment, target,
        epoch and subscription) and committed offsets (docs/api.md). Raises: GroupIdNotFound, ..."""
        answer = await self._groups.call(group_id, "GET", "", None,
                                         deadline_s=time.monotonic() + self._timeout(timeout_s))
        group = answer.get("group")
        if not isinstance(group, dict):
            raise UnexpectedResponse("describe group answer without a group")
        return group

    async def group_offsets(self, group_id: str, *, timeout_s: float | None = None) -> dict[TopicPartition, int]:
        """The group's committed offsets."""
        answer = await self._groups.call(group_id, "GET", "/offsets", None,
                                         deadline_s=time.monotonic() + self._timeout(timeout_s))
        return {TopicPartition(str(o["topic"]), int(o["partition"])): int(o["offset"])
                for o in answer.get("offsets") or []}

    async def commit_group_offsets(self, group_id: str, offsets: Mapping[TopicPartition, int], *,
                                   metadata: str = "", timeout_s: float | None = None) -> int:
        """Set a group's offsets from outside it (reset-offsets). Only while the group has no members:
        UNKNOWN_MEMBER_ID otherwise."""
        body = {"offsets": [{"topic": tp.topic, "partition": tp.partition, "offset": offset, "metadata": metadata}
                            for tp, offset in sorted(offsets.items())]}
        answer = await self._groups.call(group_id, "POST", "/offsets", body,
                                         deadline_s=time.monotonic() + self._timeout(timeout_s))
        return int(answer.get("committed") or 0)

    # --- exchanges (docs/api.md "Exchanges") -----------------------------------------------------------

    async def create_exchange(self, name: str, type: str, *, alternate_exchange: str | None = None,
                              timeout_s: float | None = None) -> dict[str, Any]:
        """``POST /v1/exchanges``: ``type`` is direct, fanout, topic or headers. Declaring an existing exchange
        as it is succeeds. Raises: InvalidExchange, ExchangeAlreadyExists (another type/alternate)."""
        body = {"name": name, "type": type, "alternate_exchange": alternate_exchange}
        return await self._exchange_call("POST", "/v1/exchanges", body, timeout_s)

    async def list_exchanges(self, *, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """``GET /v1/exchanges``: every exchange with its bindings, sorted by name."""
        response = await self._fetcher.any_broker_request("GET", "/v1/exchanges", timeout_s=self._timeout(timeout_s))
        exchanges = response.get("exchanges")
        if not isinstance(exchanges, list):
            raise UnexpectedResponse("GET /v1/exchanges answer without an exchanges list")
        return exchanges

    async def describe_exchange(self, name: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """``GET /v1/exchanges/{name}``. Raises: UnknownExchange."""
        response = await self._fetcher.any_broker_request("GET", f"/v1/exchanges/{quote(name, safe='')}",
                                                          timeout_s=self._timeout(timeout_s))
        return _exchange_of(response)

    async def delete_exchange(self, name: str, *, timeout_s: float | None = None) -> None:
        """``DELETE /v1/exchanges/{name}``: the exchange and its bindings (the topics stay). Raises: UnknownExchange."""
        await self._controller_request("DELETE", f"/v1/exchanges/{quote(name, safe='')}", None,
                                       self._timeout(timeout_s))

    async def set_share_group_dead_letter(self, group_id: str, exchange: str | None, routing_key: str = "", *,
                                          timeout_s: float | None = None) -> dict[str, Any]:
        """``PUT /v1/share-groups/{group}/dead-letter``: where the share group's rejected, over-delivered and
        expired records are published (``exchange`` None: clear it). A push subscription's own exchange comes
        before the group's, the topic's after (docs/api.md "Dead-letter exchanges"). Returns ``{"group_id",
        "dead_letter_exchange", "dead_letter_routing_key"}``. Raises: InvalidExchange, InvalidGroupId."""
        body = {"dead_letter_exchange": exchange, "dead_letter_routing_key": routing_key}
        return await self._controller_request("PUT", f"/v1/share-groups/{quote(group_id, safe='')}/dead-letter",
                                              body, self._timeout(timeout_s))

    async def share_group_dead_letter(self, group_id: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """``GET /v1/share-groups/{group}/dead-letter`` (``dead_letter_exchange`` None: none named)."""
        return await self._fetcher.any_broker_request(
            "GET", f"/v1/share-groups/{quote(group_id, safe='')}/dead-letter", timeout_s=self._timeout(timeout_s))

    async def bind(self, exchange: str, topic: str, *, key: str = "", headers: Mapping[str, str] | None = None,
                   match: str = "all", unbind: bool = False, timeout_s: float | None = None) -> dict[str, Any]:
        """``POST`` (or, ``unbind``, ``DELETE``) ``/v1/exchanges/{exchange}/bindings``: bind ``topic`` with a
        binding ``key`` (direct, topic) or ``headers`` and ``match`` all/any (headers); fanout takes neither.
        Binding twice is a success. Raises: UnknownExchange, UnknownTopicOrPartition, InvalidBinding,
        BindingNotFound (unbind)."""
        body = {"topic": topic, "key": key, "headers": dict(headers or {}), "match": match}
        return await self._exchange_call("DELETE" if unbind else "POST",
                                         f"/v1/exchanges/{quote(exchange, safe='')}/bindings", body, timeout_s)

    async def _exchange_call(self, method: str, path: str, body: Mapping[str, Any],
                             timeout_s: float | None) -> dict[str, Any]:
        return _exchange_of(await self._controller_request(method, path, body, self._timeout(timeout_s)))

    async def _controller_request(self, method: str, path: str, body: Mapping[str, Any] | None,
                                  timeout_s: float) -> dict[str, Any]:
        """Send to the controller (else any broker); follow one NOT_LEADER redirect; move on to the next
        broker only when the previous one certainly did not act. Raises the last error."""
        deadline = time.monotonic() + timeout_s
        if self._view.is_stale(time.monotonic()):
            with contextlib.suppress(RaftMQError):
                await self._fetcher.refresh(timeout_s=min(timeout_s, self.request_timeout_s) / 2)
        controller = self._view.controller_url()
        urls = list(dict.fromkeys(([controller] if controller else []) + self._view.candidate_urls()))
        followed = False
        last_error: RaftMQError | None = None
        index = 0
        while index < len(urls):
            url = urls[index]
            index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await self._conn.request(method, url + path, body=body, timeout_s=remaining)
            except (NotLeader, NotController) as exc:
                last_error = exc
                self._view.mark_stale()
                target = _redirect_url(exc.details, self._view)
                if isinstance(target, str) and not followed:
                    followed = True
                    urls.insert(index, normalize_url(target))
            except RaftMQError as exc:
                if not (exc.details.get("sent") is False or (exc.retriable and exc.definite)):
                    raise
                last_error = exc
        raise last_error or ClientTimeout(f"{method} {path}: deadline passed", sent=False)


def _exchange_of(response: Mapping[str, Any]) -> dict[str, Any]:
    exchange = response.get("exchange")
    if not isinstance(exchange, dict):
        raise UnexpectedResponse("answer without an exchange")
    return exchange


def _redirect_url(details: Mapping[str, Any], view: ClusterView) -> str | None:
    """The broker a NOT_LEADER / NOT_CONTROLLER answer points at: its URL, else the URL of the id it names."""
    for url_key, id_key in (("leader_url", "leader_id"), ("controller_url", "controller_id")):
        if isinstance(details.get(url_key), str):
            return str(details[url_key])
        if type(details.get(id_key)) is int:
            url = view.broker_url(details[id_key])
            if url is not None:
                return url
    return None


# --- what the waits wait for (pure: tests and the CLI call them on canned metadata) ----------------------


def hosted_partitions(meta: ClusterMetadata, broker_id: int) -> list[tuple[str, int]]:
    """Partitions whose committed replica set or move target includes ``broker_id``."""
    return [(t.name, p.partition) for t in meta.topics for p in t.partitions
            if broker_id in p.replicas or (p.target is not None and broker_id in p.target)]


def drain_finished(meta: ClusterMetadata, broker_id: int) -> bool:
    """The drain of ``broker_id`` is over: it hosts nothing and no move involves it (or it is ``removed``,
    or gone from the broker list). A broker that is ``alive`` again had its drain cancelled: also over."""
    broker = meta.broker(broker_id)
    if broker is None or broker.state == "removed":
        return True
    if broker.state == "alive":
        # Only the controller's word counts: a lagging broker may not have applied the drain yet.
        return meta.from_controller
    if broker.replicas:
        return False
    return not hosted_partitions(meta, broker_id) and not any(m.involves(broker_id) for m in meta.moves)


def moves_finished(meta: ClusterMetadata, topic: str, *, partitions: int | None = None,
                   replication_factor: int | None = None) -> bool:
    """No move of ``topic`` runs and it has the partition count and replication factor asked for (each
    None: not checked)."""
    info = meta.topic(topic)
    if info is None:
        return False
    if any(m.topic == topic for m in meta.moves) or any(p.target is not None for p in info.partitions):
        return False
    if partitions is not None and info.partition_count < partitions:
        return False
    return replication_factor is None or all(len(p.replicas) == replication_factor for p in info.partitions)
