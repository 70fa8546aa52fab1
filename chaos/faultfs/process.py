"""One fault file system mount, seen from the harness: start the FUSE process, wait (bounded) until it serves,
talk to it, stop it.

Layout for a mount point ``.../n1/data``: the real files live in ``.../n1/data.disk``, files unlinked but
not yet durably gone in ``.../n1/data.trash``, the FUSE process's log is ``.../n1/faultfs.log``. The control
socket lives in a short temporary directory (a Unix socket path is limited to 107 bytes, report directories
can be deeper).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from raftmq.chaos import limits
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.faultfs.control import ControlClient, ControlError


class FaultFsError(RuntimeError):
    """The fault file system could not be mounted or stopped; the message says why and where its log is."""


def _mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as table:
            return any(line.split()[4] == str(path) for line in table)
    except OSError:
        return os.path.ismount(path)


class FaultFsMount:
    """See the module docstring. ``start`` mounts, ``stop`` unmounts (both bounded); ``client`` controls it."""

    def __init__(self, mountpoint: Path, *, seed: int = 0) -> None:
        self.mountpoint = Path(mountpoint).resolve()
        self.backing = self.mountpoint.with_name(self.mountpoint.name + ".disk")
        self.trash = self.mountpoint.with_name(self.mountpoint.name + ".trash")
        self.log_path = self.mountpoint.parent / "faultfs.log"
        self.seed = seed
        self._socket_dir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.client: ControlClient | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = limits.faultfs_mount_deadline_s) -> Self:
        reason = unavailable_reason()
        if reason is not None:
            raise FaultFsError(f"cannot mount a fault file system: {reason}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if any(self.mountpoint.iterdir()):
            raise FaultFsError(f"{self.mountpoint} is not empty: a fault file system mounts on an empty directory")
        self._socket_dir = tempfile.mkdtemp(prefix="raftmq-faultfs-")
        socket_path = Path(self._socket_dir) / "control.sock"
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raftmq.chaos.faultfs", "--backing", str(self.backing), "--trash",
                 str(self.trash), "--mount", str(self.mountpoint), "--control", str(socket_path),
                 "--seed", str(self.seed)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.client = ControlClient(socket_path)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise FaultFsError(f"the fault file system for {self.mountpoint} exited with code "
                                   f"{self.process.returncode}; see {self.log_path}")
            if _mounted(self.mountpoint) and socket_path.exists():
                with contextlib.suppress(ControlError):
                    self.client.status()
                    return self
            if time.monotonic() >= deadline:
                self.stop()
                raise FaultFsError(f"the fault file system for {self.mountpoint} did not come up within "
                                   f"{timeout_s:.0f} s; see {self.log_path}")
            time.sleep(limits.faultfs_poll_interval_s)  # polling for the mount, bounded by the deadline

    def control(self) -> ControlClient:
        if self.client is None or not self.running:
            raise FaultFsError(f"the fault file system for {self.mountpoint} is not running")
        return self.client

    def lose_unsynced(self, *, torn: bool = False) -> dict[str, Any]:
        return self.control().lose_unsynced(torn=torn)

    def add_rule(self, *, ops: list[str], pattern: str = "*", errno: str | None = None, delay_ms: int = 0) -> int:
        return self.control().add_rule(ops=ops, pattern=pattern, errno=errno, delay_ms=delay_ms)

    def clear_rules(self, rule_id: int | None = None) -> int:
        return self.control().clear_rules(rule_id)

    def stop(self, timeout_s: float = limits.faultfs_stop_deadline_s) -> None:
        """SIGTERM (libfuse unmounts and returns), bounded; then SIGKILL and a lazy unmount. Idempotent."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if _mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, timeout=timeout_s,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
