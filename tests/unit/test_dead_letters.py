"""Retries and dead letters: the pure rules (cluster/dead_letters.py), then the client side on an in-process
cluster (client/dead_letter.py): a record that keeps failing is parked in <topic>.DLT with headers saying why,
one that fails and then succeeds is not, offsets are committed past both, and a replay sends parked records
back once.

Method: property tests for the header round trip and the backoff schedule; a group consumer running a
handler that fails on chosen values, with the retry pauses recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from raftmq.client import Admin, Consumer, GroupConsumer, Producer, TopicPartition
from raftmq.client.dead_letter import RetryingHandler, replay_dead_letters
from raftmq.client.types import ConsumerRecord
from raftmq.cluster.dead_letters import (
    REPLAYED_HEADER,
    DeadLetter,
    dead_letter_topic,
    original_headers,
    parse_dead_letter,
    retry_backoff_ms,
)

from raftmq.cli import cli
from tests.inprocess import InProcessCluster, wait_until

FAST: dict[str, Any] = {"request_timeout_ms": 2000, "max_wait_ms": 50, "retry_backoff_ms": 5,
                        "retry_backoff_ms_max": 50, "session_timeout_ms": 600, "auto_commit_interval_ms": 100}


@given(letter=st.builds(DeadLetter, st.text(min_size=1, max_size=20), st.integers(0, 255), st.integers(0, 2**62),
                        st.integers(0, 2**62), st.integers(1, 100), st.text(max_size=50), st.integers(0, 2**62)),
       own=st.lists(st.tuples(st.text(min_size=1, max_size=10).filter(lambda n: not n.startswith("dlt.")),
                              st.one_of(st.none(), st.binary(max_size=10))), max_size=4))
def test_dead_letter_headers_round_trip(letter: DeadLetter, own: list[tuple[str, bytes | None]]) -> None:
    headers = [*own, *letter.headers()]
    assert parse_dead_letter(headers) == letter
    assert original_headers(headers) == own
    assert parse_dead_letter(own) is None


def test_retry_backoff_doubles_up_to_its_cap() -> None:
    assert [retry_backoff_ms(n, base_ms=100, max_ms=1000) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert retry_backoff_ms(10_000, base_ms=1, max_ms=5) == 5
    with pytest.raises(ValueError):
        retry_backoff_ms(0, base_ms=1, max_ms=5)
    assert dead_letter_topic("orders") == "orders.DLT"


@pytest.mark.asyncio
async def test_failing_records_are_retried_parked_and_replayed(tmp_path: Path) -> None:
    async with InProcessCluster(tmp_path, brokers=3) as cluster:
        await cluster.create_topic("orders", partitions=2)
        for partition in range(2):
            await cluster.append_records("orders", partition, [b"ok", b"poison", b"flaky", b"ok"])
        attempts: collections.Counter[bytes] = collections.Counter()
        handled: list[tuple[int, int]] = []
        pauses: list[float] = []

        def handle(record: ConsumerRecord) -> None:
            attempts[record.value or b""] += 1
            if record.value == b"poison" or (record.value == b"flaky" and attempts[b"flaky"] % 2 == 1):
                raise ValueError(f"cannot handle {record.value!r}")
            handled.append((record.partition, record.offset))

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)

        async with Admin(cluster.urls) as admin, Producer(cluster.urls, acks="all") as producer, \
                GroupConsumer(cluster.urls, "billing", topics=["orders"], **FAST) as consumer:
            handler = RetryingHandler(handle, producer, admin, attempts=3, backoff_ms=100, sleep=sleep)
            stop = asyncio.Event()
            runner = asyncio.create_task(consumer.run(handler, stop=stop))
            await wait_until(lambda: len(handled) == 6 and handler.parked == 2, timeout_s=10,
                             what="every record handled or parked")
            stop.set()
            await asyncio.wait_for(runner, 5)
            assert attempts[b"poison"] == 6 and attempts[b"flaky"] == 4  # 3 each; flaky: fail, then succeed
            assert sorted(pauses) == sorted([0.1, 0.2] * 2 + [0.1] * 2)
            await consumer.commit()
            assert await consumer.committed() == {TopicPartition("orders", p): 4 for p in range(2)}

        async with Consumer(cluster.urls, max_wait_ms=50) as reader:
            reader.assign([("orders.DLT", 0), ("orders.DLT", 1)])
            parked = await poll_n(reader, 2)
        assert sorted((r.partition, r.value) for r in parked) == [(0, b"poison"), (1, b"poison")]
        letter = parse_dead_letter(parked[0].headers)
        assert letter is not None and letter.topic == "orders" and letter.attempts == 3
        assert letter.offset == 1 and letter.error == "ValueError: cannot handle b'poison'"

        dry = await asyncio.to_thread(CliRunner().invoke, cli, ["dlt", "replay", "orders.DLT", "--dry-run"],
                                      env={"RAFTMQ_BOOTSTRAP": ",".join(cluster.urls)}, catch_exceptions=False)
        assert dry.exit_code == 0 and "would replay 2 record(s) from orders.DLT" in dry.stdout, dry.output
        report = await replay_dead_letters(cluster.urls, "orders.DLT")
        assert (report.replayed, report.skipped) == (2, 0)
        assert (await replay_dead_letters(cluster.urls, "orders.DLT")).replayed == 0  # resumable: nothing new
        async with Consumer(cluster.urls, max_wait_ms=50) as reader:
            reader.assign([("orders", 0), ("orders", 1)])
            back = [r for r in await poll_n(reader, 10) if r.offset >= 4]
        assert sorted(r.value for r in back) == [b"poison", b"poison"]
        assert all((dict(r.headers)[REPLAYED_HEADER] or b"").startswith(b"orders.DLT/") for r in back)


async def poll_n(consumer: Consumer, count: int) -> list[ConsumerRecord]:
    got: list[ConsumerRecord] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got.extend(await consumer.poll(timeout_ms=200))
    return got
