"""node.segment: the two index formats and one segment file on its own.

Goal: the sparse indexes encode, decode, look up and sanity-check as documented; a segment finds, reads and
walks its batches; the indexing rule is the same at append, truncate and rebuild (so the files are
byte-identical whichever path wrote them); recover() cuts at the first bad batch.
Method: real files under tmp_path, batches built with cluster.batch.encode_batch + stamp (conftest), a
hypothesis property comparing appended and rebuilt indexes. No clock, no sleeps.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.batch import parse_header
from raftmq.cluster.errors import InvariantViolation
from raftmq.node.segment import (
    OffsetIndex,
    Segment,
    TimeIndex,
    parse_segment_file_name,
    segment_file_name,
)

MakeBatch = Callable[..., bytes]


def fill(segment: Segment, make_batch: MakeBatch, count: int, **kwargs: int) -> list[bytes]:
    stored = []
    for _ in range(count):
        batch = make_batch(segment.next_offset, **kwargs)
        segment.append(batch, parse_header(batch))
        stored.append(batch)
    return stored


# --- indexes ------------------------------------------------------------------------------------


def test_offset_index_round_trip_and_lookup() -> None:
    index = OffsetIndex(100)
    index.append(110, 4096)
    index.append(125, 9000)
    copy = OffsetIndex.from_bytes(100, index.to_bytes())
    assert copy.to_bytes() == index.to_bytes() and len(copy) == 2
    assert len(index.to_bytes()) == 2 * OffsetIndex.ENTRY_BYTES
    assert copy.lookup(100) == (100, 0)  # before the first entry: the top of the segment
    assert copy.lookup(109) == (100, 0)
    assert copy.lookup(110) == (110, 4096)
    assert copy.lookup(124) == (110, 4096)
    assert copy.lookup(10**6) == (125, 9000)
    assert copy.check(16, size_bytes=9001) is None
    copy.keep(1)
    assert copy.lookup(200) == (110, 4096) and copy.last_position == 4096


def test_offset_index_refuses_entries_out_of_order() -> None:
    index = OffsetIndex(0)
    index.append(10, 500)
    with pytest.raises(InvariantViolation):
        index.append(10, 600)
    with pytest.raises(InvariantViolation):
        index.append(20, 400)
    with pytest.raises(InvariantViolation):
        index.append(0, 0)  # the first batch is never indexed


@pytest.mark.parametrize(("data", "size_bytes", "problem"), [
    (b"\x00" * 12, 10**6, "not a multiple"),
    (bytes.fromhex("00000005 00000100 00000003 00000200"), 10**6, "not sorted"),
    (bytes.fromhex("00000005 00000100 00000009 00000100"), 10**6, "not sorted"),
    (bytes.fromhex("00000000 00000000"), 10**6, "first batch"),
    (bytes.fromhex("00000005 00000100"), 0x100, "points at position 256"),
])
def test_offset_index_check_finds_nonsense(data: bytes, size_bytes: int, problem: str) -> None:
    index = OffsetIndex.from_bytes(0, data)
    found = index.check(len(data), size_bytes)
    assert found is not None and problem in found


def test_time_index_round_trip_lookup_and_check() -> None:
    index = TimeIndex(50)
    index.append(1_000, 50)
    index.append(2_000, 60)
    copy = TimeIndex.from_bytes(50, index.to_bytes())
    assert copy.to_bytes() == index.to_bytes() and copy.last_timestamp_ms == 2_000
    assert copy.lookup(999) is None
    assert copy.lookup(1_000) == 50
    assert copy.lookup(1_999) == 50
    assert copy.lookup(5_000) == 60
    assert copy.check(24) is None
    assert "not a multiple" in (copy.check(25) or "")
    unsorted = TimeIndex.from_bytes(0, index.to_bytes()[12:] + index.to_bytes()[:12])
    assert "not sorted" in (unsorted.check(24) or "")
    with pytest.raises(InvariantViolation):
        index.append(2_000, 70)  # only a larger max earns an entry


def test_segment_file_names_sort_by_offset() -> None:
    assert segment_file_name(812, ".log") == "00000000000000000812.log"
    assert parse_segment_file_name("00000000000000000812.timeindex") == (812, ".timeindex")
    for name in ("812.log", "00000000000000000812.log.tmp", "0000000000000000081x.log", "recovery-point"):
        assert parse_segment_file_name(name) is None
    assert sorted([segment_file_name(10, ".log"), segment_file_name(9, ".log")])[0].startswith("0" * 19 + "9")


# --- one segment ---------------------------------------------------------------------------------


def test_append_find_and_read(tmp_path: Path, make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 1000, index_interval_bytes=300)
    stored = fill(segment, make_batch, 20, records=3, value_bytes=150)
    assert segment.next_offset == 1060 and segment.size_bytes == sum(map(len, stored))
    assert segment.last_header == parse_header(stored[-1])
    position = 0
    for batch in stored:
        header = parse_header(batch)
        for offset in range(header.base_offset, header.next_offset):
            assert segment.find_batch(offset) == (position, header)
        assert segment.read_batches(position, len(batch), at_least_one=False) == batch
        assert segment.read_batches(position, len(batch) - 1, at_least_one=False) == b""
        assert segment.read_batches(position, 1, at_least_one=True) == batch
        assert segment.read_batches(position, len(batch) * 2 + 1, at_least_one=True) == b"".join(
            stored[stored.index(batch):stored.index(batch) + 2])
        position += len(batch)
    with pytest.raises(InvariantViolation):
        segment.find_batch(1060)
    headers = [h for _, h in segment.iter_headers(0, 1000)]
    assert headers == [parse_header(b) for b in stored]
    segment.close_files()


def test_index_rule_places_entries_by_bytes_since_the_last_entry(tmp_path: Path,
                                                                  make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 0, index_interval_bytes=0)
    stored = fill(segment, make_batch, 5)
    segment.close_files()
    index = OffsetIndex.from_bytes(0, segment.index_path.read_bytes())
    positions = [sum(map(len, stored[:i])) for i in range(5)]
    assert [index.lookup(i) for i in range(5)] == [(0, 0)] + [(i, positions[i]) for i in range(1, 5)]

    (tmp_path / "sparse").mkdir()
    sparse = Segment.create(tmp_path / "sparse", 0, index_interval_bytes=3 * len(stored[0]))
    fill(sparse, make_batch, 10)  # all batches have the same size here
    sparse.close_files()
    entries = OffsetIndex.from_bytes(0, sparse.index_path.read_bytes())
    assert len(entries) == 3  # at batches 3, 6, 9
    assert entries.lookup(8) == (6, 6 * len(stored[0]))


def test_time_index_records_where_the_max_timestamp_first_grew(tmp_path: Path, make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 0, index_interval_bytes=0)
    for timestamp_ms in (100, 500, 300, 500, 900, 200):
        batch = make_batch(segment.next_offset, timestamp_ms=timestamp_ms)
        segment.append(batch, parse_header(batch))
    segment.close_files()
    index = TimeIndex.from_bytes(0, segment.time_index_path.read_bytes())
    # Time entries come with offset-index entries (batches 1..5), and only when the max grew: at 1 and 4.
    assert [(index.lookup(t)) for t in (499, 500, 899, 900)] == [None, 1, 1, 4]
    assert segment.max_timestamp_ms == 900 and segment.offset_of_max_timestamp == 4


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(sizes=st.lists(st.integers(0, 900), min_size=5, max_size=40),
       timestamps=st.lists(st.integers(0, 50), min_size=40, max_size=40),
       interval=st.sampled_from([0, 1, 200, 1000, 4096]),
       cut=st.integers(0, 39))
def test_appended_truncated_and_rebuilt_indexes_are_identical(make_batch: MakeBatch, sizes: list[int],
                                                              timestamps: list[int], interval: int,
                                                              cut: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "a").mkdir()
        (directory / "b").mkdir()
        written = Segment.create(directory / "a", 7, index_interval_bytes=interval)
        for size, timestamp_ms in zip(sizes, timestamps, strict=False):
            batch = make_batch(written.next_offset, records=1 + size % 3, value_bytes=size,
                                  timestamp_ms=timestamp_ms)
            written.append(batch, parse_header(batch))
        # A truncated segment must hold exactly what appending its kept prefix would have produced.
        cut_offset = [h.base_offset for _, h in written.iter_headers(0, 7)][min(cut, len(sizes) - 1)]
        written.truncate_to(cut_offset)
        reference = Segment.create(directory / "b", 7, index_interval_bytes=interval)
        for size, timestamp_ms in zip(sizes, timestamps, strict=False):
            if reference.next_offset == cut_offset:
                break
            batch = make_batch(reference.next_offset, records=1 + size % 3, value_bytes=size,
                                  timestamp_ms=timestamp_ms)
            reference.append(batch, parse_header(batch))
        for segment in (written, reference):
            segment.close_files()
        assert written.log_path.read_bytes() == reference.log_path.read_bytes()
        assert written.index_path.read_bytes() == reference.index_path.read_bytes()
        assert written.time_index_path.read_bytes() == reference.time_index_path.read_bytes()
        assert written.max_timestamp_ms == reference.max_timestamp_ms
        # And recover() rebuilds the same bytes, so it reports nothing to rebuild.
        recovered = Segment.existing(directory / "a", 7, index_interval_bytes=interval)
        assert recovered.recover().indexes_rebuilt == ()
        assert recovered.next_offset == cut_offset
        recovered.close_files()


def test_recover_cuts_at_the_first_bad_batch(tmp_path: Path, make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 0, index_interval_bytes=100)
    stored = fill(segment, make_batch, 6, records=2)
    segment.close_files()
    bad_position = sum(map(len, stored[:4]))
    data = bytearray(segment.log_path.read_bytes())
    data[bad_position + 100] ^= 0x01  # a record byte of the fifth batch (offset 8)
    segment.log_path.write_bytes(bytes(data))
    recovered = Segment.existing(tmp_path, 0, index_interval_bytes=100)
    result = recovered.recover()
    assert result.truncated_at_offset == 8
    assert result.truncated_bytes == len(stored[4]) + len(stored[5])
    assert result.batches_checked == 4
    assert result.reason is not None and "CRC-32C mismatch at offset 8" in result.reason
    # Equal timestamps: the time index only holds its first entry, which survives the cut.
    assert result.indexes_rebuilt == (recovered.index_path.name,)
    assert recovered.log_path.stat().st_size == bad_position
    assert recovered.next_offset == 8 and recovered.last_header == parse_header(stored[3])
    recovered.close_files()


def test_load_trusted_doubts_missing_or_insane_indexes(tmp_path: Path, make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 0, index_interval_bytes=100)
    fill(segment, make_batch, 6)
    segment.close_files()

    def doubt() -> str | None:
        return Segment.existing(tmp_path, 0, index_interval_bytes=100).load_trusted(6)

    assert doubt() is None
    assert "ends at offset 6 but the next segment starts at 7" in (
        Segment.existing(tmp_path, 0, index_interval_bytes=100).load_trusted(7) or "")
    good = segment.index_path.read_bytes()
    segment.index_path.write_bytes(good[8:] + good[:8])
    assert "not sorted" in (doubt() or "")
    segment.index_path.unlink()
    assert "missing" in (doubt() or "")
    segment.index_path.write_bytes(good)
    segment.time_index_path.write_bytes(b"")
    assert "is empty" in (doubt() or "")


def test_truncate_to_requires_a_batch_boundary(tmp_path: Path, make_batch: MakeBatch) -> None:
    segment = Segment.create(tmp_path, 0, index_interval_bytes=0)
    fill(segment, make_batch, 3, records=4)
    with pytest.raises(InvariantViolation):
        segment.truncate_to(5)
    assert segment.truncate_to(12) == 0
    removed = segment.truncate_to(4)
    assert removed > 0 and segment.next_offset == 4 and segment.size_bytes == segment.log_path.stat().st_size
    size_bytes = segment.size_bytes
    assert segment.truncate_to(0) == size_bytes
    assert segment.is_empty and segment.last_header is None and segment.max_timestamp_ms == -1
    fill(segment, make_batch, 1)
    assert segment.next_offset == 1
    segment.close_files()
