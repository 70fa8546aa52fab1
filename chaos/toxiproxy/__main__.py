"""`python -m raftmq.chaos.toxiproxy`: the server's command line, with toxiproxy-server's flags.

Flags are single-dash like Go's flag package (`-port 8474`, `-port=8474`); the double-dash spelling works too.
SIGTERM and SIGINT shut the server down cleanly: the API stops, every proxy closes its listener and its
connections, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from typing import Final

from . import VERSION
from .server import serve

log: Final = logging.getLogger("raftmq.chaos.toxiproxy")

_log_levels: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftmq.chaos.toxiproxy",
        description=f"Toxiproxy-compatible fault proxy server (API version {VERSION}).",
        allow_abbrev=False,
    )
    parser.add_argument("-host", "--host", default="localhost", help="host for the API to listen on")
    parser.add_argument("-port", "--port", type=int, default=8474, help="port for the API to listen on")
    parser.add_argument("-config", "--config", default="", help="JSON file of proxies to create at startup")
    parser.add_argument("-seed", "--seed", type=int, default=None, help="seed for toxicity and jitter")
    parser.add_argument("-version", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("-proxy-metrics", "--proxy-metrics", action="store_true", help="serve proxy metrics")
    parser.add_argument(
        "-runtime-metrics", "--runtime-metrics", action="store_true", help="serve runtime metrics"
    )
    return parser


def configure_logging() -> None:
    level_name = os.environ.get("LOG_LEVEL", "info").strip().lower()
    logging.basicConfig(
        level=_log_levels.get(level_name, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log is noise at info level; keep it for debugging.
    if level_name not in ("debug", "trace"):
        logging.getLogger("raftmq.chaos.toxiproxy.access").setLevel(logging.WARNING)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    seed = args.seed
    if seed is None:
        # Logged so that a run can be replayed with -seed.
        seed = random.SystemRandom().randrange(2**63)
    log.info("seed %d", seed)
    try:
        await serve(
            args.host,
            args.port,
            config=args.config or None,
            seed=seed,
            proxy_metrics=args.proxy_metrics,
            runtime_metrics=args.runtime_metrics,
            stop=stop,
        )
    except OSError as error:
        log.error("cannot serve the API on %s:%d: %s", args.host, args.port, error)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"toxiproxy-server version {VERSION}")
        return 0
    if not 0 <= args.port <= 65535:
        print(f"invalid port {args.port}", file=sys.stderr)
        return 2
    configure_logging()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
