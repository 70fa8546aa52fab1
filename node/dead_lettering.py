"""Dead-lettering on the share group's coordinator: records that die (rejected, over the delivery limit,
expired by the topic's message TTL) are published to a dead-letter exchange and settled in the group. The
rules (where a dead record goes, its headers) are cluster/dead_lettering.py's.

Push sessions (node/push.py) and the pull API (``POST /v1/share-groups/{group}/acquire`` and
``.../acknowledge``) both go through here, so a share group behaves the same whichever way it is consumed:

* after an acquire, ``screen`` reads the acquired records when one of them may die (the topic has a TTL, or
  one is over the delivery limit), dead-letters those that do, settles them in the group, and returns the
  rest for delivery;
* a pulling consumer's ``reject`` is dead-lettered when an exchange is named (``acknowledge``), then accepted.

A dead letter is settled ``accept`` once published, ``release`` when the publish failed (it is delivered
again: never lost), ``reject`` (archived) when no exchange is named.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.batch import Record
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.dead_lettering import (
    DeadLetterTarget,
    DeathReason,
    choose_target,
    dead_letter_item,
    death_of,
    describe_group_dead_letter,
    is_cycle,
)
from raftmq.cluster.errors import RaftMQError
from raftmq.cluster.group_requests import ShareAcknowledge, ShareAcknowledged, ShareAcquire, ShareAcquired
from raftmq.cluster.publish import PublishRequest
from raftmq.cluster.share_groups import AckKind
from raftmq.cluster.wire import Acks
from raftmq.node.exchanges import Propose, WaitFor
from raftmq.node.partition_reader import PartitionReader

log = logging.getLogger(__name__)

Acquired = tuple[int, int, bool]  # offset, delivery count, over the delivery limit


class DeadLetters:
    """``service`` is the BrokerService (metadata, share groups, exchanges); ``propose`` commits a metadata
    command, ``wait_for`` waits until this broker's metadata shows a change (node/exchanges.py's)."""

    def __init__(self, service: Any, reader: PartitionReader, *, propose: Propose, wait_for: WaitFor) -> None:
        self.service = service
        self.reader = reader
        self.propose = propose
        self.wait_for = wait_for

    def target(self, group_id: str, topic: str, subscription: DeadLetterTarget | None = None
               ) -> DeadLetterTarget | None:
        """Where ``group_id``'s dead records of ``topic`` go: the subscription's exchange, else the group's,
        else the topic's (None: nowhere; they are archived)."""
        topic_config = self.service.metadata.view.get(topic)
        return choose_target(subscription, self.service.metadata.group_dead_letters.get(group_id),
                             topic_config.config.dead_letter if topic_config is not None else None)

    async def publish(self, target: DeadLetterTarget | None, topic: str, partition: int, record: Record,
                      reason: DeathReason, count: int) -> AckKind:
        """Publish one dead record to ``target``; the ack that settles it (the module docstring)."""
        if target is None:
            return AckKind.REJECT
        if is_cycle(record, topic, reason):
            log.warning("%s-%d@%d died (%s) in %s before with no rejection since: archived, not dead-lettered to "
                        "%s again (a dead-letter cycle)", topic, partition, record.offset, reason.value, topic,
                        target.exchange)
            return AckKind.REJECT
        item = dead_letter_item(record, reason, count=count, topic=topic, partition=partition,
                                time_ms=int(time.time() * 1000))
        request = PublishRequest(target.exchange, target.routing_key_for(record), (item,), Acks.ALL,
                                 limits.produce_timeout_ms_default)
        try:
            await self.service.exchanges.publish(request)
        except RaftMQError as exc:
            log.warning("%s-%d@%d could not be dead-lettered to %s (%s); released instead", topic, partition,
                        record.offset, target.exchange, exc)
            return AckKind.RELEASE
        return AckKind.ACCEPT

    async def screen(self, acquire: ShareAcquire, acquired: Sequence[Acquired], *,
                     subscription: DeadLetterTarget | None = None, park_over_limit: bool
                     ) -> tuple[list[Acquired], dict[int, Record]]:
        """Dead-letter the acquired records that die instead of being delivered; return the others, and the
        records read on the way (by offset; empty when nothing needed reading). ``park_over_limit``: records
        over the delivery limit die here even without a dead-letter exchange (push consumers archive them;
        a pulling client parks them in its own dead-letter topic otherwise)."""
        topic, partition = acquire.topic, acquire.partition
        ttl_ms = self.service.metadata.topic(topic).config.message_ttl_ms
        target = self.target(acquire.group_id, topic, subscription)
        park = park_over_limit or target is not None
        if ttl_ms <= 0 and not (park and any(over for _offset, _count, over in acquired)):
            return list(acquired), {}
        records = await self.reader.read(topic, partition, [offset for offset, _count, _over in acquired])
        now_ms = int(time.time() * 1000)
        kept: list[Acquired] = []
        settled: list[tuple[int, str]] = []
        for offset, count, over in acquired:
            record = records.get(offset)
            reason = None if record is None else death_of(record, over_limit=over, ttl_ms=ttl_ms, now_ms=now_ms,
                                                          park_over_limit=park)
            if record is None or reason is None:
                kept.append((offset, count, over))  # gone (retention) records stay: the reader skips them
                continue
            # count - 1: this acquire counted a delivery that does not happen.
            kind = await self.publish(target, topic, partition, record, reason, count - 1)
            settled.append((offset, kind))
        if settled:
            await self.service.share_acknowledge(ShareAcknowledge(acquire.group_id, acquire.member_id, topic,
                                                                  partition, tuple(settled)))
        return kept, records

    # --- a share group's dead-letter exchange (cluster metadata) --------------------------------------

    def describe_group(self, group_id: str) -> dict[str, Any]:
        return describe_group_dead_letter(group_id, self.service.metadata.group_dead_letters.get(group_id))

    async def set_group(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Commit ``parse_group_dead_letter``'s payload; answer once this broker's metadata shows it."""
        result = await self.propose(MetadataOp.SET_GROUP_DEAD_LETTER, payload)
        if isinstance(result, RaftMQError):
            raise result
        group_id = payload["group_id"]
        wanted = DeadLetterTarget.from_wire(payload["target"]) if payload["target"] is not None else None
        await self.wait_for(lambda: self.service.metadata.group_dead_letters.get(group_id) == wanted or None)
        return self.describe_group(group_id)

    # --- the pull API -----------------------------------------------------------------------------

    async def acquire(self, request: ShareAcquire) -> ShareAcquired:
        """``POST /v1/share-groups/{group}/acquire``: the group's acquire, screened."""
        acquired = await self.service.share_acquire(request)
        kept, _records = await self.screen(request, acquired.acquired, park_over_limit=False)
        return ShareAcquired(tuple(kept), acquired.start_offset)

    async def acknowledge(self, request: ShareAcknowledge) -> ShareAcknowledged:
        """``POST /v1/share-groups/{group}/acknowledge``: rejects are dead-lettered first when the group or
        topic names a dead-letter exchange. Only records the member holds are published (the others are
        refused by the acknowledgement as usual); at least once all the same: a lock that expires between this
        check and the acknowledgement's commit leaves the record published and refused."""
        target = self.target(request.group_id, request.topic)
        if target is None or not any(kind == AckKind.REJECT for _offset, kind in request.acks):
            return await self.service.share_acknowledge(request)
        held = await self.service.share_locked(request)
        rejected = [offset for offset, kind in request.acks if kind == AckKind.REJECT and offset in held]
        records = await self.reader.read(request.topic, request.partition, rejected) if rejected else {}
        acks = []
        for offset, kind in request.acks:
            record = records.get(offset)
            if kind == AckKind.REJECT and record is not None:
                kind = await self.publish(target, request.topic, request.partition, record, DeathReason.REJECTED,
                                          held[offset])
            acks.append((offset, str(kind)))
        return await self.service.share_acknowledge(ShareAcknowledge(request.group_id, request.member_id,
                                                                     request.topic, request.partition, tuple(acks)))
