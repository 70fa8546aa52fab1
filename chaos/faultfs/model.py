"""What a disk would still hold after a power cut: the fault file system's bookkeeping, without I/O.

The FUSE layer (chaos/faultfs/fs.py) writes every change straight through to a backing directory, so the
broker reads back exactly what it wrote, and tells this model what it did. The model remembers what a
power cut could take away, in the strict POSIX reading that Jepsen's LazyFS also uses:

* **File data** is durable only up to the file's last ``fsync``/``fdatasync``. For each file (keyed by the
  backing inode, which survives renames) the model keeps the size at that fsync and, for every later write
  or truncate that changed bytes *below* that size, the bytes it overwrote (appends need no copy: the cut
  simply truncates back). Files that existed when the file system was mounted count as fully durable.
* **Directory entries** (create, mkdir, unlink, rmdir, rename) are durable only after an ``fsync`` of the
  directory they changed (both directories for a rename across two). Until then the model keeps the
  operation and what undoes it (an unlinked or overwritten file is moved to a trash directory, not deleted).

``plan_power_loss`` turns that into the steps of a power cut: undo the pending directory operations newest
first, then put back overwritten bytes and truncate each file to its durable size (optionally keeping part of
the unsynced tail: a torn last page). The FUSE process executes the steps and then starts afresh (everything
on disk is durable again, as after a reboot).

Fault rules (``Rule``) are matched here too: an operation on a path matching a rule's pattern fails with the
rule's errno (EIO, ENOSPC) or is delayed.
"""

from __future__ import annotations

import errno as errno_codes
import fnmatch
import itertools
import posixpath
import random
from dataclasses import dataclass, field
from typing import Any, Final

# The operations a rule can name; "fsync" covers fsync and fdatasync of files and directories.
RULE_OPS: Final = frozenset({"read", "write", "fsync", "create", "truncate", "rename", "unlink", "mkdir"})
ERRNOS: Final = {"EIO": errno_codes.EIO, "ENOSPC": errno_codes.ENOSPC}
# A page: the unit a torn write keeps part of.
PAGE_BYTES: Final = 4096


def parent_of(path: str) -> str:
    """The directory holding ``path`` (paths are relative to the mount, "/" is its root)."""
    return posixpath.dirname(path.rstrip("/")) or "/"


@dataclass
class FileRecord:
    """One file's unsynced changes: its size at the last fsync and the durable bytes overwritten since."""

    durable_size: int
    undo: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, bytes that were there), oldest first
    size: int = 0  # its size now (the FUSE layer reports it after each change)

    @property
    def undo_bytes(self) -> int:
        return sum(len(data) for _offset, data in self.undo)


@dataclass
class PendingOp:
    """A directory change not yet covered by an fsync of every directory it touched."""

    seq: int
    kind: str  # create | mkdir | unlink | rmdir | rename
    path: str
    target: str | None = None  # rename: the new path
    inode: int | None = None  # create/rename: the backing inode that the path (or target) names now
    trash: str | None = None  # unlink, or a rename that replaced a file: where the old file is kept
    dirs: set[str] = field(default_factory=set)  # directories still to be fsynced


@dataclass(frozen=True)
class Rule:
    """Fail (``errno_name``) or delay (``delay_ms``) the named operations on paths matching ``pattern``."""

    id: int
    ops: frozenset[str]
    pattern: str  # fnmatch pattern on the path relative to the mount, e.g. "*.log" or "/topics/*"
    errno_name: str | None = None
    delay_ms: int = 0

    def matches(self, op: str, path: str) -> bool:
        return op in self.ops and fnmatch.fnmatchcase(path, self.pattern)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ops": sorted(self.ops), "pattern": self.pattern, "errno": self.errno_name,
                "delay_ms": self.delay_ms}


def make_rule(rule_id: int, *, ops: list[str] | tuple[str, ...], pattern: str = "*", errno_name: str | None = None,
              delay_ms: int = 0) -> Rule:
    """A validated rule; ValueError names what is wrong."""
    unknown = sorted(set(ops) - RULE_OPS)
    if not ops or unknown:
        raise ValueError(f"ops must be a non-empty subset of {sorted(RULE_OPS)}, got {list(ops)!r}")
    if errno_name is not None and errno_name not in ERRNOS:
        raise ValueError(f"errno must be one of {sorted(ERRNOS)} or absent, got {errno_name!r}")
    if delay_ms < 0:
        raise ValueError(f"delay_ms must be >= 0, got {delay_ms!r}")
    if errno_name is None and delay_ms == 0:
        raise ValueError("a rule needs an errno, a delay_ms, or both")
    return Rule(rule_id, frozenset(ops), pattern or "*", errno_name, delay_ms)


# --- the power-loss plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UndoOp:
    """One directory change to revert (newest first)."""

    kind: str
    path: str
    target: str | None
    inode: int | None
    trash: str | None


@dataclass(frozen=True)
class FileRollback:
    """Put back ``restore`` (newest first), then truncate the file to ``keep_size``."""

    inode: int
    restore: tuple[tuple[int, bytes], ...]
    keep_size: int
    durable_size: int
    size: int

    @property
    def torn(self) -> bool:
        return self.keep_size > self.durable_size


@dataclass(frozen=True)
class PowerLossPlan:
    undo_ops: tuple[UndoOp, ...]
    files: tuple[FileRollback, ...]

    def summary(self) -> dict[str, Any]:
        return {"directory_ops_undone": len(self.undo_ops),
                "undone": [f"{op.kind} {op.path}" + (f" -> {op.target}" if op.target else "") for op in self.undo_ops],
                "files_rolled_back": sum(1 for f in self.files if f.restore or f.size != f.keep_size),
                "bytes_dropped": sum(max(0, f.size - f.keep_size) for f in self.files),
                "bytes_restored": sum(len(data) for f in self.files for _offset, data in f.restore),
                "torn_files": sum(1 for f in self.files if f.torn)}


class DurabilityModel:
    """See the module docstring. Not thread-safe: the FUSE layer holds its lock around every call."""

    def __init__(self) -> None:
        self.files: dict[int, FileRecord] = {}
        self.pending: list[PendingOp] = []
        self._seq = itertools.count(1)

    # -- file data --

    def record(self, inode: int, size_before: int) -> FileRecord:
        """The file's record, created on its first change (a file untouched so far is durable as it is)."""
        existing = self.files.get(inode)
        if existing is None:
            existing = self.files[inode] = FileRecord(durable_size=size_before, size=size_before)
        return existing

    def needs_preimage(self, inode: int, size_before: int, offset: int, length: int) -> tuple[int, int] | None:
        """The range [start, end) of durable bytes a write of ``length`` at ``offset`` would overwrite (the
        caller reads and hands them to ``wrote``), or None."""
        record = self.record(inode, size_before)
        end = min(offset + length, record.durable_size)
        return (offset, end) if offset < end else None

    def wrote(self, inode: int, size_before: int, size_after: int, preimage: tuple[int, bytes] | None) -> None:
        record = self.record(inode, size_before)
        if preimage is not None and preimage[1]:
            record.undo.append(preimage)
        record.size = size_after

    def created(self, inode: int) -> None:
        """A new, empty file: nothing of it is durable yet (a stale record of a reused inode is replaced)."""
        self.files[inode] = FileRecord(durable_size=0, size=0)

    def truncated(self, inode: int, size_before: int, length: int, preimage: bytes) -> None:
        """``preimage``: the bytes [length, durable size) that the truncate cut (the caller read them)."""
        record = self.record(inode, size_before)
        if preimage:
            record.undo.append((length, preimage))
        record.size = length

    def truncate_preimage_range(self, inode: int, size_before: int, length: int) -> tuple[int, int] | None:
        record = self.record(inode, size_before)
        return (length, record.durable_size) if length < record.durable_size else None

    def file_synced(self, inode: int, size: int) -> None:
        record = self.files.get(inode)
        if record is not None:
            record.durable_size = size
            record.size = size
            record.undo.clear()

    def forget(self, inode: int) -> None:
        self.files.pop(inode, None)

    @property
    def undo_bytes(self) -> int:
        return sum(record.undo_bytes for record in self.files.values())

    # -- directory entries --

    def directory_op(self, kind: str, path: str, *, target: str | None = None, inode: int | None = None,
                     trash: str | None = None) -> PendingOp:
        dirs = {parent_of(path)}
        if target is not None:
            dirs.add(parent_of(target))
        op = PendingOp(next(self._seq), kind, path, target, inode, trash, dirs)
        self.pending.append(op)
        return op

    def directory_synced(self, directory: str) -> list[PendingOp]:
        """An fsync of ``directory``: the operations now covered in every directory they touched (their trash
        copies can go)."""
        durable = []
        for op in self.pending:
            op.dirs.discard(directory)
            if not op.dirs:
                durable.append(op)
        self.pending = [op for op in self.pending if op.dirs]
        return durable

    def unsynced(self) -> dict[str, Any]:
        """What a power cut would take now (for the control API's status)."""
        return {"pending_directory_ops": len(self.pending),
                "files_with_unsynced_data": sum(1 for r in self.files.values()
                                                if r.undo or r.size != r.durable_size),
                "unsynced_bytes": sum(max(0, r.size - r.durable_size) for r in self.files.values()),
                "undo_bytes": self.undo_bytes}

    # -- power loss --

    def plan_power_loss(self, *, torn: bool = False, rng: random.Random | None = None) -> PowerLossPlan:
        """The steps of a power cut now (see the module docstring). With ``torn``, each file whose unsynced
        tail is kept in part keeps between 1 byte and one page of it (drawn from ``rng``)."""
        draw = rng or random.Random(0)
        undo_ops = tuple(UndoOp(op.kind, op.path, op.target, op.inode, op.trash) for op in reversed(self.pending))
        files = []
        for inode, record in sorted(self.files.items()):
            keep = record.durable_size
            tail = record.size - record.durable_size
            if torn and tail > 0:
                keep += draw.randint(1, min(tail, PAGE_BYTES))
            files.append(FileRollback(inode, tuple(reversed(record.undo)), keep, record.durable_size, record.size))
        return PowerLossPlan(undo_ops, tuple(files))

    def reset(self) -> None:
        """After the power cut was executed: what is on disk now is all durable."""
        self.files.clear()
        self.pending.clear()
