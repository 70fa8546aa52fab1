"""The data path of one proxied connection: endpoints (sockets), links (directions) and stages (toxics).

A connection has two endpoints, the client's socket and the upstream's, and two links: `upstream` reads the
client and writes the upstream, `downstream` the reverse. Reading is callback-driven (`Endpoint` is an
asyncio BufferedProtocol): every read of up to `chunk_bytes_max` bytes becomes a `Chunk` stamped with its
read time and queued; the queue is bounded and reading pauses when it is full, so backpressure reaches the
sender through TCP. One pump task per link takes chunks off the queue, runs them through the link's stages
in chain order and writes them to the other endpoint, awaiting `drain()` after each write.

Nothing buffers a whole message: a chunk is at most 32 KiB, the read-ahead queue and the transport's write
buffer are bounded (limits.py), and a toxic holds at most the chunk it is working on.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from . import limits
from .toxics import Direction, Emit, Toxic, ToxicWrapper

if TYPE_CHECKING:
    from .proxy import Connection

log: Final = logging.getLogger("raftmq.chaos.toxiproxy.link")

# SO_LINGER on with a zero timeout: close() then discards unsent data and sends RST instead of FIN.
_linger_reset: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes read in one go from a socket, with the event-loop time of the read."""

    data: bytes
    timestamp: float

    def with_data(self, data: bytes) -> Chunk:
        return Chunk(data, self.timestamp)

    def at(self, timestamp: float) -> Chunk:
        return Chunk(self.data, timestamp)


class Endpoint(asyncio.BufferedProtocol):
    """One socket of a proxied connection: queues what it reads, writes with flow control."""

    def __init__(self, side: str, on_connection_made: Callable[[Endpoint], None] | None = None) -> None:
        assert side in ("client", "upstream"), side
        self.side = side
        self.connection: Connection | None = None  # Set by the connection that owns this endpoint.
        self.transport: asyncio.Transport | None = None
        self.bytes_read = 0
        self._on_connection_made = on_connection_made
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray(limits.chunk_bytes_max)
        self._queue: collections.deque[Chunk] = collections.deque()
        self._queued_bytes = 0
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        assert self.transport is None, "an endpoint is made once"
        self.transport = transport
        transport.set_write_buffer_limits(
            high=limits.write_buffer_bytes_high, low=limits.write_buffer_bytes_low
        )
        if self._on_connection_made is not None:
            self._on_connection_made(self)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self._buffer), nbytes
        assert not self.eof, "no data after EOF"
        if self.lost:
            return
        self._queue.append(Chunk(bytes(self._buffer[:nbytes]), self._loop.time()))
        self._queued_bytes += nbytes
        self.bytes_read += nbytes
        if not self._reading_paused and (
            len(self._queue) >= limits.link_queue_chunks_max
            or self._queued_bytes >= limits.link_queue_bytes_max
        ):
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake(self._read_waiter)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake(self._read_waiter)
        return True  # Keep the transport open: the other direction may still be sending (half-close).

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake(self._read_waiter)
        self._wake(self._drain_waiter)
        if self.connection is not None:
            self.connection.endpoint_lost(self, exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drain_waiter)

    # --- used by links --------------------------------------------------------------------------

    async def read_chunk(self) -> Chunk | None:
        """The next chunk read from the socket, or None at EOF (or once the socket is gone)."""
        while not self._queue:
            if self.eof or self.lost:
                return None
            assert self._read_waiter is None, "one reader per endpoint"
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        chunk = self._queue.popleft()
        self._queued_bytes -= len(chunk.data)
        assert self._queued_bytes >= 0
        if (
            self._reading_paused
            and len(self._queue) <= limits.link_queue_chunks_resume
            and self._queued_bytes <= limits.link_queue_bytes_resume
        ):
            self._reading_paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()
        return chunk

    def write(self, data: bytes) -> bool:
        """Write to the socket; False if it is closing (the caller stops forwarding)."""
        if self.transport is None or self.lost or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def drain(self) -> None:
        while self._writing_paused and not self.lost:
            assert self._drain_waiter is None, "one writer per endpoint"
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def write_eof(self) -> None:
        """Half-close: send FIN once the buffered bytes are out, keep reading."""
        if self.transport is None or self.lost or self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self, *, reset: bool) -> None:
        """Close the socket: FIN after flushing (reset=False), or RST at once (reset=True)."""
        if self.transport is None or self.lost:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _linger_reset)
                except OSError:
                    pass  # Already gone; abort() below still closes it.
            self.transport.abort()
        else:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping bytes not yet handed to the kernel (after a flush deadline)."""
        if self.transport is not None and not self.lost:
            self.transport.abort()

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Stage:
    """One toxic on one link: the toxicity roll, the toxic's per-link state, its timer and interrupts."""

    def __init__(self, link: Link, wrapper: ToxicWrapper) -> None:
        assert wrapper.direction is link.direction
        self.link = link
        self.wrapper = wrapper
        self.sequence = wrapper.sequence
        self.state = wrapper.toxic.new_state()
        self.active = False
        self._interrupted = False
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def toxic(self) -> Toxic:
        return self.wrapper.toxic

    @property
    def rng(self) -> random.Random:
        return self.link.rng

    def now(self) -> float:
        return self.link.loop.time()

    def begin(self) -> None:
        """The toxic starts on this link: roll toxicity (per link, not per chunk), then start it."""
        assert self._timer is None
        self.active = self.rng.random() < self.wrapper.toxicity
        if self.active:
            self.toxic.start(self)

    def end(self, *, removed: bool) -> None:
        """The toxic stops on this link (removed, or restarting after an update)."""
        self.interrupt()
        if self.active:
            self.toxic.stop(self, removed=removed)
        self.cancel_timer()
        self.active = False

    def interrupt(self) -> None:
        """Cut the current wait short: the toxic passes on what it holds."""
        self._interrupted = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)

    async def run(self, chunk: Chunk, emit: Emit) -> None:
        self._interrupted = False
        await self.toxic.pipe(self, chunk, emit)

    async def run_finish(self) -> bool:
        self._interrupted = False
        return await self.toxic.finish(self)

    async def sleep(self, seconds: float, *, interruptible: bool = True) -> bool:
        """Wait; True if the time passed, False if the toxic was updated or removed meanwhile."""
        if interruptible and self._interrupted:
            return False
        if seconds <= 0:
            return True
        if not interruptible:
            await asyncio.sleep(seconds)
            return True
        assert self._waiter is None, "a stage waits for one thing at a time"
        waiter: asyncio.Future[bool] = self.link.loop.create_future()
        self._waiter = waiter
        handle = self.link.loop.call_later(seconds, _resolve, waiter, True)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._waiter = None

    async def wait_until(self, deadline: float) -> bool:
        return await self.sleep(deadline - self.now())

    def start_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        assert self._timer is None, "one timer per stage"
        self._timer = self.link.loop.call_later(seconds, self._fire_timer, callback)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire_timer(self, callback: Callable[[], None]) -> None:
        self._timer = None
        callback()

    def close_connection(self) -> None:
        self.link.connection.close(reset=False, reason=f"toxic {self.wrapper.name}")

    def reset_connection(self) -> None:
        self.link.connection.close(reset=True, reason=f"toxic {self.wrapper.name}")


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


class Link:
    """One direction of a connection: source endpoint → stages in chain order → target endpoint."""

    def __init__(
        self,
        connection: Connection,
        direction: Direction,
        source: Endpoint,
        target: Endpoint,
        rng: random.Random,
        on_forwarded: Callable[[Direction, int], None],
    ) -> None:
        assert source is not target
        self.connection = connection
        self.direction = direction
        self.source = source
        self.target = target
        self.rng = rng
        self.loop = asyncio.get_running_loop()
        self.stages: list[Stage] = []  # Ordered by sequence (insertion order of the toxics).
        self.finished = False
        self._on_forwarded = on_forwarded

    # --- the toxic chain changes (called from the API, on the event loop) ---------------------------

    def add_toxic(self, wrapper: ToxicWrapper) -> None:
        assert all(stage.wrapper is not wrapper for stage in self.stages), wrapper.name
        stage = Stage(self, wrapper)
        index = len(self.stages)
        while index > 0 and self.stages[index - 1].sequence > stage.sequence:
            index -= 1
        self.stages.insert(index, stage)
        stage.begin()

    def update_toxic(self, wrapper: ToxicWrapper) -> None:
        stage = self._stage_of(wrapper)
        if stage is not None:
            stage.end(removed=False)
            stage.begin()

    def remove_toxic(self, wrapper: ToxicWrapper) -> None:
        stage = self._stage_of(wrapper)
        if stage is not None:
            self.stages.remove(stage)
            stage.end(removed=True)

    def stop(self) -> None:
        """The connection is closing: stop timers and waits, without the close-on-removal effects."""
        for stage in self.stages:
            stage.interrupt()
            stage.cancel_timer()

    def _stage_of(self, wrapper: ToxicWrapper) -> Stage | None:
        for stage in self.stages:
            if stage.wrapper is wrapper:
                return stage
        return None

    # --- the pump ------------------------------------------------------------------------------

    async def pump(self) -> None:
        """Move chunks from source to target until EOF or the connection closes."""
        while not self.connection.is_closing:
            chunk = await self.source.read_chunk()
            if self.connection.is_closing:
                return
            if chunk is None:
                await self._finish()
                return
            await self.forward(chunk, -1)

    async def forward(self, chunk: Chunk, after: int) -> None:
        """Run a chunk through the active stages whose sequence is above `after`, then write it.

        Each toxic's `emit` is this method with `after` set to the toxic's own sequence, so a chunk a toxic
        lets go continues with whatever stages follow it *now* (toxics added meanwhile included). The call
        depth is bounded by toxics_per_proxy_max.
        """
        if self.connection.is_closing:
            return
        for stage in self.stages:
            if stage.sequence > after and stage.active:
                await stage.run(chunk, functools.partial(self.forward, after=stage.sequence))
                return
        if not self.target.write(chunk.data):
            return
        self._on_forwarded(self.direction, len(chunk.data))
        await self.target.drain()

    async def _finish(self) -> None:
        # The source sent EOF: let the toxics act on it (slow_close waits, reset_peer resets), then
        # half-close the target. The connection closes once both links have finished.
        for stage in list(self.stages):
            if stage in self.stages and stage.active:
                keep_going = await stage.run_finish()
                if not keep_going or self.connection.is_closing:
                    return
        self.target.write_eof()
        self.finished = True
        self.connection.link_finished(self)
