"""The FUSE passthrough: every operation goes to the backing directory, the durability model is told what
changed (chaos/faultfs/model.py), and fault rules can fail or delay an operation first.

Runs in its own process (chaos/faultfs/__main__.py): libfuse's loop owns that process's main thread, and a
broker must never share a process with the disk that fails under it. Operations run on libfuse's threads;
one lock orders every change with the model's bookkeeping, so a preimage read before a write is the one the
write replaced.

Mount options: attribute, entry and negative caches off (``*_timeout=0``), so after a power cut rewrote the
backing files underneath, the kernel asks again instead of serving sizes or names from before the cut; the
page cache is dropped on every open (libfuse's default without ``keep_cache``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import mfusepy
from raftmq.chaos import limits
from raftmq.chaos.faultfs.model import ERRNOS, DurabilityModel, PowerLossPlan, Rule, make_rule

log = logging.getLogger("raftmq.chaos.faultfs")

_STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
              "st_ctime_ns", "st_blocks", "st_blksize")
_STATVFS_KEYS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                 "f_flag", "f_namemax")


def _oserror(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


class FaultFs(mfusepy.Operations):
    """See the module docstring. ``backing``: the real files; ``trash``: unlinked or replaced files kept
    until their removal is durable (same file system as ``backing``, outside it)."""

    use_ns = True

    def __init__(self, backing: Path, trash: Path, *, seed: int = 0) -> None:
        self.backing = Path(backing).resolve()
        self.trash = Path(trash).resolve()
        self.model = DurabilityModel()
        self._mutex = threading.Lock()
        self.rules: dict[int, Rule] = {}
        self._rule_ids = 0
        self._trash_ids = 0
        self.rng = random.Random(seed)
        self.open_handles: set[int] = set()
        # Faults injected so far, per rule id and operation: the harness reports them.
        self.injected: dict[str, int] = {}
        self.tracking_overflow = False

    # -- paths and faults --

    def _real(self, path: str) -> str:
        return str(self.backing) + path

    def _check(self, op: str, path: str | None) -> None:
        """Apply the first matching rule: sleep its delay (outside the lock), then fail with its errno."""
        if not self.rules or path is None:
            return
        for rule in list(self.rules.values()):
            if rule.matches(op, path):
                key = f"{rule.id}:{op}"
                self.injected[key] = self.injected.get(key, 0) + 1
                if rule.delay_ms:
                    time.sleep(rule.delay_ms / 1000.0)  # the injected latency itself
                if rule.errno_name is not None:
                    raise _oserror(ERRNOS[rule.errno_name])
                return

    def add_rule(self, *, ops: list[str], pattern: str = "*", errno_name: str | None = None,
                 delay_ms: int = 0) -> Rule:
        with self._mutex:
            if len(self.rules) >= limits.faultfs_rules_max:
                raise ValueError(f"at most {limits.faultfs_rules_max} fault rules at once; clear some first")
            self._rule_ids += 1
            rule = make_rule(self._rule_ids, ops=ops, pattern=pattern, errno_name=errno_name, delay_ms=delay_ms)
            self.rules[rule.id] = rule
            return rule

    def clear_rules(self, rule_id: int | None = None) -> int:
        with self._mutex:
            if rule_id is None:
                count = len(self.rules)
                self.rules.clear()
                return count
            return 1 if self.rules.pop(rule_id, None) is not None else 0

    def _to_trash(self, real: str) -> str:
        self._trash_ids += 1
        kept = str(self.trash / f"{self._trash_ids:08d}")
        os.rename(real, kept)
        return kept

    def _discard_trash(self, kept: str | None) -> None:
        if kept is None:
            return
        with contextlib.suppress(FileNotFoundError):
            inode = os.lstat(kept).st_ino
            if os.path.isdir(kept):
                shutil.rmtree(kept)
            else:
                os.unlink(kept)
            self.model.forget(inode)

    def _note_undo_growth(self) -> None:
        if self.model.undo_bytes > limits.faultfs_undo_bytes_max and not self.tracking_overflow:
            self.tracking_overflow = True
            log.error("faultfs keeps more than %d bytes of overwritten durable data; a power cut may be imprecise",
                      limits.faultfs_undo_bytes_max)

    # -- metadata --

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        return {key: getattr(st, key) for key in _STAT_KEYS}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise _oserror(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict[str, int]:
        stv = os.statvfs(self._real(path))
        return {key: getattr(stv, key) for key in _STATVFS_KEYS}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path))
        else:
            os.utime(self._real(path), ns=times)
        return 0

    # -- directory changes --

    def mkdir(self, path: str, mode: int) -> int:
        self._check("mkdir", path)
        with self._mutex:
            os.mkdir(self._real(path), mode)
            self.model.directory_op("mkdir", path, inode=os.lstat(self._real(path)).st_ino)
        return 0

    def rmdir(self, path: str) -> int:
        self._check("unlink", path)
        with self._mutex:
            os.rmdir(self._real(path))
            self.model.directory_op("rmdir", path)
        return 0

    def unlink(self, path: str) -> int:
        self._check("unlink", path)
        with self._mutex:
            kept = self._to_trash(self._real(path))
            self.model.directory_op("unlink", path, trash=kept)
        return 0

    def rename(self, old: str, new: str) -> int:
        self._check("rename", new)
        with self._mutex:
            real_new = self._real(new)
            kept = self._to_trash(real_new) if os.path.lexists(real_new) else None
            try:
                os.rename(self._real(old), real_new)
            except OSError:
                if kept is not None:
                    os.rename(kept, real_new)
                raise
            self.model.directory_op("rename", old, target=new, inode=os.lstat(real_new).st_ino, trash=kept)
        return 0

    def symlink(self, target: str, source: str) -> int:
        raise _oserror(errno.ENOTSUP)  # brokers do not make links; the model does not track them

    def link(self, target: str, source: str) -> int:
        raise _oserror(errno.ENOTSUP)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise _oserror(errno.ENOTSUP)

    # -- files --

    def create(self, path: str, mode: int, fi: int | None = None) -> int:
        self._check("create", path)
        flags = (fi if isinstance(fi, int) else os.O_WRONLY) & ~os.O_APPEND
        with self._mutex:
            fd = os.open(self._real(path), flags | os.O_CREAT, mode)
            inode = os.fstat(fd).st_ino
            self.model.created(inode)
            self.model.directory_op("create", path, inode=inode)
            self.open_handles.add(fd)
        return fd

    def open(self, path: str, flags: int) -> int:
        # O_APPEND is dropped: the kernel already turns an append into a write at the end of the file it
        # knows, and the model needs the real offset of every write.
        if flags & os.O_TRUNC:
            self._check("truncate", path)
        with self._mutex:
            if flags & os.O_TRUNC:
                fd = os.open(self._real(path), (flags & ~os.O_APPEND) & ~os.O_TRUNC)
                self._truncate_fd(fd, 0)
            else:
                fd = os.open(self._real(path), flags & ~os.O_APPEND)
            self.open_handles.add(fd)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._check("read", path)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._check("write", path)
        with self._mutex:
            inode_stat = os.fstat(fh)
            span = self.model.needs_preimage(inode_stat.st_ino, inode_stat.st_size, offset, len(data))
            preimage = (span[0], os.pread(fh, span[1] - span[0], span[0])) if span is not None else None
            written = os.pwrite(fh, data, offset)
            self.model.wrote(inode_stat.st_ino, inode_stat.st_size, max(inode_stat.st_size, offset + written),
                             preimage)
            if preimage is not None:
                self._note_undo_growth()
        return written

    def _truncate_fd(self, fd: int, length: int) -> None:
        st = os.fstat(fd)
        span = self.model.truncate_preimage_range(st.st_ino, st.st_size, length)
        preimage = os.pread(fd, span[1] - span[0], span[0]) if span is not None else b""
        os.ftruncate(fd, length)
        self.model.truncated(st.st_ino, st.st_size, length, preimage)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check("truncate", path)
        with self._mutex:
            if fh is not None:
                self._truncate_fd(fh, length)
                return 0
            fd = os.open(self._real(path), os.O_RDWR)
            try:
                self._truncate_fd(fd, length)
            finally:
                os.close(fd)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._check("fsync", path)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        with self._mutex:
            st = os.fstat(fh)
            self.model.file_synced(st.st_ino, st.st_size)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._check("fsync", path)
        with self._mutex:
            for op in self.model.directory_synced(path):
                self._discard_trash(op.trash)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() is not a sync point: nothing becomes durable here

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.open_handles.discard(fh)
        os.close(fh)
        return 0

    # -- power loss --

    def status(self) -> dict[str, Any]:
        with self._mutex:
            return {"unsynced": self.model.unsynced(), "open_handles": len(self.open_handles),
                    "rules": [rule.to_json() for rule in self.rules.values()], "injected": dict(self.injected),
                    "tracking_overflow": self.tracking_overflow}

    def lose_unsynced(self, *, torn: bool = False,
                      quiet_deadline_s: float = limits.faultfs_release_deadline_s) -> dict[str, Any]:
        """The power cut: waits (bounded) until no file is open (a killed broker's files are released by the
        kernel a moment after it dies), then rolls the backing directory back to what was durable."""
        deadline = time.monotonic() + quiet_deadline_s
        while self.open_handles and time.monotonic() < deadline:
            time.sleep(limits.faultfs_poll_interval_s)  # waiting for the kernel's RELEASE calls, bounded
        with self._mutex:
            still_open = len(self.open_handles)
            plan = self.model.plan_power_loss(torn=torn, rng=self.rng)
            problems = execute_power_loss(plan, self.backing, self.trash)
            self.model.reset()
            summary = plan.summary()
            summary.update(open_handles=still_open, problems=problems, torn=torn,
                           tracking_overflow=self.tracking_overflow)
            self.tracking_overflow = False
        log.info("power loss: %s", summary)
        return summary


def execute_power_loss(plan: PowerLossPlan, backing: Path, trash: Path) -> list[str]:
    """Carry out ``plan`` on the backing directory; returns what could not be undone (normally nothing)."""
    problems: list[str] = []
    root = str(backing)
    for op in plan.undo_ops:
        real = root + op.path
        try:
            _undo_directory_op(op.kind, real, None if op.target is None else root + op.target, op.inode, op.trash)
        except OSError as exc:
            problems.append(f"undo {op.kind} {op.path}: {exc}")
    by_inode = _inodes_under(backing)
    for rollback in plan.files:
        real_path = by_inode.get(rollback.inode)
        if real_path is None:
            continue  # its creation was undone, or it was deleted for good
        try:
            fd = os.open(real_path, os.O_RDWR)
        except OSError as exc:
            problems.append(f"roll back {real_path}: {exc}")
            continue
        try:
            for offset, data in rollback.restore:
                os.pwrite(fd, data, offset)
            if os.fstat(fd).st_size != rollback.keep_size:
                os.ftruncate(fd, rollback.keep_size)
            os.fsync(fd)
        finally:
            os.close(fd)
    for leftover in trash.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return problems


def _undo_directory_op(kind: str, real: str, real_target: str | None, inode: int | None, kept: str | None) -> None:
    if kind in ("create", "mkdir"):
        if os.path.lexists(real) and (inode is None or os.lstat(real).st_ino == inode):
            if os.path.isdir(real) and not os.path.islink(real):
                shutil.rmtree(real)
            else:
                os.unlink(real)
    elif kind == "unlink":
        if kept is not None and os.path.lexists(kept):
            os.rename(kept, real)
    elif kind == "rmdir":
        if not os.path.lexists(real):
            os.mkdir(real)
    elif kind == "rename":
        assert real_target is not None
        if os.path.lexists(real_target) and (inode is None or os.lstat(real_target).st_ino == inode):
            os.rename(real_target, real)
        if kept is not None and os.path.lexists(kept):
            os.rename(kept, real_target)


def _inodes_under(root: Path) -> dict[int, str]:
    found: dict[int, str] = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                found[os.lstat(path).st_ino] = path
    return found


def mount(operations: FaultFs, mountpoint: Path) -> None:
    """Serve ``operations`` on ``mountpoint`` until unmounted (SIGTERM or ``fusermount3 -u``)."""
    mfusepy.FUSE(operations, str(mountpoint), foreground=True, nothreads=False, fsname="raftmq-faultfs",
                 attr_timeout=0, entry_timeout=0, negative_timeout=0)
