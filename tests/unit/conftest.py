"""Shared fixtures for the unit tests: stamped record batches with explicit offsets and times."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from raftmq.cluster.batch import encode_batch, stamp


def stamped_batch(base_offset: int, *, records: int = 1, value_bytes: int = 100, timestamp_ms: int = 1_000,
                  append_time_ms: int = 1_000, leader_epoch: int = 1, raft_index: int | None = None) -> bytes:
    """A stored batch as the state machine would append it. Record ``i`` is timestamped ``timestamp_ms + i``;
    values are pseudo-random bytes seeded by the offset: batches differ, tests stay deterministic."""
    rng = random.Random(base_offset)
    produced = encode_batch((None, rng.randbytes(value_bytes), [], timestamp_ms + i) for i in range(records))
    return stamp(produced, base_offset=base_offset, leader_epoch=leader_epoch,
                 raft_index=base_offset + 1 if raft_index is None else raft_index,
                 append_time_ms=append_time_ms)


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., bytes]:
    """``make_batch(base_offset, records=, value_bytes=, timestamp_ms=, append_time_ms=, ...)``."""
    return stamped_batch
