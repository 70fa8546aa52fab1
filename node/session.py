"""This broker's session with the controller: registration and liveness by heartbeat, the leaders table,
and (for a metadata learner) the metadata state.

Every ``Liveness.heartbeat_s`` the broker tells the controller who it is (id, cluster id, incarnation,
addresses, rack) and which partitions it leads (with their Raft terms). The answer carries its state
(alive / fenced / draining), the controller's metadata index and the leaders table. A learner whose
metadata is behind that index pulls the controller's state. STALE_BROKER_INCARNATION and
CLUSTER_ID_MISMATCH are final: ``on_fatal`` stops the broker, because a second copy of a broker id, or a
broker of another cluster, must not keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from raftmq.cluster.errors import ClusterIdMismatch, NotController, RaftMQError, StaleBrokerIncarnation
from raftmq.node.config import NodeConfig
from raftmq.node.controller import Call, Controller
from raftmq.node.metadata import MetadataGroup
from raftmq.node.tasks import cancel

log = logging.getLogger(__name__)


class BrokerSession:
    def __init__(self, *, config: NodeConfig, incarnation: int, metadata: MetadataGroup, controller: Controller,
                 call: Call | None, leads: Callable[[], list[list[Any]]],
                 on_fatal: Callable[[RaftMQError], None]) -> None:
        self.config = config
        self.incarnation = incarnation
        self.metadata = metadata
        self.controller = controller
        self.call = call
        self.leads = leads
        self.on_fatal = on_fatal
        self.leaders: dict[tuple[str, int], tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def body(self) -> dict[str, Any]:
        config = self.config
        return {"broker_id": config.broker_id, "cluster_id": config.cluster_id, "incarnation": self.incarnation,
                "url": config.advertised_url, "peer": str(config.peer_listen), "rack": config.rack,
                "kafka": str(config.kafka_address) if config.kafka_address is not None else None,
                "leads": self.leads()}

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except (StaleBrokerIncarnation, ClusterIdMismatch) as exc:
                log.error("the controller refused this broker: %s", exc)
                self.on_fatal(exc)
                return
            except RaftMQError as exc:
                log.debug("heartbeat: %s", exc)
            except Exception:  # noqa: BLE001 - the next heartbeat retries; must not kill the loop
                log.exception("heartbeat failed")
            await asyncio.sleep(self.config.liveness.heartbeat_s)  # the heartbeat period

    async def beat(self) -> None:
        timeout_s = max(0.2, self.config.liveness.session_timeout_s / 2)
        if self.controller.active:
            answer = await self.controller.heartbeat(self.body())
        else:
            answer = await self._send(timeout_s)
        self.leaders = {(str(t), int(p)): (int(b), int(term)) for t, p, b, term in answer.get("leaders", ())}
        self.metadata.learned_controller_id = answer.get("controller_id")
        if not self.metadata.voter and int(answer.get("metadata_index", 0)) > self.metadata.status.applied_index:
            await self._pull_metadata(timeout_s)

    def _candidates(self) -> list[str]:
        """The controller we know of first, then every metadata voter (one of them leads, or names who does)."""
        url = self.controller.url_of(self.metadata.controller_id)
        voters = [e.url for e in self.config.brokers if e.broker_id in self.config.voters]
        return ([url] if url is not None else []) + [v for v in voters if v != url]

    async def _send(self, timeout_s: float) -> dict[str, Any]:
        """Heartbeat to the controller; without one known, ask the metadata voters (one names it)."""
        assert self.call is not None
        last: RaftMQError = NotController("no controller known yet")
        for url in self._candidates():
            try:
                answer: dict[str, Any] = await self.call(url, "POST", "/v1/internal/heartbeat", self.body(), timeout_s)
                return answer
            except NotController as exc:
                last = exc
                redirect = exc.details.get("controller_url")
                if isinstance(redirect, str) and redirect != url:
                    answer = await self.call(redirect, "POST", "/v1/internal/heartbeat", self.body(), timeout_s)
                    return answer
            except RaftMQError as exc:
                last = exc
        self.metadata.learned_controller_id = None  # it did not answer: do not point clients at it
        raise last

    async def _pull_metadata(self, timeout_s: float) -> None:
        answer = await self.controller.at_controller("GET", "/v1/internal/metadata", None, timeout_s)
        self.metadata.install_state(int(answer["applied_index"]), answer["state"])


__all__ = ["BrokerSession"]
