"""``python -m raftmq.node --config node.toml``: run one broker until SIGTERM/SIGINT (then stop cleanly)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import errno
import logging
import resource
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web
from raftmq.cluster import limits
from raftmq.cluster.errors import InvalidConfig, RaftMQError
from raftmq.node.api import build_app
from raftmq.node.broker import Broker
from raftmq.node.config import NodeConfig, load_config, prepare_for_start
from raftmq.node.http_server import GuardedAppRunner

log = logging.getLogger("raftmq.node")


def _raise_fd_limit() -> None:
    """Raise the soft open-files limit toward the hard one: a broker holds segment files and up to
    http_connections_max client sockets, and 1024 (a common soft default) is not enough for both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.open_files_soft_limit_wanted
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)


def _bind_client_port(config: NodeConfig) -> socket.socket:
    """The client port, bound before anything else starts, so a port in use fails fast and names the key."""
    address = config.client_listen
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(limits.http_listen_backlog)
    except OSError as exc:
        sock.close()
        raise InvalidConfig(f"cannot listen on client_listen {address}: {exc.strerror or exc}"
                            f"{' (another process uses the port)' if exc.errno == errno.EADDRINUSE else ''}",
                            key="client_listen") from None
    sock.setblocking(False)
    return sock


async def serve(config: NodeConfig, ready_file: Path | None = None) -> None:
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=limits.io_threads, thread_name_prefix="raftmq-io"))
    client_socket = _bind_client_port(config)
    stop = asyncio.Event()
    refused: list[RaftMQError] = []

    def on_fatal(error: RaftMQError) -> None:
        refused.append(error)  # the controller refused this broker (stale incarnation, foreign cluster)
        stop.set()

    broker = Broker(config, on_fatal=on_fatal)
    try:
        await broker.start()
    except BaseException:
        client_socket.close()
        await broker.stop()
        raise
    runner = GuardedAppRunner(build_app(broker), connections_max=config.http_connections_max, access_log=None,
                              handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, client_socket).start()
    log.info("broker %d serving clients on %s (advertised %s)", config.broker_id, config.client_listen,
             config.advertised_url)
    if ready_file is not None:
        await asyncio.to_thread(ready_file.write_text, "ready\n")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("broker %d stopping", config.broker_id)
    try:
        async with asyncio.timeout(limits.shutdown_timeout_s):
            await runner.cleanup()
            await broker.stop()
    except TimeoutError:
        log.error("clean shutdown took longer than %.0f s; exiting anyway", limits.shutdown_timeout_s)
    if refused:
        raise refused[0]  # main() prints it with its hint and exits 2


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 after a clean stop, 2 when the config (or what it names: ports, data_dir, secret) cannot
    be used, 1 for anything else (a bug: the traceback is logged)."""
    parser = argparse.ArgumentParser(prog="python -m raftmq.node", description="Run one raftmq broker.")
    parser.add_argument("--config", required=True, type=Path, help="node TOML file (see deploy/node.example.toml)")
    parser.add_argument("--ready-file", type=Path, help="write this file once the broker serves clients")
    args = parser.parse_args(argv)
    try:
        config = prepare_for_start(load_config(args.config))
    except RaftMQError as exc:
        _print_error(exc)
        return 2
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format=f"%(asctime)s n{config.broker_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    _raise_fd_limit()
    try:
        asyncio.run(serve(config, args.ready_file))
    except RaftMQError as exc:
        log.error("%s", exc)
        _print_error(exc)
        return 2
    return 0


def _print_error(exc: RaftMQError) -> None:
    key = exc.details.get("key")
    print(f"raftmq node: {exc}" + (f" [key: {key}]" if key else ""), file=sys.stderr)
    if exc.hint:
        print(f"  what to do: {exc.hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
