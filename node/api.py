"""The node's HTTP API (docs/api.md): decode with cluster.wire, call the service (node/service.py), encode.

This module touches nothing but the service and the request/result values of node/operations.py. Every
failure leaves as ``{"error": {"code", "message", "details"}}`` with the status of its error class; bad
input is rejected here (one place: ``read_body`` and ``error_middleware``) or in the service before any
stored data is touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.consumer_groups import validate_group_id
from raftmq.cluster.dead_lettering import parse_group_dead_letter
from raftmq.cluster.errors import (
    InternalError,
    InvalidRequest,
    MalformedBody,
    MethodNotAllowed,
    RaftMQError,
    RequestReadTimeout,
    RequestTooLarge,
    RouteNotFound,
)
from raftmq.cluster.exchanges import parse_binding, parse_create_exchange
from raftmq.cluster.group_push import parse_group_subscription
from raftmq.cluster.group_requests import (
    parse_group_heartbeat,
    parse_offset_commit,
    parse_partition_list,
    parse_share_acknowledge,
    parse_share_acquire,
)
from raftmq.cluster.metadata import parse_alter_topic, parse_create_topic, parse_producer_name
from raftmq.cluster.publish import parse_publish
from raftmq.cluster.push import parse_subscription
from raftmq.cluster.wire import (
    Acks,
    decode_body,
    encode_body,
    parse_acks,
    parse_partition,
    query_int,
    records_to_batch,
    require_int,
    text_or_b64,
    wants_msgpack,
)
from raftmq.node.broker import Broker
from raftmq.node.forwarding import FORWARDED_HEADER
from raftmq.node.group_push import GroupPushSession
from raftmq.node.internal_api import check_token, internal_token, parse_heartbeat, parse_proposal, parse_step
from raftmq.node.operations import FetchRequest, OffsetRequest, OffsetSpec, ProduceRequest
from raftmq.node.push import PushSession, PushSessions, Session
from raftmq.node.service import BrokerService
from raftmq.node.stages import StageTrace

log = logging.getLogger(__name__)

BROKER: web.AppKey[Broker] = web.AppKey("broker", Broker)
INTERNAL_TOKEN: web.AppKey[str] = web.AppKey("internal_token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _TracedResponse(web.Response):
    """A response that ends its request's stage trace (node/stages.py) once aiohttp has written it to the
    socket (aiohttp calls ``write_eof`` after the handler and the middlewares return). A middleware that
    replaces it records nothing: the trace did not describe what was sent."""

    def __init__(self, *, trace: StageTrace, record: Callable[[StageTrace], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trace: StageTrace | None = trace
        self._record = record

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        trace, self._trace = self._trace, None
        if trace is not None:
            self._record(trace)


def _respond(request: web.Request, payload: Any, status: int = 200, trace: StageTrace | None = None
             ) -> web.Response:
    as_msgpack = wants_msgpack(request.headers.get("Accept"), request.headers.get("Content-Type"))
    body = encode_body(payload, as_msgpack=as_msgpack)
    content_type = "application/msgpack" if as_msgpack else "application/json"
    if trace is not None:
        return _TracedResponse(trace=trace, record=_service(request).record_stages, body=body, status=status,
                               content_type=content_type)
    return web.Response(body=body, status=status, content_type=content_type)


def _error_response(request: web.Request, error: RaftMQError) -> web.Response:
    return _respond(request, {"error": error.to_wire()}, status=error.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where a failure becomes an HTTP answer: every RaftMQError with its own status and code,
    aiohttp's own rejections with theirs, and anything unexpected as INTERNAL_ERROR (logged)."""
    try:
        return await handler(request)
    except RaftMQError as error:
        return _error_response(request, error)
    except web.HTTPRequestEntityTooLarge:
        return _error_response(request, RequestTooLarge(
            f"request body larger than {limits.request_bytes_max} bytes", size_bytes_max=limits.request_bytes_max))
    except web.HTTPMethodNotAllowed as exc:
        return _error_response(request, MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}", allowed=sorted(exc.allowed_methods)))
    except web.HTTPNotFound:
        return _error_response(request, RouteNotFound(f"no endpoint {request.method} {request.path}; see docs/api.md"))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error_response(request, InvalidRequest(exc.reason or "bad request", http_status=exc.status))
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(request, InternalError("unexpected error in the broker; see its log"))


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request body as an object. Every way it can be bad is a coded 4xx: too large, not arriving in
    time, a Content-Encoding it does not match, not msgpack/JSON, not an object."""
    try:
        async with asyncio.timeout(limits.http_request_body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestReadTimeout(f"the request body did not arrive within {limits.http_request_body_timeout_s:.0f} "
                                 "s", timeout_s=limits.http_request_body_timeout_s) from None
    except (HttpProcessingError, RequestPayloadError) as exc:
        # e.g. Content-Encoding: gzip on a body that is not gzip, or a broken chunked encoding.
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MalformedBody(f"the request body could not be read: {reason}") from None
    return decode_body(request.headers.get("Content-Type"), raw)


def _partition_arg(request: web.Request) -> int:
    return parse_partition(request.match_info["partition"])


# --- handlers: decode -> service -> encode --------------------------------------------------------


def _service(request: web.Request) -> BrokerService:
    return request.app[BROKER].service


async def debug_stages(request: web.Request) -> web.Response:
    return _respond(request, _service(request).debug_stages())


async def health(request: web.Request) -> web.Response:
    return _respond(request, _service(request).health().to_wire())


async def metadata(request: web.Request) -> web.Response:
    return _respond(request, _service(request).describe_cluster().to_wire())


async def list_topics(request: web.Request) -> web.Response:
    return _respond(request, {"topics": [t.to_wire() for t in _service(request).list_topics()]})


async def create_topic(request: web.Request) -> web.Response:
    create = parse_create_topic(await read_body(request))
    forwarded = FORWARDED_HEADER in request.headers
    topic = await _service(request).create_topic(create, forwarded=forwarded)
    return _respond(request, {"topic": topic.to_wire()}, status=201)


async def describe_topic(request: web.Request) -> web.Response:
    return _respond(request, {"topic": _service(request).describe_topic(request.match_info["topic"]).to_wire()})


async def delete_topic(request: web.Request) -> web.Response:
    return _respond(request, (await _service(request).delete_topic(request.match_info["topic"])).to_wire())


async def alter_topic(request: web.Request) -> web.Response:
    alter = parse_alter_topic(await read_body(request))
    forwarded = FORWARDED_HEADER in request.headers
    topic = await _service(request).alter_topic(request.match_info["topic"], alter, forwarded=forwarded)
    return _respond(request, {"topic": topic.to_wire()})


def _broker_arg(request: web.Request) -> int:
    return parse_partition(request.match_info["broker"])  # the same digits-only rule as partition numbers


async def drain_broker(request: web.Request) -> web.Response:
    forwarded = FORWARDED_HEADER in request.headers
    broker = await _service(request).set_draining(_broker_arg(request), request.method == "POST",
                                                  forwarded=forwarded)
    return _respond(request, {"broker": broker.to_wire()})


def _internal(request: web.Request) -> BrokerService:
    check_token(request, request.app[INTERNAL_TOKEN])
    return _service(request)


async def internal_heartbeat(request: web.Request) -> web.Response:
    service = _internal(request)
    return _respond(request, await service.heartbeat(parse_heartbeat(await read_body(request))))


async def internal_metadata(request: web.Request) -> web.Response:
    return _respond(request, _internal(request).metadata_state())


async def internal_propose(request: web.Request) -> web.Response:
    service = _internal(request)
    op, payload = parse_proposal(await read_body(request))
    return _respond(request, await service.propose_here(op, payload))


async def internal_step(request: web.Request) -> web.Response:
    service = _internal(request)
    return _respond(request, await service.partition_step(parse_step(await read_body(request))))


async def create_producer(request: web.Request) -> web.Response:
    name = parse_producer_name(await read_body(request))  # {} or {"name": ...}
    return _respond(request, (await _service(request).init_producer(name)).to_wire())


def _produce_args(body: dict[str, Any]) -> tuple[Acks, int, bytes]:
    unknown = sorted(set(body) - {"acks", "timeout_ms", "batch", "records", "key"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    acks = parse_acks(body.get("acks", "all"))
    timeout_ms = require_int(body, "timeout_ms", default=limits.produce_timeout_ms_default, minimum=1,
                             maximum=limits.produce_timeout_ms_max)
    if ("batch" in body) == ("records" in body):
        raise InvalidRequest("give exactly one of batch (msgpack bin) or records (array)", field="batch")
    if "batch" in body:
        batch = body["batch"]
        if not isinstance(batch, bytes):
            raise InvalidRequest("batch must be msgpack bin (bytes); JSON clients send records", field="batch")
    else:
        batch = records_to_batch(body["records"], now_ms=int(time.time() * 1000))
    return acks, timeout_ms, batch


def _trace_for(acks: Acks) -> StageTrace | None:
    """Per-stage timestamps for acks=all requests (node/stages.py), started once the body is decoded."""
    return StageTrace() if acks is Acks.ALL else None


async def produce(request: web.Request) -> web.Response:
    body = await read_body(request)
    acks, timeout_ms, batch = _produce_args(body)
    if "key" in body:
        raise InvalidRequest("key selects a partition: use POST /v1/topics/{topic}/records", field="key")
    trace = _trace_for(acks)
    produced = ProduceRequest(request.match_info["topic"], _partition_arg(request), batch, acks, timeout_ms, trace)
    return _respond(request, (await _service(request).produce(produced)).to_wire(), trace=trace)


async def produce_by_key(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_body(request)
    key = body.get("key")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise InvalidRequest("key (string or bin) is required to choose the partition", field="key")
    acks, timeout_ms, batch = _produce_args(body)
    topic = request.match_info["topic"]
    trace = _trace_for(acks)
    produced = ProduceRequest(topic, service.partition_for_key(topic, key), batch, acks, timeout_ms, trace)
    return _respond(request, (await service.produce(produced)).to_wire(), trace=trace)


def _replica_arg(request: web.Request) -> bool:
    replica = request.query.get("replica", "leader")
    if replica not in ("leader", "any"):
        raise InvalidRequest("replica must be 'leader' or 'any'", field="replica")
    return replica == "any"


async def fetch(request: web.Request) -> web.Response:
    query = request.query
    fetch_request = FetchRequest(
        topic=request.match_info["topic"], partition=_partition_arg(request),
        offset=query_int(query, "offset", offset=True),
        max_bytes=query_int(query, "max_bytes", default=limits.fetch_bytes_max_default, minimum=1,
                            maximum=limits.fetch_bytes_max),
        max_wait_ms=query_int(query, "max_wait_ms", default=0, maximum=limits.fetch_wait_ms_max),
        any_replica=_replica_arg(request))
    result = await _service(request).fetch(fetch_request)
    answer: dict[str, Any] = {"topic": result.topic, "partition": result.partition,
                              "high_watermark": result.high_watermark, "log_start_offset": result.log_start_offset}
    if wants_msgpack(request.headers.get("Accept"), request.headers.get("Content-Type")):
        answer["batches"] = result.batches
    else:
        records, next_offset = _records_as_json(result.batches, fetch_request.offset)
        answer.update(records=records, next_offset=next_offset)
    return _respond(request, answer)


def _records_as_json(data: bytes, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The records at or after ``offset`` in fetched batches, for people reading JSON (not the fast path)."""
    records = []
    next_offset = offset
    for header, chunk in batches.iter_batches(data):
        for record in batches.decode_records(chunk, header):
            if record.offset < offset:
                continue
            item: dict[str, Any] = {"offset": record.offset, "timestamp_ms": record.timestamp_ms}
            item.update(text_or_b64(record.key, "key"))
            item.update(text_or_b64(record.value, "value"))
            item["headers"] = [[name, (text_or_b64(value, "v").get("v"))] for name, value in record.headers]
            records.append(item)
            next_offset = record.offset + 1
    return records, next_offset


async def list_offsets(request: web.Request) -> web.Response:
    text = request.query.get("at", "latest")
    at: OffsetSpec = text if text in ("earliest", "latest") else query_int(request.query, "at", offset=True)  # type: ignore[assignment]
    offset_request = OffsetRequest(request.match_info["topic"], _partition_arg(request), at, _replica_arg(request))
    return _respond(request, (await _service(request).list_offset(offset_request)).to_wire())


# --- consumer groups ----------------------------------------------------------------------------------


def _group_arg(request: web.Request) -> str:
    return validate_group_id(request.match_info["group"])


async def group_heartbeat(request: web.Request) -> web.Response:
    heartbeat = parse_group_heartbeat(_group_arg(request), await read_body(request))
    return _respond(request, (await _service(request).group_heartbeat(heartbeat)).to_wire())


async def commit_offsets(request: web.Request) -> web.Response:
    commit = parse_offset_commit(_group_arg(request), await read_body(request))
    return _respond(request, {"committed": await _service(request).commit_offsets(commit)})


async def fetch_offsets(request: web.Request) -> web.Response:
    offsets = await _service(request).fetch_offsets(_group_arg(request), None)
    return _respond(request, {"group_id": request.match_info["group"], "offsets": [o.to_wire() for o in offsets]})


async def delete_offsets(request: web.Request) -> web.Response:
    group_id = _group_arg(request)
    body = await read_body(request) if request.can_read_body else {}
    unknown = sorted(set(body) - {"partitions"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    partitions = parse_partition_list(body["partitions"], "partitions") if body.get("partitions") is not None else None
    return _respond(request, {"deleted": await _service(request).delete_offsets(group_id, partitions)})


async def describe_group(request: web.Request) -> web.Response:
    return _respond(request, {"group": (await _service(request).describe_group(_group_arg(request))).to_wire()})


async def list_groups(request: web.Request) -> web.Response:
    return _respond(request, _service(request).list_groups().to_wire())


async def share_acquire(request: web.Request) -> web.Response:
    acquire = parse_share_acquire(request.match_info["group"], await read_body(request))
    return _respond(request, (await _service(request).dead_letters.acquire(acquire)).to_wire())


async def share_acknowledge(request: web.Request) -> web.Response:
    acknowledge = parse_share_acknowledge(request.match_info["group"], await read_body(request))
    return _respond(request, (await _service(request).dead_letters.acknowledge(acknowledge)).to_wire())


async def share_group_dead_letter(request: web.Request) -> web.Response:
    dead_letters = _service(request).dead_letters
    if request.method == "GET":
        return _respond(request, dead_letters.describe_group(_group_arg(request)))
    payload = parse_group_dead_letter(request.match_info["group"], await read_body(request))
    return _respond(request, await dead_letters.set_group(payload))


async def describe_share_group(request: web.Request) -> web.Response:
    group_id = _group_arg(request)
    rows = await _service(request).describe_share_group(group_id)
    return _respond(request, {"group_id": group_id, "partitions": rows})


# --- exchanges ----------------------------------------------------------------------------------------


async def list_exchanges(request: web.Request) -> web.Response:
    return _respond(request, {"exchanges": [e.to_wire() for e in _service(request).exchanges.list()]})


async def create_exchange(request: web.Request) -> web.Response:
    payload = parse_create_exchange(await read_body(request))
    exchange = await _service(request).exchanges.create(payload)
    return _respond(request, {"exchange": exchange.to_wire()}, status=201)


async def describe_exchange(request: web.Request) -> web.Response:
    exchange = _service(request).exchanges.describe(request.match_info["exchange"])
    return _respond(request, {"exchange": exchange.to_wire()})


async def delete_exchange(request: web.Request) -> web.Response:
    exchange = await _service(request).exchanges.delete(request.match_info["exchange"])
    return _respond(request, {"deleted": exchange.name})


async def bind_exchange(request: web.Request) -> web.Response:
    binding = parse_binding(await read_body(request))
    unbind = request.method == "DELETE"
    exchange = await _service(request).exchanges.bind(request.match_info["exchange"], binding, unbind=unbind)
    return _respond(request, {"exchange": exchange.to_wire()}, status=200 if unbind else 201)


async def publish(request: web.Request) -> web.Response:
    published = parse_publish(request.match_info["exchange"], await read_body(request), int(time.time() * 1000))
    return _respond(request, await _service(request).exchanges.publish(published))


async def share_push(request: web.Request) -> web.StreamResponse:
    """A push consumer's WebSocket (node/push.py); every refusal happens before the upgrade, as a coded
    HTTP answer."""
    subscription = parse_subscription(request.match_info["group"], request.query)
    return await _push(request, subscription.group_id, subscription.topics,
                       lambda sessions, ws: PushSession(sessions, ws, subscription))


async def group_push(request: web.Request) -> web.StreamResponse:
    """A consumer-group push consumer's WebSocket (node/group_push.py); refusals come before the upgrade."""
    subscription = parse_group_subscription(request.match_info["group"], request.query)
    return await _push(request, subscription.group_id, subscription.topics,
                       lambda sessions, ws: GroupPushSession(sessions, ws, subscription))


async def _push(request: web.Request, group_id: str, topics: tuple[str, ...],
                session: Callable[[PushSessions, web.WebSocketResponse], Session]) -> web.WebSocketResponse:
    service = _service(request)
    await service.push.check(group_id, topics)
    ws = web.WebSocketResponse(heartbeat=limits.push_heartbeat_s, max_msg_size=limits.request_bytes_max)
    await ws.prepare(request)
    await service.push.serve(session(service.push, ws))
    return ws


def build_app(broker: Broker) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=limits.request_bytes_max)
    app[BROKER] = broker
    app[INTERNAL_TOKEN] = internal_token(broker.config.cluster_secret)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/debug/stages", debug_stages)
    app.router.add_get("/v1/metadata", metadata)
    app.router.add_get("/v1/topics", list_topics)
    app.router.add_post("/v1/topics", create_topic)
    app.router.add_get("/v1/topics/{topic}", describe_topic)
    app.router.add_delete("/v1/topics/{topic}", delete_topic)
    app.router.add_patch("/v1/topics/{topic}", alter_topic)
    app.router.add_post("/v1/brokers/{broker}/drain", drain_broker)
    app.router.add_delete("/v1/brokers/{broker}/drain", drain_broker)
    app.router.add_post("/v1/internal/heartbeat", internal_heartbeat)
    app.router.add_get("/v1/internal/metadata", internal_metadata)
    app.router.add_post("/v1/internal/metadata/propose", internal_propose)
    app.router.add_post("/v1/internal/partitions/step", internal_step)
    app.router.add_post("/v1/producers", create_producer)
    app.router.add_post("/v1/topics/{topic}/records", produce_by_key)
    app.router.add_post("/v1/topics/{topic}/partitions/{partition}/records", produce)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/records", fetch)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/offsets", list_offsets)
    app.router.add_get("/v1/groups", list_groups)
    app.router.add_get("/v1/groups/{group}", describe_group)
    app.router.add_post("/v1/groups/{group}/heartbeat", group_heartbeat)
    app.router.add_post("/v1/groups/{group}/offsets", commit_offsets)
    app.router.add_get("/v1/groups/{group}/offsets", fetch_offsets)
    app.router.add_delete("/v1/groups/{group}/offsets", delete_offsets)
    app.router.add_get("/v1/share-groups/{group}", describe_share_group)
    app.router.add_post("/v1/share-groups/{group}/acquire", share_acquire)
    app.router.add_post("/v1/share-groups/{group}/acknowledge", share_acknowledge)
    app.router.add_get("/v1/share-groups/{group}/push", share_push)
    app.router.add_get("/v1/groups/{group}/push", group_push)
    app.router.add_get("/v1/share-groups/{group}/dead-letter", share_group_dead_letter)
    app.router.add_put("/v1/share-groups/{group}/dead-letter", share_group_dead_letter)
    app.router.add_get("/v1/exchanges", list_exchanges)
    app.router.add_post("/v1/exchanges", create_exchange)
    app.router.add_get("/v1/exchanges/{exchange}", describe_exchange)
    app.router.add_delete("/v1/exchanges/{exchange}", delete_exchange)
    app.router.add_post("/v1/exchanges/{exchange}/bindings", bind_exchange)
    app.router.add_delete("/v1/exchanges/{exchange}/bindings", bind_exchange)
    app.router.add_post("/v1/exchanges/{exchange}/publish", publish)
    return app
