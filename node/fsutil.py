"""Small file-system primitives shared by the journal, the segments and the snapshots (no pysyncobj here)."""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """os.write until done. Regular files write everything at once unless the disk is full, which then
    raises on the next call, so this loop ends."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(path: Path) -> None:
    """Make file creations, renames and deletions in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: Path, *, durable: bool = True) -> None:
    """``mkdir -p`` that, when ``durable``, fsyncs the parent of every directory it creates: a new directory's
    name is an entry of its parent, and without that fsync a power cut can take the directory away with
    everything fsynced inside it."""
    missing = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            pass  # created meanwhile by someone else: its creator makes it durable
        if durable:
            fsync_directory(directory.parent)


def write_file_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """tmp + (fsync) + rename (+ directory fsync): readers and crashes see the old or the new file, never a
    torn one. ``durable`` False skips both fsyncs (the ``never`` policy)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_directory(path.parent)
