"""The fault file system's durability model, without FUSE: what a power cut would take.

Method: drive ``DurabilityModel`` the way the FUSE layer does and compare its plan with a naive reference
(the file's bytes at its last fsync), over hypothesis-generated sequences of writes, truncates and fsyncs.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.chaos.faultfs.model import DurabilityModel, make_rule, parent_of

_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 40), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("truncate"), st.integers(0, 40), st.just(b"")),
    st.tuples(st.just("fsync"), st.just(0), st.just(b"")),
)


@settings(max_examples=300, deadline=None)
@given(initial=st.binary(max_size=20), ops=st.lists(_op, max_size=25))
def test_rolling_back_a_file_gives_its_bytes_at_the_last_fsync(initial: bytes,
                                                              ops: list[tuple[str, int, bytes]]) -> None:
    model = DurabilityModel()
    content = bytearray(initial)
    durable = bytes(initial)  # a file present at mount time is durable as it is
    for kind, position, data in ops:
        size_before = len(content)
        if kind == "write":
            span = model.needs_preimage(1, size_before, position, len(data))
            preimage = (span[0], bytes(content[span[0]:span[1]])) if span else None
            if position > len(content):
                content.extend(b"\0" * (position - len(content)))
            content[position:position + len(data)] = data
            model.wrote(1, size_before, len(content), preimage)
        elif kind == "truncate":
            span = model.truncate_preimage_range(1, size_before, position)
            preimage = bytes(content[span[0]:span[1]]) if span else b""
            del content[position:]
            content.extend(b"\0" * (position - len(content)))
            model.truncated(1, size_before, position, preimage)
        else:
            model.record(1, size_before)
            model.file_synced(1, len(content))
            durable = bytes(content)
    plan = model.plan_power_loss()
    rolled = bytearray(content)
    for rollback in plan.files:
        for offset, data in rollback.restore:
            if offset > len(rolled):
                rolled.extend(b"\0" * (offset - len(rolled)))
            rolled[offset:offset + len(data)] = data
        del rolled[rollback.keep_size:]
        rolled.extend(b"\0" * (rollback.keep_size - len(rolled)))
    assert bytes(rolled) == durable


def test_a_directory_op_is_durable_only_once_every_directory_it_touched_was_fsynced() -> None:
    model = DurabilityModel()
    model.directory_op("rename", "/a/x", target="/b/x", inode=5)
    assert model.directory_synced("/a") == []
    assert [op.kind for op in model.directory_synced("/b")] == ["rename"]
    assert model.pending == []


def test_pending_directory_ops_are_undone_newest_first() -> None:
    model = DurabilityModel()
    model.directory_op("create", "/t.tmp", inode=3)
    model.directory_op("rename", "/t.tmp", target="/t", inode=3)
    plan = model.plan_power_loss()
    assert [op.kind for op in plan.undo_ops] == ["rename", "create"]


def test_a_torn_cut_keeps_at_most_a_page_of_the_unsynced_tail() -> None:
    model = DurabilityModel()
    model.created(9)
    model.wrote(9, 0, 10_000, None)
    plan = model.plan_power_loss(torn=True, rng=random.Random(3))
    (rollback,) = plan.files
    assert 0 < rollback.keep_size <= 4096 and rollback.torn


def test_rules_are_validated_and_match_on_the_op_and_the_pattern() -> None:
    rule = make_rule(1, ops=["write"], pattern="*.log", errno_name="ENOSPC")
    assert rule.matches("write", "/topic-0/00000000.log")
    assert not rule.matches("read", "/topic-0/00000000.log")
    assert not rule.matches("write", "/journal")
    with pytest.raises(ValueError, match="ops must be"):
        make_rule(2, ops=["chmod"], errno_name="EIO")
    with pytest.raises(ValueError, match="needs an errno"):
        make_rule(3, ops=["write"])
    assert parent_of("/a/b") == "/a" and parent_of("/a") == "/"
