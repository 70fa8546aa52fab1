"""The toxic types: what each does to the bytes of one link (one direction of one connection).

A toxic *definition* (`ToxicWrapper`: name, type, stream, toxicity, attributes) belongs to a proxy. Every live
link in the toxic's direction runs it through a `Stage` (see link.py), which holds that link's state for
the toxic: whether the toxicity roll succeeded, counters, a timer. Toxics are small classes with four hooks:

- `start(stage)`: the toxic starts on a link (connection set up, toxic added or updated) and the roll won;
- `pipe(stage, chunk, emit)`: one chunk arrives; pass pieces on with `await emit(piece)` or drop them;
- `finish(stage)`: the link's source sent EOF; return False if the toxic closed the connection itself;
- `stop(stage, removed)`: the toxic stops on a link (removed, or about to restart after an update).

Waits go through `stage.sleep`/`stage.wait_until`, which return False when the toxic is updated or removed
meanwhile; a toxic then passes the data it holds on at once ("don't drop data on the floor", as Go does).
Times are milliseconds except `slicer.delay` (microseconds); `bandwidth.rate` is KB/s with 1 KB = 1000 B.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

from . import codec, errors

if TYPE_CHECKING:
    from .link import Chunk, Stage

Emit = Callable[["Chunk"], Awaitable[None]]


class Direction(enum.Enum):
    """`upstream` carries client→server bytes (toward the proxy's upstream); `downstream` server→client."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


class Toxic:
    """Base class: a toxic type with integer attributes. The base behaviour passes data through."""

    type_name: ClassVar[str] = ""
    go_struct: ClassVar[str] = ""  # Go's struct name, for decode error messages that match Toxiproxy's.
    field_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, attributes: Mapping[str, int] | None = None) -> None:
        self.attributes: dict[str, int] = {name: 0 for name in self.field_names}
        if attributes is not None:
            assert set(attributes) <= set(self.field_names), attributes
            self.attributes.update(attributes)

    def decode_over(self, raw: object) -> dict[str, int]:
        """Decode a JSON `attributes` value over the current values, without changing them.

        Returns the new full attribute set; raises 400 on a value of the wrong type (Go semantics: null keeps
        the field, unknown keys are ignored).
        """
        decoded = dict(self.attributes)
        obj = codec.as_object(raw, f"toxics.{self.go_struct}", "ToxicWrapper", "attributes")
        if obj is None:
            return decoded
        for name, value in codec.fields(obj, self.field_names).items():
            number = codec.as_int64(value, self.go_struct, name)
            if number is not None:
                decoded[name] = number
        return decoded

    def new_state(self) -> object | None:
        """Per-link state that survives updates of the toxic (limit_data's byte count)."""
        return None

    def start(self, stage: Stage) -> None:
        return None

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def finish(self, stage: Stage) -> bool:
        return True

    def stop(self, stage: Stage, *, removed: bool) -> None:
        return None


class NoopToxic(Toxic):
    type_name = "noop"
    go_struct = "NoopToxic"


class LatencyToxic(Toxic):
    """Each chunk goes on at its read time + latency ± jitter; order is kept, so the delay is pipelined."""

    type_name = "latency"
    go_struct = "LatencyToxic"
    field_names = ("latency", "jitter")

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        delay_ms = float(self.attributes["latency"])
        jitter_ms = self.attributes["jitter"]
        if jitter_ms > 0:
            delay_ms += stage.rng.uniform(-jitter_ms, jitter_ms)  # Go: uniform in [-jitter, +jitter).
        deadline = chunk.timestamp + delay_ms / 1000.0
        if deadline > stage.now():
            await stage.wait_until(deadline)
            # A later toxic measures its own delay from the time this one let the chunk go.
            chunk = chunk.at(deadline)
        await emit(chunk)


@dataclass
class _BandwidthState:
    # Seconds of sending still owed by earlier chunks (negative: credit for oversleeping), as Go's `sleep`.
    debt_s: float = 0.0


class BandwidthToxic(Toxic):
    """Limits a link to `rate` KB/s (1 KB = 1000 B). Chunks over `rate*100` bytes go out 100 ms apart."""

    type_name = "bandwidth"
    go_struct = "BandwidthToxic"
    field_names = ("rate",)
    piece_interval_s: Final = 0.1

    def new_state(self) -> object:
        return _BandwidthState()

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        rate_kb_per_s = self.attributes["rate"]
        state = stage.state
        assert isinstance(state, _BandwidthState)
        if rate_kb_per_s <= 0:  # rate <= 0 means unlimited.
            state.debt_s = 0.0
            await emit(chunk)
            return
        state.debt_s += len(chunk.data) / (rate_kb_per_s * 1000.0)
        piece_bytes = rate_kb_per_s * 100  # What the rate allows in 100 ms.
        data = chunk.data
        while len(data) > piece_bytes:
            if not await stage.sleep(self.piece_interval_s):
                break  # Updated or removed: hand the rest on now.
            await emit(chunk.with_data(data[:piece_bytes]))
            data = data[piece_bytes:]
            state.debt_s -= self.piece_interval_s
        else:
            started = stage.now()
            await stage.sleep(state.debt_s)
            # Timers overshoot; charge the time actually slept so the error does not accumulate.
            state.debt_s -= stage.now() - started
        await emit(chunk.with_data(data))


class SlowCloseToxic(Toxic):
    """Passes data on; when the source closes, waits `delay` ms before closing the destination."""

    type_name = "slow_close"
    go_struct = "SlowCloseToxic"
    field_names = ("delay",)

    async def finish(self, stage: Stage) -> bool:
        await stage.sleep(self.attributes["delay"] / 1000.0)
        return True


class TimeoutToxic(Toxic):
    """Drops all data. timeout > 0: closes the connection that many ms after starting on the link;
    timeout = 0: a black hole that keeps the connection open. Removing it closes the connections it
    affected, because their bytes were lost."""

    type_name = "timeout"
    go_struct = "TimeoutToxic"
    field_names = ("timeout",)

    def start(self, stage: Stage) -> None:
        timeout_ms = self.attributes["timeout"]
        if timeout_ms > 0:
            stage.start_timer(timeout_ms / 1000.0, stage.close_connection)

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        return None  # Dropped.

    def stop(self, stage: Stage, *, removed: bool) -> None:
        stage.cancel_timer()
        if removed:
            stage.close_connection()


class ResetPeerToxic(Toxic):
    """On the first chunk (or EOF) after it starts: drops it, waits `timeout` ms, then resets the connection
    with a real RST on both sides (SO_LINGER 0 + abort). Unlike Go Toxiproxy, connections opened before the
    toxic existed get an RST too, not a FIN."""

    type_name = "reset_peer"
    go_struct = "ResetToxic"
    field_names = ("timeout",)

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        await self._reset_after_timeout(stage)

    async def finish(self, stage: Stage) -> bool:
        await self._reset_after_timeout(stage)
        return False

    async def _reset_after_timeout(self, stage: Stage) -> None:
        # Go's wait here ignores interrupts: once triggered, the reset happens.
        await stage.sleep(self.attributes["timeout"] / 1000.0, interruptible=False)
        stage.reset_connection()


class SlicerToxic(Toxic):
    """Splits each chunk into pieces of about `average_size` ± `size_variation` bytes, `delay` µs apart."""

    type_name = "slicer"
    go_struct = "SlicerToxic"
    field_names = ("average_size", "size_variation", "delay")

    def piece_bounds(self, stage: Stage, length: int) -> list[tuple[int, int]]:
        """Go's recursive halving, done with an explicit stack. Returns [start, end) pairs in order."""
        average = self.attributes["average_size"]
        variation = max(0, self.attributes["size_variation"])
        if average <= 0 or length <= average:
            return [(0, length)]  # Go would recurse forever for average_size <= 0; we pass the chunk on.
        bounds: list[tuple[int, int]] = []
        pending = [(0, length)]
        while pending:  # Each split makes two non-empty halves, so this ends after < 2 * length rounds.
            start, end = pending.pop()
            size = end - start
            if size <= average:
                bounds.append((start, end))
                continue
            middle = start + size // 2
            if variation > 0:
                middle += stage.rng.randrange(variation * 2) - variation
            middle = min(max(middle, start + 1), end - 1)
            pending.append((middle, end))
            pending.append((start, middle))
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        return bounds

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        delay_s = self.attributes["delay"] / 1_000_000.0
        bounds = self.piece_bounds(stage, len(chunk.data))
        for start, end in bounds:
            await emit(chunk.with_data(chunk.data[start:end]))
            if not await stage.sleep(delay_s):
                if end < len(chunk.data):  # Updated or removed: the rest goes on in one piece.
                    await emit(chunk.with_data(chunk.data[end:]))
                return


@dataclass
class _LimitDataState:
    bytes_sent: int = 0


class LimitDataToxic(Toxic):
    """Forwards at most `bytes` bytes on the link (the count survives updates), then closes the connection."""

    type_name = "limit_data"
    go_struct = "LimitDataToxic"
    field_names = ("bytes",)

    def new_state(self) -> object:
        return _LimitDataState()

    async def pipe(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        state = stage.state
        assert isinstance(state, _LimitDataState)
        remaining = max(0, self.attributes["bytes"] - state.bytes_sent)
        data = chunk.data[:remaining]
        if data:
            await emit(chunk.with_data(data))
            state.bytes_sent += len(data)
        if self.attributes["bytes"] - state.bytes_sent <= 0:
            stage.close_connection()


TOXIC_TYPES: Final[Mapping[str, type[Toxic]]] = {
    toxic_type.type_name: toxic_type
    for toxic_type in (
        NoopToxic,
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
    )
}


@dataclass
class ToxicWrapper:
    """A toxic as the API knows it. `sequence` orders the chain: a link runs its stages by it."""

    name: str
    type: str
    stream: str  # As sent by the client ("UpStream" is valid); `direction` is the parsed value.
    direction: Direction
    toxicity: float
    toxic: Toxic
    sequence: int = field(default=0)

    def snapshot(self) -> dict[str, object]:
        # Key order follows Go's ToxicWrapper struct.
        return {
            "attributes": dict(self.toxic.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": codec.go_float(self.toxicity),
        }


_wrapper_fields: Final = ("name", "type", "stream", "toxicity", "attributes")


def parse_new_toxic(value: object, name_taken: Callable[[str], bool]) -> ToxicWrapper:
    """Decode a `POST /proxies/{p}/toxics` body, checking in Toxiproxy's order.

    bad body (400) → invalid stream (400) → invalid type (400) → name taken (409) → bad attributes (400).
    """
    obj = codec.as_object(value, "toxics.ToxicWrapper")
    picked = codec.fields(obj or {}, _wrapper_fields)
    name = codec.as_string(picked.get("name"), "ToxicWrapper", "name") or ""
    type_name = codec.as_string(picked.get("type"), "ToxicWrapper", "type") or ""
    stream = codec.as_string(picked.get("stream"), "ToxicWrapper", "stream")
    stream = "downstream" if stream is None else stream
    toxicity = codec.as_float32(picked.get("toxicity"), "ToxicWrapper", "toxicity")
    toxicity = 1.0 if toxicity is None else toxicity
    # First pass (Go decodes attributes into a no-op toxic here): they must at least be an object or null.
    codec.as_object(picked.get("attributes"), "toxics.NoopToxic", "ToxicWrapper", "attributes")

    try:
        direction = Direction(stream.lower())
    except ValueError:
        raise errors.invalid_stream() from None
    if not name:
        name = f"{type_name}_{stream}"
    toxic_type = TOXIC_TYPES.get(type_name)
    if toxic_type is None:
        raise errors.invalid_toxic_type()
    if name_taken(name):
        raise errors.toxic_exists()
    toxic = toxic_type()
    toxic.attributes = toxic.decode_over(picked.get("attributes"))
    return ToxicWrapper(
        name=name, type=type_name, stream=stream, direction=direction, toxicity=toxicity, toxic=toxic
    )


def parse_toxic_update(value: object, wrapper: ToxicWrapper) -> tuple[dict[str, int], float]:
    """Decode a toxic update body over the toxic's current attributes and toxicity (nothing is changed)."""
    obj = codec.as_object(value, "toxiproxy.ToxicUpdate")
    picked = codec.fields(obj or {}, ("attributes", "toxicity"))
    attributes = wrapper.toxic.decode_over(picked.get("attributes"))
    toxicity = codec.as_float32(picked.get("toxicity"), "ToxicUpdate", "toxicity")
    return attributes, wrapper.toxicity if toxicity is None else toxicity


assert all(name == toxic.type_name for name, toxic in TOXIC_TYPES.items())
