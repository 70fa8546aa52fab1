"""The Toxiproxy HTTP API (2.12.0) on aiohttp: routes, status codes, bodies and headers as Toxiproxy has them.

Routing follows gorilla/mux: an unknown path is 404 (`404 page not found`), a known path with another method
is 405 with an empty body, and middlewares (the browser check) run only on matched routes. Errors are
Toxiproxy's `{"error": …, "status": …}` + newline written by Go's `http.Error`, hence `text/plain`.
Bad input never yields 500: decoding errors are 400 `bad request body: …`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from . import VERSION, codec, errors, limits
from .collection import ProxyCollection, parse_proxy_input
from .proxy import Proxy
from .toxics import Direction, ToxicWrapper, parse_new_toxic, parse_toxic_update

log: Final = logging.getLogger("raftmq.chaos.toxiproxy.server")

COLLECTION: Final = web.AppKey("collection", ProxyCollection)
METRICS: Final = web.AppKey("metrics", tuple)  # (proxy_metrics: bool, runtime_metrics: bool)
BACKGROUND: Final = web.AppKey("background", set)  # Handlers that overran the deadline, still finishing.

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_json_type: Final = "application/json"
_plain_type: Final = "text/plain; charset=utf-8"


# --- responses --------------------------------------------------------------------------------------


def json_response(document: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode(document), headers={"Content-Type": _json_type})


def error_response(status: int, message: str) -> web.Response:
    # Go's http.Error: the JSON body plus a newline, sent as text/plain with nosniff.
    body = codec.encode({"error": message, "status": status}) + b"\n"
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": _plain_type, "X-Content-Type-Options": "nosniff"},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_json(request: web.Request) -> object:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        too_large = f"bad request body: larger than {limits.request_body_bytes_max} bytes"
        raise errors.ApiError(413, too_large) from None
    return codec.decode_body(body)


# --- middlewares ------------------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Router misses as gorilla/mux answers them; ApiError as Toxiproxy's body; bugs as a logged 500."""
    routing_error = request.match_info.http_exception
    if isinstance(routing_error, web.HTTPMethodNotAllowed):
        return web.Response(status=405)
    if routing_error is not None:
        return web.Response(status=404, body=b"404 page not found\n", headers={"Content-Type": _plain_type})
    try:
        return await handler(request)
    except errors.ApiError as error:
        if error.status >= 500:
            log.warning("%s %s: %d %s", request.method, request.path, error.status, error.message)
        return error_response(error.status, error.message)
    except web.HTTPException:
        raise
    except Exception as error:
        log.exception("%s %s: unexpected error", request.method, request.path)
        return error_response(500, f"internal error: {error}")


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse browsers (Toxiproxy's CSRF guard): any User-Agent starting with `Mozilla/` gets 403."""
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        body = b"User agent not allowed\n"
        return web.Response(status=403, body=body, headers={"Content-Type": _plain_type})
    return await handler(request)


@web.middleware
async def deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 503 after handler_timeout_s, but let the handler finish: cancelling a proxy half-way through
    stopping would leave it in between states (Go's http.TimeoutHandler does not stop the handler either)."""
    task = asyncio.ensure_future(handler(request))
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout=limits.handler_timeout_s)
    except TimeoutError:
        background = request.app[BACKGROUND]
        background.add(task)
        task.add_done_callback(background.discard)
        return error_response(503, f"handler did not finish within {limits.handler_timeout_s:.0f} s")


# --- handlers ---------------------------------------------------------------------------------------


async def version(request: web.Request) -> web.StreamResponse:
    # Written by hand in Toxiproxy too: note the space after the colon and the newline.
    body = f'{{"version": "{VERSION}"}}\n'.encode()
    return web.Response(body=body, headers={"Content-Type": "application/json;charset=utf-8"})


async def proxy_index(request: web.Request) -> web.StreamResponse:
    collection = request.app[COLLECTION]
    return json_response({proxy.name: proxy.snapshot() for proxy in collection.all()})


async def proxy_create(request: web.Request) -> web.StreamResponse:
    entry = parse_proxy_input(await read_json(request))
    proxy = await request.app[COLLECTION].create(entry)
    return json_response(proxy.snapshot(), status=201)


async def populate(request: web.Request) -> web.StreamResponse:
    collection = request.app[COLLECTION]
    try:
        proxies, failure = await collection.populate(await read_json(request))
    except errors.ApiError as error:  # Invalid input: nothing was created.
        proxies, failure = [], error
    document: dict[str, object] = {}
    if failure is not None:
        document = {"error": failure.message, "status": failure.status}
    document["proxies"] = [proxy.snapshot() for proxy in proxies]
    return json_response(document, status=201 if failure is None else failure.status)


async def proxy_show(request: web.Request) -> web.StreamResponse:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    return json_response(proxy.snapshot())


async def proxy_update(request: web.Request) -> web.StreamResponse:
    collection = request.app[COLLECTION]
    name = request.match_info["proxy"]
    collection.get(name)  # 404 before looking at the body, as Toxiproxy does.
    proxy = await collection.update(name, await read_json(request))
    return json_response(proxy.snapshot())


async def proxy_delete(request: web.Request) -> web.StreamResponse:
    await request.app[COLLECTION].delete(request.match_info["proxy"])
    return no_content()


async def toxic_index(request: web.Request) -> web.StreamResponse:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    return json_response([wrapper.snapshot() for wrapper in proxy.toxic_chain()])


async def toxic_create(request: web.Request) -> web.StreamResponse:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    value = await read_json(request)
    proxy = request.app[COLLECTION].get(proxy.name)  # Still there after awaiting the body?
    wrapper = parse_new_toxic(value, lambda name: name in proxy.toxics)
    if len(proxy.toxics) >= limits.toxics_per_proxy_max:
        raise errors.ApiError(400, f"too many toxics: at most {limits.toxics_per_proxy_max} per proxy")
    proxy.add_toxic(wrapper)
    return json_response(wrapper.snapshot())  # 200, not 201, as in Toxiproxy.


def _toxic_of(request: web.Request) -> tuple[Proxy, ToxicWrapper]:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    wrapper = proxy.toxics.get(request.match_info["toxic"])
    if wrapper is None:
        raise errors.toxic_not_found()
    return proxy, wrapper


async def toxic_show(request: web.Request) -> web.StreamResponse:
    _proxy, wrapper = _toxic_of(request)
    return json_response(wrapper.snapshot())


async def toxic_update(request: web.Request) -> web.StreamResponse:
    _toxic_of(request)
    value = await read_json(request)
    proxy, wrapper = _toxic_of(request)  # Looked up again: the body read awaited.
    attributes, toxicity = parse_toxic_update(value, wrapper)
    proxy.update_toxic(wrapper, attributes, toxicity)
    return json_response(wrapper.snapshot())


async def toxic_delete(request: web.Request) -> web.StreamResponse:
    proxy, wrapper = _toxic_of(request)
    proxy.remove_toxic(wrapper.name)
    return no_content()


async def reset(request: web.Request) -> web.StreamResponse:
    await request.app[COLLECTION].reset()
    return no_content()


async def metrics(request: web.Request) -> web.StreamResponse:
    proxy_metrics, runtime_metrics = request.app[METRICS]
    lines: list[str] = []
    if proxy_metrics:
        lines += [
            "# HELP toxiproxy_proxy_sent_bytes_total The number of bytes sent to the destination by a proxy.",
            "# TYPE toxiproxy_proxy_sent_bytes_total counter",
        ]
        for proxy in request.app[COLLECTION].all():
            for direction in Direction:
                labels = (
                    f'direction="{direction.value}",listener="{proxy.listen}",'
                    f'proxy="{proxy.name}",upstream="{proxy.upstream}"'
                )
                count = proxy.bytes_forwarded[direction]
                lines.append(f"toxiproxy_proxy_sent_bytes_total{{{labels}}} {count}")
    if runtime_metrics:
        lines += [
            "# HELP toxiproxy_runtime_asyncio_tasks Tasks alive on the server's event loop.",
            "# TYPE toxiproxy_runtime_asyncio_tasks gauge",
            f"toxiproxy_runtime_asyncio_tasks {len(asyncio.all_tasks())}",
        ]
    body = ("\n".join(lines) + "\n").encode()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# --- the application --------------------------------------------------------------------------------


def make_app(
    *, seed: int | None = None, proxy_metrics: bool = False, runtime_metrics: bool = False
) -> web.Application:
    """The API application. Its proxies stop when the application cleans up."""
    app = web.Application(
        middlewares=[errors_middleware, browser_middleware, deadline_middleware],
        client_max_size=limits.request_body_bytes_max,
    )
    app[COLLECTION] = ProxyCollection(random.Random(seed))
    app[METRICS] = (proxy_metrics, runtime_metrics)
    app[BACKGROUND] = set()
    routes = [
        ("POST", "/reset", reset),
        ("GET", "/proxies", proxy_index),
        ("POST", "/proxies", proxy_create),
        ("POST", "/populate", populate),
        ("GET", "/proxies/{proxy}", proxy_show),
        ("POST", "/proxies/{proxy}", proxy_update),
        ("PATCH", "/proxies/{proxy}", proxy_update),
        ("DELETE", "/proxies/{proxy}", proxy_delete),
        ("GET", "/proxies/{proxy}/toxics", toxic_index),
        ("POST", "/proxies/{proxy}/toxics", toxic_create),
        ("GET", "/proxies/{proxy}/toxics/{toxic}", toxic_show),
        ("POST", "/proxies/{proxy}/toxics/{toxic}", toxic_update),
        ("PATCH", "/proxies/{proxy}/toxics/{toxic}", toxic_update),
        ("DELETE", "/proxies/{proxy}/toxics/{toxic}", toxic_delete),
        ("GET", "/version", version),
    ]
    if proxy_metrics or runtime_metrics:
        routes.append(("GET", "/metrics", metrics))
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app.on_cleanup.append(_stop_proxies)
    return app


async def _stop_proxies(app: web.Application) -> None:
    running: set[Any] = app[BACKGROUND]
    background = list(running)
    if background:
        await asyncio.wait(background, timeout=limits.api_shutdown_deadline_s)
    await app[COLLECTION].stop_all()


def _read_config(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(limits.request_body_bytes_max + 1)


async def load_config(app: web.Application, path: str) -> None:
    """Create the proxies of a JSON config file like /populate; log (do not fail) on errors, as Toxiproxy."""
    try:
        body = await asyncio.to_thread(_read_config, path)
    except OSError as error:
        log.error("error reading config file %s: %s", path, error)
        return
    try:
        proxies, failure = await app[COLLECTION].populate(codec.decode_body(body))
    except errors.ApiError as error:
        proxies, failure = [], error
    if failure is not None:
        log.error("failed to populate proxies from %s: %s", path, failure.message)
    log.info("populated %d proxies from %s", len(proxies), path)


async def serve(
    host: str,
    port: int,
    *,
    config: str | None = None,
    seed: int | None = None,
    proxy_metrics: bool = False,
    runtime_metrics: bool = False,
    stop: asyncio.Event,
) -> None:
    """Run the API (and the proxies) until `stop` is set, then shut everything down within deadlines."""
    app = make_app(seed=seed, proxy_metrics=proxy_metrics, runtime_metrics=runtime_metrics)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("raftmq.chaos.toxiproxy.access"),
        keepalive_timeout=limits.http_idle_timeout_s,
        shutdown_timeout=limits.api_shutdown_deadline_s,
    )
    await runner.setup()
    try:
        if config:
            await load_config(app, config)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        addresses = ", ".join(str(address) for address in runner.addresses)
        log.info("Starting Toxiproxy HTTP server on %s (version %s)", addresses, VERSION)
        await stop.wait()
        log.info("Shutting down")
    finally:
        async with asyncio.timeout(limits.server_shutdown_deadline_s):
            await runner.cleanup()
        log.info("Shut down")
