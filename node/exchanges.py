"""Exchanges on a broker: admin (create/delete/bind/unbind as metadata commands) and publish.

Admin requests become metadata commands (``cluster/exchanges.py`` applies them on every replica); any
broker can take them (a voter proposes, a learner asks the controller) and answers once its own copy of
the metadata shows the change, so a describe on the same broker right after sees it.

Publish routes on this broker's metadata view, then appends one batch per destination (topic, partition):
through this broker's own service when it leads the partition, else forwarded to the leader's produce
endpoint. At most ``publish_destinations_parallel_max`` destinations are in flight per publish. The ack
semantics and the retry guarantee are ``cluster/publish.py``'s docstring.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import (
    LeaderNotAvailable,
    NotLeader,
    PublishIncomplete,
    RaftMQError,
    RequestTimedOut,
    UnknownExchange,
    Unroutable,
)
from raftmq.cluster.exchanges import Binding, Exchange, validate_exchange_name
from raftmq.cluster.publish import (
    Destination,
    DestinationOutcome,
    DestinationStatus,
    PublishRequest,
    plan_destinations,
    route_publish,
    unfinished,
)
from raftmq.node.metadata import MetadataGroup
from raftmq.node.operations import ProduceRequest, ProduceResult

Propose = Callable[[MetadataOp, dict[str, Any]], Awaitable[Any]]
ProduceHere = Callable[[ProduceRequest], Awaitable[ProduceResult]]
# (url, method, path, body, timeout_s) -> decoded answer (node/forwarding.py ControllerForwarder.call)
Call = Callable[[str, str, str, Any, float], Awaitable[Any]]
WaitFor = Callable[[Callable[[], Any]], Awaitable[Any]]


class Exchanges:
    def __init__(self, *, metadata: MetadataGroup, propose: Propose, produce_here: ProduceHere, call: Call | None,
                 wait_for: WaitFor, rng: random.Random | None = None) -> None:
        self.metadata = metadata
        self.propose = propose
        self.produce_here = produce_here
        self.call = call
        self.wait_for = wait_for
        self.rng = rng or random.Random()

    # --- admin ----------------------------------------------------------------------------------

    def list(self) -> list[Exchange]:
        return sorted(self.metadata.exchanges.values(), key=lambda e: e.name)

    def describe(self, name: str) -> Exchange:
        exchange = self.metadata.exchanges.get(validate_exchange_name(name))
        if exchange is None:
            raise UnknownExchange(f"exchange {name!r} does not exist", exchange=name)
        return exchange

    async def create(self, payload: dict[str, Any]) -> Exchange:
        created: Exchange = await self._commit(MetadataOp.CREATE_EXCHANGE, payload)
        return await self._seen(created.name, lambda e: e is not None)

    async def delete(self, name: str) -> Exchange:
        validate_exchange_name(name)
        deleted: Exchange = await self._commit(MetadataOp.DELETE_EXCHANGE, {"name": name})
        await self.wait_for(lambda: True if name not in self.metadata.exchanges else None)
        return deleted

    async def bind(self, name: str, binding: Binding, *, unbind: bool = False) -> Exchange:
        validate_exchange_name(name)
        op = MetadataOp.UNBIND_EXCHANGE if unbind else MetadataOp.BIND_EXCHANGE
        await self._commit(op, {"exchange": name, "binding": binding.to_wire()})
        return await self._seen(name, lambda e: e is not None and (binding in e.bindings) != unbind)

    async def _commit(self, op: MetadataOp, payload: dict[str, Any]) -> Any:
        result = await self.propose(op, payload)
        if isinstance(result, RaftMQError):
            raise result
        if isinstance(result, Mapping):  # a learner's proposal came back over HTTP
            return Exchange.from_wire(result)
        return result

    async def _seen(self, name: str, done: Callable[[Exchange | None], bool]) -> Exchange:
        found: Exchange = await self.wait_for(
            lambda: self.metadata.exchanges.get(name) if done(self.metadata.exchanges.get(name)) else None)
        return found

    # --- publish --------------------------------------------------------------------------------

    async def publish(self, request: PublishRequest) -> dict[str, Any]:
        routed = route_publish(self.metadata.exchanges, request)
        unroutable = routed.unroutable
        if unroutable and request.mandatory:
            raise Unroutable(f"no binding of {' -> '.join(routed.exchanges)} matched routing key "
                             f"{request.routing_key!r} for {len(unroutable)} of {len(request.records)} record(s); "
                             "nothing was appended", exchange=request.exchange, routing_key=request.routing_key,
                             records=unroutable[:limits.batch_records_max])
        if not routed.topics:
            return {"routed": False, "route": routed.describe(), "destinations": [], "unroutable": unroutable}
        view = self.metadata.view
        # A topic deleted since is skipped: its bindings go with it.
        partitions_of = {t: view[t].partitions for t in routed.topics if t in view}
        planned = plan_destinations(request, routed.topics_of, partitions_of,
                                    self.rng.randrange(limits.partitions_per_topic_max))
        slots = asyncio.Semaphore(limits.publish_destinations_parallel_max)
        deadline = time.monotonic() + request.timeout_ms / 1000

        async def one(destination: Destination) -> DestinationOutcome:
            async with slots:
                return await self._append(destination, request, deadline)

        outcomes = await asyncio.gather(*(one(d) for d in planned))
        wire = [o.to_wire() for o in outcomes]
        if any(o.status is not DestinationStatus.OK for o in outcomes):
            failed = sum(1 for o in outcomes if o.status is DestinationStatus.FAILED)
            unknown = sum(1 for o in outcomes if o.status is DestinationStatus.UNKNOWN)
            raise PublishIncomplete(
                f"{len(outcomes) - failed - unknown} of {len(outcomes)} destinations acknowledged; {failed} failed, "
                f"{unknown} unknown", destinations=wire, retry=unfinished(outcomes))
        return {"routed": True, "route": routed.describe(), "destinations": wire, "unroutable": unroutable}

    async def _append(self, destination: Destination, request: PublishRequest, deadline: float
                      ) -> DestinationOutcome:
        topic, partition = destination.topic, destination.partition
        timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
        produce = ProduceRequest(topic, partition, destination.batch, request.acks, timeout_ms)
        try:
            try:
                result = await self.produce_here(produce)
                return DestinationOutcome(topic, partition, DestinationStatus.OK, result.base_offset)
            except NotLeader as exc:
                url = exc.details.get("leader_url")
                if not isinstance(url, str) or self.call is None:
                    raise
            answer = await self.call(url, "POST", f"/v1/topics/{topic}/partitions/{partition}/records",
                                     {"batch": destination.batch, "acks": request.acks.wire,
                                      "timeout_ms": timeout_ms},
                                     max(0.1, deadline - time.monotonic()))
            return DestinationOutcome(topic, partition, DestinationStatus.OK, answer.get("base_offset"))
        except (LeaderNotAvailable, RequestTimedOut, RaftMQError) as exc:
            return DestinationOutcome.of_error(topic, partition, exc)
