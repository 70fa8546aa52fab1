"""The local cluster's folder (``raftmq cluster up --dir``): its layout file and the mailbox through which
``raftmq cluster add-broker`` asks the running ``up`` to start one more broker.

Why a mailbox: the brokers are children of the ``up`` process, which watches them, stops them on Ctrl-C and
restarts them with the folder. A broker started by another process would be nobody's child. So
``add-broker`` drops a request file into ``<dir>/mailbox/``; ``up`` (which looks every half second) starts the
broker (``LocalCluster.add_node``: id = highest + 1, its config lists every broker, the others' configs are
left as they are), waits until it is ready, records the new count in the layout file (so the next
``up`` on the folder starts every broker again) and writes the reply that ``add-broker`` waits for.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Written into the --dir of `up`: the cluster's size and ports, checked when the folder is reused.
LAYOUT_FILE = "cluster.json"
MAILBOX_DIR = "mailbox"
# How long add-broker waits for `up` to take its request before it says `up` looks stuck.
TAKE_DEADLINE_S = 10.0
_POLL_INTERVAL_S = 0.2
# A reply older than this was abandoned by its add-broker (which waits at most --timeout, 600 s).
STALE_REPLY_S = 3600.0


def read_layout(directory: Path) -> dict[str, Any] | None:
    try:
        layout = json.loads((directory / LAYOUT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return layout if isinstance(layout, dict) else None


def write_layout(directory: Path, layout: dict[str, Any]) -> None:
    """Atomically (rename), so a concurrent reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{LAYOUT_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(layout, indent=2) + "\n")
    temporary.replace(directory / LAYOUT_FILE)


def up_running(layout: dict[str, Any] | None) -> bool:
    """The layout's ``up_pid`` names a live process (the ``up`` that manages the folder)."""
    pid = (layout or {}).get("up_pid")
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- add-broker's side ----------------------------------------------------------------------------------


def request_add_broker(directory: Path, *, rack: str | None, timeout_s: float,
                       on_wait: Callable[[str], None] = lambda _phase: None) -> dict[str, Any]:
    """Post a request and wait (bounded) for the running ``up``'s reply. Raises TimeoutError."""
    mailbox = directory / MAILBOX_DIR
    mailbox.mkdir(parents=True, exist_ok=True)
    _forget_stale_replies(mailbox)
    token = secrets.token_hex(6)
    temporary = mailbox / f".{token}.tmp"
    temporary.write_text(json.dumps({"rack": rack}))
    request = mailbox / f"{token}.request"
    temporary.replace(request)
    reply = mailbox / f"{token}.reply"
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if reply.exists():
            answer = json.loads(reply.read_text())
            reply.unlink(missing_ok=True)
            return answer if isinstance(answer, dict) else {"ok": False, "error": "unreadable reply"}
        taken = not request.exists()
        on_wait("starting the broker" if taken else "waiting for `cluster up` to take the request")
        now = time.monotonic()
        if (not taken and now - started > TAKE_DEADLINE_S) or now >= deadline:
            request.unlink(missing_ok=True)
            what = "start and ready the broker" if taken else "take the request"
            raise TimeoutError(f"`raftmq cluster up` did not {what} within {now - started:.0f} s")
        time.sleep(_POLL_INTERVAL_S)  # polling a file for a reply, with a deadline


def _forget_stale_replies(mailbox: Path) -> None:
    """Replies nobody collected (their add-broker gave up waiting) are removed after a while."""
    for reply in mailbox.glob("*.reply"):
        try:
            if time.time() - reply.stat().st_mtime > STALE_REPLY_S:
                reply.unlink()
        except OSError:
            continue  # collected or removed meanwhile


# --- up's side --------------------------------------------------------------------------------------------


def pending_requests(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Requests in the mailbox, each taken (renamed) so that it is served once."""
    mailbox = directory / MAILBOX_DIR
    taken = []
    for request in sorted(mailbox.glob("*.request")) if mailbox.is_dir() else []:
        claimed = request.with_suffix(".taken")
        try:
            request.replace(claimed)
            body = json.loads(claimed.read_text())
        except (OSError, ValueError):
            continue
        taken.append((claimed, body if isinstance(body, dict) else {}))
    return taken


def answer(claimed: Path, reply: dict[str, Any]) -> None:
    temporary = claimed.with_suffix(".tmp")
    temporary.write_text(json.dumps(reply))
    temporary.replace(claimed.with_suffix(".reply"))
    claimed.unlink(missing_ok=True)
