"""The hostile neighbour: a separate process that misbehaves against a running cluster while the normal
workload goes on, and counts what it did and how the brokers answered.

``python -m raftmq.chaos.hostile --peer HOST:PORT --http URL[,URL...] --topic T --duration S --seed N
--report FILE``. Four kinds of abuse run at once, each bounded in count and rate (cluster/limits.py,
"hostile neighbour"):

* ``peer_garbage``: connections to ONE broker's peer port that send random bytes (sometimes a msgpack-looking
  frame head with an absurd length) and wait to be thrown out. Outcomes: ``closed`` (the broker hung up),
  ``held`` (still open when we gave up waiting: the broker's handshake deadline should prevent that).
* ``http_malformed``: requests to EVERY broker's client port with random methods and paths from the API,
  random bodies under a msgpack or JSON content type, broken framing (a Content-Length larger than the body,
  garbage instead of a request line, bad chunked encoding). Outcomes: the status class (``2xx``, ``4xx``,
  ``5xx``), ``closed`` (no answer, connection closed), ``timeout``.
* ``slow_connections``: hundreds of connections that send nothing or dribble a header byte now and then
  (slowloris). Outcomes: ``closed_by_broker`` (its head deadline or the connection cap), ``open_at_end``.
* ``stuck_consumers``: fetch requests whose answers are never read (tiny receive buffer, no reads).
  Outcomes: ``closed_by_broker``, ``open_at_end``.

A ``5xx`` answer to bad input is reported (bad input deserves a coded 4xx), never fatal to the run. The JSON
report is ``{"classes": {class: {outcome: count}}, "started": ..., "duration_s": ...}``, written at the end
(also on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raftmq.cluster import limits

# API paths the fuzzer aims at ({t}: the workload's topic or a random name, {p}: a partition or garbage).
_PATHS = ("/v1/health", "/v1/metadata", "/v1/topics", "/v1/topics/{t}", "/v1/producers",
          "/v1/topics/{t}/records", "/v1/topics/{t}/partitions/{p}/records",
          "/v1/topics/{t}/partitions/{p}/offsets", "/v1/brokers/{p}/drain", "/v1/internal/heartbeat",
          "/v1/internal/metadata", "/v1/internal/metadata/propose", "/v1/internal/partitions/step",
          "/v1/debug/stages")
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
_CONTENT_TYPES = ("application/msgpack", "application/json", "application/x-www-form-urlencoded", "text/plain")


class Tally:
    """Outcome counts per hostile class."""

    def __init__(self) -> None:
        self.classes: dict[str, Counter[str]] = {}

    def add(self, kind: str, outcome: str) -> None:
        self.classes.setdefault(kind, Counter())[outcome] += 1

    def to_json(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(counts.items())) for kind, counts in sorted(self.classes.items())}


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.hostname is not None and parts.port is not None, f"need HOST:PORT, got {url!r}"
    return parts.hostname, parts.port


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the peer closes (EOF or reset) within ``seconds``; what it sends meanwhile is discarded."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                if not await reader.read(limits.hostile_read_bytes_max):
                    return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


async def _peer_garbage(host: str, port: int, rng: random.Random, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with asyncio.timeout(limits.hostile_connect_timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            tally.add("peer_garbage", "refused")
            await _pause(stop, limits.hostile_peer_interval_s)
            continue
        if rng.random() < 0.3:  # a frame head that announces far more than any frame may hold
            payload = (2**31 - 1).to_bytes(4, "big") + rng.randbytes(rng.randint(0, 64))
        else:
            payload = rng.randbytes(rng.randint(1, limits.hostile_garbage_bytes_max))
        try:
            writer.write(payload)
            await writer.drain()
            closed = await _closed_within(reader, limits.hostile_peer_wait_s)
        except OSError:
            closed = True
        tally.add("peer_garbage", "closed" if closed else "held")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await _pause(stop, limits.hostile_peer_interval_s)


def _malformed_request(rng: random.Random, host: str, topic: str) -> bytes:
    """One hostile request. Never a well-formed destructive one: the client API has no authentication by
    design, so ``DELETE /v1/topics/<the workload's topic>`` or a drain of a real broker would be an operator's
    command, not an attack (the topic's deletion would be counted as the broker losing every record)."""
    method = rng.choice(_METHODS)
    template = rng.choice(_PATHS)
    names = (topic, "x" * rng.randint(1, 300), "%00", "../etc") if method != "DELETE" else ("x" * 300, "%00", "a b")
    path = template.replace("{t}", rng.choice(names))
    ids = ("0", "1", "-1", "99999999999999999999", "abc") if not template.startswith("/v1/brokers/") else (
        "-1", "99999999999999999999", "abc")
    path = path.replace("{p}", rng.choice(ids))
    if rng.random() < 0.3:
        path += rng.choice(("?offset=-5", "?offset=abc&max_bytes=0", "?max_wait_ms=999999999", "?acks=7"))
    shape = rng.random()
    body = rng.randbytes(rng.randint(0, limits.hostile_body_bytes_max))
    if shape < 0.1:
        return rng.randbytes(rng.randint(1, 512)) + b"\r\n\r\n"  # not HTTP at all
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {rng.choice(_CONTENT_TYPES)}\r\n"
    if shape < 0.25:  # announces more than it sends: the body deadline must end it
        return (head + f"Content-Length: {len(body) + 1000}\r\n\r\n").encode() + body
    if shape < 0.35:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"zz\r\n" + body + b"\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _http_malformed(urls: list[str], topic: str, rng: random.Random, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        host, port = _host_port(rng.choice(urls))
        try:
            async with asyncio.timeout(limits.hostile_http_answer_timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(_malformed_request(rng, host, topic))
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1].isdigit():
                tally.add("http_malformed", f"{parts[1][:1].decode()}xx")
            else:
                tally.add("http_malformed", "closed")
        except TimeoutError:
            tally.add("http_malformed", "timeout")
        except OSError:
            tally.add("http_malformed", "closed")
        await _pause(stop, 1.0 / limits.hostile_http_requests_per_s)


async def _hold(kind: str, host: str, port: int, first: bytes, rng: random.Random, tally: Tally,
                stop: asyncio.Event, *, dribble: bool, rcvbuf: int | None = None) -> None:
    """One held connection on a raw socket: sends ``first`` (and, with ``dribble``, a header byte now and
    then) and never reads; counts whether the broker closed it before the step ended."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(limits.hostile_connect_timeout_s):
                await loop.sock_connect(sock, (host, port))
        except (OSError, TimeoutError):
            tally.add(kind, "refused")
            return
        outcome = "open_at_end"
        try:
            if first:
                async with asyncio.timeout(limits.hostile_connect_timeout_s):
                    await loop.sock_sendall(sock, first)
            while not stop.is_set():
                if dribble:
                    sock.send(bytes([rng.choice(b"abcdefghij")]))
                await _pause(stop, limits.hostile_dribble_interval_s)
                if _peer_closed(sock):
                    outcome = "closed_by_broker"
                    break
        except (OSError, TimeoutError):
            outcome = "closed_by_broker"
        tally.add(kind, outcome)
    finally:
        sock.close()


# Linux TCP states (include/net/tcp_states.h): anything but ESTABLISHED means the broker closed its side.
_TCP_ESTABLISHED = 1


def _peer_closed(sock: socket.socket) -> bool:
    """The broker closed or reset the connection (its TCP state, whatever unread bytes are queued)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != _TCP_ESTABLISHED
    except OSError:
        return True


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def run(peer: str, urls: list[str], topic: str, duration_s: float, seed: int) -> dict[str, Any]:
    """Every kind of abuse for ``duration_s`` (or until SIGTERM); the report."""
    rng = random.Random(seed)
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(duration_s, stop.set)
    peer_host, peer_port = _host_port(peer)
    tasks = [asyncio.create_task(_peer_garbage(peer_host, peer_port, random.Random(rng.random()), tally, stop))
             for _ in range(limits.hostile_peer_connections_max)]
    tasks += [asyncio.create_task(_http_malformed(urls, topic, random.Random(rng.random()), tally, stop))
              for _ in range(limits.hostile_http_workers_max)]
    for index in range(limits.hostile_slow_connections_max):
        host, port = _host_port(urls[index % len(urls)])
        first = b"" if index % 2 == 0 else f"GET /v1/metadata HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
        tasks.append(asyncio.create_task(_hold("slow_connections", host, port, first, random.Random(index), tally,
                                               stop, dribble=index % 2 == 1)))
    for index in range(limits.hostile_stuck_consumers_max):
        host, port = _host_port(urls[index % len(urls)])
        request = (f"GET /v1/topics/{topic}/partitions/{index % 3}/records?offset=0&max_bytes="
                   f"{limits.fetch_bytes_max} HTTP/1.1\r\nHost: {host}\r\nAccept: application/msgpack\r\n\r\n")
        tasks.append(asyncio.create_task(_hold("stuck_consumers", host, port, request.encode() * 4,
                                               random.Random(index), tally, stop, dribble=False,
                                               rcvbuf=limits.hostile_stuck_rcvbuf_bytes)))
    started = time.time()
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limits.hostile_wind_down_s):
            await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"classes": tally.to_json(), "started": started, "duration_s": round(time.time() - started, 2),
            "peer": peer, "http": urls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftmq.chaos.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="HOST:PORT of one broker's peer port")
    parser.add_argument("--http", required=True, help="comma-separated client URLs of every broker")
    parser.add_argument("--topic", default="chaos")
    parser.add_argument("--duration", type=float, required=True, help="seconds (SIGTERM ends it earlier)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, required=True, help="where the JSON report goes")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.peer, [u for u in args.http.split(",") if u], args.topic, args.duration, args.seed))
    args.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
