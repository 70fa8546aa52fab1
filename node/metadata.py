"""This broker's replica of the metadata group: the applied view of topics and producer ids, and proposals.

The metadata voters (``NodeConfig.voters``, three by default) are the replicas of the metadata group
(``METADATA_GROUP_ID``); its leader is the controller (``node/controller.py``). Every other broker is a
learner: it does not open the group, and installs the controller's state whenever its heartbeat says the
metadata moved on (``install_state``, fed by ``node/session.py``). Readers on the event loop use ``view``,
``brokers`` and ``check_producer``, never the live state machine; ``propose`` (voters only) puts a command
into the group and waits (bounded) for its applied result.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgpack
from raftmq.cluster import commands, limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.dead_lettering import DeadLetterTarget
from raftmq.cluster.errors import LeaderNotAvailable, RaftMQError, RequestTimedOut, UnknownTopicOrPartition
from raftmq.cluster.exchanges import Exchange
from raftmq.cluster.metadata import BrokerRecord, ProducerCheck, Topic
from raftmq.node.groups import GroupSpec, GroupStatus, ReplicationEngine, ReplicationGroup
from raftmq.node.metadata_sm import METADATA_GROUP_ID, MetadataStateMachine

log = logging.getLogger(__name__)


class ProposalIds:
    """Proposal ids unique per broker (``cluster/commands.py``): the broker id in the top 16 bits."""

    def __init__(self, broker_id: int) -> None:
        self._broker_id = broker_id
        self._counter = itertools.count(1)

    def next(self) -> int:
        return (self._broker_id << 48) | (next(self._counter) & ((1 << 48) - 1))


class MetadataGroup:
    def __init__(self, *, broker_id: int, replica_ids: list[int], directory: Path, engine: ReplicationEngine,
                 proposals: ProposalIds) -> None:
        self.broker_id = broker_id
        self.replica_ids = sorted(replica_ids)
        self.directory = directory
        self.engine = engine
        self.proposals = proposals
        self.state_machine = MetadataStateMachine()
        self.group: ReplicationGroup | None = None
        self.learned_controller_id: int | None = None  # a learner's controller, from its heartbeats
        self._learned = False

    @property
    def voter(self) -> bool:
        return self.broker_id in self.replica_ids

    async def open(self, on_topics_changed: Callable[[], None]) -> None:
        self.state_machine.on_topics_changed = on_topics_changed
        if not self.voter:
            return  # a learner: session.py installs the controller's state
        spec = GroupSpec(METADATA_GROUP_ID, self.directory, tuple(self.replica_ids))
        self.group = await self.engine.open_group(spec, self.state_machine)

    def install_state(self, applied_index: int, state: bytes) -> None:
        """Learner (event loop): take the controller's metadata state at ``applied_index``."""
        if self.voter or applied_index <= self.state_machine.applied_index and self._learned:
            return
        self.state_machine.restore(msgpack.packb({"applied_index": applied_index, "state": state},
                                                 use_bin_type=True))
        self._learned = True
        notify = self.state_machine.on_progress()
        if notify is not None:
            notify()

    def export_state(self) -> tuple[int, bytes]:
        """Voter (event loop): the applied state for a learner, at least as new as the index returned (the
        replication thread may apply more meanwhile; a learner re-pulls whenever its index is behind). A
        dict that changes while it is encoded raises RuntimeError: encode again."""
        for _ in range(limits.metadata_export_attempts_max):
            index = self.state_machine.applied_index
            try:
                return index, self.state_machine.state.to_bytes()
            except RuntimeError:
                continue
        raise LeaderNotAvailable("the metadata kept changing while it was copied; retry")

    # --- reads (event loop) ---------------------------------------------------------------------

    @property
    def status(self) -> GroupStatus:
        if self.group is not None:
            return self.group.status
        return GroupStatus(METADATA_GROUP_ID, applied_index=self.state_machine.applied_index,
                           commit_index=self.state_machine.applied_index, ready=self._learned,
                           leader_id=self.learned_controller_id)

    @property
    def ready(self) -> bool:
        """Replay of the metadata journal is over (a learner: it installed the controller's state once)."""
        return self.status.ready

    @property
    def controller_id(self) -> int | None:
        status = self.status
        return status.leader_id if not (status.is_leader and not status.quorum) else None

    @property
    def brokers(self) -> Mapping[int, BrokerRecord]:
        return self.state_machine.brokers

    @property
    def is_controller(self) -> bool:
        status = self.status
        return status.is_leader and status.quorum and status.caught_up

    @property
    def view(self) -> Mapping[str, Topic]:
        return self.state_machine.view

    @property
    def exchanges(self) -> Mapping[str, Exchange]:
        return self.state_machine.exchanges

    @property
    def group_dead_letters(self) -> Mapping[str, DeadLetterTarget]:
        """Share groups' dead-letter exchanges (cluster/dead_lettering.py), by group id."""
        return self.state_machine.group_dead_letters

    def topic(self, name: str) -> Topic:
        topic = self.state_machine.view.get(name)
        if topic is None:
            raise UnknownTopicOrPartition(f"topic {name!r} does not exist", topic=name)
        return topic

    def check_producer(self, producer_id: int) -> ProducerCheck:
        return self.state_machine.state.check_producer(producer_id)

    def applied_event(self) -> asyncio.Event:
        return self.state_machine.applied_event()

    # --- proposals ------------------------------------------------------------------------------

    async def propose(self, op: MetadataOp, payload: dict[str, Any],
                      timeout_s: float = limits.metadata_request_timeout_s) -> Any:
        """Commit ``op`` and return its applied result (a RaftMQError result is raised). Retries while the
        group has no leader (definite: nothing appended) until the deadline; REQUEST_TIMED_OUT after it."""
        group = self.group
        if group is None:
            raise LeaderNotAvailable("the metadata group is not open yet")
        command = commands.encode(op, self.proposals.next(), int(time.time() * 1000),
                                  msgpack.packb(payload, use_bin_type=True))
        deadline = time.monotonic() + timeout_s
        while True:
            future = group.submit(command)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    result = await asyncio.shield(future)
            except TimeoutError:
                raise RequestTimedOut(f"the metadata group did not commit within {timeout_s:.0f} s; the change may "
                                      "or may not have happened") from None
            except LeaderNotAvailable:
                if time.monotonic() + limits.metadata_retry_s >= deadline:
                    raise
                await asyncio.sleep(limits.metadata_retry_s)  # an election is running: retry within the deadline
                continue
            if isinstance(result, RaftMQError):
                raise result
            return result


__all__ = ["METADATA_GROUP_ID", "MetadataGroup", "ProposalIds"]
