"""The fault file system on a real FUSE mount: a power cut keeps exactly what was fsynced, and injected errors
reach the caller.

Method: mount chaos/faultfs over a temporary backing directory (one mount per test), do file operations
through the mount the way a broker does (os.open/os.write/os.fsync, directory fsyncs), cut the power with
``lose-unsynced``, and look at what is left. Skipped, with the reason, where FUSE cannot be mounted.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.faultfs.process import FaultFsMount

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"fault file system unavailable: {_REASON}")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[FaultFsMount]:
    with FaultFsMount(tmp_path / "data", seed=7) as mounted:
        yield mounted


def _write(path: Path, data: bytes, *, fsync: bool, flags: int = os.O_CREAT | os.O_WRONLY | os.O_APPEND) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_write_without_fsync_is_gone_after_a_power_cut(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "log", b"durable", fsync=True)
    _fsync_dir(data)
    _write(data / "log", b" lost", fsync=False)
    assert (data / "log").read_bytes() == b"durable lost"  # the page cache had it
    summary = mount.lose_unsynced()
    assert (data / "log").read_bytes() == b"durable"
    assert summary["bytes_dropped"] == len(b" lost")
    assert summary["problems"] == []


def test_a_write_with_fsync_stays(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "log", b"first", fsync=True)
    _fsync_dir(data)
    _write(data / "log", b" second", fsync=True)
    mount.lose_unsynced()
    assert (data / "log").read_bytes() == b"first second"


def test_an_overwrite_of_durable_bytes_is_undone(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "journal", b"AAAABBBB", fsync=True)
    _fsync_dir(data)
    fd = os.open(data / "journal", os.O_RDWR)
    try:
        os.pwrite(fd, b"xx", 2)
        os.ftruncate(fd, 5)
    finally:
        os.close(fd)
    assert (data / "journal").read_bytes() == b"AAxxB"
    mount.lose_unsynced()
    assert (data / "journal").read_bytes() == b"AAAABBBB"


def test_a_file_created_without_a_directory_fsync_disappears(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "new", b"synced data, but not its name", fsync=True)
    mount.lose_unsynced()
    assert not (data / "new").exists()


def test_a_rename_without_a_directory_fsync_is_undone(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "meta", b"old", fsync=True)
    _fsync_dir(data)
    _write(data / "meta.tmp", b"new", fsync=True)
    os.replace(data / "meta.tmp", data / "meta")
    assert (data / "meta").read_bytes() == b"new"
    summary = mount.lose_unsynced()
    assert (data / "meta").read_bytes() == b"old"
    assert not (data / "meta.tmp").exists()
    assert summary["directory_ops_undone"] == 2  # the rename and the tmp file's creation


def test_a_rename_followed_by_a_directory_fsync_stays(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "meta", b"old", fsync=True)
    _fsync_dir(data)
    _write(data / "meta.tmp", b"new", fsync=True)
    os.replace(data / "meta.tmp", data / "meta")
    _fsync_dir(data)
    mount.lose_unsynced()
    assert (data / "meta").read_bytes() == b"new"
    assert sorted(os.listdir(data)) == ["meta"]


def test_an_unlink_without_a_directory_fsync_comes_back(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    (data / "sub").mkdir()
    _fsync_dir(data)
    _write(data / "sub" / "segment", b"records", fsync=True)
    _fsync_dir(data / "sub")
    (data / "sub" / "segment").unlink()
    mount.lose_unsynced()
    assert (data / "sub" / "segment").read_bytes() == b"records"


def test_a_torn_power_cut_keeps_part_of_the_unsynced_tail(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "log", b"D" * 10, fsync=True)
    _fsync_dir(data)
    _write(data / "log", b"U" * 10_000, fsync=False)
    summary = mount.lose_unsynced(torn=True)
    kept = (data / "log").read_bytes()
    assert kept.startswith(b"D" * 10)
    assert 10 < len(kept) <= 10 + 4096
    assert summary["torn_files"] == 1


def test_injected_enospc_and_eio_reach_the_caller(mount: FaultFsMount) -> None:
    data = mount.mountpoint
    _write(data / "segment.log", b"before", fsync=True)
    rule = mount.add_rule(ops=["write"], pattern="*.log", errno="ENOSPC")
    with pytest.raises(OSError) as full:
        _write(data / "segment.log", b"more", fsync=False)
    assert full.value.errno == errno.ENOSPC
    _write(data / "other.idx", b"fine", fsync=False)  # the pattern picks the files
    mount.clear_rules(rule)
    _write(data / "segment.log", b" after", fsync=False)
    assert (data / "segment.log").read_bytes() == b"before after"
    mount.add_rule(ops=["read"], pattern="/segment.log", errno="EIO")
    with pytest.raises(OSError) as broken:
        (data / "segment.log").read_bytes()
    assert broken.value.errno == errno.EIO
    status = mount.control().status()
    assert sum(status["injected"].values()) >= 2


def test_a_bad_rule_is_refused_with_the_reason(mount: FaultFsMount) -> None:
    from raftmq.chaos.faultfs.control import ControlError

    with pytest.raises(ControlError, match="errno must be one of"):
        mount.add_rule(ops=["write"], errno="EPERM")


def test_a_slow_fsync_rule_delays_fsync(mount: FaultFsMount) -> None:
    import time

    data = mount.mountpoint
    mount.add_rule(ops=["fsync"], pattern="/log", delay_ms=300)
    started = time.monotonic()
    _write(data / "log", b"x", fsync=True)
    assert time.monotonic() - started >= 0.3
