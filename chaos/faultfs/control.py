"""The fault file system's control channel: one JSON object per line over a Unix socket.

Requests (``{"cmd": ...}``) and their answers (always ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``):

* ``status``: what a power cut would take now, open files, active rules, faults injected per rule.
* ``lose-unsynced`` (``torn``: bool, default false): the power cut (chaos/faultfs/fs.py ``lose_unsynced``);
  the answer summarises what was undone and dropped. Stop the processes using the mount first.
* ``add-rule`` (``ops``: list, ``pattern``: fnmatch pattern on the mount-relative path, ``errno``:
  "EIO"/"ENOSPC", ``delay_ms``): answers the rule with its ``id``.
* ``clear-rules`` (``id``: optional): removes one rule or all of them; answers ``removed``.

The server runs on a thread of the FUSE process; the client (``ControlClient``) is what the harness uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftmq.chaos import limits

if TYPE_CHECKING:
    from raftmq.chaos.faultfs.fs import FaultFs

log = logging.getLogger("raftmq.chaos.faultfs.control")


class ControlError(RuntimeError):
    """The fault file system refused a request or did not answer; the message says which and why."""


def handle_request(fs: FaultFs, request: dict[str, Any]) -> dict[str, Any]:
    """One request's answer (errors become ``{"ok": false}``: the channel stays usable)."""
    cmd = request.get("cmd")
    try:
        if cmd == "status":
            return {"ok": True, **fs.status()}
        if cmd == "lose-unsynced":
            return {"ok": True, **fs.lose_unsynced(torn=bool(request.get("torn", False)))}
        if cmd == "add-rule":
            rule = fs.add_rule(ops=list(request.get("ops") or []), pattern=str(request.get("pattern") or "*"),
                               errno_name=request.get("errno"), delay_ms=int(request.get("delay_ms") or 0))
            return {"ok": True, "rule": rule.to_json()}
        if cmd == "clear-rules":
            rule_id = request.get("id")
            return {"ok": True, "removed": fs.clear_rules(None if rule_id is None else int(rule_id))}
    except (ValueError, TypeError, OSError) as exc:
        return {"ok": False, "error": f"{cmd}: {exc}"}
    return {"ok": False, "error": f"unknown cmd {cmd!r} (status, lose-unsynced, add-rule, clear-rules)"}


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(limits.faultfs_control_line_bytes_max + 1)
            if not line:
                return
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                answer = handle_request(self.server.fs, request)
            except ValueError as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            self.wfile.write(json.dumps(answer).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, fs: FaultFs) -> None:
        self.fs = fs
        super().__init__(path, _Handler)


def serve_control(fs: FaultFs, socket_path: Path) -> socketserver.BaseServer:
    """Start answering on ``socket_path`` (a thread); ``shutdown()`` stops it."""
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = _Server(str(socket_path), fs)
    threading.Thread(target=server.serve_forever, name="faultfs-control", daemon=True).start()
    return server


class ControlClient:
    """Blocking client of one mount's control socket (one connection per request: simple, and the harness
    sends a handful per run)."""

    def __init__(self, socket_path: Path, *, timeout_s: float = limits.faultfs_control_timeout_s) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.socket_path))
                sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
                with sock.makefile("rb") as reader:
                    line = reader.readline(limits.faultfs_control_line_bytes_max + 1)
        except OSError as exc:
            raise ControlError(f"fault file system at {self.socket_path} did not answer {cmd}: {exc}") from None
        if not line:
            raise ControlError(f"fault file system at {self.socket_path} closed the connection on {cmd}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(f"fault file system refused {cmd}: {answer.get('error')}")
        return dict(answer)

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def lose_unsynced(self, *, torn: bool = False) -> dict[str, Any]:
        return self.request("lose-unsynced", torn=torn)

    def add_rule(self, *, ops: list[str], pattern: str = "*", errno: str | None = None,
                 delay_ms: int = 0) -> int:
        return int(self.request("add-rule", ops=ops, pattern=pattern, errno=errno, delay_ms=delay_ms)["rule"]["id"])

    def clear_rules(self, rule_id: int | None = None) -> int:
        return int(self.request("clear-rules", id=rule_id)["removed"])
