"""The demo's verdict: acked records exactly once, in send order, at the acknowledged offset."""

from __future__ import annotations

from raftmq.client.types import ConsumerRecord, DeliveryReport
from raftmq.cluster.errors import ClientTimeout

from raftmq.cli.demo import Sent, verify


def sent(n: int) -> list[Sent]:
    items = []
    for i in range(n):
        partition = i % 3
        item = Sent(f"v{i}".encode(), partition, i // 3)
        item.report = DeliveryReport("ok", "demo", partition, i // 3)
        items.append(item)
    return items


def log_of(items: list[Sent]) -> dict[int, list[ConsumerRecord]]:
    out: dict[int, list[ConsumerRecord]] = {0: [], 1: [], 2: []}
    for item in items:
        records = out[item.partition]
        records.append(ConsumerRecord("demo", item.partition, len(records), 0, None, item.value, ()))
    return out


def test_a_faithful_log_passes() -> None:
    items = sent(30)
    verdict = verify(items, log_of(items))
    assert verdict.passed and verdict.acked == 30 and verdict.consumed == 30


def test_lost_duplicated_reordered_and_foreign_records_fail() -> None:
    items = sent(30)
    lost = log_of(items)
    del lost[0][4]
    assert "missing" in "".join(verify(items, lost).problems)

    duplicated = log_of(items)
    duplicated[1].append(duplicated[1][0]._replace(offset=10))
    assert "duplicates" in "".join(verify(items, duplicated).problems)

    reordered = log_of(items)
    a, b = reordered[2][3], reordered[2][4]
    reordered[2][3], reordered[2][4] = b._replace(offset=3), a._replace(offset=4)
    problems = "".join(verify(items, reordered).problems)
    assert "out of send order" in problems and "another offset" in problems

    foreign = log_of(items)
    foreign[0].append(ConsumerRecord("demo", 0, 10, 0, None, b"never-sent", ()))
    assert "never sent" in "".join(verify(items, foreign).problems)


def test_unknown_outcomes_may_be_present_once_or_absent() -> None:
    items = sent(6)
    items[0].report = DeliveryReport("unknown", "demo", 0, None, ClientTimeout("t"))
    items[3].report = DeliveryReport("unknown", "demo", 0, None, ClientTimeout("t"))
    present = log_of(items)
    absent = log_of([i for i in items if i is not items[3]])
    assert verify(items, present).passed and verify(items, present).unknown_present == 2
    assert verify(items, absent).passed and verify(items, absent).unknown_present == 1
