"""An in-process fake of the raftmq HTTP API (docs/api.md), for client tests only.

Goal: exercise the client against real HTTP (aiohttp server on loopback port 0) with a tiny, predictable
broker: no Raft, no disk. One :class:`FakeCluster` holds the state (topics, logs, producer ids, leaders)
and serves it through N :class:`FakeBroker` sites, so "NOT_LEADER pointing at another broker" is real.

What it implements: health, metadata, topics (create/list/describe/delete), producer ids, produce on the
partition endpoint (msgpack ``batch`` only), fetch (msgpack, long-poll with ``max_wait_ms``), offsets.
Produce validates with ``cluster.batch.validate_produced``, stamps with ``cluster.batch.stamp`` and dedups
like the real broker: per (producer id, partition) the last ``limits.producer_batches_remembered``
batches; a retry of one of them answers ``duplicate: true`` with the original offset; an older sequence
answers ``DUPLICATE_SEQUENCE``; a gap answers ``OUT_OF_ORDER_SEQUENCE``; an id never allocated answers
``UNKNOWN_PRODUCER_ID``. acks=all/1/0 answers follow docs/api.md (offsets only for acks=all).

Faults (:meth:`FakeCluster.inject`), consumed in FIFO order per endpoint kind, optionally per broker:

* ``error``: answer an error code (``apply=True``: produce appends the batch first, so the outcome is
  "stored but the client was told OUTCOME_UNKNOWN/REQUEST_TIMED_OUT").
* ``hang``: hold the request until the client gives up (released at stop, or after ``hang_s_max``).
* ``drop``: close the connection without an answer (``apply=True``: after appending).
* ``corrupt``: (fetch) flip a byte in the returned batches so the body CRC fails.
* ``garbage``: answer 200 with a body that is not msgpack.

:meth:`FakeCluster.hold_produce` makes produce requests wait (before appending) until
:meth:`FakeCluster.release_produce`: a deterministic way to keep batches in flight.

Every request is logged in :attr:`FakeCluster.requests` (broker id, method, path, decoded body) so tests
can assert what was sent, e.g. that a retry resent the same bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack
from aiohttp import web
from raftmq.cluster import limits
from raftmq.cluster.batch import decode_records, iter_batches, stamp, validate_produced
from raftmq.cluster.errors import (
    DuplicateSequence,
    InvalidOffset,
    InvalidRequest,
    NotLeader,
    OffsetOutOfRange,
    OutOfOrderSequence,
    RaftMQError,
    TopicAlreadyExists,
    UnknownProducerId,
    UnknownTopicOrPartition,
    error_class_for,
)

MSGPACK: Final = "application/msgpack"
# A hung request never outlives this, even if a test forgets to stop the cluster.
hang_s_max: Final = 10.0

FaultKind = Literal["produce", "fetch", "offsets", "metadata", "producers", "topics", "health"]


@dataclass
class Fault:
    """One injected misbehaviour; ``times`` requests are affected (FIFO per kind)."""

    action: Literal["error", "hang", "drop", "corrupt", "garbage"]
    code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    apply: bool = False
    times: int = 1
    broker_id: int | None = None  # None: any broker
    # ``corrupt``: index of the flipped byte in the returned batches (-1: the last byte, in a body).
    corrupt_index: int = -1
    # Called with the request log entry; the fault applies only when it returns True.
    match: Callable[[RequestLog], bool] | None = None


@dataclass
class RequestLog:
    broker_id: int
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class ProducerState:
    # (first_sequence, last_sequence, base_offset) of the last remembered batches, oldest first.
    batches: collections.deque[tuple[int, int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=limits.producer_batches_remembered))


@dataclass
class FakePartition:
    topic: str
    partition: int
    leader_id: int | None
    leader_epoch: int
    replicas: list[int]
    batches: list[bytes] = field(default_factory=list)
    log_start_offset: int = 0
    next_offset: int = 0
    producers: dict[int, ProducerState] = field(default_factory=dict)
    appended: asyncio.Event = field(default_factory=asyncio.Event)


class FakeBroker:
    def __init__(self, cluster: FakeCluster, broker_id: int) -> None:
        self.cluster = cluster
        self.broker_id = broker_id
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=limits.request_bytes_max)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/metadata", self._metadata)
        app.router.add_post("/v1/topics", self._create_topic)
        app.router.add_get("/v1/topics", self._list_topics)
        app.router.add_get("/v1/topics/{topic}", self._describe_topic)
        app.router.add_delete("/v1/topics/{topic}", self._delete_topic)
        app.router.add_post("/v1/producers", self._producers)
        app.router.add_post("/v1/topics/{topic}/partitions/{partition}/records", self._produce)
        app.router.add_get("/v1/topics/{topic}/partitions/{partition}/records", self._fetch)
        app.router.add_get("/v1/topics/{topic}/partitions/{partition}/offsets", self._offsets)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- plumbing --------------------------------------------------------------------------------------

    async def _enter(self, request: web.Request, kind: FaultKind) -> tuple[RequestLog, Fault | None]:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw:
                body = msgpack.unpackb(raw, raw=False)
        entry = RequestLog(self.broker_id, request.method, request.path, dict(request.query), body)
        self.cluster.requests.append(entry)
        return entry, self.cluster._take_fault(kind, self.broker_id, entry)

    async def _misbehave(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.action == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hang_s_max):
                    await self.cluster._release.wait()
            return _error(error_class_for("REQUEST_TIMED_OUT")("fake broker hung"))
        if fault.action == "garbage":
            return web.Response(status=200, body=b"\xc1 not msgpack", content_type=MSGPACK)
        if fault.action == "drop":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp closes the connection without an answer
        assert fault.code is not None
        return _error(error_class_for(fault.code)(f"injected {fault.code}", **fault.details))

    def _not_leader(self, part: FakePartition) -> web.Response:
        leader_url = self.cluster.broker_url(part.leader_id) if part.leader_id is not None else None
        return _error(NotLeader(f"broker {self.broker_id} does not lead {part.topic}/{part.partition}",
                                leader_id=part.leader_id, leader_url=leader_url,
                                leader_epoch=part.leader_epoch))

    # --- handlers ---------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "health")
        if fault is not None:
            return await self._misbehave(request, fault)
        return _ok({"status": "ok", "broker_id": self.broker_id, "ready": True})

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "metadata")
        if fault is not None:
            return await self._misbehave(request, fault)
        return _ok(self.cluster.metadata(self.broker_id))

    async def _create_topic(self, request: web.Request) -> web.StreamResponse:
        entry, fault = await self._enter(request, "topics")
        if fault is not None:
            return await self._misbehave(request, fault)
        body = entry.body or {}
        try:
            topic = self.cluster.create_topic(body.get("name"), body.get("partitions", 1),
                                              replication_factor=body.get("replication_factor"),
                                              config=body.get("config"))
        except RaftMQError as exc:
            return _error(exc)
        return _ok({"topic": topic}, status=201)

    async def _list_topics(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "topics")
        if fault is not None:
            return await self._misbehave(request, fault)
        names = sorted(self.cluster.topics)
        return _ok({"topics": [self.cluster.topic_wire(n, self.broker_id) for n in names]})

    async def _describe_topic(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "topics")
        if fault is not None:
            return await self._misbehave(request, fault)
        name = request.match_info["topic"]
        if name not in self.cluster.topics:
            return _error(UnknownTopicOrPartition(f"no topic {name}", topic=name))
        return _ok({"topic": self.cluster.topic_wire(name, self.broker_id)})

    async def _delete_topic(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "topics")
        if fault is not None:
            return await self._misbehave(request, fault)
        name = request.match_info["topic"]
        if self.cluster.topics.pop(name, None) is None:
            return _error(UnknownTopicOrPartition(f"no topic {name}", topic=name))
        return _ok({"deleted": name})

    async def _producers(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "producers")
        if fault is not None:
            return await self._misbehave(request, fault)
        self.cluster.next_producer_id += 1
        self.cluster.producer_ids.add(self.cluster.next_producer_id)
        return _ok({"producer_id": self.cluster.next_producer_id})

    def _partition(self, request: web.Request) -> FakePartition:
        topic = request.match_info["topic"]
        try:
            index = int(request.match_info["partition"])
        except ValueError:
            raise InvalidRequest("partition must be an integer") from None
        partitions = self.cluster.topics.get(topic)
        if partitions is None or not 0 <= index < len(partitions):
            raise UnknownTopicOrPartition(f"no {topic}/{index}", topic=topic, partition=index)
        return partitions[index]

    async def _produce(self, request: web.Request) -> web.StreamResponse:
        entry, fault = await self._enter(request, "produce")
        try:
            part = self._partition(request)
        except RaftMQError as exc:
            return _error(exc)
        if fault is not None and not fault.apply:
            return await self._misbehave(request, fault)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hang_s_max):
                await self.cluster._produce_gate.wait()
        if part.leader_id != self.broker_id:
            return self._not_leader(part)
        body = entry.body
        if not isinstance(body, dict) or not isinstance(body.get("batch"), bytes):
            return _error(InvalidRequest("this fake only takes msgpack {'batch': bin}"))
        acks = body.get("acks", "all")
        try:
            header = validate_produced(body["batch"])
            answer = self.cluster.append(part, body["batch"], header)
        except RaftMQError as exc:
            return _error(exc)
        if fault is not None:
            return await self._misbehave(request, fault)
        if acks in (0, 1, "0", "1"):
            answer["base_offset"] = None
        answer["acks"] = acks
        return _ok(answer)

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "fetch")
        if fault is not None and fault.action != "corrupt":
            return await self._misbehave(request, fault)
        try:
            part = self._partition(request)
            offset = _int_param(request, "offset", None)
            max_bytes = min(_int_param(request, "max_bytes", limits.fetch_bytes_max_default),
                            limits.fetch_bytes_max)
            max_wait_ms = min(_int_param(request, "max_wait_ms", 0), limits.fetch_wait_ms_max)
        except RaftMQError as exc:
            return _error(exc)
        if request.query.get("replica") != "any" and part.leader_id != self.broker_id:
            return self._not_leader(part)
        if offset < part.log_start_offset or offset > part.next_offset:
            return _error(OffsetOutOfRange(f"offset {offset} out of range",
                                           log_start_offset=part.log_start_offset,
                                           log_end_offset=part.next_offset))
        if offset == part.next_offset and max_wait_ms > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait_ms / 1000.0):
                    while offset == part.next_offset:
                        await part.appended.wait()
        data = self.cluster.read(part, offset, max_bytes)
        if fault is not None and data:
            corrupted = bytearray(data)
            corrupted[fault.corrupt_index] ^= 0xFF
            data = bytes(corrupted)
        return _ok({"topic": part.topic, "partition": part.partition, "high_watermark": part.next_offset,
                    "log_start_offset": part.log_start_offset, "batches": data})

    async def _offsets(self, request: web.Request) -> web.StreamResponse:
        _, fault = await self._enter(request, "offsets")
        if fault is not None:
            return await self._misbehave(request, fault)
        try:
            part = self._partition(request)
        except RaftMQError as exc:
            return _error(exc)
        if part.leader_id != self.broker_id:
            return self._not_leader(part)
        at = request.query.get("at", "latest")
        offset: int | None
        if at == "earliest":
            offset = part.log_start_offset
        elif at == "latest":
            offset = part.next_offset
        else:
            try:
                ts = int(at)
            except ValueError:
                return _error(InvalidOffset("at must be earliest, latest or a timestamp"))
            offset = self.cluster.offset_for_time(part, ts)
        return _ok({"topic": part.topic, "partition": part.partition, "offset": offset,
                    "log_start_offset": part.log_start_offset, "high_watermark": part.next_offset})


class FakeCluster:
    """Shared state of the fake brokers. Use ``async with FakeCluster(brokers=2) as cluster``."""

    def __init__(self, brokers: int = 1) -> None:
        self.brokers = [FakeBroker(self, broker_id) for broker_id in range(1, brokers + 1)]
        self.topics: dict[str, list[FakePartition]] = {}
        self.topic_ids: dict[str, int] = {}
        self.requests: list[RequestLog] = []
        self.producer_ids: set[int] = set()
        self.next_producer_id = 1000
        self._faults: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        self._release = asyncio.Event()
        self._produce_gate = asyncio.Event()
        self._produce_gate.set()
        self._raft_index = 0

    async def __aenter__(self) -> FakeCluster:
        for broker in self.brokers:
            await broker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        self._produce_gate.set()
        for broker in self.brokers:
            await broker.stop()

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.brokers]

    def broker_url(self, broker_id: int) -> str | None:
        for broker in self.brokers:
            if broker.broker_id == broker_id:
                return broker.url
        return None

    # --- faults and inspection ---------------------------------------------------------------------------

    def inject(self, kind: FaultKind, fault: Fault) -> Fault:
        self._faults[kind].append(fault)
        return fault

    def _take_fault(self, kind: str, broker_id: int, entry: RequestLog) -> Fault | None:
        queue = self._faults.get(kind)
        if not queue:
            return None
        for fault in queue:
            if fault.broker_id not in (None, broker_id):
                continue
            if fault.match is not None and not fault.match(entry):
                continue
            fault.times -= 1
            if fault.times <= 0:
                queue.remove(fault)
            return fault
        return None

    def hold_produce(self) -> None:
        """Produce requests wait (before appending) until release_produce() (or hang_s_max)."""
        self._produce_gate.clear()

    def release_produce(self) -> None:
        self._produce_gate.set()

    def requests_for(self, kind_path_suffix: str, method: str = "POST") -> list[RequestLog]:
        return [r for r in self.requests if r.method == method and r.path.endswith(kind_path_suffix)]

    def produce_requests(self, topic: str | None = None) -> list[RequestLog]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/records")
                and (topic is None or r.path.startswith(f"/v1/topics/{topic}/"))]

    def stored(self, topic: str, partition: int) -> list[tuple[int, bytes | None, bytes | None]]:
        """(offset, key, value) of every stored record."""
        out: list[tuple[int, bytes | None, bytes | None]] = []
        for batch in self.topics[topic][partition].batches:
            out.extend((r.offset, r.key, r.value) for r in decode_records(batch))
        return out

    # --- state changes --------------------------------------------------------------------------------------

    def create_topic(self, name: Any, partitions: Any = 1, *, replication_factor: Any = None,
                     config: Any = None, leaders: list[int] | None = None) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise InvalidRequest("name must be a non-empty string")
        if name in self.topics:
            raise TopicAlreadyExists(f"topic {name} exists", topic=name)
        if type(partitions) is not int or not 1 <= partitions <= limits.partitions_per_topic_max:
            raise error_class_for("INVALID_PARTITIONS")("bad partition count", partitions=partitions)
        rf = len(self.brokers) if replication_factor is None else replication_factor
        if type(rf) is not int or not 1 <= rf <= len(self.brokers):
            raise error_class_for("INVALID_REPLICATION_FACTOR")("bad replication factor",
                                                                 replication_factor=rf)
        ids = [b.broker_id for b in self.brokers]
        parts = []
        for index in range(partitions):
            leader = leaders[index] if leaders is not None else ids[index % len(ids)]
            replicas = [ids[(ids.index(leader) + k) % len(ids)] for k in range(rf)]
            parts.append(FakePartition(name, index, leader, 1, replicas))
        self.topics[name] = parts
        self.topic_ids[name] = len(self.topic_ids) + 1
        return self.topic_wire(name, self.brokers[0].broker_id)

    def set_leader(self, topic: str, partition: int, broker_id: int | None) -> None:
        part = self.topics[topic][partition]
        part.leader_id = broker_id
        part.leader_epoch += 1

    def append(self, part: FakePartition, batch: bytes, header: Any) -> dict[str, Any]:
        producer_id, base_seq, count = header.producer_id, header.base_sequence, header.record_count
        duplicate_of: int | None = None
        if producer_id >= 0:
            if producer_id not in self.producer_ids:
                raise UnknownProducerId("producer id was never allocated", producer_id=producer_id)
            state = part.producers.get(producer_id)
            if state is None:
                if base_seq != 0:
                    raise OutOfOrderSequence("first batch of a producer must have sequence 0",
                                             base_sequence=base_seq)
            else:
                last_seq = state.batches[-1][1]
                if base_seq != last_seq + 1:
                    for first, last, offset in state.batches:
                        if first == base_seq and last == base_seq + count - 1:
                            duplicate_of = offset
                            break
                    else:
                        if base_seq <= last_seq:
                            raise DuplicateSequence("sequence older than the remembered batches",
                                                    base_sequence=base_seq)
                        raise OutOfOrderSequence("sequence gap", base_sequence=base_seq,
                                                 expected_sequence=last_seq + 1)
        if duplicate_of is not None:
            return {"topic": part.topic, "partition": part.partition, "base_offset": duplicate_of,
                    "record_count": count, "leader_epoch": part.leader_epoch, "raft_index": 0,
                    "duplicate": True, "log_append_time_ms": int(time.time() * 1000)}
        self._raft_index += 1
        base_offset = part.next_offset
        part.batches.append(stamp(batch, base_offset=base_offset, leader_epoch=part.leader_epoch,
                                  raft_index=self._raft_index, append_time_ms=int(time.time() * 1000)))
        part.next_offset += count
        if producer_id >= 0:
            part.producers.setdefault(producer_id, ProducerState()).batches.append(
                (base_seq, base_seq + count - 1, base_offset))
        event, part.appended = part.appended, asyncio.Event()
        event.set()
        return {"topic": part.topic, "partition": part.partition, "base_offset": base_offset,
                "record_count": count, "leader_epoch": part.leader_epoch, "raft_index": self._raft_index,
                "duplicate": False, "log_append_time_ms": int(time.time() * 1000)}

    def append_records(self, topic: str, partition: int, values: list[bytes], *, timestamp_ms: int = 1_000
                       ) -> None:
        """Store records directly (one batch), as if produced by a non-idempotent producer."""
        from raftmq.cluster.batch import encode_batch

        part = self.topics[topic][partition]
        batch = encode_batch([(None, v, (), timestamp_ms + i) for i, v in enumerate(values)])
        self.append(part, batch, validate_produced(batch))

    def truncate_before(self, topic: str, partition: int, offset: int) -> None:
        """Retention: drop whole batches below ``offset`` and move the log start."""
        part = self.topics[topic][partition]
        kept = []
        for batch in part.batches:
            header = next(iter(iter_batches(batch)))[0]
            if header.next_offset <= offset:
                part.log_start_offset = header.next_offset
            else:
                kept.append(batch)
        part.batches = kept

    def read(self, part: FakePartition, offset: int, max_bytes: int) -> bytes:
        out: list[bytes] = []
        size = 0
        for batch in part.batches:
            header = next(iter(iter_batches(batch)))[0]
            if header.next_offset <= offset:
                continue
            if out and size + len(batch) > max_bytes:
                break
            out.append(batch)
            size += len(batch)
        return b"".join(out)

    def offset_for_time(self, part: FakePartition, timestamp_ms: int) -> int | None:
        for batch in part.batches:
            for record in decode_records(batch):
                if record.timestamp_ms >= timestamp_ms:
                    return record.offset
        return None

    # --- wire views -----------------------------------------------------------------------------------------

    def topic_wire(self, name: str, broker_id: int) -> dict[str, Any]:
        parts = self.topics[name]
        return {
            "name": name, "topic_id": self.topic_ids[name], "replication_factor": len(parts[0].replicas),
            "config": {"retention_ms": limits.retention_ms_default, "min_insync_replicas": 1},
            "partitions": [
                {"partition": p.partition, "leader_id": p.leader_id, "leader_epoch": p.leader_epoch,
                 "replicas": p.replicas, "isr": p.replicas if p.leader_id == broker_id else [],
                 "commit_index": self._raft_index, "applied_index": self._raft_index,
                 "log_start_offset": p.log_start_offset, "high_watermark": p.next_offset,
                 "role": "leader" if p.leader_id == broker_id else "follower"}
                for p in parts
            ],
        }

    def metadata(self, broker_id: int) -> dict[str, Any]:
        return {
            "cluster_id": "raftmq-fake", "broker_id": broker_id, "controller_id": self.brokers[0].broker_id,
            "brokers": [{"id": b.broker_id, "url": b.url, "peer": f"127.0.0.1:{9200 + b.broker_id}"}
                        for b in self.brokers],
            "topics": [self.topic_wire(name, broker_id) for name in sorted(self.topics)],
        }


def _int_param(request: web.Request, name: str, default: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(f"query parameter {name} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidOffset(f"{name} must be an integer") from None
    if value < 0:
        raise InvalidOffset(f"{name} must be >= 0")
    return value


def _ok(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgpack.packb(payload, use_bin_type=True), content_type=MSGPACK)


def _error(error: RaftMQError) -> web.Response:
    body = msgpack.packb({"error": error.to_wire()}, use_bin_type=True)
    return web.Response(status=error.http_status, body=body, content_type=MSGPACK)


@contextlib.asynccontextmanager
async def fake_cluster(brokers: int = 1) -> AsyncIterator[FakeCluster]:
    async with FakeCluster(brokers) as cluster:
        yield cluster


async def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0,
                     what: str = "condition") -> None:
    """Poll ``condition`` (every few ms) until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)  # polling a condition with a deadline, not sleeping as synchronisation
