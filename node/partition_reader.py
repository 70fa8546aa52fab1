"""Reading a data partition's watermarks and records from any broker: locally when this broker leads the
partition, else from its leader over the broker-to-broker client (``node/forwarding.py``). Push sessions and
dead-lettering read acquired records through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.batch import Record
from raftmq.cluster.errors import NotLeader
from raftmq.node.operations import FetchRequest, OffsetRequest

Call = Callable[[str, str, str, Any, float], Awaitable[Any]]


class PartitionReader:
    """``service`` is the BrokerService (fetch, list_offset); ``call`` reaches other brokers."""

    def __init__(self, service: Any, call: Call | None) -> None:
        self.service = service
        self.call = call

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(log start offset, high watermark)."""
        try:
            result = await self.service.list_offset(OffsetRequest(topic, partition, "latest"))
            return result.log_start_offset, result.high_watermark
        except NotLeader as exc:
            answer = await self._at_leader(exc, f"/v1/topics/{quote(topic, safe='')}/partitions/{partition}/offsets"
                                                "?at=latest")
            return int(answer["log_start_offset"]), int(answer["high_watermark"])

    async def read(self, topic: str, partition: int, offsets: Iterable[int]) -> dict[int, Record]:
        """The records at ``offsets`` that still exist (retention may have removed some), by offset. At most
        ``push_prefetch_max`` fetches: each returns at least the first record at or after the lowest missing
        offset."""
        wanted = set(offsets)
        found: dict[int, Record] = {}
        for _ in range(limits.push_prefetch_max):
            missing = sorted(wanted - set(found))
            if not missing:
                break
            records = await self.read_from(topic, partition, missing[0])
            if not records:
                break
            found.update((r.offset, r) for r in records if r.offset in wanted)
        return found

    async def read_from(self, topic: str, partition: int, offset: int) -> list[Record]:
        """One fetch (at most ``fetch_bytes_max_default``): the records at or after ``offset``, in order;
        empty at the log end. Raises OffsetOutOfRange below the log start."""
        data = await self._fetch(topic, partition, offset)
        return [r for _, chunk in batches.iter_batches(data) for r in batches.decode_records(chunk)
                if r.offset >= offset]

    async def _fetch(self, topic: str, partition: int, offset: int) -> bytes:
        try:
            result = await self.service.fetch(FetchRequest(topic, partition, offset,
                                                           limits.fetch_bytes_max_default, 0))
            return bytes(result.batches)
        except NotLeader as exc:
            answer = await self._at_leader(exc, f"/v1/topics/{quote(topic, safe='')}/partitions/{partition}/records"
                                                f"?offset={offset}&max_bytes={limits.fetch_bytes_max_default}")
            return bytes(answer.get("batches") or b"")

    async def _at_leader(self, exc: NotLeader, path: str) -> dict[str, Any]:
        url = exc.details.get("leader_url")
        if not isinstance(url, str) or self.call is None:
            raise exc
        answer: dict[str, Any] = await self.call(url, "GET", path, None, limits.push_read_timeout_s)
        return answer
