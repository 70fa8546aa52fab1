"""The Kafka listener's bounds and ordering (node/kafka_listener.py), with a stub in place of the broker's
handlers: answers go back in request order even when a later request finishes first; at most
``inflight_max`` requests of one connection are handled at once; a frame that stalls, an idle connection
and a connection past ``connections_max`` are closed; a handler that fails closes only its connection.

Method: a real listener on 127.0.0.1 port 0 and raw sockets; the stub's handlers wait on events the test
sets, so nothing depends on timing except the deadlines under test (set to a fraction of a second)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from raftmq.cluster.kafka_messages import ApiKey, Request, decode_response, encode_request
from raftmq.node.config import PeerAddress
from raftmq.node.kafka_listener import KafkaListener

DEADLINE_S = 5.0


class StubApi:
    """Answers ApiVersions; Metadata requests wait until the test releases their correlation id."""

    def __init__(self) -> None:
        self.release: dict[int, asyncio.Event] = {}
        self.running = 0
        self.running_max = 0
        self.changed = asyncio.Condition()

    async def stop(self) -> None:
        """The listener stops its API when it stops (the real one ends its group join phases)."""

    async def handle(self, request: Request) -> dict[str, Any] | None:
        if request.api_key is ApiKey.API_VERSIONS:
            return {"error_code": 0, "api_keys": [], "throttle_time_ms": 0}
        if request.header.client_id == "boom":
            raise RuntimeError("a bug in a handler")
        self.running += 1
        self.running_max = max(self.running_max, self.running)
        async with self.changed:
            self.changed.notify_all()
        try:
            await self.release.setdefault(request.header.correlation_id, asyncio.Event()).wait()
        finally:
            self.running -= 1
        return {"brokers": [], "cluster_id": None, "controller_id": -1, "topics": []}


@asynccontextmanager
async def listening(api: StubApi, **limits: Any) -> AsyncIterator[KafkaListener]:
    listener = KafkaListener(api, PeerAddress("127.0.0.1", 0), **limits)  # type: ignore[arg-type]
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


async def read_answer(reader: asyncio.StreamReader) -> bytes | None:
    """One response frame (no size), None once the listener closed the connection."""
    async with asyncio.timeout(DEADLINE_S):
        try:
            size = int.from_bytes(await reader.readexactly(4), "big")
            return await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None


def metadata_request(correlation_id: int, client_id: str = "t") -> bytes:
    return encode_request(ApiKey.METADATA, 4, correlation_id, {"topics": None, "allow_auto_topic_creation": False},
                          client_id=client_id)


async def test_answers_come_back_in_request_order_and_in_flight_requests_are_bounded() -> None:
    api = StubApi()
    async with listening(api, inflight_max=2) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"".join(metadata_request(i) for i in (1, 2, 3)))
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S), api.changed:
            await api.changed.wait_for(lambda: api.running >= 2)
        # Another connection's round trip gives the listener time to (wrongly) read the third request.
        other_reader, other = await asyncio.open_connection("127.0.0.1", listener.port)
        other.write(encode_request(ApiKey.API_VERSIONS, 2, 9, {}))
        assert await read_answer(other_reader) is not None
        other.close()
        assert api.running == 2, "the third request is not read while two are unanswered"
        api.release.setdefault(2, asyncio.Event()).set()  # the second finishes first ...
        api.release.setdefault(1, asyncio.Event()).set()
        first, second = await read_answer(reader), await read_answer(reader)
        assert first is not None and second is not None
        assert [decode_response(ApiKey.METADATA, 4, a)[0] for a in (first, second)] == [1, 2]  # ... answered 2nd
        api.release.setdefault(3, asyncio.Event()).set()
        third = await read_answer(reader)
        assert third is not None and decode_response(ApiKey.METADATA, 4, third)[0] == 3
        assert api.running_max == 2
        writer.close()


async def test_a_stalled_frame_an_idle_connection_and_one_too_many_are_closed() -> None:
    api = StubApi()
    async with listening(api, connections_max=2, frame_timeout_s=0.2, idle_timeout_s=0.3) as listener:
        stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", listener.port)
        stalled.write(b"\x00\x00\x00\x20\x00")  # 32 bytes announced, 1 sent
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", listener.port)
        assert await read_answer(stalled_reader) is None
        assert await read_answer(idle_reader) is None
        first_reader, first = await asyncio.open_connection("127.0.0.1", listener.port)
        second_reader, second = await asyncio.open_connection("127.0.0.1", listener.port)
        first.write(encode_request(ApiKey.API_VERSIONS, 2, 1, {}))
        second.write(encode_request(ApiKey.API_VERSIONS, 2, 2, {}))
        assert await read_answer(first_reader) is not None and await read_answer(second_reader) is not None
        extra_reader, extra = await asyncio.open_connection("127.0.0.1", listener.port)
        assert await read_answer(extra_reader) is None, "past connections_max the connection is closed"
        assert listener.stats["connections_refused"] == 1
        for writer in (stalled, idle, first, second, extra):
            writer.close()


async def test_a_failing_handler_closes_its_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    api = StubApi()
    async with listening(api) as listener:
        bad_reader, bad = await asyncio.open_connection("127.0.0.1", listener.port)
        good_reader, good = await asyncio.open_connection("127.0.0.1", listener.port)
        # Two failing requests pipelined: the second fails while nobody awaits it any more.
        bad.write(metadata_request(1, client_id="boom") + metadata_request(2, client_id="boom"))
        assert await read_answer(bad_reader) is None
        good.write(encode_request(ApiKey.API_VERSIONS, 2, 5, {}))
        answer = await read_answer(good_reader)
        assert answer is not None and decode_response(ApiKey.API_VERSIONS, 2, answer)[0] == 5
        bad.close()
        good.close()
    gc.collect()  # an unretrieved task exception is logged when the task is collected
    assert "never retrieved" not in caplog.text
