"""``python -m node --config node.toml``: run one broker until SIGTERM/SIGINT (then stop cleanly)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from cluster.errors import RaftMQError
from node.api import build_app
from node.broker import Broker
from node.config import NodeConfig, load_config

log = logging.getLogger("raftmq.node")
_SHUTDOWN_TIMEOUT_S = 15.0


_IO_THREADS = 2  # opening partition logs, deleting directories: bounded, whatever the partition count


async def serve(config: NodeConfig, ready_file: Path | None = None) -> None:
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="raftmq-io"))
    broker = Broker(config)
    await broker.start()
    runner = web.AppRunner(build_app(broker), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.client_listen.host, config.client_listen.port, reuse_address=True,
                       backlog=512)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await broker.stop()
        raise RaftMQError(f"cannot listen on {config.client_listen}: {exc}") from exc
    log.info("broker %d serving clients on %s (advertised %s)", config.broker_id, config.client_listen,
             config.advertised_url)
    if ready_file is not None:
        await asyncio.to_thread(ready_file.write_text, "ready\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("broker %d stopping", config.broker_id)
    try:
        async with asyncio.timeout(_SHUTDOWN_TIMEOUT_S):
            await runner.cleanup()
            await broker.stop()
    except TimeoutError:
        log.error("clean shutdown took longer than %.0f s; exiting anyway", _SHUTDOWN_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description="Run one raftmq broker.")
    parser.add_argument("--config", required=True, type=Path, help="node TOML file (see deploy/node.example.toml)")
    parser.add_argument("--ready-file", type=Path, help="write this file once the broker serves clients")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except RaftMQError as exc:
        print(f"raftmq node: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format=f"%(asctime)s n{config.broker_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(config, args.ready_file))
    except RaftMQError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
