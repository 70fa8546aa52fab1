"""The node's HTTP API (docs/api.md): decode with cluster.wire, call the Broker, encode the answer.

Every failure leaves as ``{"error": {"code", "message", "details"}}`` with the status of its error class;
bad input is rejected here or in the Broker before any stored data is touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from raftmq.cluster import batch as batches
from raftmq.cluster import limits
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
from raftmq.cluster.metadata import parse_producer_name
from raftmq.cluster.wire import (
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

log = logging.getLogger(__name__)

BROKER: web.AppKey[Broker] = web.AppKey("broker", Broker)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _respond(request: web.Request, payload: Any, status: int = 200) -> web.Response:
    as_msgpack = wants_msgpack(request.headers.get("Accept"), request.headers.get("Content-Type"))
    return web.Response(body=encode_body(payload, as_msgpack=as_msgpack), status=status,
                        content_type="application/msgpack" if as_msgpack else "application/json")


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


# --- handlers -----------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return _respond(request, request.app[BROKER].health())


async def metadata(request: web.Request) -> web.Response:
    return _respond(request, request.app[BROKER].metadata())


async def list_topics(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    topics = sorted(broker.meta_sm.view.values(), key=lambda t: t.name)
    return _respond(request, {"topics": [broker.describe_topic(t) for t in topics]})


async def create_topic(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    topic = await broker.create_topic(await read_body(request))
    return _respond(request, {"topic": broker.describe_topic(topic)}, status=201)


async def describe_topic(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    return _respond(request, {"topic": broker.describe_topic(broker.topic(request.match_info["topic"]))})


async def delete_topic(request: web.Request) -> web.Response:
    return _respond(request, await request.app[BROKER].delete_topic(request.match_info["topic"]))


async def create_producer(request: web.Request) -> web.Response:
    name = parse_producer_name(await read_body(request))  # {} or {"name": ...}
    return _respond(request, await request.app[BROKER].init_producer(name))


def _produce_args(body: dict[str, Any]) -> tuple[Any, int, bytes]:
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
        batch = records_to_batch(body["records"])
    return acks, timeout_ms, batch


async def produce(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    body = await read_body(request)
    acks, timeout_ms, batch = _produce_args(body)
    if "key" in body:
        raise InvalidRequest("key selects a partition: use POST /v1/topics/{topic}/records", field="key")
    result = await broker.produce(request.match_info["topic"], _partition_arg(request), batch, acks=acks,
                                  timeout_ms=timeout_ms)
    return _respond(request, result)


async def produce_by_key(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    body = await read_body(request)
    key = body.get("key")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise InvalidRequest("key (string or bin) is required to choose the partition", field="key")
    acks, timeout_ms, batch = _produce_args(body)
    topic = request.match_info["topic"]
    partition = broker.partition_for_key(topic, key)
    return _respond(request, await broker.produce(topic, partition, batch, acks=acks, timeout_ms=timeout_ms))


async def fetch(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    query = request.query
    offset = query_int(query, "offset", offset=True)
    max_bytes = query_int(query, "max_bytes", default=limits.fetch_bytes_max_default, minimum=1,
                          maximum=limits.fetch_bytes_max)
    max_wait_ms = query_int(query, "max_wait_ms", default=0, maximum=limits.fetch_wait_ms_max)
    replica = query.get("replica", "leader")
    if replica not in ("leader", "any"):
        raise InvalidRequest("replica must be 'leader' or 'any'", field="replica")
    topic = request.match_info["topic"]
    partition = _partition_arg(request)
    handle, data = await broker.fetch(topic, partition, offset, max_bytes=max_bytes, max_wait_ms=max_wait_ms,
                                      any_replica=replica == "any")
    partition_log = handle.state_machine.log
    answer: dict[str, Any] = {"topic": topic, "partition": partition, "high_watermark": partition_log.log_end_offset,
                              "log_start_offset": partition_log.log_start_offset}
    if wants_msgpack(request.headers.get("Accept"), request.headers.get("Content-Type")):
        answer["batches"] = data
        return _respond(request, answer)
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
    answer.update(records=records, next_offset=next_offset)
    return _respond(request, answer)


async def list_offsets(request: web.Request) -> web.Response:
    at = request.query.get("at", "latest")
    if at not in ("earliest", "latest"):
        query_int(request.query, "at", offset=True)  # validates a timestamp
    replica = request.query.get("replica", "leader")
    if replica not in ("leader", "any"):
        raise InvalidRequest("replica must be 'leader' or 'any'", field="replica")
    result = request.app[BROKER].list_offset(request.match_info["topic"], _partition_arg(request), at,
                                             any_replica=replica == "any")
    return _respond(request, result)


def build_app(broker: Broker) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=limits.request_bytes_max)
    app[BROKER] = broker
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/metadata", metadata)
    app.router.add_get("/v1/topics", list_topics)
    app.router.add_post("/v1/topics", create_topic)
    app.router.add_get("/v1/topics/{topic}", describe_topic)
    app.router.add_delete("/v1/topics/{topic}", delete_topic)
    app.router.add_post("/v1/producers", create_producer)
    app.router.add_post("/v1/topics/{topic}/records", produce_by_key)
    app.router.add_post("/v1/topics/{topic}/partitions/{partition}/records", produce)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/records", fetch)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/offsets", list_offsets)
    return app
