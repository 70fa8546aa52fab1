"""Key to partition: Kafka's murmur2 partitioner, bit for bit, so one key always lands on one partition
(and on the same partition Kafka's Java client would pick).

No I/O here.
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: returns a signed 32-bit int like the Java version."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length & ~3
    remainder = length % 4
    if remainder == 3:
        h ^= data[tail + 2] << 16
    if remainder >= 2:
        h ^= data[tail + 1] << 8
    if remainder >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partition_count: int) -> int:
    """The partition of ``key`` among ``partition_count`` partitions (Kafka: toPositive(murmur2) % n)."""
    if partition_count < 1:
        raise ValueError("partition_count must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % partition_count
