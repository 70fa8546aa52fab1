"""The controller: decisions only the metadata group's leader makes (KRaft's controller).

Today it decides where a new topic's replicas go (``cluster/placement.py``) and commits the topic. A broker
that is not the controller forwards a create-topic request to the controller's client URL (one HTTP call,
marked as forwarded so it is never forwarded twice), so every listener can call ``create_topic`` on any
broker. The controller acts only while it leads the metadata group with a quorum and has applied its own
term's first entry, so its placement decision sees every topic committed before it.

Healing, moves and broker registration (the next issue) will live here too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import LeaderNotAvailable, NotController, RequestTimedOut
from raftmq.cluster.metadata import CreateTopicRequest, Topic
from raftmq.cluster.placement import plan_create_topic
from raftmq.node.metadata import MetadataGroup

log = logging.getLogger(__name__)

# (controller URL, the request, deadline in seconds from now) -> the topic's name, once the controller made it
Forward = Callable[[str, CreateTopicRequest, float], Awaitable[Any]]


class Controller:
    def __init__(self, *, broker_id: int, broker_ids: list[int], metadata: MetadataGroup,
                 url_of: Callable[[int | None], str | None], forward: Forward | None) -> None:
        self.broker_id = broker_id
        self.broker_ids = sorted(broker_ids)
        self.metadata = metadata
        self.url_of = url_of
        self.forward = forward

    @property
    def active(self) -> bool:
        return self.metadata.is_controller

    def not_controller(self) -> NotController:
        controller_id = self.metadata.controller_id
        return NotController(f"broker {self.broker_id} is not the controller", controller_id=controller_id,
                             controller_url=self.url_of(controller_id))

    async def create_topic(self, request: CreateTopicRequest, *, forwarded: bool = False,
                           timeout_s: float = limits.metadata_request_timeout_s) -> Topic:
        """Place and commit a new topic here if this broker is the controller, else at the controller.
        Returns the topic as this broker's metadata has applied it."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.active:
                return await self._create_here(request, deadline)
            if forwarded or self.forward is None:
                raise self.not_controller()
            url = self.url_of(self.metadata.controller_id)
            if url is not None:
                try:
                    await self.forward(url, request, max(0.1, deadline - time.monotonic()))
                except NotController:
                    pass  # it stopped being the controller meanwhile (definite: nothing created): ask again
                else:
                    return await self._wait_applied(request.name, deadline)
            if time.monotonic() + limits.metadata_retry_s >= deadline:
                raise LeaderNotAvailable("no controller is elected right now; nothing was created")
            await asyncio.sleep(limits.metadata_retry_s)  # a controller election is running

    async def _create_here(self, request: CreateTopicRequest, deadline: float) -> Topic:
        payload = plan_create_topic(request, self.broker_ids)
        result = await self.metadata.propose(MetadataOp.CREATE_TOPIC, payload,
                                             timeout_s=max(0.1, deadline - time.monotonic()))
        return result if isinstance(result, Topic) else self.metadata.topic(request.name)

    async def _wait_applied(self, name: str, deadline: float) -> Topic:
        """The controller committed the topic; wait until this broker's copy of the metadata has it."""
        while True:
            event = self.metadata.applied_event()
            topic = self.metadata.view.get(name)
            if topic is not None:
                return topic
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimedOut(f"topic {name!r} was created by the controller but this broker has not "
                                      "learned of it yet", topic=name)
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                pass


__all__ = ["Controller", "Forward"]
