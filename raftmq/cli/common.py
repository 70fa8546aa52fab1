"""Shared plumbing of the ``raftmq`` commands: the bootstrap option, consoles, error display, formatting.

Exit codes (every command): 0 success; 1 a broker or cluster error (the panel shows its stable code, the
message and what to do next); 2 a usage or configuration error (bad option, port taken, wrong folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import IO, Any, Final, Literal, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from raftmq.client.metadata import normalize_url
from raftmq.client.types import DeliveryReport
from raftmq.cluster import limits
from raftmq.cluster.errors import RaftMQError

T = TypeVar("T")

DEFAULT_BOOTSTRAP: Final = "http://127.0.0.1:9101,http://127.0.0.1:9102,http://127.0.0.1:9103"
BOOTSTRAP_ENV: Final = "RAFTMQ_BOOTSTRAP"
# Width used for tables when output is not a terminal (pipes, CI logs, tests): wide enough not to wrap.
_PIPE_WIDTH: Final = 160
# A COLUMNS value outside these bounds is taken for a mistake, and _PIPE_WIDTH is used instead.
_MIN_COLUMNS: Final = 40
_MAX_COLUMNS: Final = 10_000

EXIT_OK: Final = 0
EXIT_BROKER: Final = 1
EXIT_USAGE: Final = 2


# --- consoles ---------------------------------------------------------------------------------------


def _width(stream: IO[str]) -> int | None:
    try:
        if stream.isatty():
            return None  # rich measures the terminal
    except (AttributeError, ValueError):
        pass
    columns = os.environ.get("COLUMNS", "")
    valid = columns.isascii() and columns.isdigit() and _MIN_COLUMNS < int(columns) < _MAX_COLUMNS
    return int(columns) if valid else _PIPE_WIDTH


def out() -> Console:
    """A console on the CURRENT ``sys.stdout`` (so click's test runner captures it)."""
    return Console(file=sys.stdout, width=_width(sys.stdout), highlight=False, soft_wrap=False)


def err() -> Console:
    """A console on the current ``sys.stderr``: progress, narration of long work, error panels."""
    return Console(file=sys.stderr, width=_width(sys.stderr), highlight=False, soft_wrap=False)


# --- errors -----------------------------------------------------------------------------------------


def error_panel(code: str, message: str, hint: str = "", *, title: str = "error") -> Panel:
    body = Text()
    body.append(code, style="bold red")
    body.append(": ")
    body.append(message)
    if hint:
        body.append("\n")
        body.append("what to do: ", style="bold")
        body.append(hint)
    return Panel(body, title=title, title_align="left", border_style="red", expand=False)


# What to do next for codes whose error class has no hint of its own (the CLI knows its own commands).
_CLI_HINTS: Final = {
    "TOPIC_ALREADY_EXISTS": "pick another name, or delete the topic first (raftmq topic delete NAME)",
    "INVALID_TOPIC": "use 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'",
    "INVALID_PARTITIONS": f"use between 1 and {limits.partitions_per_topic_max} partitions",
    "INVALID_REPLICATION_FACTOR": "use at most the number of brokers (raftmq cluster status lists them)",
    "INVALID_CONFIG": "fix the value named in the message",
    "NOT_LEADER": "retry; raftmq cluster status shows the current leaders",
    "LEADER_NOT_AVAILABLE": "an election is running: retry in a few seconds (raftmq cluster status)",
    "BROKER_NOT_READY": "the broker is starting: retry in a few seconds",
    "BROKER_SHUTTING_DOWN": "retry against another broker (--bootstrap)",
    "REQUEST_TIMED_OUT": "the outcome is unknown: check with raftmq consume before retrying",
    "OUTCOME_UNKNOWN": "the outcome is unknown: check with raftmq consume before retrying",
    "CLIENT_TIMEOUT": "check the brokers (raftmq cluster status), or allow more time (--timeout)",
    "BUFFER_FULL": "the partition is busy replicating: slow down or retry",
    "INTERNAL_ERROR": "look at the broker's log",
    "UNEXPECTED_RESPONSE": "check that --bootstrap points at raftmq brokers",
}


def hint_for(error: RaftMQError) -> str:
    return error.hint or _CLI_HINTS.get(error.code, "")


class OutcomeTally:
    """Delivery reports counted as acked / failed / unknown, and errors by code (count, first error)."""

    def __init__(self) -> None:
        self.acked = self.failed = self.unknown = 0
        self.errors: dict[str, tuple[int, RaftMQError]] = {}

    @property
    def resolved(self) -> int:
        return self.acked + self.failed + self.unknown

    def count(self, report: DeliveryReport) -> bool:
        """Count one report; True when it is ok."""
        if report.status == "ok":
            self.acked += 1
            return True
        if report.status == "failed":
            self.failed += 1
        else:
            self.unknown += 1
        if report.error is not None:
            self.add_error(report.error)
        return False

    def add_error(self, error: RaftMQError, count: int = 1) -> None:
        seen, first = self.errors.get(error.code, (0, error))
        self.errors[error.code] = (seen + count, first)

    def send_raised(self, error: RaftMQError) -> None:
        """send() raised: nothing was queued, a definite failure."""
        self.failed += 1
        self.add_error(error)

    def describe(self) -> str:
        return f"acked {self.acked:,}  failed {self.failed:,}  unknown {self.unknown:,}"


def print_error(error: RaftMQError, *, context: str = "") -> None:
    message = f"{context}: {error.message}" if context else error.message
    err().print(error_panel(error.code, message, hint_for(error)))


class BrokerFailure(click.ClickException):
    """A RaftMQError that ends a command: shown as a panel (code, message, hint); exit code 1."""

    exit_code = EXIT_BROKER

    def __init__(self, error: RaftMQError, context: str = "") -> None:
        super().__init__(str(error))
        self.error = error
        self.context = context

    def show(self, file: IO[Any] | None = None) -> None:
        print_error(self.error, context=self.context)


class CommandFailed(click.ClickException):
    """A failure that is not a broker answer (a cluster that did not start, a check that failed)."""

    exit_code = EXIT_BROKER

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        err().print(error_panel(self.code, self.detail, self.hint))


class ConfigProblem(CommandFailed):
    """A usage or configuration problem found before talking to any broker; exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str = "", *, code: str = "USAGE_ERROR") -> None:
        super().__init__(code, message, hint)


class RaftMQGroup(click.Group):
    """A click group that turns a RaftMQError escaping any command into a :class:`BrokerFailure`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaftMQError as exc:
            raise BrokerFailure(exc) from exc


# --- options ----------------------------------------------------------------------------------------


def parse_bootstrap(text: str) -> list[str]:
    """``"http://a:1, http://b:2"`` -> normalized URLs. Raises click.BadParameter (exit 2)."""
    urls: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "http://" + part
        try:
            urls.append(normalize_url(part))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--bootstrap'") from None
    if not urls:
        raise click.BadParameter("give at least one broker URL", param_hint="'--bootstrap'")
    return list(dict.fromkeys(urls))


def _bootstrap_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else parse_bootstrap(value)


def bootstrap_option(*, default: str | None = DEFAULT_BOOTSTRAP, from_env: bool = True,
                     help_text: str = "Broker client URLs, comma separated."
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--bootstrap", "-b", "bootstrap", envvar=BOOTSTRAP_ENV if from_env else None,
                        default=default, show_default=default is not None, show_envvar=from_env,
                        callback=_bootstrap_callback, help=help_text)


def parse_comma_choice(text: str, choices: Sequence[str], option: str) -> list[str]:
    """``"all,1"`` -> ``["all", "1"]`` checked against ``choices``. Raises click.BadParameter."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in choices]
    if bad or not values:
        raise click.BadParameter(f"{', '.join(bad) or '(empty)'} is not one of {', '.join(choices)}",
                                 param_hint=f"'{option}'")
    return list(dict.fromkeys(values))


def normalize_acks(text: str) -> Literal[0, 1, "all"]:
    if text in ("all", "-1"):
        return "all"
    if text in ("0", "1"):
        return 0 if text == "0" else 1
    raise click.BadParameter(f"acks must be 0, 1 or all, not {text!r}", param_hint="'--acks'")


ACKS_CHOICE: Final = click.Choice(["0", "1", "all", "-1"])


# --- ports ------------------------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something is bound to ``host:port`` (a port in TIME_WAIT counts as free, as for the
    brokers, which listen with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --- signals ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stop_on_signals(*signals: signal.Signals) -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM (default both) while the block runs, instead of KeyboardInterrupt.

    Outside the main thread (where handlers cannot be installed) the event simply never fires."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in signals or (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --- formatting -------------------------------------------------------------------------------------


def fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{ms:,.0f} ms"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 0:
        return "unlimited"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" or size == int(size) else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def fmt_duration_ms(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 0:
        return "unlimited"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} ms"


def fmt_ids(ids: Iterable[int] | None) -> str:
    return ",".join(str(i) for i in ids) if ids else "-"


def safe(text: object) -> str:
    """Escape rich markup in text that came from outside (messages, names)."""
    return escape(str(text))


def kv_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def errors_table(errors: dict[str, tuple[int, RaftMQError]], *, title: str = "errors by code") -> Table:
    """``{code: (count, first error)}`` as a table with each code's hint."""
    table = Table(title=title, title_justify="left")
    table.add_column("code", style="red")
    table.add_column("records", justify="right")
    table.add_column("first message")
    table.add_column("what to do")
    for code, (count, error) in sorted(errors.items(), key=lambda item: -item[1][0]):
        table.add_row(code, fmt_int(count), safe(error.message), safe(hint_for(error) or "-"))
    return table
