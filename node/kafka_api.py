"""The Kafka-protocol handlers: a decoded Kafka request → the service operations the HTTP API also calls
(``node/service.py``) → a Kafka response body. The twin of ``node/api.py``; framing, connections and limits
are ``node/kafka_listener.py``'s, the wire formats ``cluster/kafka_*.py``'s.

Per-partition failures are raftmq's coded errors, turned into Kafka codes by the one table in
``cluster/kafka_errors.py``. Records cross the edge unchanged: raftmq's batch format is RecordBatch v2, so a
produced batch is validated and proposed byte for byte (compressed ones included) and a fetch serves the
stored batches as they are (``cluster/batch.py``, ``cluster/kafka_records.py``).

What is served and how it differs from a Kafka broker:

* Produce v3-7 (v0-2 are advertised only for old librdkafka's feature checks and answered
  UNSUPPORTED_VERSION). acks=0 sends no response at all (no client reads one). acks=1 is served as
  acks=all: raftmq's own acks=1 answers once the leader's journal has the entry, before the offset is
  assigned, but every Kafka client reports each record's offset from the answer (librdkafka would report
  base -1 + i); so a Kafka acks=1 produce gets acks=all's guarantee at acks=all's latency. acks=-1
  answers the offset; an idempotent retry of a remembered batch answers success with the ORIGINAL offset
  (raftmq's producer table, cluster/producer_state.py).
* Fetch v4-11 from committed records only; max_wait_ms / min_bytes long poll; no fetch sessions
  (session_id 0 tells clients to send full fetches); last_stable_offset = high watermark (no transactions).
* No topic auto-creation; CreateTopics waits until the new partitions have leaders.
* Consumer groups (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
  OffsetFetch): Kafka's classic protocol on raftmq's group coordinator, ``node/kafka_groups.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from raftmq.cluster import kafka_records, limits
from raftmq.cluster.errors import InvalidConfig, InvalidRequest, RaftMQError, TopicAlreadyExists
from raftmq.cluster.kafka_errors import KafkaError, kafka_error_for
from raftmq.cluster.kafka_messages import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    PRODUCE_VERSION_MIN_SERVED,
    ApiKey,
    Request,
    advertised_api_keys,
)
from raftmq.cluster.metadata import BrokerState, CreateTopicRequest, parse_create_topic
from raftmq.cluster.wire import Acks
from raftmq.node.config import NodeConfig, PeerAddress
from raftmq.node.kafka_groups import KafkaGroups
from raftmq.node.operations import FetchRequest, FetchResult, OffsetRequest, OffsetSpec, ProduceRequest
from raftmq.node.service import BrokerService

log = logging.getLogger(__name__)

# Kafka acks=1 is served as acks=all (the module docstring says why).
_ACKS = {0: Acks.NONE, 1: Acks.ALL, -1: Acks.ALL}
# Kafka topic config names → raftmq's (integers, all of them). Anything else is INVALID_CONFIG.
_TOPIC_CONFIGS = {"retention.ms": "retention_ms", "retention.bytes": "retention_bytes",
                  "segment.bytes": "segment_bytes", "segment.ms": "segment_ms",
                  "min.insync.replicas": "min_insync_replicas"}
Body = dict[str, Any]


def _error(error: RaftMQError) -> int:
    return int(kafka_error_for(error))


class KafkaApi:
    def __init__(self, service: BrokerService, config: NodeConfig) -> None:
        self.service = service
        self.config = config
        self._handlers: dict[ApiKey, Callable[[Request], Awaitable[Body | None]]] = {
            ApiKey.API_VERSIONS: self.api_versions, ApiKey.METADATA: self.metadata, ApiKey.PRODUCE: self.produce,
            ApiKey.FETCH: self.fetch, ApiKey.LIST_OFFSETS: self.list_offsets,
            ApiKey.INIT_PRODUCER_ID: self.init_producer_id,
            ApiKey.CREATE_TOPICS: self.create_topics, ApiKey.DELETE_TOPICS: self.delete_topics}
        self.groups = KafkaGroups(service, self.kafka_address_of)
        self._handlers.update({
            ApiKey.FIND_COORDINATOR: self.groups.find_coordinator, ApiKey.JOIN_GROUP: self.groups.join_group,
            ApiKey.SYNC_GROUP: self.groups.sync_group, ApiKey.HEARTBEAT: self.groups.heartbeat,
            ApiKey.LEAVE_GROUP: self.groups.leave_group, ApiKey.OFFSET_COMMIT: self.groups.offset_commit,
            ApiKey.OFFSET_FETCH: self.groups.offset_fetch})

    async def stop(self) -> None:
        await self.groups.stop()

    async def handle(self, request: Request) -> Body | None:
        """The response body, or None when the request gets no response (Produce with acks=0)."""
        return await self._handlers[request.api_key](request)

    # --- cluster ----------------------------------------------------------------------------------

    async def api_versions(self, request: Request) -> Body:
        return {"error_code": 0, "api_keys": advertised_api_keys(), "throttle_time_ms": 0}

    def _brokers(self) -> list[Body]:
        """Every broker whose Kafka address we know (``kafka_address_of``: as the broker registered it, or
        from our [[brokers]] config), except brokers removed from the cluster; clients dial these for every
        data request."""
        registered = self.service.metadata.brokers
        out = []
        for broker_id in sorted({entry.broker_id for entry in self.config.brokers} | set(registered)):
            record = registered.get(broker_id)
            if record is not None and record.state is BrokerState.REMOVED:
                continue
            address = self.kafka_address_of(broker_id)
            if address is None:
                continue
            rack = record.rack if record is not None else (self.config.rack if broker_id == self.config.broker_id
                                                           else None)
            out.append({"node_id": broker_id, "host": address[0], "port": address[1], "rack": rack})
        return out

    async def metadata(self, request: Request) -> Body:
        requested = request.body["topics"]
        if requested is None or (request.header.api_version == 0 and not requested):
            names = sorted(self.service.metadata.view)  # null (v1+) or empty (v0): every topic
        else:
            names = [topic["name"] for topic in requested]
        topics = [self._topic_metadata(name) for name in names]
        controller_id = self.service.metadata.controller_id
        return {"brokers": self._brokers(), "cluster_id": self.config.cluster_id,
                "controller_id": controller_id if controller_id is not None else -1, "topics": topics}

    def _topic_metadata(self, name: str) -> Body:
        try:
            topic = self.service.describe_topic(name)
        except RaftMQError as error:
            return {"error_code": _error(error), "name": name, "partitions": []}
        partitions = []
        for p in topic.partitions:
            leader = p.leader_id if p.leader_id is not None else -1
            # The in-sync set is known where the replica is hosted; elsewhere the replicas stand for it.
            isr = list(p.isr) if p.isr else list(p.replicas)
            partitions.append({"error_code": 0 if leader >= 0 else int(KafkaError.LEADER_NOT_AVAILABLE),
                               "partition_index": p.partition, "leader_id": leader,
                               "replica_nodes": list(p.replicas), "isr_nodes": isr})
        return {"error_code": 0, "name": name, "partitions": partitions}

    def kafka_address_of(self, broker_id: int) -> tuple[str, int] | None:
        """A broker's advertised Kafka address as (host, port), or None."""
        address = self.service.kafka_address_of(broker_id)
        try:
            parsed = PeerAddress.parse(address) if address is not None else None
        except ValueError:
            log.warning("broker %d registered a Kafka address that is not host:port: %r", broker_id, address)
            return None
        return (parsed.host, parsed.port) if parsed is not None else None

    # --- produce ----------------------------------------------------------------------------------

    async def produce(self, request: Request) -> Body | None:
        body = request.body
        acks = _ACKS.get(body["acks"])
        version = request.header.api_version
        timeout_ms = min(max(body["timeout_ms"], 1), limits.produce_timeout_ms_max)
        refusal: int | None = None
        if version < PRODUCE_VERSION_MIN_SERVED:
            refusal = int(KafkaError.UNSUPPORTED_VERSION)  # the legacy message format: see kafka_messages.py
        elif body.get("transactional_id") is not None:
            refusal = int(KafkaError.INVALID_REQUEST)  # transactions are not served
        elif acks is None:
            refusal = int(KafkaError.INVALID_REQUIRED_ACKS)
        jobs = [(topic["name"], partition["index"], partition["records"])
                for topic in body["topic_data"] for partition in topic["partition_data"]]
        if refusal is not None:
            answers = [{"index": index, "error_code": refusal, "base_offset": -1} for _, index, _ in jobs]
        else:
            assert acks is not None
            answers = list(await asyncio.gather(*(self._produce_partition(name, index, records, acks, timeout_ms)
                                                  for name, index, records in jobs)))
        if acks is Acks.NONE:
            return None  # acks=0: no response at all; an extra frame would desync the clients
        by_topic: dict[str, list[Body]] = {}
        for (name, _, _), answer in zip(jobs, answers, strict=True):
            by_topic.setdefault(name, []).append(answer)
        return {"responses": [{"name": name, "partition_responses": partitions}
                              for name, partitions in by_topic.items()]}

    async def _produce_partition(self, topic: str, partition: int, records: bytes | None, acks: Acks,
                                 timeout_ms: int) -> Body:
        """Each batch of the partition in order, as one raftmq produce each; the answer carries the first
        batch's offset (Kafka's base_offset), or the first error (later batches are not attempted)."""
        base_offset = -1
        try:
            if not records:
                raise InvalidRequest("a Produce partition without records")
            for index, data in enumerate(kafka_records.split_batches(records)):
                result = await self.service.produce(ProduceRequest(topic, partition, bytes(data), acks, timeout_ms))
                if index == 0 and result.base_offset is not None:
                    base_offset = result.base_offset
        except RaftMQError as error:
            if acks is Acks.NONE:  # nobody hears of it otherwise
                log.debug("acks=0 produce to %s-%d failed: %s", topic, partition, error)
            return {"index": partition, "error_code": _error(error), "base_offset": -1}
        return {"index": partition, "error_code": 0, "base_offset": base_offset}

    # --- fetch ------------------------------------------------------------------------------------

    async def fetch(self, request: Request) -> Body:
        body = request.body
        wait_ms = min(max(body["max_wait_ms"], 0), limits.kafka_fetch_wait_ms_max)
        min_bytes = max(body["min_bytes"], 0)
        budget = min(max(body["max_bytes"], 1), limits.kafka_fetch_response_bytes_max)
        wanted = [(topic["topic"], p["partition"], p["fetch_offset"],
                   min(max(p["partition_max_bytes"], 1), limits.fetch_bytes_max))
                  for topic in body["topics"] for p in topic["partitions"]]
        results = await self._fetch_all(wanted, 0)
        ready = sum(len(r.batches) for r in results if isinstance(r, FetchResult))
        if wait_ms > 0 and ready < max(min_bytes, 1) and wanted:
            # Long poll: wait until any partition has records or the wait ends, then read every partition.
            waits = [asyncio.ensure_future(self._fetch_one(t, p, o, m, wait_ms)) for t, p, o, m in wanted]
            try:
                await asyncio.wait(waits, timeout=wait_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            results = await self._fetch_all(wanted, 0)
        return {"responses": self._fetch_responses(wanted, results, budget)}

    async def _fetch_all(self, wanted: list[tuple[str, int, int, int]], wait_ms: int
                         ) -> list[FetchResult | RaftMQError]:
        return list(await asyncio.gather(*(self._fetch_one(t, p, o, m, wait_ms) for t, p, o, m in wanted)))

    async def _fetch_one(self, topic: str, partition: int, offset: int, max_bytes: int, wait_ms: int
                         ) -> FetchResult | RaftMQError:
        try:
            return await self.service.fetch(FetchRequest(topic, partition, offset, max_bytes, wait_ms))
        except RaftMQError as error:
            return error

    @staticmethod
    def _fetch_responses(wanted: list[tuple[str, int, int, int]], results: list[FetchResult | RaftMQError],
                         budget: int) -> list[Body]:
        by_topic: dict[str, list[Body]] = {}
        used = 0
        for (topic, partition, _, max_bytes), result in zip(wanted, results, strict=True):
            if isinstance(result, RaftMQError):
                answer: Body = {"partition_index": partition, "error_code": _error(result), "high_watermark": -1,
                                "records": None}
            else:
                # Whole batches only, at least one in the whole response (a consumer must always progress).
                remaining = min(max_bytes, budget - used)
                records = b"" if used and remaining <= 0 else kafka_records.within_budget(result.batches, remaining)
                used += len(records)
                answer = {"partition_index": partition, "error_code": 0, "high_watermark": result.high_watermark,
                          "last_stable_offset": result.high_watermark, "log_start_offset": result.log_start_offset,
                          "aborted_transactions": None, "records": records}
            by_topic.setdefault(topic, []).append(answer)
        return [{"topic": topic, "partitions": partitions} for topic, partitions in by_topic.items()]

    async def list_offsets(self, request: Request) -> Body:
        topics = []
        for topic in request.body["topics"]:
            answers = [await self._list_offset(topic["name"], p["partition_index"], p["timestamp"])
                       for p in topic["partitions"]]
            topics.append({"name": topic["name"], "partitions": answers})
        return {"topics": topics}

    async def _list_offset(self, topic: str, partition: int, timestamp: int) -> Body:
        at: OffsetSpec
        if timestamp == EARLIEST_TIMESTAMP:
            at = "earliest"
        elif timestamp == LATEST_TIMESTAMP:
            at = "latest"
        else:
            at = timestamp
        try:
            if timestamp < 0 and not isinstance(at, str):
                raise InvalidRequest(f"ListOffsets timestamp {timestamp} (only -1, -2 or a time in ms)")
            result = await self.service.list_offset(OffsetRequest(topic, partition, at))
        except RaftMQError as error:
            return {"partition_index": partition, "error_code": _error(error)}
        found = result.offset is not None
        # The record's own timestamp is not looked up: -1 (unknown), which clients accept.
        return {"partition_index": partition, "error_code": 0, "timestamp": -1,
                "offset": result.offset if found else -1}

    # --- producers and topics ---------------------------------------------------------------------

    async def init_producer_id(self, request: Request) -> Body:
        if request.body["transactional_id"] is not None:
            return {"error_code": int(KafkaError.INVALID_REQUEST)}  # transactions are not served
        try:
            identity = await self.service.init_producer(None)
        except RaftMQError as error:
            return {"error_code": _error(error)}
        return {"error_code": 0, "producer_id": identity.producer_id, "producer_epoch": identity.producer_epoch}

    async def create_topics(self, request: Request) -> Body:
        validate_only = request.body.get("validate_only", False)
        answers = await asyncio.gather(*(self._create_topic(topic, validate_only)
                                         for topic in request.body["topics"]))
        return {"topics": list(answers)}

    async def _create_topic(self, topic: Body, validate_only: bool) -> Body:
        name = topic["name"]
        try:
            create = _create_request(topic)
            if name in self.service.metadata.view:
                # Kafka's answer to a second create, even of the same topic (raftmq's HTTP API takes an
                # identical create as a retry and answers success; Kafka clients expect this error).
                raise TopicAlreadyExists(f"topic {name!r} already exists", topic=name)
            if not validate_only:
                await self.service.create_topic(create)
        except RaftMQError as error:
            return {"name": name, "error_code": _error(error), "error_message": error.message}
        return {"name": name, "error_code": 0, "error_message": None}

    async def delete_topics(self, request: Request) -> Body:
        answers = []
        for name in request.body["topic_names"]:
            try:
                await self.service.delete_topic(name)
                answers.append({"name": name, "error_code": 0})
            except RaftMQError as error:
                answers.append({"name": name, "error_code": _error(error)})
        return {"responses": answers}


def _create_request(topic: Body) -> CreateTopicRequest:
    """A CreateTopics entry as raftmq's create-topic request (-1 = the broker's default, as Kafka v4+)."""
    if topic["assignments"]:
        raise InvalidRequest("manual replica assignments are not supported; raftmq places replicas itself")
    config: dict[str, int] = {}
    for entry in topic["configs"]:
        key = _TOPIC_CONFIGS.get(entry["name"])
        if key is None:
            raise InvalidConfig(f"topic config {entry['name']!r} is not supported (supported: "
                                f"{', '.join(sorted(_TOPIC_CONFIGS))})", key=entry["name"])
        try:
            config[key] = int(entry["value"])
        except (TypeError, ValueError):
            raise InvalidConfig(f"topic config {entry['name']} must be an integer", key=entry["name"]) from None
    body: Body = {"name": topic["name"], "config": config}
    if topic["num_partitions"] != -1:
        body["partitions"] = topic["num_partitions"]
    if topic["replication_factor"] != -1:
        body["replication_factor"] = topic["replication_factor"]
    return parse_create_topic(body)


__all__ = ["KafkaApi"]
