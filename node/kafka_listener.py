"""The Kafka-protocol port: asyncio streams, one task per connection, requests answered by
``node/kafka_api.py``.

Per connection:

* Frames are an int32 size and the request. A size outside [8, ``kafka_request_bytes_max``] closes the
  connection, as does a frame that does not decode, an API key or version we do not advertise (except
  ApiVersions, answered with error 35 and our list so the client retries at a version we serve), and any
  unexpected failure while handling a request (logged): a Kafka client reconnects and starts over, where
  an answer it cannot parse would desync it.
* Requests are handled concurrently (a Fetch long poll does not hold up a Produce behind it) but the
  responses go back strictly in request order: kafka-python and aiokafka match responses to requests by
  position and close the connection on a mismatch. At most ``kafka_inflight_per_connection_max`` requests
  are read and unanswered; past that the connection is not read until the oldest is answered.
* Once a frame's first byte has arrived the rest must arrive within ``kafka_frame_read_timeout_s``; a
  connection silent for ``kafka_idle_timeout_s`` is closed; a response the client does not read within
  ``kafka_write_timeout_s`` closes the connection.
* At most ``kafka_connections_max`` connections; the next one is closed at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from contextlib import suppress

from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidConfig
from raftmq.cluster.kafka_codec import DecodeError
from raftmq.cluster.kafka_messages import (
    ApiKey,
    UnsupportedRequest,
    decode_request,
    encode_response,
    unsupported_api_versions_response,
)
from raftmq.node.config import PeerAddress
from raftmq.node.kafka_api import KafkaApi

log = logging.getLogger(__name__)

_SIZE_MIN = 8  # api_key, api_version, correlation_id: the least a request header holds


class _Close(Exception):
    """This connection must be closed (the reason is logged where it is raised)."""


class KafkaListener:
    def __init__(self, api: KafkaApi, listen: PeerAddress, *,
                 connections_max: int = limits.kafka_connections_max,
                 inflight_max: int = limits.kafka_inflight_per_connection_max,
                 idle_timeout_s: float = limits.kafka_idle_timeout_s,
                 frame_timeout_s: float = limits.kafka_frame_read_timeout_s) -> None:
        self.api = api
        self.listen = listen
        self.connections_max = connections_max
        self.inflight_max = inflight_max
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.stats = {"connections_refused": 0, "closed_bad_frame": 0, "closed_unsupported": 0}

    @property
    def port(self) -> int:
        """The port actually bound (useful when listening on port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        try:
            self._server = await asyncio.start_server(self._accept, self.listen.host, self.listen.port,
                                                      family=family, reuse_address=True,
                                                      limit=limits.kafka_request_bytes_max + 4)
        except OSError as exc:
            in_use = " (another process uses the port)" if exc.errno == errno.EADDRINUSE else ""
            raise InvalidConfig(f"cannot listen on kafka_listen {self.listen}: {exc.strerror or exc}{in_use}",
                                key="kafka_listen") from None
        log.info("Kafka listener on %s", self.listen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.api.stop()  # the group join phases it drives
        if self._server is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(limits.kafka_write_timeout_s):
                    await self._server.wait_closed()
            self._server = None

    # --- one connection ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.connections_max:
            self.stats["connections_refused"] += 1
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels a connection task. End it normally: asyncio's stream server asks a finished
            # connection task for its exception and logs a traceback when the task was cancelled.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with suppress(OSError, TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A slot per request read and not yet answered: with none free the connection is not read.
        slots = asyncio.Semaphore(self.inflight_max)
        pending: asyncio.Queue[asyncio.Task[bytes | None]] = asyncio.Queue()
        responder = asyncio.ensure_future(self._respond(pending, writer, slots))
        try:
            while True:
                slot = asyncio.ensure_future(slots.acquire())
                await asyncio.wait([slot, responder], return_when=asyncio.FIRST_COMPLETED)
                if responder.done():  # the responder gave up on the connection
                    slot.cancel()
                    break
                frame = await self._read_frame(reader)
                if frame is None:
                    break
                pending.put_nowait(asyncio.ensure_future(self._answer(frame)))
            if not responder.done():  # the client half-closed: finish what it asked (bounded), then close
                joined = asyncio.ensure_future(pending.join())
                await asyncio.wait([joined, responder], return_when=asyncio.FIRST_COMPLETED)
                joined.cancel()
        except (_Close, ConnectionError):
            pass
        finally:
            responder.cancel()
            while not pending.empty():
                unanswered = pending.get_nowait()
                unanswered.cancel()
                if unanswered.done() and not unanswered.cancelled():
                    unanswered.exception()  # retrieved: a failed answer nobody awaits must not log a traceback
            with suppress(asyncio.CancelledError, _Close, Exception):
                await responder

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request frame, None at a clean end of stream. Raises _Close on a bad size or a stall."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                first = await reader.read(1)
        except TimeoutError:
            raise _Close() from None
        if not first:
            return None
        try:
            async with asyncio.timeout(self.frame_timeout_s):
                size = int.from_bytes(first + await reader.readexactly(3), "big", signed=True)
                if not _SIZE_MIN <= size <= limits.kafka_request_bytes_max:
                    self.stats["closed_bad_frame"] += 1
                    log.info("closing a Kafka connection: request size %d outside [%d, %d]", size, _SIZE_MIN,
                             limits.kafka_request_bytes_max)
                    raise _Close()
                return await reader.readexactly(size)
        except TimeoutError:
            log.info("closing a Kafka connection: a request did not arrive within %.0f s", self.frame_timeout_s)
            raise _Close() from None
        except asyncio.IncompleteReadError:
            return None

    async def _answer(self, frame: bytes) -> bytes | None:
        try:
            request = decode_request(frame, count_max=limits.kafka_array_elements_max)
        except UnsupportedRequest as refused:
            if refused.header.api_key == ApiKey.API_VERSIONS:
                return unsupported_api_versions_response(refused.header.correlation_id)
            self.stats["closed_unsupported"] += 1
            log.info("closing a Kafka connection from %r: %s", refused.header.client_id, refused.message)
            raise _Close() from None
        except DecodeError as malformed:
            self.stats["closed_bad_frame"] += 1
            log.info("closing a Kafka connection: malformed request: %s", malformed.message)
            raise _Close() from None
        try:
            body = await self.api.handle(request)
            if body is None:
                return None
            return encode_response(request.api_key, request.header.api_version, request.header.correlation_id,
                                   body)
        except Exception:
            log.exception("closing a Kafka connection: %s v%d failed", request.api_key.name,
                          request.header.api_version)
            raise _Close() from None

    async def _respond(self, pending: asyncio.Queue[asyncio.Task[bytes | None]], writer: asyncio.StreamWriter,
                       slots: asyncio.Semaphore) -> None:
        """Write the answers in request order; the first failure closes the connection."""
        while True:
            answer = await pending.get()
            try:
                data = await answer
                if data is not None:
                    writer.write(data)
                    async with asyncio.timeout(limits.kafka_write_timeout_s):
                        await writer.drain()
            except (_Close, TimeoutError, ConnectionError):
                writer.close()
                return
            finally:
                pending.task_done()
                slots.release()


__all__ = ["KafkaListener"]
