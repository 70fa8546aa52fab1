"""``raftmq consume TOPIC``: print records as ``partition offset key value`` lines, or JSON lines.

Without ``--follow`` it reads up to the high watermark each partition had when the command started (or
``--max`` records) and exits; with ``--follow`` it keeps long-polling until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import Any

import click

from raftmq.cli.common import CommandFailed, bootstrap_option, err, stop_on_signals
from raftmq.client.admin import Admin
from raftmq.client.consumer import Consumer
from raftmq.client.group_consumer import GroupConsumer
from raftmq.client.push_consumer import GroupPushConsumer, PushConsumer
from raftmq.client.types import ConsumerRecord, TopicPartition
from raftmq.cluster import limits
from raftmq.cluster.errors import ClientTimeout, UnknownTopicOrPartition

NULL_TEXT = "-"  # how a missing key/value is shown in text mode
# How long a fetch may wait on the broker for records (ms): with --follow long polls keep requests few; without
# it the command ends soon after the last record.
_FOLLOW_MAX_WAIT_MS = 1000
_READ_MAX_WAIT_MS = 200
# Each poll returns after at most this long (ms), so Ctrl-C, --max and the --timeout check are noticed.
_POLL_TIMEOUT_MS = 500


def _text_field(data: bytes | None) -> str:
    if data is None:
        return NULL_TEXT
    return data.decode("utf-8", errors="backslashreplace")


def format_text(record: ConsumerRecord) -> str:
    return f"{record.partition} {record.offset} {_text_field(record.key)} {_text_field(record.value)}"


def _json_field(obj: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        obj[name] = None
        return
    try:
        obj[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj[name] = None
        obj[f"{name}_b64"] = base64.b64encode(data).decode()


def format_json(record: ConsumerRecord) -> str:
    obj: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                           "timestamp_ms": record.timestamp_ms}
    _json_field(obj, "key", record.key)
    _json_field(obj, "value", record.value)
    headers: list[list[Any]] = []
    for name, value in record.headers:
        if value is None:
            headers.append([name, None])
        else:
            try:
                headers.append([name, value.decode("utf-8")])
            except UnicodeDecodeError:
                headers.append([name, {"b64": base64.b64encode(value).decode()}])
    obj["headers"] = headers
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@click.command("consume")
@click.argument("topic")
@click.option("--partition", "-p", "partitions", type=click.IntRange(0), multiple=True,
              help="Read only this partition (repeat for several; default: all).")
@click.option("--from-beginning", "start", flag_value="beginning", help="Start at the log start [default].")
@click.option("--from-end", "start", flag_value="end",
              help="Start at the high watermark (only newer records).")
@click.option("--offset", type=click.IntRange(0), default=None,
              help="Start at this offset in each partition.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new records until Ctrl-C.")
@click.option("--max", "max_records", type=click.IntRange(1), default=None, help="Stop after N records.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--any-replica", is_flag=True,
              help="Read a replica's committed copy (possibly behind the leader) instead of the leader's.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.5, 3600), default=30.0, show_default=True,
              help="Without --follow: give up when no record arrives for this long.")
@click.option("--group", "-g", "group_id", default=None,
              help="Read as a member of this consumer group: partitions come from the group, reading starts at its "
                   "committed offsets and what was printed is committed (TOPIC may be a glob such as 'order.*').")
@click.option("--push", is_flag=True,
              help="With --group: a push consumer of that share group (queue mode); the broker streams records, at "
                   "most --prefetch unacknowledged; each is acknowledged once printed.")
@click.option("--ordered", is_flag=True,
              help="With --push: stream as a member of consumer group --group instead (each partition in offset "
                   "order, from the group's committed offsets); what was printed is committed.")
@click.option("--prefetch", type=click.IntRange(1, limits.push_prefetch_max), default=limits.push_prefetch_default,
              show_default=True, help="With --push: records in flight before the broker waits for acks (commits).")
@click.option("--dead-letter-exchange", default=None,
              help="With --push (share group): rejected, over-the-limit and expired records are published to this "
                   "exchange (before the group's and the topic's own).")
@bootstrap_option()
def consume(topic: str, partitions: tuple[int, ...], start: str | None, offset: int | None, follow: bool,
            max_records: int | None, output_format: str, any_replica: bool, timeout_s: float, group_id: str | None,
            push: bool, ordered: bool, prefetch: int, dead_letter_exchange: str | None, bootstrap: list[str]) -> None:
    """Print the records of TOPIC."""
    if offset is not None and start is not None:
        raise click.UsageError("use --offset or --from-beginning/--from-end, not both")
    if push:
        if group_id is None or partitions or offset is not None or any_replica or start is not None:
            raise click.UsageError("--push needs --group (a share group) and takes no --partition, --offset, "
                                   "--from-* or --any-replica")
        if ordered and dead_letter_exchange is not None:
            raise click.UsageError("--dead-letter-exchange is for share groups: a consumer group commits offsets")
        printed = asyncio.run(_consume_push(topic, group_id, bootstrap, prefetch, dead_letter_exchange, follow,
                                            max_records, output_format, timeout_s, ordered))
        kind = "consumer group" if ordered else "share group"
        err().print(f"[dim]{printed:,} record(s) pushed from {topic} to {kind} {group_id}[/]")
        return
    if ordered:
        raise click.UsageError("--ordered needs --push")
    if group_id is not None:
        if partitions or offset is not None or any_replica:
            raise click.UsageError("--group takes its partitions and offsets from the group: no --partition, "
                                   "--offset or --any-replica")
        printed = asyncio.run(_consume_group(topic, group_id, bootstrap, start or "beginning", follow, max_records,
                                             output_format, timeout_s))
        err().print(f"[dim]{printed:,} record(s) from {topic} as group {group_id}[/]")
        return
    printed, parts = asyncio.run(_consume(topic, bootstrap, list(dict.fromkeys(partitions)),
                                          start or "beginning", offset, follow, max_records, output_format,
                                          any_replica, timeout_s))
    err().print(f"[dim]{printed:,} record(s) from {parts} partition(s) of {topic}[/]")


async def _consume(topic: str, bootstrap: list[str], partitions: list[int], start: str, offset: int | None,
                   follow: bool, max_records: int | None, output_format: str, any_replica: bool,
                   timeout_s: float) -> tuple[int, int]:
    async with Admin(bootstrap) as admin:
        info = await admin.describe_topic(topic)
    bad = [p for p in partitions if p >= info.partition_count]
    if bad:
        raise UnknownTopicOrPartition(f"topic {topic!r} has {info.partition_count} partition(s); "
                                      f"no partition {', '.join(map(str, bad))}", topic=topic)
    chosen = [TopicPartition(topic, p) for p in (partitions or range(info.partition_count))]
    fmt = format_json if output_format == "json" else format_text
    stdout = sys.stdout
    printed = 0
    max_wait_ms = _FOLLOW_MAX_WAIT_MS if follow else _READ_MAX_WAIT_MS
    async with Consumer(bootstrap, read_from_any_replica=any_replica, max_wait_ms=max_wait_ms,
                        auto_offset_reset="earliest") as consumer:
        consumer.assign(chosen)
        await _seek(consumer, chosen, start, offset)
        ends: dict[TopicPartition, int] = {}
        pending: set[TopicPartition] = set()
        if not follow:
            ends = await consumer.end_offsets(chosen)
            for tp in chosen:
                if await consumer.position(*tp) < ends[tp]:
                    pending.add(tp)
        last_progress = time.monotonic()
        async with stop_on_signals() as interrupted:
            while not interrupted.is_set() and (follow or pending):
                if max_records is not None and printed >= max_records:
                    break
                records = await consumer.poll(timeout_ms=_POLL_TIMEOUT_MS)
                lines = []
                for record in records:
                    tp = TopicPartition(record.topic, record.partition)
                    if not follow and record.offset >= ends[tp]:
                        continue
                    lines.append(fmt(record))
                    printed += 1
                    if max_records is not None and printed >= max_records:
                        break
                if lines:
                    last_progress = time.monotonic()
                    try:
                        stdout.write("\n".join(lines) + "\n")
                        stdout.flush()
                    except BrokenPipeError:
                        break  # the reader went away (`| head`): stop quietly
                if not follow:
                    for tp in list(pending):
                        if await consumer.position(*tp) >= ends[tp]:
                            pending.discard(tp)
                    if pending and time.monotonic() - last_progress > timeout_s:
                        raise await _stalled(consumer, pending, ends, timeout_s)
    return printed, len(chosen)


async def _consume_group(topic: str, group_id: str, bootstrap: list[str], start: str, follow: bool,
                         max_records: int | None, output_format: str, timeout_s: float) -> int:
    """As a group member: partitions without a committed offset start at --from-beginning/--from-end; it
    stops on Ctrl-C, --max, or (without --follow) once its partitions are read to their end (or no record
    arrived for --timeout); leaving commits."""
    glob = any(c in topic for c in "*?")
    consumer = GroupConsumer(bootstrap, group_id, topics=() if glob else [topic], pattern=topic if glob else None,
                             auto_offset_reset="latest" if start == "end" else "earliest",
                             max_wait_ms=_FOLLOW_MAX_WAIT_MS if follow else _READ_MAX_WAIT_MS,
                             client_id="raftmq-cli")
    fmt = format_json if output_format == "json" else format_text
    printed = 0
    async with consumer, stop_on_signals() as interrupted:
        last_progress = time.monotonic()
        while not interrupted.is_set() and (max_records is None or printed < max_records):
            records = await consumer.poll(timeout_ms=_POLL_TIMEOUT_MS,
                                          max_records=min(500, (max_records or 500) - printed) or 1)
            if records:
                last_progress = time.monotonic()
                try:
                    sys.stdout.write("".join(fmt(r) + "\n" for r in records))
                    sys.stdout.flush()
                except BrokenPipeError:
                    break
                printed += len(records)
            elif not follow and (await _caught_up(consumer) or time.monotonic() - last_progress > timeout_s):
                break
    return printed


async def _consume_push(topic: str, group_id: str, bootstrap: list[str], prefetch: int,
                        dead_letter_exchange: str | None, follow: bool, max_records: int | None, output_format: str,
                        timeout_s: float, ordered: bool) -> int:
    """Print each pushed record, then acknowledge it (``ordered``: commit it); stops on Ctrl-C, --max, or
    (without --follow) when no record arrived for --timeout."""
    fmt = format_json if output_format == "json" else format_text
    printed = 0
    consumer: PushConsumer | GroupPushConsumer
    if ordered:
        consumer = GroupPushConsumer(bootstrap, group_id, topics=[topic], prefetch=prefetch)
    else:
        consumer = PushConsumer(bootstrap, group_id, topics=[topic], prefetch=prefetch,
                                dead_letter_exchange=dead_letter_exchange)
    async with consumer, stop_on_signals() as interrupted:
        last_progress = time.monotonic()
        while not interrupted.is_set() and (max_records is None or printed < max_records):
            record = await consumer.receive(_POLL_TIMEOUT_MS / 1000)
            if record is None:
                if not follow and time.monotonic() - last_progress > timeout_s:
                    break
                continue
            last_progress = time.monotonic()
            try:
                sys.stdout.write(fmt(record) + "\n")  # type: ignore[arg-type]  # the same fields as ConsumerRecord
                sys.stdout.flush()
            except BrokenPipeError:
                break  # not acknowledged: released to the group when the connection closes
            if isinstance(consumer, GroupPushConsumer):
                await consumer.commit(record)
            else:
                await consumer.ack(record)
            printed += 1
    return printed


async def _caught_up(consumer: GroupConsumer) -> bool:
    """Every partition this member owns is read to its end (a group read without --follow stops there)."""
    owned = consumer.assignment()
    if not owned:
        return False
    positions = consumer.positions()
    if any(tp not in positions for tp in owned):
        return False
    ends = await consumer.consumer.end_offsets(owned)
    return all(positions[tp] >= ends[tp] for tp in owned)


async def _seek(consumer: Consumer, chosen: list[TopicPartition], start: str, offset: int | None) -> None:
    """Where reading starts: --offset in every partition, else the log start or the high watermark."""
    if offset is not None:
        for tp in chosen:
            consumer.seek(tp.topic, tp.partition, offset)
    elif start == "end":
        await consumer.seek_to_end()
    else:
        await consumer.seek_to_beginning()


async def _stalled(consumer: Consumer, pending: set[TopicPartition], ends: dict[TopicPartition, int],
                   timeout_s: float) -> CommandFailed:
    """The error for partitions that got no record for --timeout seconds, with where each one is."""
    behind = ", ".join([f"{tp.partition} (at {await consumer.position(*tp)}, end {ends[tp]})"
                        for tp in sorted(pending)])
    return CommandFailed(ClientTimeout.code, f"no record arrived for {timeout_s:.0f} s; partitions still "
                                             f"behind: {behind}",
                         "check the partition leaders (raftmq cluster status), or raise --timeout")
