"""Kafka RecordBatch v2 at the Kafka listener's edge: the batches of a Produce request, and the whole batches
a Fetch answer has room for.

There is nothing to convert: raftmq's own batch format IS RecordBatch v2 (``cluster/batch.py`` owns the
layout, the validation and the record codec), so a produced batch is proposed byte for byte as the Kafka
client sent it, compressed or not, and a fetch serves the stored batches as they are, with the BaseOffset
and PartitionLeaderEpoch the broker wrote. What a Kafka producer chose (codec, timestamps, producer id,
epoch and sequence) reaches every consumer, Kafka's or raftmq's.

No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from raftmq.cluster.batch import BATCH_HEADER_BYTES, BATCH_LENGTH_BYTES
from raftmq.cluster.errors import CorruptBatch

_BATCH_LENGTH = struct.Struct(">i")


def split_batches(records: bytes | memoryview) -> Iterator[memoryview]:
    """The batches of a Produce request's ``records`` field (concatenated; each BaseOffset + BatchLength
    prefixed). A short or trailing partial batch is corrupt: a producer never sends one."""
    view = memoryview(records)
    position = 0
    while position < len(view):
        if len(view) - position < BATCH_LENGTH_BYTES:
            raise CorruptBatch("trailing bytes after the last record batch", size_bytes=len(view) - position)
        length: int = _BATCH_LENGTH.unpack_from(view, position + 8)[0]
        end = position + BATCH_LENGTH_BYTES + length
        if length < BATCH_HEADER_BYTES - BATCH_LENGTH_BYTES or end > len(view):
            raise CorruptBatch("record batch length does not match the data", batch_length=length)
        yield view[position:end]
        position = end


def within_budget(batches: bytes, byte_budget: int) -> bytes:
    """The leading whole batches of fetched data that fit ``byte_budget``; the first batch always (a consumer
    must get at least one whole batch, or it stalls: Kafka's KIP-74 rule)."""
    if len(batches) <= byte_budget:
        return batches
    end = 0
    for batch in split_batches(batches):
        if end and end + len(batch) > byte_budget:
            break
        end += len(batch)
    return batches[:end]


__all__ = ["split_batches", "within_budget"]
