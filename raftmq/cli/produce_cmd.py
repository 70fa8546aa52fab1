"""``raftmq produce TOPIC``: records from stdin (one per line) or ``--count N`` generated ones.

Every record gets exactly one delivery report (ok / failed / unknown); the summary counts them, and the
exit code is 0 only when every record was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from raftmq.cli.common import (
    ACKS_CHOICE,
    EXIT_BROKER,
    OutcomeTally,
    bootstrap_option,
    err,
    errors_table,
    fmt_int,
    fmt_seconds,
    normalize_acks,
    out,
    stop_on_signals,
)
from raftmq.cli.exchange_cmd import parse_headers, publish_summary, publish_values
from raftmq.client.admin import Admin
from raftmq.client.producer import Producer
from raftmq.client.types import DeliveryReport
from raftmq.cluster import limits
from raftmq.cluster.errors import ProducerClosed, RaftMQError, UnknownTopicOrPartition

# Most bytes read from stdin at once (a chunk of lines handed to the event loop).
_STDIN_CHUNK_BYTES = 64 * 1024
# Chunks read ahead of the producer: enough to keep it busy, few enough that a producer that is behind stops
# the reader (at most this many chunks of stdin in memory).
_STDIN_QUEUE_CHUNKS = 8
# The reader thread, waiting for room in the queue, wakes this often (seconds) to notice it was told to stop.
_HAND_OVER_POLL_S = 0.5
# The live progress line is redrawn this often (seconds).
_TICK_S = 0.2


class ProduceStats(OutcomeTally):
    """Outcome counters fed by delivery reports (and by send() calls that raised), plus bytes and time."""

    def __init__(self) -> None:
        super().__init__()
        self.attempted = 0
        self.bytes_acked = 0
        self.started = time.monotonic()
        self.finished: float | None = None

    def on_report(self, report: DeliveryReport, size: int) -> None:
        if self.count(report):
            self.bytes_acked += size

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started


def summary_table(stats: ProduceStats, *, retries: int, title: str = "produce summary") -> Table:
    elapsed = max(stats.elapsed_s, 1e-9)
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("attempted", fmt_int(stats.attempted))
    all_acked = stats.acked == stats.attempted
    table.add_row("acked", f"[green]{stats.acked:,}[/]" if all_acked else fmt_int(stats.acked))
    table.add_row("failed", f"[red]{stats.failed:,}[/]" if stats.failed else "0")
    table.add_row("unknown (maybe stored)", f"[yellow]{stats.unknown:,}[/]" if stats.unknown else "0")
    table.add_row("retries (requests)", fmt_int(retries))
    table.add_row("elapsed", fmt_seconds(elapsed))
    table.add_row("rate",
                  f"{stats.acked / elapsed:,.0f} records/s, {stats.bytes_acked / elapsed / 1e6:,.2f} MB/s")
    return table


def produce_progress(*, disable: bool = False) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err(), transient=False, disable=disable)


def _raw_reader(stream: IO[bytes]) -> Callable[[int], bytes]:
    """``read(size)`` returning what ``stream`` has available (at most ``size`` bytes; b"" at its end)."""
    try:
        # The raw descriptor: a thread blocked in BufferedReader.read1 would hold the buffer's lock and
        # make interpreter shutdown abort after Ctrl-C; os.read holds no Python-level lock.
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's in-memory stdin)
        read: Callable[[int], bytes] = getattr(stream, "read1", None) or stream.readline
        return read
    return functools.partial(os.read, fd)


async def _stdin_chunks(stream: IO[bytes], stop: threading.Event,
                        interrupted: asyncio.Event) -> AsyncGenerator[list[bytes], None]:
    """Lines of ``stream`` (without their newline), read in a thread so a slow writer never blocks the
    event loop. ``read1`` returns what is available, so a line typed or piped slowly goes out at once and a
    big file goes in 64 KiB chunks. Bounded queue: the reader waits while the producer is behind."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[bytes] | BaseException | None] = asyncio.Queue(maxsize=_STDIN_QUEUE_CHUNKS)

    def hand_over(item: list[bytes] | BaseException | None) -> bool:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                future.result(timeout=_HAND_OVER_POLL_S)  # wakes to notice `stop` (the reader may be abandoned)
                return True
            except TimeoutError:
                continue
        future.cancel()
        return False

    read = _raw_reader(stream)

    def reader() -> None:
        carry = b""
        try:
            while not stop.is_set():
                data = read(_STDIN_CHUNK_BYTES)
                if not data:
                    break
                lines = (carry + data).split(b"\n")
                carry = lines.pop()
                if lines and not hand_over(lines):
                    return
            if carry and not stop.is_set():
                hand_over([carry])
            hand_over(None)
        except RuntimeError:
            return  # the event loop is gone
        except Exception as exc:  # noqa: BLE001 - handed to the loop and re-raised there
            with contextlib.suppress(RuntimeError):
                hand_over(exc)

    thread = threading.Thread(target=reader, name="raftmq-stdin", daemon=True)
    thread.start()
    stopped = asyncio.ensure_future(interrupted.wait())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # Ctrl-C while waiting for input
                getter.cancel()
                return
            item = getter.result()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.cancel()


def _split(line: bytes, separator: bytes | None, default_key: bytes | None) -> tuple[bytes | None, bytes]:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if separator is not None:
        key, found, value = line.partition(separator)
        if found:
            return key, value
    return default_key, line


def generated_value(index: int, size: int) -> bytes:
    """A record of exactly ``size`` bytes whose first bytes are its index (easy to check when read back)."""
    head = b"%010d " % index
    return (head + b"x" * max(0, size - len(head)))[:size]


@click.command("produce")
@click.argument("topic", required=False)
@click.option("--exchange", default=None, help="Publish to this exchange instead of a TOPIC (one record at a time; "
              "each is acknowledged when every bound topic has it).")
@click.option("--routing-key", default="", help="With --exchange: the routing key.")
@click.option("--header", "headers", multiple=True, help="With --exchange: NAME=VALUE record header (repeat).")
@click.option("--mandatory", is_flag=True, help="With --exchange: count records no binding matches as failures.")
@click.option("--acks", type=ACKS_CHOICE, default="all", show_default=True,
              help="0: no wait; 1: leader has it; all: a majority has it (and offsets are reported).")
@click.option("--key", default=None, help="Key of every record (else none, or from --key-separator).")
@click.option("--key-separator", default=None,
              help="Split each stdin line at the first SEP into key and value.")
@click.option("--partition", type=click.IntRange(0), default=None,
              help="Send every record to this partition (default: by key hash, sticky without key).")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Send N generated records instead of stdin.")
@click.option("--size", type=click.IntRange(0, limits.record_bytes_max), default=100, show_default=True,
              help="Bytes per generated record (with --count).")
@click.option("--no-idempotence", is_flag=True,
              help="Do not number batches (retries may store duplicates). Idempotence needs acks=all; with "
                   "acks 0 and 1 it is off anyway.")
@click.option("--linger-ms", type=click.FloatRange(0, 10_000), default=limits.client_linger_ms_default,
              show_default=True, help="How long a record waits for others to fill a batch.")
@click.option("--batch-bytes", type=click.IntRange(1024, limits.batch_bytes_max),
              default=limits.client_batch_bytes_default, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True,
              help="Seconds each record may take to be acknowledged, retries included.")
@bootstrap_option()
def produce(topic: str | None, exchange: str | None, routing_key: str, headers: tuple[str, ...], mandatory: bool,
            acks: str, key: str | None, key_separator: str | None, partition: int | None,
            count: int | None, size: int, no_idempotence: bool, linger_ms: float, batch_bytes: int,
            timeout_s: float, bootstrap: list[str]) -> None:
    """Send records to TOPIC (or --exchange E): one per stdin line, or --count generated ones of --size bytes."""
    if (topic is None) == (exchange is None):
        raise click.UsageError("give a TOPIC or --exchange NAME (not both)")
    if exchange is not None:
        _publish(exchange, routing_key, headers, mandatory, acks, key, count, size, timeout_s, bootstrap)
        return
    assert topic is not None
    if count is None and key_separator == "":
        raise click.BadParameter("must not be empty", param_hint="'--key-separator'")
    stdin: IO[bytes] | None = getattr(sys.stdin, "buffer", None) if count is None else None
    if count is None and stdin is None:
        raise click.UsageError("stdin is not readable as bytes; use --count N instead")
    options = ProduceOptions(
        topic, acks=normalize_acks(acks), key=key.encode() if key is not None else None,
        separator=key_separator.encode() if key_separator else None, partition=partition, count=count,
        size=size, idempotent=None if not no_idempotence else False, linger_ms=linger_ms, batch_bytes=batch_bytes,
        timeout_s=timeout_s)
    stats = ProduceStats()
    retries = asyncio.run(_produce(options, bootstrap, stats, stdin))
    console = out()
    console.print(summary_table(stats, retries=retries))
    if stats.errors:
        console.print(errors_table(stats.errors, title="first errors by code"))
    if stats.acked != stats.attempted:
        raise click.exceptions.Exit(EXIT_BROKER)


def _publish(exchange: str, routing_key: str, headers: tuple[str, ...], mandatory: bool, acks: str,
             key: str | None, count: int | None, size: int, timeout_s: float, bootstrap: list[str]) -> None:
    if count is not None:
        values: Iterator[bytes] = (generated_value(i, size) for i in range(count))
    else:
        stdin: IO[bytes] = sys.stdin.buffer
        values = (line.rstrip(b"\n") for line in stdin)
    counts = asyncio.run(publish_values(
        bootstrap, exchange, routing_key, values, key=key.encode() if key is not None else None,
        headers=parse_headers(headers), mandatory=mandatory, acks=normalize_acks(acks), timeout_s=timeout_s))
    out().print(publish_summary(counts))
    if counts["failed"] or (mandatory and counts["unroutable"]):
        raise click.exceptions.Exit(EXIT_BROKER)


@dataclass(frozen=True)
class ProduceOptions:
    """What to send, and how (the checked options of ``raftmq produce``)."""

    topic: str
    acks: Literal[0, 1, "all"]
    key: bytes | None  # the key of every record (stdin lines: unless --key-separator splits one off)
    separator: bytes | None  # --key-separator
    partition: int | None
    count: int | None  # generated records; None: stdin lines
    size: int  # bytes per generated record
    idempotent: bool | None
    linger_ms: float
    batch_bytes: int
    timeout_s: float  # per record, retries included


async def _produce(options: ProduceOptions, bootstrap: list[str], stats: ProduceStats,
                   stdin: IO[bytes] | None) -> int:
    """Send every record, wait for its delivery report (counted in ``stats``); returns the retries."""
    await _check_partition(bootstrap, options.topic, options.partition)
    producer = _new_producer(bootstrap, options)
    reader_stop = threading.Event()
    progress = produce_progress(disable=_is_typing(stdin))  # a live bar would fight with the user's typing
    task = progress.add_task(f"producing to {options.topic}", total=options.count)
    await producer.start()
    try:
        async with stop_on_signals() as interrupted:
            with progress:
                async with _progress_ticker(progress, task, stats):
                    stats.started = time.monotonic()
                    sender = _Sender(producer, options.topic, options.partition, stats)
                    if options.count is not None:
                        await _send_generated(sender, options, interrupted)
                    else:
                        assert stdin is not None
                        await _send_lines(sender, options, stdin, reader_stop, interrupted)
                    if interrupted.is_set():
                        err().print(f"interrupted: waiting up to {options.timeout_s:.0f} s for the records "
                                    "already sent")
                    progress.update(task, total=stats.attempted)
                    await producer.stop()
    finally:
        reader_stop.set()
        await producer.stop()
    return producer.counters.retries


async def _check_partition(bootstrap: list[str], topic: str, partition: int | None) -> None:
    """The topic exists (else UnknownTopicOrPartition), and so does ``partition`` when one is named."""
    async with Admin(bootstrap) as admin:
        info = await admin.describe_topic(topic)
    if partition is not None and partition >= info.partition_count:
        raise UnknownTopicOrPartition(f"topic {topic!r} has {info.partition_count} partition(s); "
                                      f"there is no partition {partition}", topic=topic, partition=partition)


def _new_producer(bootstrap: list[str], options: ProduceOptions) -> Producer:
    delivery_ms = max(1, int(options.timeout_s * 1000))
    return Producer(bootstrap, acks=options.acks, idempotent=options.idempotent, linger_ms=options.linger_ms,
                    batch_bytes=options.batch_bytes,
                    buffer_bytes=max(limits.client_buffer_bytes_default, options.batch_bytes),
                    delivery_timeout_ms=delivery_ms,
                    request_timeout_ms=min(limits.client_request_timeout_ms_default, delivery_ms))


def _is_typing(stdin: IO[bytes] | None) -> bool:
    """True when the records come from a terminal (someone typing them)."""
    try:
        return stdin is not None and stdin.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.asynccontextmanager
async def _progress_ticker(progress: Progress, task: Any, stats: ProduceStats) -> AsyncIterator[None]:
    """Keep the progress line current while the block runs; on the way out, stop the clock and show the
    final counts."""
    ticker = asyncio.create_task(_tick(progress, task, stats))
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        stats.finished = time.monotonic()
        progress.update(task, completed=stats.resolved, description=stats.describe())


@dataclass
class _Sender:
    """Sends one record at a time to the topic and counts its outcome in ``stats``."""

    producer: Producer
    topic: str
    partition: int | None
    stats: ProduceStats

    async def send(self, key: bytes | None, value: bytes) -> bool:
        """False once the producer is closed (stop sending); a send() that raised counts as failed."""
        stats = self.stats
        stats.attempted += 1
        try:
            future = await self.producer.send(self.topic, value, key=key, partition=self.partition)
        except ProducerClosed:
            stats.attempted -= 1
            return False
        except RaftMQError as exc:
            stats.send_raised(exc)
            return True
        length = len(value) + (len(key) if key is not None else 0)
        future.add_done_callback(lambda f: stats.on_report(f.result(), length))
        return True


async def _send_generated(sender: _Sender, options: ProduceOptions, interrupted: asyncio.Event) -> None:
    assert options.count is not None
    for index in range(options.count):
        if interrupted.is_set() or not await sender.send(options.key, generated_value(index, options.size)):
            break


async def _send_lines(sender: _Sender, options: ProduceOptions, stdin: IO[bytes], reader_stop: threading.Event,
                      interrupted: asyncio.Event) -> None:
    """One record per line of ``stdin`` until its end or Ctrl-C."""
    chunks = _stdin_chunks(stdin, reader_stop, interrupted)
    try:
        async for chunk in chunks:
            for line in chunk:
                key, value = _split(line, options.separator, options.key)
                if interrupted.is_set() or not await sender.send(key, value):
                    return  # Ctrl-C, or the producer closed: read no further (the rest would not be sent)
    finally:
        reader_stop.set()
        await chunks.aclose()


async def _tick(progress: Progress, task: Any, stats: ProduceStats) -> None:
    while True:
        progress.update(task, completed=stats.resolved, description=stats.describe())
        await asyncio.sleep(_TICK_S)
