"""``python -m raftmq.chaos.faultfs --backing B --trash T --mount M --control S [--seed N]``: serve one fault
file system until unmounted (SIGTERM or ``fusermount3 -u M``). The harness starts it (chaos/faultfs/process.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftmq.chaos.faultfs", description=__doc__)
    parser.add_argument("--backing", type=Path, required=True, help="directory holding the real files")
    parser.add_argument("--trash", type=Path, required=True,
                        help="directory for unlinked files until their removal is durable (same file system)")
    parser.add_argument("--mount", type=Path, required=True, help="empty directory to mount on")
    parser.add_argument("--control", type=Path, required=True, help="Unix socket path for the control channel")
    parser.add_argument("--seed", type=int, default=0, help="seeds the torn-page draws")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from raftmq.chaos.faultfs.control import serve_control
        from raftmq.chaos.faultfs.fs import FaultFs, mount
    except (ImportError, OSError) as exc:  # mfusepy missing, or libfuse not installed
        print(f"faultfs: cannot load FUSE: {exc}", file=sys.stderr)
        return 2
    for directory in (args.backing, args.trash, args.mount):
        directory.mkdir(parents=True, exist_ok=True)
    fs = FaultFs(args.backing, args.trash, seed=args.seed)
    server = serve_control(fs, args.control)
    try:
        mount(fs, args.mount)
    except RuntimeError as exc:  # libfuse's loop reports a nonzero code when a signal ended it: still a clean stop
        logging.getLogger("raftmq.chaos.faultfs").info("FUSE loop ended: %s", exc)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
