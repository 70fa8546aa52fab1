"""Carrying out replica moves: the controller's driver and the partition leader's step.

The controller (``Reassigner.drive``, each controller tick) asks the leader of every moving partition for
one step (``POST /v1/internal/partitions/step``, or a local call when it leads the partition itself). The
leader decides the step from its own view of the group (``cluster/reassignment.py``: voters, who has caught
up, a change still committing) and the brokers the controller sees alive, and runs it: one membership
change through ``ReplicationGroup.change_membership``, or a leadership hand-over. It answers with the
group's voters; once they are committed, the controller records them in the metadata
(SET_PARTITION_REPLICAS), and ends the move (END_REASSIGNMENT) when the leader says the voters are the
target. Brokers open a replica when they appear in a target and delete it when they are in neither the
replicas nor the target (``node/replicas.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import LeaderNotAvailable, NotLeader, RaftMQError, RequestTimedOut
from raftmq.cluster.metadata import BrokerState, Topic
from raftmq.cluster.placement import BrokerSlot, replacement
from raftmq.cluster.reassignment import GroupView, StepKind, next_step
from raftmq.node.controller import Controller
from raftmq.node.groups import MembershipChange
from raftmq.node.replicas import PartitionHandle

log = logging.getLogger(__name__)

StepCall = Callable[[int, dict[str, Any]], Awaitable[dict[str, Any]]]  # (leader broker, body) -> answer


async def perform_step(handle: PartitionHandle, broker_id: int, target: tuple[int, ...],
                       alive: frozenset[int]) -> dict[str, Any]:
    """On the partition's leader: decide and run one membership step towards ``target``."""
    status = handle.group.status
    if not status.is_leader or not status.quorum or not status.caught_up:
        raise LeaderNotAvailable(f"broker {broker_id} cannot change {handle.name} now: not its leader with a quorum",
                                 leader_id=status.leader_id)
    caught_up = frozenset(b for b, m in status.match_index.items() if m >= status.commit_index) | {broker_id}
    voters = status.voters or tuple(handle.topic.replicas[handle.partition])
    # A replica that answers the leader is alive whatever the controller heard (its heartbeats may be the
    # ones that are lost): never remove it as dead.
    alive = alive | {broker_id} | set(status.in_sync)
    view = GroupView(voters, target, broker_id, caught_up, alive, status.membership_pending)
    step = next_step(view)
    if step.kind in (StepKind.ADD, StepKind.REMOVE):
        adding = step.kind is StepKind.ADD
        change = MembershipChange(add=step.broker) if adding else MembershipChange(remove=step.broker)
        log.info("%s: %s voter %d (%s)", handle.name, step.kind.value, step.broker, step.why)
        try:
            async with asyncio.timeout(limits.move_step_timeout_s):
                await handle.group.change_membership(change)
        except TimeoutError:
            raise RequestTimedOut(f"{handle.name}: the membership change did not commit within "
                                  f"{limits.move_step_timeout_s:.0f} s; the controller asks again") from None
    elif step.kind is StepKind.TRANSFER and step.broker is not None:
        log.info("%s: handing leadership to %d (%s)", handle.name, step.broker, step.why)
        handle.group.transfer_leadership(step.broker)
    status = handle.group.status
    return {"voters": list(status.voters or voters), "pending": status.membership_pending,
            "done": step.kind is StepKind.DONE, "step": step.kind.value, "broker": step.broker, "why": step.why,
            "progress": _progress(status.match_index, status.last_index, target, voters)}


def _progress(match_index: Mapping[int, int], last_index: int, target: tuple[int, ...],
              voters: tuple[int, ...]) -> dict[str, int] | None:
    newcomers = [b for b in target if b not in voters] or [b for b in target if b in match_index]
    lagging = min(newcomers, key=lambda b: match_index.get(b, 0), default=None)
    if lagging is None:
        return None
    return {"broker": lagging, "match_index": match_index.get(lagging, 0), "leader_last_index": last_index}


class Reassigner:
    """The controller's side: one step per moving partition per tick, the results recorded in metadata."""

    def __init__(self, controller: Controller, step_call: StepCall) -> None:
        self.controller = controller
        self.step_call = step_call
        self.progress: dict[tuple[str, int], dict[str, Any]] = {}
        self.started: dict[tuple[str, int], float] = {}

    async def drive(self) -> None:
        moving = [(topic, p) for topic in self.controller.metadata.view.values()
                  for p, target in enumerate(topic.targets) if target is not None]
        keys = {(t.name, p) for t, p in moving}
        for key in [k for k in self.started if k not in keys]:
            self.started.pop(key, None)
            self.progress.pop(key, None)
        await asyncio.gather(*(self._drive_one(topic, p) for topic, p in moving))

    async def _drive_one(self, topic: Topic, partition: int) -> None:
        key = (topic.name, partition)
        self.started.setdefault(key, time.monotonic())
        target = topic.targets[partition]
        assert target is not None
        if await self._retarget_if_gone(topic, partition, target):
            return
        leader = self.controller.leaders.get(key)
        if leader is None:
            return  # no leader reported yet: the next tick
        body = {"topic": topic.name, "partition": partition, "topic_id": topic.topic_id, "target": list(target),
                "alive": sorted(self.controller.alive_ids())}
        try:
            answer = await self.step_call(leader[0], body)
        except (NotLeader, LeaderNotAvailable) as exc:
            log.debug("move of %s-%d: %s", topic.name, partition, exc)
            return
        except RaftMQError as exc:
            log.info("move of %s-%d: step failed: %s", topic.name, partition, exc)
            return
        self.progress[key] = {**(answer.get("progress") or {}), "step": answer.get("step"), "why": answer.get("why")}
        await self._record(topic, partition, answer)

    async def _record(self, topic: Topic, partition: int, answer: Mapping[str, Any]) -> None:
        metadata = self.controller.metadata
        voters = [int(b) for b in answer["voters"]]
        current = topic.replicas[partition]
        if not answer.get("pending") and set(voters) != set(current):
            ordered = [b for b in current if b in voters] + [b for b in voters if b not in current]
            await metadata.propose(MetadataOp.SET_PARTITION_REPLICAS, {
                "name": topic.name, "topic_id": topic.topic_id, "partition": partition, "replicas": ordered})
        if answer.get("done"):
            log.info("move of %s-%d done: replicas %s", topic.name, partition, voters)
            await metadata.propose(MetadataOp.END_REASSIGNMENT, {
                "name": topic.name, "topic_id": topic.topic_id, "partition": partition})

    async def _retarget_if_gone(self, topic: Topic, partition: int, target: tuple[int, ...]) -> bool:
        """A target member that stopped heartbeating is replaced (a move must not wait for a dead broker)."""
        brokers = self.controller.metadata.brokers
        gone = [b for b in target if b not in brokers or brokers[b].state is not BrokerState.ALIVE]
        if not gone:
            return False
        live = [BrokerSlot(b.broker_id, b.rack) for b in brokers.values() if b.state is BrokerState.ALIVE]
        new_target = list(target)
        for broker in gone:
            new = replacement(new_target, live, self.controller.load(), leaving=[broker])
            if new is None:
                new_target.remove(broker)
            else:
                new_target[new_target.index(broker)] = new
        log.info("move of %s-%d: target %s has left; now heading for %s", topic.name, partition, gone, new_target)
        await self.controller.metadata.propose(MetadataOp.BEGIN_REASSIGNMENT, {
            "name": topic.name, "topic_id": topic.topic_id, "partition": partition, "target": new_target,
            "reason": topic.move_reasons[partition] or "heal"})
        return True

    def describe(self) -> dict[tuple[str, int], dict[str, Any]]:
        now = time.monotonic()
        return {key: {**self.progress.get(key, {}), "running_s": round(now - started, 2)}
                for key, started in self.started.items()}


__all__ = ["Reassigner", "StepCall", "perform_step"]
