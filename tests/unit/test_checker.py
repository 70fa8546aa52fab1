"""Tests of the chaos checker (chaos/checker.py) and its history model (chaos/history.py).

Goal: every outcome the checker reports is produced by a small hand-made history, with its verdict at each
acks level; and the checker agrees with the simulation of a correct log.
Method: hand-written histories for each finding; hypothesis for three properties (a correct log always
passes at acks=all; dropping one acked record yields exactly that one lost record, explained; History
survives a JSON round trip) and for the reorder sweep against a naive quadratic reference.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raftmq.chaos.checker import EXAMPLES_MAX, CheckResult, check
from raftmq.chaos.history import History, HistoryBuilder, Outcome, PollOp, ReadRecord, ReplicaLog, SendOp


def send(op_id: int, value: str, **fields: Any) -> SendOp:
    """A send on t/0 key k, acks=all, idempotent, ok, lasting [10*op_id, 10*op_id + 5]."""
    defaults: dict[str, Any] = {
        "process": 0,
        "idempotent": True,
        "acks": "all",
        "topic": "t",
        "key": "k",
        "start_ms": 10.0 * op_id,
        "end_ms": 10.0 * op_id + 5,
        "outcome": "ok",
        "partition": 0,
        "leader_id": 1,
        "leader_epoch": 1,
    }
    return SendOp(op_id=op_id, value=value, **(defaults | fields))


def read(
    offset: int, value: str | None, key: str | None = "k", topic: str = "t", partition: int = 0
) -> ReadRecord:
    return ReadRecord(topic, partition, offset, key, value)


def clean_history(n: int = 3) -> History:
    sends = [send(i, f"v{i}", offset=i) for i in range(n)]
    return History(sends=sends, reads=[read(i, f"v{i}") for i in range(n)], polls=[], replicas=[])


def kinds(result: CheckResult) -> dict[str, bool]:
    return {f.kind: f.expected for f in result.findings}


# --- hand-made histories ------------------------------------------------------------------------


def test_clean_run_passes_at_every_acks_level() -> None:
    h = clean_history()
    for acks in ("0", "1", "all"):
        sends = [replace(s, acks=acks) for s in h.sends]
        result = check(History(sends, h.reads, [], []), acks=acks)
        assert result.verdict == "PASS"
        assert result.findings == ()
        assert result.summary_row() == {
            "attempted": 3,
            "acked": 3,
            "lost": 0,
            "duplicated": 0,
            "unknown": 0,
            "recovered": 0,
            "reordered": 0,
            "divergence": 0,
            "verdict": "PASS",
        }


def test_lost_acked_write_fails_acks_all_but_is_expected_for_acks_1() -> None:
    all_h = History([send(0, "v0", offset=0), send(1, "v1", offset=1)], [read(0, "v0")], [], [])
    result = check(all_h, acks="all")
    assert (result.verdict, result.lost, kinds(result)) == ("FAIL", 1, {"lost": False})

    one_h = History([send(0, "v0", acks="1"), send(1, "v1", acks="1")], [read(0, "v0")], [], [])
    result = check(one_h, acks="1")
    assert (result.verdict, result.lost, kinds(result)) == ("PASS", 1, {"lost": True})
    assert result.lost_records[0].fate == "no_offset"  # acks=1 acks carry no offset


def test_acks_all_loss_without_a_majority_is_expected() -> None:
    h = History([send(0, "v0", offset=0), send(1, "v1", offset=1)], [read(0, "v0")], [], [])
    result = check(h, acks="all", majority_alive=False)
    assert result.verdict == "PASS"
    assert kinds(result) == {"lost": True}
    assert "majority_alive=False" in result.findings[0].explanation
    # Losing a majority can lose data; it never invents it.
    h.reads.append(read(1, "ghost"))
    result = check(h, acks="all", majority_alive=False)
    assert result.verdict == "FAIL" and [f.kind for f in result.bugs] == ["unexpected"]


def test_acks_all_loss_after_a_power_cut_without_fsync_is_expected_and_says_why() -> None:
    h = History([send(0, "v0", offset=0), send(1, "v1", offset=1)], [read(0, "v0")], [], [])
    why = "power cut with durability=interval: brokers acknowledge before they fsync"
    result = check(h, acks="all", loss_allowed=why)
    assert (result.verdict, result.lost, kinds(result)) == ("PASS", 1, {"lost": True})
    assert result.findings[0].explanation == why and result.loss_allowed == why
    # A power cut loses what was not on disk; it never invents records.
    h.reads.append(read(1, "ghost"))
    assert check(h, acks="all", loss_allowed=why).verdict == "FAIL"


def test_unexpected_value_is_a_bug_at_every_acks_level() -> None:
    for acks in ("0", "1", "all"):
        h = History([send(0, "v0", acks=acks)], [read(0, "v0"), read(1, "ghost"), read(2, None)], [], [])
        result = check(h, acks=acks)
        assert (result.verdict, result.unexpected) == ("FAIL", 2)
        assert kinds(result) == {"unexpected": False}
        assert [r.value for r in result.unexpected_records] == ["ghost", None]


def test_duplicates_are_bugs_only_from_idempotent_producers() -> None:
    reads = [read(0, "v0"), read(1, "v0")]
    plain = check(History([send(0, "v0", idempotent=False)], reads, [], []), acks="all")
    assert (plain.verdict, plain.duplicated, plain.duplicated_non_idempotent) == ("PASS", 1, 1)
    assert kinds(plain) == {"duplicated_non_idempotent": True}

    idem = check(History([send(0, "v0", idempotent=True)], reads, [], []), acks="all")
    assert (idem.verdict, idem.duplicated, idem.duplicated_idempotent) == ("FAIL", 1, 1)
    assert idem.duplicates[0].locations == (("t", 0, 0), ("t", 0, 1))

    idem_1 = check(History([send(0, "v0", acks="1")], reads, [], []), acks="1")
    assert idem_1.verdict == "PASS"  # idempotence is promised with acks=all only


def test_unknown_sends_read_are_recovered_and_informational() -> None:
    sends = [send(0, "v0", outcome="unknown", error="REQUEST_TIMED_OUT"), send(1, "v1", outcome="unknown")]
    result = check(History(sends, [read(0, "v0")], [], []), acks="all")
    assert (result.verdict, result.unknown, result.recovered, result.lost) == ("PASS", 2, 1, 0)
    assert [op.op_id for op in result.recovered_sends] == [0]
    assert kinds(result) == {"unknown": True, "recovered": True}


def test_failed_send_that_is_present_is_a_bug() -> None:
    sends = [send(0, "v0", outcome="fail", error="NOT_LEADER"), send(1, "v1", outcome="fail")]
    result = check(History(sends, [read(0, "v0")], [], []), acks="all")
    assert (result.verdict, result.failed, result.failed_but_present) == ("FAIL", 2, 1)
    assert kinds(result) == {"failed_but_present": False}


def test_reorder_of_a_later_send_is_a_bug_but_concurrent_sends_may_land_either_way() -> None:
    # a acked at [0, 5]; b started at 10 but sits before a; c concurrent with a ([2, 12]) may land anywhere.
    a = send(0, "a", start_ms=0.0, end_ms=5.0)
    b = send(1, "b", start_ms=10.0, end_ms=15.0)
    c = send(2, "c", start_ms=2.0, end_ms=12.0)
    other_key = send(3, "d", key="other", start_ms=20.0, end_ms=25.0)
    reads = [read(0, "d", key="other"), read(1, "c"), read(2, "b"), read(3, "a")]
    result = check(History([a, b, c, other_key], reads, [], []), acks="all")
    assert (result.verdict, result.reordered) == ("FAIL", 1)
    assert result.reorders[0].earlier_op_id == 0 and result.reorders[0].later_op_id == 1
    assert kinds(result) == {"reordered": False}

    acks0 = [replace(s, acks="0") for s in (a, b, c, other_key)]
    assert check(History(acks0, reads, [], []), acks="0").verdict == "PASS"


def test_offset_gap_is_a_bug_counted_in_missing_offsets() -> None:
    sends = [send(i, f"v{i}", acks="1") for i in range(3)]
    result = check(History(sends, [read(0, "v0"), read(1, "v1"), read(4, "v2")], [], []), acks="1")
    assert (result.verdict, result.offset_gaps) == ("FAIL", 2)
    assert (result.gaps[0].start_offset, result.gaps[0].end_offset) == (2, 4)


def test_divergence_is_a_bug_but_lag_is_not() -> None:
    h = clean_history()
    full = tuple((i, "k", f"v{i}") for i in range(3))
    lagging = [
        ReplicaLog(1, "t", 0, 0, full),
        ReplicaLog(2, "t", 0, 0, full[:1]),
        ReplicaLog(3, "t", 0, 0, ()),
    ]
    result = check(History(h.sends, h.reads, [], lagging), acks="all")
    assert (result.verdict, result.divergence, result.replica_lag) == ("PASS", 0, 2)
    assert [(r.broker_id, r.end_offset, r.end_offset_max) for r in result.lagging_replicas] == [
        (2, 1, 3),
        (3, 0, 3),
    ]

    split = [ReplicaLog(1, "t", 0, 0, full), ReplicaLog(2, "t", 0, 0, ((0, "k", "v0"), (1, "k", "other")))]
    result = check(History(h.sends, h.reads, [], split), acks="all")
    assert (result.verdict, result.divergence, result.replica_lag) == ("FAIL", 1, 1)
    assert result.divergent_offsets[0].copies == ((1, "k", "v1"), (2, "k", "other"))


def test_acked_record_read_at_another_offset_is_a_mismatch() -> None:
    sends = [send(0, "v0", offset=0), send(1, "v1", offset=1), send(2, "v2", offset=2)]
    result = check(History(sends, [read(0, "v0"), read(1, "v2"), read(2, "v1")], [], []), acks="all")
    assert (result.verdict, result.acked_offset_mismatch) == ("FAIL", 2)
    mismatch = result.offset_mismatches[0]
    assert (mismatch.op_id, mismatch.read_offsets, mismatch.value_now) == (1, (2,), "v2")


def test_lost_record_explanation_says_where_it_went() -> None:
    lost = send(1, "v1", offset=1, leader_id=2, leader_epoch=3)
    winner = send(2, "v2", offset=1, leader_id=1, leader_epoch=4, start_ms=30.0, end_ms=35.0)
    tail = send(3, "v3", offset=2, leader_id=2, leader_epoch=3)
    replicas = [
        ReplicaLog(2, "t", 0, 0, ((0, "k", "v0"), (1, "k", "v1"), (2, "k", "v3"))),  # stale copy
        ReplicaLog(1, "t", 0, 0, ((0, "k", "v0"), (1, "k", "v2"))),
    ]
    h = History([send(0, "v0", offset=0), lost, winner, tail], [read(0, "v0"), read(1, "v2")], [], replicas)
    result = check(h, acks="all")
    assert result.lost == 2 and result.divergence == 1
    first, second = result.lost_records
    assert (first.op_id, first.fate, first.acked_offset, first.leader_id, first.leader_epoch) == (
        1,
        "overwritten",
        1,
        2,
        3,
    )
    assert (first.value_now, first.replaced_by_op_id, first.replaced_by_leader_epoch) == ("v2", 2, 4)
    assert first.on_replicas == (2,)
    assert (second.fate, second.value_now, second.drained_end_offset) == ("truncated", None, 2)
    text = first.describe()
    assert "offset 1 now holds 'v2'" in text and "term 4" in text and "still on brokers [2]" in text


def test_lost_record_fates_hole_before_start_and_empty() -> None:
    sends = [send(i, f"v{i}", offset=i) for i in range(5)] + [send(5, "w", partition=1, offset=0)]
    result = check(History(sends, [read(1, "v1"), read(3, "v3")], [], []), acks="all")
    assert [(r.op_id, r.fate) for r in result.lost_records] == [
        (0, "before_start"),
        (2, "hole"),
        (4, "truncated"),
        (5, "empty_log"),
    ]


def test_polls_report_skips_and_rewinds_informationally() -> None:
    polls = [
        PollOp(7, "t", 0, 0.0, 1.0, ((0, "k", "v0"), (2, "k", "v2"))),  # internal skip
        PollOp(7, "t", 0, 2.0, 3.0, ((1, "k", "v1"),)),  # rewind across polls
        PollOp(8, "t", 0, 0.0, 1.0, ((0, "k", "v0"), (1, "k", "v1"))),
    ]
    h = clean_history()
    result = check(History(h.sends, h.reads, polls, []), acks="all")
    assert (result.verdict, result.poll_skips, result.nonmonotonic_polls) == ("PASS", 1, 1)
    assert [(a.kind, a.within_poll, a.offset_previous, a.offset) for a in result.poll_anomalies] == [
        ("skip", True, 0, 2),
        ("nonmonotonic", False, 2, 1),
    ]


def test_inconsistent_drain_and_misplaced_values_are_bugs() -> None:
    sends = [send(0, "v0"), send(1, "v1", key="x")]
    reads = [read(0, "v0"), read(0, "v0"), read(1, "v1", key="y"), read(1, "v2")]
    result = check(History(sends, reads, [], []), acks="all")
    assert (result.inconsistent_reads, result.misplaced, result.verdict) == (1, 1, "FAIL")
    assert result.inconsistent_read_offsets[0].records == (("y", "v1"), ("k", "v2"))


def test_malformed_histories_are_refused() -> None:
    with pytest.raises(ValueError, match="acks"):
        check(clean_history(), acks="1")
    with pytest.raises(ValueError, match="share value"):
        check(History([send(0, "v"), send(1, "v")], [], [], []), acks="all")
    with pytest.raises(ValueError, match="two logs"):
        check(History([], [], [], [ReplicaLog(1, "t", 0, 0, ()), ReplicaLog(1, "t", 0, 0, ())]), acks="all")
    with pytest.raises(ValueError, match="outcome"):
        send(0, "v", outcome="info")
    with pytest.raises(ValueError, match="acks"):
        check(clean_history(), acks="-1")
    with pytest.raises(ValueError, match="format"):
        History.from_json({**clean_history().to_json(), "format": "raftmq-history/0"})


def test_examples_are_capped_but_counts_are_exact() -> None:
    n = EXAMPLES_MAX + 7
    sends = [send(i, f"v{i}", offset=i) for i in range(n)]
    result = check(History(sends, [], [], []), acks="all")
    assert result.lost == n and len(result.lost_records) == EXAMPLES_MAX
    encoded = json.loads(json.dumps(result.to_json()))
    assert encoded == result.to_json()
    assert encoded["lost"] == n and encoded["verdict"] == "FAIL"


def test_builder_hands_out_op_ids_in_completion_order() -> None:
    b = HistoryBuilder()
    first = b.record_send(
        process=1,
        idempotent=True,
        acks="all",
        topic="t",
        key="k",
        value="v0",
        start_ms=0,
        end_ms=1,
        outcome="ok",
    )
    b.record_read("t", 0, 0, "k", "v0")
    b.record_poll(1, "t", 0, 2.0, 3.0, [(0, "k", "v0")])
    b.record_replica(1, "t", 0, 0, [(0, "k", "v0")])
    h = b.build()
    b.record_read("t", 0, 1, "k", "late")
    assert first.op_id == 0 and len(h.reads) == 1
    assert h.polls[0].records == ((0, "k", "v0"),)
    assert History.loads(h.dumps()) == h


# --- properties -----------------------------------------------------------------------------------

KEYS = ("a", "b", "c", "d")


@st.composite
def correct_runs(draw: st.DrawFn) -> History:
    """A run against a correct log: each stored attempt commits at a moment inside its send's interval,
    offsets follow commit order; ok sends are stored, unknown ones maybe, failed ones never; only
    non-idempotent sends may be stored twice (a retry). Replicas hold prefixes of the leader's log."""
    n = draw(st.integers(0, 30))
    sends: list[SendOp] = []
    commits: list[tuple[float, int, SendOp]] = []
    for op_id in range(n):
        start = draw(st.integers(0, 200)) * 1.0
        end = start + draw(st.integers(0, 50))
        outcome: Outcome = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "fail"]))
        idempotent = draw(st.booleans())
        copies = 0
        if outcome == "ok":
            copies = 1 + (0 if idempotent else draw(st.integers(0, 1)))
        elif outcome == "unknown":
            copies = draw(st.integers(0, 1 if idempotent else 2))
        key = draw(st.sampled_from(KEYS))
        op = SendOp(
            op_id,
            draw(st.integers(0, 3)),
            idempotent,
            "all",
            "t",
            key,
            f"v{op_id}",
            start,
            end,
            outcome,
            partition=KEYS.index(key) % 2,
            leader_id=draw(st.integers(1, 3)),
            leader_epoch=draw(st.integers(1, 5)),
        )
        sends.append(op)
        for _ in range(copies):
            commits.append((draw(st.floats(start, end)), len(commits), op))
    offsets: dict[int, int] = {0: 0, 1: 0}
    acked_offset: dict[int, int] = {}
    reads: list[ReadRecord] = []
    for _, _, op in sorted(commits, key=lambda c: (c[0], c[1])):
        p = op.partition
        assert p is not None
        reads.append(ReadRecord("t", p, offsets[p], op.key, op.value))
        acked_offset[op.op_id] = offsets[p]  # the last stored attempt is the acknowledged one
        offsets[p] += 1
    sends = [replace(op, offset=acked_offset[op.op_id]) if op.outcome == "ok" else op for op in sends]
    replicas = []
    for broker_id in (1, 2, 3):
        for p in (0, 1):
            log = tuple((r.offset, r.key, r.value) for r in reads if r.partition == p)
            replicas.append(ReplicaLog(broker_id, "t", p, 0, log[: draw(st.integers(0, len(log)))]))
    return History(sends, reads, [], replicas)


# Example counts keep the whole module under ~5 s; raise them locally when changing the checker.
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(correct_runs())
def test_a_correct_log_always_passes_at_acks_all(h: History) -> None:
    result = check(h, acks="all")
    assert result.verdict == "PASS", [f for f in result.findings if not f.expected]
    assert result.lost == result.unexpected == result.reordered == result.divergence == 0
    assert result.recovered == sum(
        1 for op in h.sends if op.outcome == "unknown" and any(r.value == op.value for r in h.reads)
    )


@FAST
@given(correct_runs(), st.data())
def test_dropping_one_acked_record_yields_exactly_that_lost_record(h: History, data: st.DataObject) -> None:
    acked = [op for op in h.sends if op.outcome == "ok"]
    if not acked:
        return
    victim = data.draw(st.sampled_from(acked))
    reads = [r for r in h.reads if r.value != victim.value]
    result = check(History(h.sends, reads, [], h.replicas), acks="all")
    assert result.lost == 1 and result.verdict == "FAIL"
    lost = result.lost_records[0]
    assert (lost.op_id, lost.key, lost.value, lost.partition) == (
        victim.op_id,
        victim.key,
        victim.value,
        victim.partition,
    )
    assert (lost.acked_offset, lost.leader_id, lost.leader_epoch) == (
        victim.offset,
        victim.leader_id,
        victim.leader_epoch,
    )
    left = sorted(r.offset for r in reads if r.partition == victim.partition)
    assert victim.offset is not None
    if not left:
        assert lost.fate == "empty_log"
    elif victim.offset > left[-1]:
        assert (lost.fate, lost.drained_end_offset) == ("truncated", left[-1] + 1)
    elif victim.offset < left[0]:
        assert lost.fate == "before_start"
    else:
        assert lost.fate == "hole" and result.offset_gaps >= 1
    on = tuple(
        r.broker_id
        for r in h.replicas
        if r.partition == victim.partition and any(v == victim.value for _, _, v in r.records)
    )
    assert lost.on_replicas == on


@st.composite
def shuffled_runs(draw: st.DrawFn) -> History:
    """Any order at all: the log is a random permutation of the sends, so reorders happen."""
    n = draw(st.integers(0, 25))
    sends = []
    for op_id in range(n):
        start = draw(st.integers(0, 100)) * 1.0
        outcome: Outcome = draw(st.sampled_from(["ok", "unknown", "fail"]))
        key = draw(st.sampled_from(KEYS[:2]))
        sends.append(
            SendOp(
                op_id,
                0,
                False,
                "all",
                "t",
                key,
                f"v{op_id}",
                start,
                start + draw(st.integers(0, 30)),
                outcome,
                partition=0,
            )
        )
    order = draw(st.permutations(sends))
    stored = [op for op in order if draw(st.booleans())]
    reads = [ReadRecord("t", 0, i, op.key, op.value) for i, op in enumerate(stored)]
    return History(sends, reads, [], [])


def naive_reorders(h: History) -> int:
    offset = {r.value: r.offset for r in h.reads}
    later = set()
    for a in h.sends:
        for b in h.sends:
            if (
                a.outcome == "ok"
                and a.key == b.key
                and a.end_ms < b.start_ms
                and a.value in offset
                and b.value in offset
                and offset[b.value] < offset[a.value]
            ):
                later.add(b.op_id)
    return len(later)


@FAST
@given(shuffled_runs())
def test_reorder_sweep_matches_the_naive_definition(h: History) -> None:
    assert check(h, acks="all").reordered == naive_reorders(h)


# A small alphabet with JSON escapes and non-ASCII: full Unicode adds seconds of table loading, no coverage.
ALPHABET = 'ab"\\\n\u00e9\u2603'
name = st.text(ALPHABET, max_size=4)
text = st.none() | st.text(ALPHABET, max_size=8)


@st.composite
def any_history(draw: st.DrawFn) -> History:
    records = st.lists(st.tuples(st.integers(0, 10**6), text, text), max_size=4).map(tuple)
    times = st.floats(0, 1e6, allow_nan=False)
    sends = []
    for op_id, value in enumerate(draw(st.lists(st.text(ALPHABET, max_size=8), unique=True, max_size=6))):
        start = draw(times)
        sends.append(
            SendOp(
                op_id,
                draw(st.integers(0, 9)),
                draw(st.booleans()),
                draw(st.sampled_from(["0", "1", "all"])),
                draw(name),
                draw(name),
                value,
                start,
                start + draw(times),
                draw(st.sampled_from(["ok", "fail", "unknown"])),
                draw(st.none() | st.integers(0, 5)),
                draw(st.none() | st.integers(0, 10**6)),
                draw(st.none() | st.integers(1, 5)),
                draw(st.none() | st.integers(0, 99)),
                draw(st.none() | name),
            )
        )
    reads = draw(
        st.lists(
            st.builds(ReadRecord, name, st.integers(0, 5), st.integers(0, 10**6), text, text), max_size=5
        )
    )
    polls = draw(
        st.lists(
            st.builds(PollOp, st.integers(0, 9), name, st.integers(0, 5), times, times, records), max_size=3
        )
    )
    replicas = draw(
        st.lists(
            st.builds(ReplicaLog, st.integers(1, 5), name, st.integers(0, 5), st.integers(0, 9), records),
            max_size=3,
        )
    )
    return History(sends, reads, polls, replicas)


@settings(FAST, max_examples=40)
@given(any_history())
def test_history_json_round_trip_is_identity(h: History) -> None:
    assert History.from_json(json.loads(json.dumps(h.to_json()))) == h
    assert History.loads(h.dumps()) == h
