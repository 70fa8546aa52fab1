"""A scripted stand-in for the controller's HTTP API (docs/api.md "Health and metadata", "Topics" PATCH,
"Brokers"), for client and CLI tests written before the server side exists.

Method: one aiohttp app served on N loopback ports, one per fake broker (the port says which broker
answers), on its own event loop in a thread, so both async tests and click's CliRunner (which runs
``asyncio.run`` in the test's thread) can use it. The state is plain dicts shaped as docs/api.md says;
``on_metadata`` hooks let a test advance a drain or a move exactly once per poll, so flows progress by
requests, never by time. ``fail()`` queues error answers.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import web

from tests.inprocess import HOST

# A thread that does not start or stop within this long fails the test instead of hanging it.
_THREAD_S = 10.0


@dataclass
class Call:
    broker_id: int
    method: str
    path: str
    body: Any


@dataclass
class QueuedError:
    method: str
    path: str
    code: str
    status: int
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    broker_id: int | None = None  # None: whichever broker is asked


def partition(index: int, replicas: list[int], *, leader: int | None = None, target: list[int] | None = None,
              isr: list[int] | None = None) -> dict[str, Any]:
    return {"partition": index, "leader_id": replicas[0] if leader is None else leader, "leader_epoch": 3,
            "replicas": replicas, "target": target, "partition_epoch": 1, "voters": replicas,
            "isr": replicas if isr is None else isr, "commit_index": 10, "applied_index": 10,
            "log_start_offset": 0, "high_watermark": 7, "role": "leader"}


class FakeCluster:
    """Brokers 1..n on loopback ports; ``controller_id`` answers with move progress and heartbeat ages."""

    def __init__(self, brokers: int = 4, *, controller_id: int = 1) -> None:
        self._sockets = [socket.create_server((HOST, 0)) for _ in range(brokers)]
        self.urls = [f"http://{HOST}:{s.getsockname()[1]}" for s in self._sockets]
        self.controller_id = controller_id
        self.states = {i + 1: "alive" for i in range(brokers)}
        self.topics: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self.errors: list[QueuedError] = []
        self.on_metadata: Callable[[FakeCluster], None] | None = None  # run before each controller answer
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-controller", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> FakeCluster:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(_THREAD_S)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(_THREAD_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_THREAD_S)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        for sock in self._sockets:
            await web.SockSite(self._runner, sock).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- scripting -----------------------------------------------------------------------------------------

    def fail(self, method: str, path: str, code: str, status: int, message: str = "", *,
             broker_id: int | None = None, **details: Any) -> None:
        self.errors.append(QueuedError(method, path, code, status, message or code, details, broker_id))

    def calls_to(self, method: str, suffix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(suffix)]

    def hosted(self, broker_id: int) -> list[dict[str, Any]]:
        return [p for t in self.topics for p in t["partitions"]
                if broker_id in p["replicas"] or broker_id in (p["target"] or [])]

    def step_drain(self, broker_id: int, spare: int) -> None:
        """One step of a drain: finish the running move off ``broker_id``, else start the next one."""
        for move in list(self.moves):
            if move["removing"] == broker_id:
                part = self._partition(move["topic"], move["partition"])
                part["replicas"], part["target"] = move["target"], None
                self.moves.remove(move)
                return
        for topic in self.topics:
            for part in topic["partitions"]:
                if broker_id in part["replicas"]:
                    target = [spare if b == broker_id else b for b in part["replicas"]]
                    part["target"] = target
                    self.moves.append({"topic": topic["name"], "partition": part["partition"],
                                       "replicas": part["replicas"], "target": target, "reason": "drain",
                                       "adding": spare, "removing": broker_id, "running_s": 1.5,
                                       "progress": {"broker": spare, "match_index": 3, "leader_last_index": 10}})
                    return

    def _partition(self, topic: str, index: int) -> dict[str, Any]:
        return next(p for t in self.topics if t["name"] == topic for p in t["partitions"] if p["partition"] == index)

    # --- answers -----------------------------------------------------------------------------------------

    def broker_entry(self, broker_id: int, *, from_controller: bool) -> dict[str, Any]:
        hosted = self.hosted(broker_id)
        return {"id": broker_id, "url": self.urls[broker_id - 1], "peer": f"{HOST}:{9200 + broker_id}",
                "rack": f"rack-{(broker_id - 1) % 2}", "state": self.states[broker_id], "incarnation": 2,
                "metadata_voter": broker_id <= 3, "replicas": len(hosted),
                "leaders": sum(1 for p in hosted if p["leader_id"] == broker_id),
                "heartbeat_age_s": 0.25 if from_controller else None}

    def metadata(self, broker_id: int) -> dict[str, Any]:
        controller = broker_id == self.controller_id
        moves = copy.deepcopy(self.moves)
        if not controller:  # docs/api.md: progress and running_s are only filled in by the controller
            for move in moves:
                move["progress"], move["running_s"] = None, None
        return {"cluster_id": "fake", "broker_id": broker_id, "controller_id": self.controller_id,
                "controller_url": self.urls[self.controller_id - 1],
                "metadata": {"term": 2, "commit_index": 40, "applied_index": 40, "ready": True,
                             "voter": broker_id <= 3},
                "brokers": [self.broker_entry(b, from_controller=controller) for b in self.states],
                "topics": copy.deepcopy(self.topics), "moves": moves}

    def _topic_answer(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        topic = next(t for t in self.topics if t["name"] == name)
        for index in range(len(topic["partitions"]), body.get("partitions") or 0):
            topic["partitions"].append(partition(index, [1, 2, 3]))
        if body.get("replication_factor") is not None:
            topic["replication_factor"] = body["replication_factor"]
        return {"topic": copy.deepcopy(topic)}

    def _route(self, broker_id: int, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if path == "/v1/health":
            return 200, {"status": "ok", "broker_id": broker_id, "ready": True}
        if path == "/v1/metadata":
            if broker_id == self.controller_id and self.on_metadata is not None:
                self.on_metadata(self)
            return 200, self.metadata(broker_id)
        if method == "PATCH" and parts[:2] == ["v1", "topics"] and len(parts) == 3:
            return 200, self._topic_answer(parts[2], body or {})
        if parts[:2] == ["v1", "brokers"] and len(parts) == 4 and parts[3] == "drain":
            target = int(parts[2])
            if target not in self.states:
                return 404, {"error": {"code": "UNKNOWN_BROKER", "message": f"no broker {target}", "details": {}}}
            self.states[target] = "draining" if method == "POST" else "alive"
            return 200, {"broker": self.broker_entry(target, from_controller=True)}
        return 404, {"error": {"code": "ROUTE_NOT_FOUND", "message": path, "details": {}}}

    async def _handle(self, request: web.Request) -> web.Response:
        broker_id = next(i + 1 for i, s in enumerate(self._sockets)
                         if s.getsockname()[1] == request.transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]
        raw = await request.read()
        body = msgpack.unpackb(raw) if raw else None
        self.calls.append(Call(broker_id, request.method, request.path, body))
        for queued in self.errors:
            if (queued.method, queued.path) == (request.method, request.path) and queued.broker_id in (None, broker_id):
                self.errors.remove(queued)
                return web.json_response({"error": {"code": queued.code, "message": queued.message,
                                                    "details": queued.details}}, status=queued.status)
        status, answer = self._route(broker_id, request.method, request.path, body)
        return web.json_response(answer, status=status)
