"""A segment append that the disk cuts short, when the cut-back fails too (node/segment.py).

Goal: the .log is O_APPEND, so bytes left after a failed append would put the next batch at the wrong place;
the next append cuts them first, or refuses (STORAGE_ERROR, nothing stored) while it cannot, and the segment
reads back exactly the batches that were stored."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from raftmq.cluster.batch import parse_header
from raftmq.cluster.errors import StorageError
from raftmq.node import segment as segment_module
from raftmq.node.segment import Segment

MakeBatch = Callable[..., bytes]


class ShortWritingDisk:
    """``os`` inside node/segment.py: the next write stores half its bytes; ftruncate fails while ``stuck``."""

    def __init__(self) -> None:
        self.cut_short = False
        self.stuck = False

    def write(self, fd: int, data: bytes) -> int:
        if self.cut_short:
            self.cut_short = False
            return os.write(fd, data[:len(data) // 2])
        return os.write(fd, data)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.stuck:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_leftover_bytes_of_a_failed_append_are_cut_before_the_next(tmp_path: Path, make_batch: MakeBatch,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    disk = ShortWritingDisk()
    monkeypatch.setattr(segment_module, "os", disk)
    segment = Segment.create(tmp_path, 0, index_interval_bytes=100)
    first = make_batch(0, records=2, value_bytes=50)
    segment.append(first, parse_header(first))
    second = make_batch(2, records=2, value_bytes=50)
    disk.cut_short = disk.stuck = True
    with pytest.raises(StorageError):
        segment.append(second, parse_header(second))  # half written, and the cut-back fails
    assert segment.log_path.stat().st_size > len(first)  # the leftover is there
    with pytest.raises(StorageError, match="nothing was stored"):
        segment.append(second, parse_header(second))  # refused while the leftover cannot be cut
    disk.stuck = False
    segment.append(second, parse_header(second))  # cut first, then written where it belongs
    assert segment.log_path.stat().st_size == len(first) + len(second) == segment.size_bytes
    assert segment.read_batches(0, segment.size_bytes, at_least_one=True) == first + second
    assert segment.find_batch(2) == (len(first), parse_header(second))
    segment.close_files()
