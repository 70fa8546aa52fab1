"""``raftmq exchange create|list|describe|delete|bind|unbind``, and publishing for ``raftmq produce --exchange``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import click
from rich.table import Table

from raftmq.cli.common import RaftMQGroup, bootstrap_option, fmt_int, kv_table, out, safe
from raftmq.client.admin import Admin
from raftmq.client.publisher import ExchangePublisher
from raftmq.cluster.errors import RaftMQError, Unroutable

EXCHANGE_TYPES = click.Choice(["direct", "fanout", "topic", "headers"])


@click.group("exchange", cls=RaftMQGroup)
def exchange() -> None:
    """Create, list, describe and delete exchanges, and bind topics to them (AMQP-style routing)."""


def parse_headers(pairs: Iterable[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="'--header'")
        headers[name] = value
    return headers


def _binding_text(binding: Mapping[str, Any]) -> str:
    if binding.get("headers"):
        shown = ", ".join(f"{k}={v}" for k, v in binding["headers"].items())
        return f"{shown} (x-match {binding.get('match', 'all')})"
    return binding.get("key") or ""


def bindings_table(info: Mapping[str, Any]) -> Table:
    table = Table(title=f"bindings of {safe(info['name'])}", title_justify="left")
    table.add_column("topic")
    table.add_column("key / headers")
    for binding in info.get("bindings") or ():
        table.add_row(safe(binding["topic"]), safe(_binding_text(binding)))
    return table


@exchange.command("create")
@click.argument("name")
@click.option("--type", "kind", type=EXCHANGE_TYPES, required=True)
@click.option("--alternate-exchange", default=None, help="Where records no binding matches go.")
@bootstrap_option()
def create(name: str, kind: str, alternate_exchange: str | None, bootstrap: list[str]) -> None:
    """Create exchange NAME (declaring it again as it is succeeds)."""

    async def run() -> dict[str, Any]:
        async with Admin(bootstrap) as admin:
            return await admin.create_exchange(name, kind, alternate_exchange=alternate_exchange)

    info = asyncio.run(run())
    out().print(f"[green]exchange {safe(info['name'])}[/]: {info['type']}, alternate "
                f"{safe(info['alternate_exchange'] or '-')}")


@exchange.command("list")
@bootstrap_option()
def list_exchanges(bootstrap: list[str]) -> None:
    """Every exchange with its type, alternate exchange and binding count."""

    async def run() -> list[dict[str, Any]]:
        async with Admin(bootstrap) as admin:
            return await admin.list_exchanges()

    table = Table(title="exchanges", title_justify="left")
    for column in ("name", "type", "alternate", "bindings"):
        table.add_column(column, justify="right" if column == "bindings" else "left")
    for info in asyncio.run(run()):
        table.add_row(safe(info["name"]), info["type"], safe(info.get("alternate_exchange") or "-"),
                      fmt_int(len(info.get("bindings") or ())))
    out().print(table)


@exchange.command("describe")
@click.argument("name")
@bootstrap_option()
def describe(name: str, bootstrap: list[str]) -> None:
    """Exchange NAME and its bindings."""

    async def run() -> dict[str, Any]:
        async with Admin(bootstrap) as admin:
            return await admin.describe_exchange(name)

    info = asyncio.run(run())
    console = out()
    console.print(kv_table(f"exchange {safe(info['name'])}", [
        ("type", info["type"]), ("alternate exchange", safe(info.get("alternate_exchange") or "-")),
        ("bindings", fmt_int(len(info.get("bindings") or ())))]))
    console.print(bindings_table(info))


@exchange.command("delete")
@click.argument("name")
@bootstrap_option()
def delete(name: str, bootstrap: list[str]) -> None:
    """Delete exchange NAME and its bindings (the bound topics stay)."""

    async def run() -> None:
        async with Admin(bootstrap) as admin:
            await admin.delete_exchange(name)

    asyncio.run(run())
    out().print(f"[green]deleted exchange {safe(name)}[/]")


def _bind_command(unbind: bool) -> click.Command:
    verb = "unbind" if unbind else "bind"

    @click.command(verb)
    @click.argument("name")
    @click.argument("topic")
    @click.option("--key", default="", help="Binding key (direct) or pattern (topic: * one word, # zero or more).")
    @click.option("--header", "headers", multiple=True, help="NAME=VALUE a headers binding compares (repeat).")
    @click.option("--match", type=click.Choice(["all", "any"]), default="all", show_default=True,
                  help="Headers bindings: every header must match, or any one (AMQP x-match).")
    @bootstrap_option()
    def command(name: str, topic: str, key: str, headers: tuple[str, ...], match: str, bootstrap: list[str]) -> None:
        async def run() -> dict[str, Any]:
            async with Admin(bootstrap) as admin:
                return await admin.bind(name, topic, key=key, headers=parse_headers(headers), match=match,
                                        unbind=unbind)

        out().print(bindings_table(asyncio.run(run())))

    command.help = f"{verb.capitalize()} TOPIC {'from' if unbind else 'to'} exchange NAME."
    return command


exchange.add_command(_bind_command(False))
exchange.add_command(_bind_command(True))


# --- raftmq produce --exchange ---------------------------------------------------------------------------


async def publish_values(bootstrap: list[str], name: str, routing_key: str, values: Iterator[bytes], *,
                         key: bytes | None, headers: Mapping[str, str], mandatory: bool, acks: int | str,
                         timeout_s: float) -> dict[str, int]:
    """Publish each value in turn (one in flight: the answer says per destination what happened).
    Returns counts: published (every destination acknowledged), unroutable, failed."""
    counts = {"published": 0, "unroutable": 0, "failed": 0, "appends": 0}
    async with ExchangePublisher(bootstrap) as publisher:
        for value in values:
            try:
                receipt = await publisher.publish(name, value, routing_key, key=key, headers=headers,
                                                  mandatory=mandatory, acks=acks, timeout_s=timeout_s)
            except Unroutable:
                counts["unroutable"] += 1
                continue
            except RaftMQError as exc:
                counts["failed"] += 1
                if counts["failed"] == 1:
                    out().print(f"[red]{exc.code}[/]: {safe(exc.message)}")
                continue
            if receipt.routed:
                counts["published"] += 1
                counts["appends"] += len(receipt.destinations)
            else:
                counts["unroutable"] += 1
    return counts


def publish_summary(counts: Mapping[str, int]) -> Table:
    return kv_table("publish summary", [(k, fmt_int(v)) for k, v in counts.items()])
