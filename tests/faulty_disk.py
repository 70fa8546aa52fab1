"""A disk that refuses writes, for tests of node/journal.py: stands in for the ``os`` module (and
``write_file_atomically``) inside that module for the files of one directory (ENOSPC on writes while
``full``, EIO on fsync while ``failing_fsync``); every other directory's files go through untouched, so
three in-process replicas can share the process while only one has the fault."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from raftmq.node import journal as journal_module


class FaultyDisk:
    """See the module docstring. ``refused`` counts the calls it failed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.full = False
        self.failing_fsync = False
        self.refused = 0
        self._real_write_file = journal_module.write_file_atomically

    def _ours(self, fd: int) -> bool:
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).parent == self.directory
        except OSError:
            return False

    def _refuse(self, code: int) -> OSError:
        self.refused += 1
        return OSError(code, os.strerror(code))

    def pwritev(self, fd: int, buffers: Any, offset: int) -> int:
        if self.full and self._ours(fd):
            raise self._refuse(errno.ENOSPC)
        return os.pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        if self.failing_fsync and self._ours(fd):
            raise self._refuse(errno.EIO)
        os.fdatasync(fd)

    def write_file_atomically(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        if self.full and path.parent == self.directory:
            raise self._refuse(errno.ENOSPC)
        self._real_write_file(path, data, durable=durable)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
        monkeypatch.setattr(journal_module, "os", self)
        monkeypatch.setattr(journal_module, "write_file_atomically", self.write_file_atomically)
        return self
