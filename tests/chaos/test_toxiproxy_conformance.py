"""Conformance of a Toxiproxy server with the Toxiproxy 2.12.0 API, as raftmq's chaos suite relies on it.

Goal: the fault proxy behaves like Toxiproxy wherever the harness depends on it: endpoints, status codes, JSON
shapes, proxy lifecycle, and what each toxic does to live TCP connections.

Method: drive the server through toxiproxy-python (via `chaos.proxy_client.ProxyClient`, which fixes the
library's sharp edges), and through raw HTTP where the library has no call, against loopback upstreams on
threads. By default the server is raftmq's own (`python -m raftmq.chaos.toxiproxy`, started per module); with
`TOXIPROXY_URL=http://host:port` the same tests run against an already running server such as a real
`toxiproxy-server`. Tests of raftmq-only behaviour take the `raftmq_only` fixture and skip elsewhere.

Timing: nothing sleeps to synchronise. Tests wait for conditions with deadlines; time is asserted only as
generous lower bounds (a toxic delayed things at least this much), never as upper bounds.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
from raftmq.chaos.proxy_client import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PopulateError,
    ProxyClient,
    ServerError,
    ToxiproxyNotApplied,
    ToxiproxyServerProcess,
    ToxiproxyTimeout,
    ToxiproxyUnavailable,
)
from toxiproxy.exceptions import ProxyExists

from tests.chaos.conftest import ToxiproxyServer, Upstream, io_timeout_s

pytestmark = pytest.mark.timeout(60)

# Every attribute each toxic type reports (the API lists all of them, missing ones as 0).
TOXIC_FIELDS: Final = {
    "latency": {"latency", "jitter"},
    "bandwidth": {"rate"},
    "slow_close": {"delay"},
    "timeout": {"timeout"},
    "reset_peer": {"timeout"},
    "slicer": {"average_size", "size_variation", "delay"},
    "limit_data": {"bytes"},
    "noop": set(),
}
# A timing lower bound is asserted at this fraction of the configured delay (timer granularity, clocks).
LOWER_BOUND_FRACTION: Final = 0.8


# --- socket helpers -----------------------------------------------------------------------------------


def connect(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=io_timeout_s)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    received = bytearray()
    while len(received) < count:
        data = sock.recv(count - len(received))
        if not data:
            pytest.fail(f"connection closed after {len(received)} of {count} bytes")
        received += data
    return bytes(received)


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the peer closes, and how: "eof" (FIN) or "reset" (RST). Each read has a timeout."""
    received = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received), "reset"
        if not data:
            return bytes(received), "eof"
        received += data


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def assert_closed_by_proxy(sock: socket.socket) -> None:
    _data, how = read_until_closed(sock)
    assert how in ("eof", "reset")


@pytest.fixture
def proxy(toxiproxy: ProxyClient, echo_upstream: Upstream) -> str:
    """A proxy named `echo` in front of an echo upstream, enabled; returns its listen address."""
    return toxiproxy.create("echo", echo_upstream.address).listen


# --- server basics ------------------------------------------------------------------------------------


def test_version_through_the_library_and_raw(
    toxiproxy: ProxyClient, toxiproxy_server: ToxiproxyServer
) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", toxiproxy.version())
    raw = toxiproxy.request("GET", "/version")
    assert raw.status == 200
    assert raw.headers["Content-Type"].startswith("application/json")
    assert raw.body.endswith(b"\n")
    assert raw.json() == {"version": toxiproxy.version()}
    with toxiproxy.bound() as library:
        assert toxiproxy.version().encode() in library.version()
        assert library.running()
    if toxiproxy_server.is_raftmq:
        assert raw.body == b'{"version": "2.12.0"}\n'


def test_browsers_are_refused(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    listing = toxiproxy.request("GET", "/proxies", headers=browser)
    assert listing.status == 403
    assert listing.text.strip() == "User agent not allowed"
    creation = toxiproxy.request(
        "POST", "/proxies", json={"name": "csrf", "upstream": echo_upstream.address}, headers=browser
    )
    assert creation.status == 403
    assert "csrf" not in toxiproxy.proxies()


def test_unknown_paths_and_methods_are_404_and_405(toxiproxy: ProxyClient) -> None:
    assert toxiproxy.request("GET", "/nothing-here").status == 404
    assert toxiproxy.request("GET", "/proxies/a/toxics/b/c").status == 404
    assert toxiproxy.request("DELETE", "/version").status == 405
    assert toxiproxy.request("PUT", "/proxies").status == 405
    assert toxiproxy.request("GET", "/reset").status == 405


def test_errors_are_json_with_status_sent_as_plain_text(toxiproxy: ProxyClient) -> None:
    raw = toxiproxy.request("GET", "/proxies/missing")
    assert raw.status == 404
    assert raw.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert raw.body.endswith(b"\n")
    assert raw.json() == {"error": "proxy not found", "status": 404}


# --- proxies --------------------------------------------------------------------------------------------


def test_proxy_create_list_get_delete(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    state = toxiproxy.create("db", echo_upstream.address)
    assert state.name == "db" and state.upstream == echo_upstream.address and state.enabled
    assert state.listen_host == "127.0.0.1" and state.listen_port != 0  # The real bound port, not ":0".
    assert state.toxics == ()

    with toxiproxy.bound() as library:  # toxiproxy-python's own listing.
        listed = library.get_proxy("db")
        assert listed is not None
        assert (listed.listen, listed.upstream, listed.enabled) == (state.listen, echo_upstream.address, True)

    raw = toxiproxy.request("GET", "/proxies")
    assert raw.status == 200
    assert set(raw.json()) == {"db"}
    assert raw.json()["db"] == {
        "name": "db",
        "listen": state.listen,
        "upstream": echo_upstream.address,
        "enabled": True,
        "toxics": [],
    }
    assert toxiproxy.get("db") == state
    with connect(state.listen) as sock:
        assert roundtrip(sock, b"through the proxy") == b"through the proxy"

    assert toxiproxy.request("DELETE", "/proxies/db").status == 204
    with pytest.raises(NotFoundError, match="proxy not found"):
        toxiproxy.get("db")
    assert toxiproxy.request("DELETE", "/proxies/db").status == 404


def test_raw_create_is_201_and_a_disabled_proxy_keeps_its_listen(
    toxiproxy: ProxyClient, echo_upstream: Upstream
) -> None:
    body = {"name": "cold", "upstream": echo_upstream.address, "listen": "127.0.0.1:0", "enabled": False}
    raw = toxiproxy.request("POST", "/proxies", json=body)
    assert raw.status == 201
    assert raw.json() == {
        "name": "cold",
        "listen": "127.0.0.1:0",
        "upstream": echo_upstream.address,
        "enabled": False,
        "toxics": [],
    }
    enabled = toxiproxy.enable("cold")
    assert enabled.listen_port != 0


def test_duplicate_proxy_name(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    toxiproxy.create("dup", echo_upstream.address)
    with pytest.raises(ConflictError):  # toxiproxy-python finds the name before sending.
        toxiproxy.create("dup", echo_upstream.address)
    with pytest.raises(ProxyExists):  # Still the library's exception type, too.
        toxiproxy.create("dup", echo_upstream.address)
    raw = toxiproxy.request("POST", "/proxies", json={"name": "dup", "upstream": echo_upstream.address})
    assert raw.status == 409
    assert raw.json() == {"error": "proxy already exists", "status": 409}


def test_missing_fields_are_400(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    no_name = toxiproxy.request("POST", "/proxies", json={"upstream": echo_upstream.address})
    assert (no_name.status, no_name.json()["error"]) == (400, "missing required field: name")
    no_upstream = toxiproxy.request("POST", "/proxies", json={"name": "x"})
    assert (no_upstream.status, no_upstream.json()["error"]) == (400, "missing required field: upstream")
    assert toxiproxy.proxies() == {}


def test_bind_failure_is_a_clear_500_not_a_key_error(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    with socket.create_server(("127.0.0.1", 0)) as occupant:
        taken = f"127.0.0.1:{occupant.getsockname()[1]}"
        with pytest.raises(ServerError) as raised:
            toxiproxy.create("clash", echo_upstream.address, listen=taken)
        assert raised.value.status == 500
        assert "address already in use" in raised.value.message
        with toxiproxy.bound() as library, pytest.raises(ServerError):  # The library's own call, fixed.
            library.create(upstream=echo_upstream.address, name="clash", listen=taken)
    assert "clash" not in toxiproxy.proxies()


def test_disable_closes_every_connection_and_refuses_new_ones(toxiproxy: ProxyClient, proxy: str) -> None:
    sockets = [connect(proxy) for _ in range(3)]
    try:
        for number, sock in enumerate(sockets):
            assert roundtrip(sock, b"ping %d" % number) == b"ping %d" % number
        state = toxiproxy.disable("echo")
        assert not state.enabled
        for sock in sockets:
            assert_closed_by_proxy(sock)
        with pytest.raises(ConnectionRefusedError):
            connect(proxy).close()
    finally:
        for sock in sockets:
            sock.close()
    state = toxiproxy.enable("echo")
    assert state.enabled and state.listen == proxy  # Listens again on the same address.
    with connect(proxy) as sock:
        assert roundtrip(sock, b"healed") == b"healed"


def test_down_context_heals_afterwards(toxiproxy: ProxyClient, proxy: str) -> None:
    with toxiproxy.down("echo") as state:
        assert not state.enabled
        with pytest.raises(ConnectionRefusedError):
            connect(proxy).close()
    assert toxiproxy.get("echo").enabled
    with connect(proxy) as sock:
        assert roundtrip(sock, b"up") == b"up"


def test_changing_the_upstream_drops_connections(
    toxiproxy: ProxyClient, proxy: str, upstream_factory: Callable[..., Upstream]
) -> None:
    greeter = upstream_factory("greet", b"other upstream\n")
    with connect(proxy) as old:
        assert roundtrip(old, b"before") == b"before"
        state = toxiproxy.update("echo", upstream=greeter.address)
        assert state.upstream == greeter.address and state.enabled
        assert_closed_by_proxy(old)
    with connect(state.listen) as new:
        assert recv_exactly(new, len(b"other upstream\n")) == b"other upstream\n"
    # The deprecated POST form of the update works too.
    raw = toxiproxy.request("POST", "/proxies/echo", json={"enabled": False})
    assert raw.status == 200 and raw.json()["enabled"] is False


def test_changing_listen_restarts_the_proxy(toxiproxy: ProxyClient, proxy: str) -> None:
    with connect(proxy) as old:
        assert roundtrip(old, b"before") == b"before"
        state = toxiproxy.update("echo", listen="127.0.0.1:0")
        assert state.enabled and state.listen_port != 0
        assert_closed_by_proxy(old)
    with connect(state.listen) as new:
        assert roundtrip(new, b"after") == b"after"


def test_populate_creates_keeps_and_replaces(
    toxiproxy: ProxyClient, echo_upstream: Upstream, upstream_factory: Callable[..., Upstream]
) -> None:
    other = upstream_factory("greet", b"replaced\n")
    created = toxiproxy.populate(
        [
            {"name": "p1", "upstream": echo_upstream.address, "listen": "127.0.0.1:0"},
            {"name": "p2", "upstream": echo_upstream.address, "listen": "127.0.0.1:0", "enabled": False},
        ]
    )
    assert [state.name for state in created] == ["p1", "p2"]
    p1 = toxiproxy.get("p1")
    assert p1.enabled and p1.listen_port != 0
    assert not toxiproxy.get("p2").enabled
    toxiproxy.add_toxic("p1", "latency", attributes={"latency": 1})

    # Same name, listen and upstream: left untouched, toxics and live connections included.
    with connect(p1.listen) as sock:
        assert roundtrip(sock, b"kept") == b"kept"
        toxiproxy.populate([{"name": "p1", "upstream": echo_upstream.address, "listen": p1.listen}])
        assert roundtrip(sock, b"still") == b"still"
    kept = toxiproxy.get("p1")
    assert kept.listen == p1.listen and [toxic.name for toxic in kept.toxics] == ["latency_downstream"]

    # A different upstream: stopped and replaced, so its toxics are gone.
    toxiproxy.populate([{"name": "p1", "upstream": other.address, "listen": p1.listen}])
    replaced = toxiproxy.get("p1")
    assert replaced.upstream == other.address and replaced.toxics == () and replaced.enabled
    with connect(replaced.listen) as sock:
        assert recv_exactly(sock, len(b"replaced\n")) == b"replaced\n"


def test_populate_validates_every_entry_first(toxiproxy: ProxyClient, echo_upstream: Upstream) -> None:
    with pytest.raises(PopulateError) as raised:
        toxiproxy.populate(
            [{"name": "p3", "upstream": echo_upstream.address}, {"upstream": echo_upstream.address}]
        )
    assert raised.value.status == 400
    assert raised.value.message == "missing required field: name at proxy 2"
    assert raised.value.handled == ()
    assert "p3" not in toxiproxy.proxies()
    not_an_array = toxiproxy.request(
        "POST", "/populate", json={"name": "p4", "upstream": echo_upstream.address}
    )
    assert not_an_array.status == 400
    assert "p4" not in toxiproxy.proxies()


def test_reset_enables_proxies_and_removes_toxics(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "latency", attributes={"latency": 10})
    toxiproxy.add_toxic("echo", "bandwidth", stream="upstream", attributes={"rate": 1000})
    toxiproxy.disable("echo")
    toxiproxy.reset()  # Confirmed by the wrapper: every proxy enabled, no toxics.
    state = toxiproxy.get("echo")
    assert state.enabled and state.toxics == () and state.listen == proxy
    assert toxiproxy.request("POST", "/reset").status == 204
    with connect(proxy) as sock:
        assert roundtrip(sock, b"reset") == b"reset"


# --- toxics: API ------------------------------------------------------------------------------------------


def test_toxic_defaults(toxiproxy: ProxyClient, proxy: str) -> None:
    raw = toxiproxy.request("POST", "/proxies/echo/toxics", json={"type": "latency"})
    assert raw.status == 200  # Not 201.
    assert raw.json() == {
        "attributes": {"latency": 0, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    for toxic_type, fields in TOXIC_FIELDS.items():
        state = toxiproxy.add_toxic("echo", toxic_type, stream="upstream")
        assert state.name == f"{toxic_type}_upstream"
        assert set(state.attributes) == fields
        assert all(value == 0 for value in state.attributes.values())
        assert state.toxicity == 1.0


def test_toxic_listing_puts_upstream_first_in_insertion_order(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "noop", name="a", stream="downstream")
    toxiproxy.add_toxic("echo", "noop", name="b", stream="upstream")
    toxiproxy.add_toxic("echo", "noop", name="c", stream="downstream")
    toxiproxy.add_toxic("echo", "noop", name="d", stream="upstream")
    assert [toxic.name for toxic in toxiproxy.toxics("echo")] == ["b", "d", "a", "c"]
    assert [toxic.name for toxic in toxiproxy.get("echo").toxics] == ["b", "d", "a", "c"]
    raw = toxiproxy.request("GET", "/proxies/echo/toxics")
    assert raw.status == 200 and [toxic["name"] for toxic in raw.json()] == ["b", "d", "a", "c"]


def test_toxic_errors(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "latency", name="slow", attributes={"latency": 5})
    with pytest.raises(ConflictError, match="toxic already exists"):
        toxiproxy.add_toxic("echo", "latency", name="slow")
    with pytest.raises(BadRequestError, match="invalid toxic type"):
        toxiproxy.add_toxic("echo", "no_such_toxic")
    sideways = toxiproxy.request(
        "POST", "/proxies/echo/toxics", json={"type": "latency", "stream": "sideways"}
    )
    assert sideways.status == 400
    assert sideways.json()["error"] == "stream was invalid, can be either upstream or downstream"
    wrong_type = toxiproxy.request(
        "POST",
        "/proxies/echo/toxics",
        json={"type": "latency", "name": "w", "attributes": {"latency": "slow"}},
    )
    assert wrong_type.status == 400 and wrong_type.json()["error"].startswith("bad request body")
    not_json = toxiproxy.request("POST", "/proxies/echo/toxics", data=b"{not json")
    assert not_json.status == 400 and not_json.json()["error"].startswith("bad request body")
    with pytest.raises(NotFoundError, match="toxic not found"):
        toxiproxy.get_toxic("echo", "missing")
    with pytest.raises(NotFoundError, match="toxic not found"):
        toxiproxy.remove_toxic("echo", "missing")
    with pytest.raises(NotFoundError, match="proxy not found"):
        toxiproxy.add_toxic("missing", "latency")
    assert [toxic.name for toxic in toxiproxy.toxics("echo")] == ["slow"]


def test_toxic_update_in_place_keeps_what_is_not_given(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic(
        "echo", "latency", name="lag", toxicity=0.5, attributes={"latency": 100, "jitter": 10}
    )
    state = toxiproxy.update_toxic("echo", "lag", attributes={"latency": 200})
    assert dict(state.attributes) == {"latency": 200, "jitter": 10}
    assert state.toxicity == pytest.approx(0.5)
    state = toxiproxy.update_toxic("echo", "lag", toxicity=0.25)
    assert dict(state.attributes) == {"latency": 200, "jitter": 10}
    assert state.toxicity == pytest.approx(0.25)
    # Name, type and stream cannot change; the deprecated POST form works too.
    raw = toxiproxy.request(
        "POST", "/proxies/echo/toxics/lag", json={"name": "x", "type": "timeout", "stream": "upstream"}
    )
    assert raw.status == 200
    assert (raw.json()["name"], raw.json()["type"], raw.json()["stream"]) == ("lag", "latency", "downstream")
    bad = toxiproxy.request("PATCH", "/proxies/echo/toxics/lag", json={"attributes": {"latency": "x"}})
    assert bad.status == 400
    assert dict(toxiproxy.get_toxic("echo", "lag").attributes) == {"latency": 200, "jitter": 10}
    assert toxiproxy.request("PATCH", "/proxies/echo/toxics/missing", json={}).status == 404
    assert toxiproxy.request("DELETE", "/proxies/echo/toxics/lag").status == 204
    assert toxiproxy.request("DELETE", "/proxies/echo/toxics/lag").status == 404


BAD_INPUTS: Final = [
    ("POST", "/proxies", b""),
    ("POST", "/proxies", b"[1, 2]"),
    ("POST", "/proxies", b'{"name": 5, "upstream": "127.0.0.1:1"}'),
    ("POST", "/proxies", b'{"name": "n", "upstream": "127.0.0.1:1", "enabled": "yes"}'),
    ("PATCH", "/proxies/echo", b'{"enabled": "no"}'),
    ("PATCH", "/proxies/echo", b"{"),
    ("POST", "/proxies/echo/toxics", b'{"type": 5}'),
    ("POST", "/proxies/echo/toxics", b'{"type": "latency", "toxicity": "high"}'),
    ("POST", "/proxies/echo/toxics", b'{"type": "latency", "attributes": [1]}'),
    ("POST", "/proxies/echo/toxics", b'{"type": "latency", "attributes": {"latency": 1.5}}'),
    ("POST", "/proxies/echo/toxics", b'{"type": "latency", "attributes": {"latency": true}}'),
    ("POST", "/proxies/echo/toxics", b"\xff\xfe\x00"),
    ("POST", "/populate", b'[{"name": 1, "upstream": "127.0.0.1:1"}]'),
    ("POST", "/populate", b"[5]"),
    ("POST", "/populate", b"nope"),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_INPUTS)
def test_bad_input_is_400_never_500(
    toxiproxy: ProxyClient, proxy: str, method: str, path: str, body: bytes
) -> None:
    raw = toxiproxy.request(method, path, data=body)
    assert raw.status == 400, raw.text
    assert raw.json()["status"] == 400
    assert toxiproxy.get("echo").enabled and toxiproxy.get("echo").toxics == ()


# --- toxics: behaviour --------------------------------------------------------------------------------------


def test_latency_delays_delivery(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "latency", attributes={"latency": 300})
    with connect(proxy) as sock:
        started = time.monotonic()
        assert roundtrip(sock, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.3 * LOWER_BOUND_FRACTION


def test_latency_with_jitter_keeps_order_and_bytes(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "latency", stream="upstream", attributes={"latency": 20, "jitter": 15})
    toxiproxy.add_toxic("echo", "latency", stream="downstream", attributes={"latency": 20, "jitter": 15})
    messages = [b"message %04d;" % number for number in range(200)]
    expected = b"".join(messages)
    with connect(proxy) as sock:
        for message in messages:  # Many small writes: many chunks, each with its own jitter.
            sock.sendall(message)
        assert recv_exactly(sock, len(expected)) == expected


def test_timeout_zero_black_holes_and_removal_closes(
    toxiproxy: ProxyClient, proxy: str, echo_upstream: Upstream
) -> None:
    toxiproxy.add_toxic("echo", "timeout", attributes={"timeout": 0})
    with connect(proxy) as sock:
        sock.sendall(b"into the void")
        echo_upstream.wait_received(len(b"into the void"))  # Upstream got it and echoed it back...
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # ...but nothing comes back, and the connection stays open.
            sock.recv(100)
        sock.settimeout(io_timeout_s)
        toxiproxy.remove_toxic("echo", "timeout_downstream")
        assert_closed_by_proxy(sock)  # Its bytes were lost, so removing the toxic cuts the connection.


def test_timeout_positive_closes_the_connection(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "timeout", attributes={"timeout": 200})
    started = time.monotonic()
    with connect(proxy) as sock:
        sock.sendall(b"dropped")
        data, how = read_until_closed(sock)
    assert data == b"" and how in ("eof", "reset")
    assert time.monotonic() - started >= 0.2 * LOWER_BOUND_FRACTION


def test_reset_peer_resets(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "reset_peer", stream="upstream", attributes={"timeout": 0})
    with connect(proxy) as sock:
        sock.sendall(b"trigger")
        with pytest.raises(ConnectionResetError):
            while sock.recv(100):
                pass


def test_limit_data_closes_after_the_limit(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "limit_data", attributes={"bytes": 100})
    with connect(proxy) as sock:
        sock.sendall(bytes(range(256)) + bytes(44))
        data, how = read_until_closed(sock)
    assert data == bytes(range(100))
    assert how == "eof"


def test_limit_data_count_survives_updates(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "limit_data", attributes={"bytes": 10})
    with connect(proxy) as sock:
        assert roundtrip(sock, b"123456") == b"123456"
        toxiproxy.update_toxic("echo", "limit_data_downstream", attributes={"bytes": 8})
        sock.sendall(b"abcdef")
        data, how = read_until_closed(sock)
    assert (data, how) == (b"ab", "eof")


def test_bandwidth_limits_throughput(toxiproxy: ProxyClient, proxy: str) -> None:
    rate_kb_per_s = 50
    payload = os.urandom(25_000)  # 0.5 s at 50 KB/s (1 KB = 1000 B).
    toxiproxy.add_toxic("echo", "bandwidth", attributes={"rate": rate_kb_per_s})
    with connect(proxy) as sock:
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        elapsed_s = time.monotonic() - started
    assert elapsed_s >= len(payload) / (rate_kb_per_s * 1000) * LOWER_BOUND_FRACTION


def test_slicer_delivers_every_byte(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "slicer", attributes={"average_size": 64, "size_variation": 32, "delay": 100})
    payload = os.urandom(20_000)
    with connect(proxy) as sock:
        assert roundtrip(sock, payload) == payload


def test_slow_close_delays_the_close(
    toxiproxy: ProxyClient, upstream_factory: Callable[..., Upstream]
) -> None:
    greeter = upstream_factory("greet", b"bye\n")
    listen = toxiproxy.create("greeter", greeter.address).listen
    toxiproxy.add_toxic("greeter", "slow_close", attributes={"delay": 300})
    started = time.monotonic()
    with connect(listen) as sock:
        data, how = read_until_closed(sock)
    assert (data, how) == (b"bye\n", "eof")
    assert time.monotonic() - started >= 0.3 * LOWER_BOUND_FRACTION


def test_toxicity_zero_has_no_effect(toxiproxy: ProxyClient, proxy: str) -> None:
    toxiproxy.add_toxic("echo", "timeout", toxicity=0.0, attributes={"timeout": 0})
    with connect(proxy) as sock:
        assert roundtrip(sock, b"unharmed") == b"unharmed"


def test_toxics_reach_live_connections(toxiproxy: ProxyClient, proxy: str) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        toxiproxy.add_toxic("echo", "latency", name="lag", stream="upstream", attributes={"latency": 300})
        started = time.monotonic()
        assert roundtrip(sock, b"lagged") == b"lagged"
        assert time.monotonic() - started >= 0.3 * LOWER_BOUND_FRACTION
        toxiproxy.update_toxic("echo", "lag", attributes={"latency": 0})
        toxiproxy.add_toxic("echo", "limit_data", attributes={"bytes": 5})
        sock.sendall(b"0123456789")
        data, how = read_until_closed(sock)
    assert (data, how) == (b"01234", "eof")


def test_large_transfer_streams_intact(toxiproxy: ProxyClient, proxy: str) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()  # Read while sending: the echo cannot buffer 8 MiB, and neither should the proxy.
        received = recv_exactly(sock, len(payload))
        sender.join(io_timeout_s)
    assert received == payload


def test_unreachable_upstream_closes_the_client(toxiproxy: ProxyClient) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        vacant = f"127.0.0.1:{probe.getsockname()[1]}"
    listen = toxiproxy.create("nowhere", vacant).listen  # Nothing listens at the upstream any more.
    with connect(listen) as sock:
        assert_closed_by_proxy(sock)


# --- raftmq's server only ---------------------------------------------------------------------------------


def test_default_listen_is_loopback(
    toxiproxy: ProxyClient, echo_upstream: Upstream, raftmq_only: None
) -> None:
    raw = toxiproxy.request("POST", "/proxies", json={"name": "nolisten", "upstream": echo_upstream.address})
    assert raw.status == 201
    assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", raw.json()["listen"])


def test_malformed_listen_is_400(toxiproxy: ProxyClient, echo_upstream: Upstream, raftmq_only: None) -> None:
    # Go Toxiproxy answers 500 here (it finds out only when listening); bad input is a 400 in raftmq's.
    raw = toxiproxy.request(
        "POST", "/proxies", json={"name": "bad", "upstream": echo_upstream.address, "listen": "nope"}
    )
    assert raw.status == 400
    assert "missing port in address" in raw.json()["error"]


def test_half_close_is_forwarded(toxiproxy: ProxyClient, proxy: str, raftmq_only: None) -> None:
    # Go Toxiproxy closes both sides on the first EOF; raftmq's forwards the half-close and keeps the rest.
    payload = os.urandom(100_000)
    with connect(proxy) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data, how = read_until_closed(sock)
    assert (data, how) == (payload, "eof")


def test_config_file_seed_and_sigterm(tmp_path: Any, echo_upstream: Upstream, raftmq_only: None) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "from_config", "upstream": echo_upstream.address, "listen": "127.0.0.1:0"}])
    )
    server = ToxiproxyServerProcess(config_path=config, seed=7)
    with server:
        state = server.client().get("from_config")
        assert state.enabled and state.upstream == echo_upstream.address
        with connect(state.listen) as sock:
            assert roundtrip(sock, b"configured") == b"configured"
            code = server.stop()
            assert_closed_by_proxy(sock)
    assert code == 0  # SIGTERM is a clean shutdown.


# --- the wrapper's own guarantees ---------------------------------------------------------------------------


class _LyingHandler(http.server.BaseHTTPRequestHandler):
    """Accepts every change and applies none: the proxy `x` always reports itself enabled, without toxics."""

    state: Final = {
        "name": "x",
        "listen": "127.0.0.1:1",
        "upstream": "127.0.0.1:2",
        "enabled": True,
        "toxics": [],
    }

    def _reply(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming.
        if self.path == "/proxies/x":
            self._reply(200, self.state)
        elif self.path == "/proxies":
            self._reply(200, {"x": self.state})
        else:
            self._reply(404, {"error": "toxic not found", "status": 404})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(200, self.state)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@pytest.fixture
def lying_server() -> Iterator[ProxyClient]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LyingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ProxyClient("127.0.0.1", int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(io_timeout_s)


def test_wrapper_confirms_changes(
    lying_server: ProxyClient, toxiproxy: ProxyClient, echo_upstream: Upstream
) -> None:
    with pytest.raises(ToxiproxyNotApplied, match="disable of x"):
        lying_server.disable("x")
    with pytest.raises(ToxiproxyNotApplied, match="add of toxic"):
        lying_server.add_toxic("x", "latency")
    # Two clients, two servers: toxiproxy-python's class-level host/port does not leak between them.
    assert toxiproxy.create("real", echo_upstream.address).enabled
    assert set(lying_server.proxies()) == {"x"}
    assert set(toxiproxy.proxies()) == {"real"}


def test_wrapper_times_out_and_reports_unreachable_servers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # Accepts (in the kernel), never answers.
        client = ProxyClient("127.0.0.1", int(silent.getsockname()[1]), timeout_s=0.3)
        with pytest.raises(ToxiproxyTimeout):
            client.version()
        with pytest.raises(ToxiproxyTimeout):
            client.create("x", "127.0.0.1:1")  # A library call: it had no timeout at all.
        port = int(silent.getsockname()[1])
    with pytest.raises(ToxiproxyUnavailable):
        ProxyClient("127.0.0.1", port, timeout_s=0.3).version()


def test_unknown_server_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a Toxiproxy API URL"):
        ProxyClient.from_url("localhost:8474")


def test_server_process_starts_despite_a_missing_config(tmp_path: Any, raftmq_only: None) -> None:
    # A bogus config path is only logged (as by Toxiproxy): the server still starts and answers.
    with ToxiproxyServerProcess(config_path=tmp_path / "missing.json") as server:
        assert server.client().proxies() == {}
        assert server.running and server.pid is not None
    assert not server.running
