"""A fault-injecting FUSE file system for the brokers' data directories (power loss, EIO, ENOSPC, slow fsync).

* ``model.py``: what a power cut would take (pure bookkeeping, no I/O);
* ``fs.py``: the FUSE passthrough over a backing directory (mfusepy on libfuse 3), in its own process;
* ``control.py``: the JSON-lines control socket (status, lose-unsynced, add-rule, clear-rules);
* ``process.py``: starting, checking and stopping one mount from the harness.

``unavailable_reason()`` says why FUSE cannot be used here (None when it can): scenarios and tests that need
it are skipped with that reason, never passed silently.
"""

from __future__ import annotations

import importlib.util
import os
import shutil


def unavailable_reason() -> str | None:
    """None when a fault file system can be mounted here, else a sentence saying what is missing."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (FUSE is not available on this machine or in this container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (install the fuse3 package: apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed (pip install -e '.[faultfs]')"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user"
    try:
        import mfusepy  # noqa: F401 - loads libfuse through ctypes
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc} (install the fuse3 package)"
    return None
