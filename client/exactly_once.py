"""Effectively-once consume-transform-produce inside raftmq, without transactions.

raftmq has no transaction coordinator, so it cannot commit output records and input offsets atomically across
partitions (Kafka's exactly-once needs one: markers, a last stable offset and read_committed readers). What
this helper gives instead, and exactly what it promises:

    processor = ExactlyOnceProcessor(urls, "enrich", topics=["orders"], output_topic="orders.enriched",
                                     transform=lambda record: [(record.key, enrich(record.value), [])])
    await processor.run(stop)

**Guarantee.** For every input record, its outputs (the list ``transform`` returns) appear in
``output_topic`` exactly once each, across consumer crashes and restarts and group rebalances, provided that
(1) ``transform`` is deterministic (a record re-processed after a crash yields the same outputs: only the
missing ones are written), (2) only this processor writes ``output_topic``, and (3) no member of the group is
*paused* for longer than its session timeout while a batch of its writes is already being replicated (see
"Fencing" for the exact window). The input is read at-least-once; what makes the output exactly-once is
that the output log itself is the durable processed-id store:

* every output carries the header ``eos.source`` = ``<topic>/<partition>/<offset>/<index>/<count>``, and all
  outputs of input partition ``P`` go to output partition ``P mod (output partitions)``, written with
  acks=all by an idempotent producer (a retried send is stored once);
* the input offset is committed (manual commits, at-least-once) with metadata ``{"out": N}``: the output
  partition's end offset once every output of the inputs below that offset was acknowledged. Outputs of later
  inputs are written after those, so they are at or above ``N``;
* a member that gets partition ``P`` (a restart, a rebalance) reads the output partition from ``N`` (from its
  log start when nothing was committed yet) to its end, notes which ``<offset>/<index>`` of ``P`` are already
  there, and then writes for each input only the outputs that are missing: an input whose outputs are all
  present is skipped.

**Fencing.** The producer of input partition ``P`` is named ``eos/<group>/<topic>/<P>`` (a named idempotent
producer): when a new owner starts it, the cluster fences the previous owner's producer (PRODUCER_FENCED),
so a zombie cannot write after the new owner has scanned. The remaining window: a zombie batch that passed
the leader's producer check just before the fence and commits after the new owner read the output end can
be written twice; the new owner waits ``fence_settle_ms`` (default: one produce request timeout) after
fencing before it scans, which narrows that window to entries an old leader appended before the fence and
that commit even later (after a leader change): it does not close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from raftmq.client.consumer import Consumer
from raftmq.client.group_consumer import GroupConsumer
from raftmq.client.producer import Producer
from raftmq.client.types import ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import RaftMQError, UnexpectedResponse

__all__ = ["SOURCE_HEADER", "ExactlyOnceProcessor", "Output"]

log = logging.getLogger("raftmq.client.exactly_once")

SOURCE_HEADER = "eos.source"
Output = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]  # key, value, headers
Transform = Callable[[ConsumerRecord], Sequence[Output] | Awaitable[Sequence[Output]]]
# Records read per output-partition scan request, bounded by the consumer's fetch size.
_SCAN_RECORDS_MAX = 1_000_000


class _Lane:
    """One owned input partition: its fenced producer, its output partition and what is already written."""

    def __init__(self, source: TopicPartition, output: TopicPartition, producer: Producer) -> None:
        self.source, self.output, self.producer = source, output, producer
        # input offset -> {output index: output offset} already in the output log (found by the scan)
        self.written: dict[int, dict[int, int]] = {}
        self.done_through: int | None = None  # the next input offset: every input below it is complete
        self.out_end = 0  # the output end once every output of the inputs below done_through was acked

    def commit_point(self) -> tuple[int, int] | None:
        """(input offset, output offset) to commit: every output of an input at or above the first is at or
        above the second (outputs found by the scan for inputs not reached yet included)."""
        if self.done_through is None:
            return None
        pending = [min(outputs.values()) for offset, outputs in self.written.items() if offset >= self.done_through]
        return self.done_through, min([self.out_end, *pending])


class ExactlyOnceProcessor:
    """Consume ``topics`` as group ``group_id``, write ``transform(record)`` to ``output_topic`` effectively
    once (see the module docstring for the exact guarantee)."""

    def __init__(self, bootstrap_urls: Iterable[str], group_id: str, *, topics: Iterable[str], output_topic: str,
                 transform: Transform, commit_interval_ms: int = limits.client_auto_commit_interval_ms_default,
                 fence_settle_ms: int | None = None, **group_options: Any) -> None:
        self.urls = list(bootstrap_urls)
        self.group_id, self.output_topic, self.transform = group_id, output_topic, transform
        self.commit_interval_s = commit_interval_ms / 1000
        self.group = GroupConsumer(self.urls, group_id, topics=topics, auto_commit=False,
                                   on_assigned=self._assigned, on_revoked=self._revoked, on_lost=self._lost,
                                   **group_options)
        self.fence_settle_s = (self.group.consumer.request_timeout_s if fence_settle_ms is None
                               else fence_settle_ms / 1000)
        self._lanes: dict[TopicPartition, _Lane] = {}
        self._output_partitions = 0
        self._last_commit = time.monotonic()
        self.skipped = 0  # inputs whose outputs were all found in the output log (a crash's re-delivery)

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, then commit and leave. An error stops it (nothing is committed past
        the record it happened on)."""
        scanner = Consumer(self.urls, request_timeout_ms=int(self.group.consumer.request_timeout_s * 1000))
        async with scanner:
            self._scanner = scanner
            self._output_partitions = await self._partition_count(scanner)
            await self.group.start()
            try:
                while not stop.is_set():
                    # Commits use each lane's completed inputs, not the consumer's position: a record that
                    # failed half-way is never committed past.
                    for record in await self.group.poll(timeout_ms=200):
                        await self._process(record)
                    if time.monotonic() - self._last_commit >= self.commit_interval_s:
                        await self._commit(list(self._lanes))
            finally:
                with contextlib.suppress(RaftMQError):  # e.g. the partitions are not ours any more
                    await self._commit(list(self._lanes))
                await self.group.stop(commit=False)
                for lane in self._lanes.values():
                    await lane.producer.stop()
                self._lanes.clear()

    async def _partition_count(self, scanner: Consumer) -> int:
        await scanner.metadata_fetcher.refresh(timeout_s=scanner.request_timeout_s)
        count = scanner.cluster.partition_count(self.output_topic)
        if not count:
            raise UnexpectedResponse(f"output topic {self.output_topic} has no partitions")
        return count

    # --- ownership ---------------------------------------------------------------------------------------

    async def _assigned(self, partitions: list[TopicPartition]) -> None:
        committed = await self._committed_metadata(partitions)
        lanes = []
        for tp in partitions:
            producer = Producer(self.urls, acks="all", producer_name=f"eos/{self.group_id}/{tp.topic}/{tp.partition}")
            await producer.start()  # fences the previous owner's producer of this partition
            lanes.append(_Lane(tp, TopicPartition(self.output_topic, tp.partition % self._output_partitions),
                               producer))
        await asyncio.sleep(self.fence_settle_s)  # let a zombie's last accepted batches land before the scans
        for lane in lanes:
            offset, out_from = committed.get(lane.source, (0, -1))
            await self._scan(lane, offset, out_from)
            self._lanes[lane.source] = lane

    async def _revoked(self, partitions: list[TopicPartition]) -> None:
        await self._commit(partitions)
        for tp in partitions:
            lane = self._lanes.pop(tp, None)
            if lane is not None:
                await lane.producer.stop()

    async def _lost(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # someone else owns them: no commit, and our producer is (or will be) fenced
            lane = self._lanes.pop(tp, None)
            if lane is not None:
                await lane.producer.stop()

    async def _committed_metadata(self, partitions: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        found = {}
        for tp, (offset, metadata) in (await self.group.committed_with_metadata(partitions)).items():
            try:
                found[tp] = (offset, int(json.loads(metadata or "{}")["out"]))
            except (KeyError, TypeError, ValueError):
                found[tp] = (offset, -1)  # not committed by this helper: scan the output from its start
        return found

    async def _scan(self, lane: _Lane, committed: int, out_from: int) -> None:
        """Note which outputs of ``lane.source`` at or above ``committed`` are already in the output log,
        reading it from ``out_from`` (-1: from its start)."""
        log_start, log_end = await self._scanner.watermarks(lane.output.topic, lane.output.partition)
        offset = max(log_start, out_from)
        prefix = f"{lane.source.topic}/{lane.source.partition}/"
        scanned = 0
        while offset < log_end and scanned < _SCAN_RECORDS_MAX:
            records = await self._scanner.read_records(lane.output.topic, lane.output.partition, offset)
            if not records:
                break
            for record in records:
                source = dict(record.headers).get(SOURCE_HEADER)
                if source is not None and source.decode().startswith(prefix):
                    source_offset, index, _count = (int(x) for x in source.decode()[len(prefix):].split("/"))
                    if source_offset >= committed:
                        lane.written.setdefault(source_offset, {})[index] = record.offset
            scanned += len(records)
            offset = records[-1].offset + 1
        lane.out_end = log_end
        lane.done_through = committed
        if lane.written:
            log.info("%s: %d inputs at or above %d already have outputs in %s", lane.source, len(lane.written),
                     committed, lane.output)

    # --- processing ----------------------------------------------------------------------------------------

    async def _process(self, record: ConsumerRecord) -> None:
        lane = self._lanes.get(TopicPartition(record.topic, record.partition))
        if lane is None:
            raise RaftMQError(f"{record.topic}/{record.partition} is not owned any more")
        present = lane.written.get(record.offset, {})
        result = self.transform(record)
        outputs = await result if inspect.isawaitable(result) else result
        if present and len(present) >= len(outputs):
            self.skipped += 1
        else:
            await self._write(lane, record, outputs, present)
        lane.written.pop(record.offset, None)
        lane.done_through = record.offset + 1

    async def _write(self, lane: _Lane, record: ConsumerRecord, outputs: Sequence[Output],
                     present: dict[int, int]) -> None:
        futures = []
        for index, (key, value, headers) in enumerate(outputs):
            if index in present:
                continue
            source = f"{record.topic}/{record.partition}/{record.offset}/{index}/{len(outputs)}".encode()
            futures.append(await lane.producer.send(lane.output.topic, value, key=key, partition=lane.output.partition,
                                                    headers=[*headers, (SOURCE_HEADER, source)]))
        for future in futures:
            report = await future
            if not report.ok or report.offset is None:
                raise report.error or RaftMQError(f"output of {record.topic}/{record.partition}@{record.offset} "
                                                  f"ended {report.status}")
            lane.out_end = max(lane.out_end, report.offset + 1)

    async def _commit(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            lane = self._lanes.get(tp)
            point = lane.commit_point() if lane is not None else None
            if point is not None:
                await self.group.commit({tp: point[0]}, metadata=json.dumps({"out": point[1]}))
        self._last_commit = time.monotonic()
