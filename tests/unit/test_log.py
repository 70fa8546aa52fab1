"""node.log.PartitionLog: the partition log as the replication layer and the fetch path use it.

Goal: appends, reads, header walks, streams, timestamp lookups, truncation, reset, roll and retention behave
as documented, survive a reopen unchanged, and open() finds and cuts every kind of damage a crash or a bad
disk leaves (torn tail, garbage, flipped bytes, broken indexes, stale recovery point), then takes appends.
Method: real files under tmp_path; batches from cluster.batch.encode_batch + stamp (conftest) with explicit
offsets and times; a "crash" is a copy of the directory taken while the log is open (what SIGKILL leaves);
hypothesis properties (derandomized) check reads and timestamp lookups against a naive scan of every stored
batch; one test SIGKILLs a real appending process. No clock, no sleeps: only where the SIGKILL lands (and how
two threads interleave) varies between runs, never what is asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from raftmq.cluster import limits
from raftmq.cluster.batch import STORED_HEADER_BYTES, BatchHeader, iter_stored, parse_header, verify_stored
from raftmq.cluster.errors import CorruptBatch, InvalidConfig, InvariantViolation, OffsetOutOfRange, StorageError
from raftmq.node.log import RECOVERY_POINT_FILE, LogConfig, LogStream, PartitionLog

MakeBatch = Callable[..., bytes]
Opener = Callable[..., PartitionLog]
ThreeSegments = tuple[PartitionLog, list[bytes]]

SMALL = LogConfig(segment_bytes=limits.segment_bytes_min, index_interval_bytes=1024)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "t-0"


@pytest.fixture
def opened(log_dir: Path) -> Iterator[Opener]:
    """``opened(directory=log_dir, config=SMALL)``: open a log that is closed when the test ends."""
    logs: list[PartitionLog] = []

    def open_log(directory: Path = log_dir, config: LogConfig = SMALL) -> PartitionLog:
        logs.append(PartitionLog.open(directory, config))
        return logs[-1]

    yield open_log
    for log in logs:
        log.close()


def fill(log: PartitionLog, make_batch: MakeBatch, count: int, *, records: int = 3, value_bytes: int = 1000,
         append_time_ms: int = 1_000, append_step_ms: int = 0, timestamp_ms: int = 1_000) -> list[bytes]:
    """Append ``count`` batches at the log end; returns them."""
    stored = []
    for i in range(count):
        batch = make_batch(log.log_end_offset, records=records, value_bytes=value_bytes,
                           append_time_ms=append_time_ms + i * append_step_ms, timestamp_ms=timestamp_ms)
        log.append(batch)
        stored.append(batch)
    return stored


def naive_read(stored: list[bytes], headers: list[BatchHeader], offset: int, max_bytes: int) -> bytes:
    """The reference for read(): greedy whole batches from the one containing offset, at least one."""
    first = next(i for i, h in enumerate(headers) if h.next_offset > offset)
    out, total = [stored[first]], len(stored[first])
    for batch in stored[first + 1:]:
        if total + len(batch) > max_bytes:
            break
        out.append(batch)
        total += len(batch)
    return b"".join(out)


def drain(stream: LogStream) -> bytes:
    """Read a stream the way a snapshot sender does: fixed-size chunks until b""."""
    chunks = []
    while chunk := stream.read(limits.snapshot_chunk_bytes):
        assert len(chunk) == limits.snapshot_chunk_bytes or stream.remaining_bytes == 0
        chunks.append(chunk)
    return b"".join(chunks)


def crash_copy(log_dir: Path, name: str = "crashed") -> Path:
    """The directory as a SIGKILL would leave it: everything written, nothing more."""
    target = log_dir.parent / name
    shutil.copytree(log_dir, target)
    return target


def segment_files(directory: Path, suffix: str = ".log") -> list[Path]:
    return sorted(directory.glob(f"*{suffix}"))


def assert_consistent(log: PartitionLog, stored: list[bytes]) -> None:
    """The log holds exactly ``stored`` (which starts at log_start_offset)."""
    assert log.read(log.log_start_offset, 1 << 30) == b"".join(stored)
    assert log.size_bytes == sum(map(len, stored))
    assert log.last_batch == (parse_header(stored[-1]) if stored else None)
    assert list(log.iter_headers(log.log_start_offset)) == [parse_header(b) for b in stored]


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("segment_bytes", limits.segment_bytes_min - 1), ("segment_bytes", 2**31), ("segment_bytes", 1.5),
    ("segment_ms", 0), ("retention_ms", -2), ("retention_bytes", -5), ("index_interval_bytes", -1),
    ("index_interval_bytes", limits.segment_bytes_default + 1), ("segment_ms", True),
])
def test_config_validate_rejects_bad_values(field: str, value: object, log_dir: Path) -> None:
    config = LogConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match=field):
        config.validate()
    with pytest.raises(InvalidConfig):
        PartitionLog.open(log_dir, config)
    LogConfig().validate()
    LogConfig(retention_ms=-1, retention_bytes=-1, index_interval_bytes=0).validate()


# --- append and read ------------------------------------------------------------------------------


def test_empty_directory_opens_as_an_empty_log_at_zero(opened: Opener, log_dir: Path) -> None:
    log = opened()
    assert log_dir.is_dir()
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes, log.last_batch) == (0, 0, 0, None)
    assert log.recovery_report.segments == 0 and log.recovery_report.truncated_bytes == 0
    assert log.read(0, 100) == b""
    assert list(log.iter_headers(0)) == []
    assert log.offset_for_timestamp(0) is None and log.offset_for_timestamp(-5) is None
    assert [p.name for p in segment_files(log_dir)] == ["00000000000000000000.log"]


def test_append_and_read(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    stored = fill(log, make_batch, 5, records=4, value_bytes=50)
    assert log.log_end_offset == 20 and log.last_batch == parse_header(stored[-1])
    assert log.read(0, 10**6) == b"".join(stored)
    assert log.read(6, 10**6) == b"".join(stored[1:])  # 6 is inside the second batch [4, 8)
    assert log.read(7, len(stored[1]) + len(stored[2])) == stored[1] + stored[2]
    assert log.read(7, 1) == stored[1]  # max_bytes below one batch: still that one batch
    assert log.read(7, 0) == stored[1]
    assert log.read(20, 10**6) == b""  # at the end
    for offset in (-1, 21, 10**9):
        with pytest.raises(OffsetOutOfRange) as caught:
            log.read(offset, 100)
        assert caught.value.details == {"offset": offset, "log_start_offset": 0, "log_end_offset": 20}
    for _, chunk in iter_stored(log.read(0, 10**6)):
        verify_stored(chunk)


def test_append_refuses_a_gap_or_a_corrupt_batch(opened: Opener,
                                                  make_batch: MakeBatch) -> None:
    log = opened()
    stored = fill(log, make_batch, 2, records=1)
    with pytest.raises(InvariantViolation):
        log.append(make_batch(3))
    with pytest.raises(InvariantViolation):
        log.append(make_batch(1))
    damaged = bytearray(make_batch(2))
    damaged[-1] ^= 0xFF
    with pytest.raises(CorruptBatch):
        log.append(bytes(damaged))
    assert_consistent(log, stored)


def test_one_write_per_batch(opened: Opener, make_batch: MakeBatch,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    log = opened(config=LogConfig(index_interval_bytes=0))  # every batch but the first earns index entries
    fill(log, make_batch, 1)
    writes: list[bytes] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    batch = make_batch(log.log_end_offset, value_bytes=5000)
    log.append(batch)
    # The whole batch in one write, then one offset-index entry and the first time-index entry.
    assert writes == [batch, writes[1], writes[2]] and [len(w) for w in writes[1:]] == [8, 12]


def test_rolls_by_size(opened: Opener, make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened()
    stored = fill(log, make_batch, 60, value_bytes=1000)
    files = segment_files(log_dir)
    assert len(files) == log.segment_count >= 3
    assert all(f.stat().st_size <= SMALL.segment_bytes for f in files)
    assert all(f.stat().st_size + len(stored[0]) > SMALL.segment_bytes for f in files[:-1])  # each one full
    for f in files:  # named by the base offset of its first batch
        assert parse_header(f.read_bytes()[:STORED_HEADER_BYTES]).base_offset == int(f.name[:20])
    assert_consistent(log, stored)


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(opened: Opener,
                                                                  make_batch: MakeBatch) -> None:
    log = opened()
    fill(log, make_batch, 1)
    big = fill(log, make_batch, 1, records=1, value_bytes=SMALL.segment_bytes + 10)[0]
    fill(log, make_batch, 1)
    assert log.segment_count == 3
    assert log.read(3, 1) == big


def test_rolls_by_append_time_not_wall_clock(opened: Opener, make_batch: MakeBatch,
                                             log_dir: Path) -> None:
    log = opened(config=LogConfig(segment_ms=1_000))
    for append_time_ms in (5_000, 5_500, 5_999, 6_000, 6_100, 9_000, 8_000):
        log.append(make_batch(log.log_end_offset, append_time_ms=append_time_ms, value_bytes=10))
    # Segments start at the batches appended at 5_000, 6_000 and 9_000 (8_000 - 9_000 < segment_ms).
    assert [int(f.name[:20]) for f in segment_files(log_dir)] == [0, 3, 5]


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 9000)), min_size=10, max_size=60),
       interval=st.sampled_from([0, 100, 1000, 4096]),
       max_bytes=st.sampled_from([1, 500, 3000, 20_000, 200_000]))
@example(shapes=[(3, 4000)] * 40, interval=1000, max_bytes=70_000)  # several segments, reads across them
def test_read_and_iter_headers_match_a_naive_scan(make_batch: MakeBatch, shapes: list[tuple[int, int]],
                                                 interval: int, max_bytes: int) -> None:
    config = LogConfig(segment_bytes=limits.segment_bytes_min, index_interval_bytes=interval)
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog.open(Path(tmp), config)
        stored = []
        for records, value_bytes in shapes:
            stored.append(make_batch(log.log_end_offset, records=records, value_bytes=value_bytes))
            log.append(stored[-1])
        headers = [parse_header(b) for b in stored]
        for round_ in range(2):  # before and after a reopen
            end = log.log_end_offset
            for offset in range(end):
                expected = naive_read(stored, headers, offset, max_bytes)
                assert log.read(offset, max_bytes) == expected, (round_, offset)
            for offset in range(0, end, 7):
                first = next(i for i, h in enumerate(headers) if h.next_offset > offset)
                assert list(log.iter_headers(offset)) == headers[first:]
            if len(shapes) == 40:
                assert log.segment_count >= 5
            log.close()
            log = PartitionLog.open(Path(tmp), config)
            assert log.recovery_report.truncated_bytes == 0 and log.recovery_report.indexes_rebuilt == ()
        log.close()


def test_iter_headers_range_and_live_appends(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    fill(log, make_batch, 3, records=2)
    with pytest.raises(OffsetOutOfRange):
        log.iter_headers(7)
    with pytest.raises(OffsetOutOfRange):
        log.iter_headers(-1)
    walk = log.iter_headers(3)
    assert next(walk).base_offset == 2
    fill(log, make_batch, 1, records=2)  # appended while walking: the walk runs to the end as it is then
    assert [h.base_offset for h in walk] == [4, 6]


def test_offset_for_timestamp_simple(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    for timestamp_ms in (100, 300, 200, 500):
        log.append(make_batch(log.log_end_offset, records=2, timestamp_ms=timestamp_ms))
    # Batch max timestamps: 101, 301, 201, 501.
    assert [log.offset_for_timestamp(t) for t in (0, 101, 102, 250, 301, 302, 501, 502)] == [
        0, 0, 2, 2, 2, 6, 6, None]


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(timestamps=st.lists(st.integers(0, 10_000), min_size=30, max_size=80),
       interval=st.sampled_from([0, 500, 4096]))
@example(timestamps=[(i * 7919) % 10_000 for i in range(100)], interval=500)
def test_offset_for_timestamp_matches_a_naive_scan(make_batch: MakeBatch, timestamps: list[int],
                                                   interval: int) -> None:
    config = LogConfig(segment_bytes=limits.segment_bytes_min, index_interval_bytes=interval)
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog.open(Path(tmp), config)
        headers: list[BatchHeader] = []
        for timestamp_ms in timestamps:
            headers.append(log.append(make_batch(log.log_end_offset, records=2, value_bytes=1500,
                                                 timestamp_ms=timestamp_ms)))
        for round_ in range(2):
            for target in sorted({0, *timestamps, *(t + 1 for t in timestamps), 10_002}):
                expected = next((h.base_offset for h in headers if h.max_timestamp_ms >= target), None)
                assert log.offset_for_timestamp(target) == expected, (round_, target)
            log.close()
            log = PartitionLog.open(Path(tmp), config)
        log.close()


# --- streams --------------------------------------------------------------------------------------


def test_open_stream_across_segments(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    stored = fill(log, make_batch, 80, value_bytes=1000)
    assert log.segment_count >= 3
    headers = [parse_header(b) for b in stored]
    assert [h.base_offset for h in headers[:3]] == [0, 3, 6]
    end = log.log_end_offset
    # (from_offset, end_offset, index of the first batch streamed, index after the last one)
    cases = [(0, end, 0, 80), (4, 198, 1, 66), (3, 3, 1, 1), (end, end, 80, 80)]
    for start, stop_offset, first, stop in cases:
        with log.open_stream(start, stop_offset) as stream:
            assert stream.size_bytes == sum(map(len, stored[first:stop]))
            data = drain(stream)
        assert data == b"".join(stored[first:stop]), (start, stop_offset)
    with pytest.raises(InvariantViolation):
        log.open_stream(0, 4)  # 4 is inside the batch [3, 6)
    with pytest.raises(InvariantViolation):
        log.open_stream(9, 6)
    with pytest.raises(OffsetOutOfRange):
        log.open_stream(0, log.log_end_offset + 3)


def test_open_stream_survives_retention_and_stops_on_truncation(opened: Opener,
                                                                make_batch: MakeBatch) -> None:
    log = opened(config=LogConfig(segment_bytes=limits.segment_bytes_min, retention_bytes=0))
    stored = fill(log, make_batch, 60, value_bytes=1000)
    stream = log.open_stream(0, log.log_end_offset)
    first_chunk = stream.read(1000)
    deleted = log.apply_retention(now_ms=0)
    assert deleted and log.log_start_offset > 0
    rest = stream.read(-1)
    assert first_chunk + rest == b"".join(stored) and stream.read(10) == b"" and stream.remaining_bytes == 0
    stream.close()
    stream.close()

    stream = log.open_stream(log.log_start_offset, log.log_end_offset)
    log.truncate_to(parse_header(stored[-2]).base_offset)
    with pytest.raises(StorageError):
        stream.read(100)
    stream.close()
    with pytest.raises(ValueError):
        stream.read(1)


# --- truncate and reset ----------------------------------------------------------------------------


def test_truncate_to_mid_segment_then_append(opened: Opener, make_batch: MakeBatch,
                                             log_dir: Path) -> None:
    log = opened()
    stored = fill(log, make_batch, 60, value_bytes=1000)
    files_before = segment_files(log_dir)
    cut = parse_header(stored[7]).base_offset  # inside the first segment
    log.truncate_to(cut)
    assert log.log_end_offset == cut and log.segment_count == 1
    assert segment_files(log_dir) == files_before[:1]
    assert log.recovery_point_offset <= cut
    assert_consistent(log, stored[:7])
    more = fill(log, make_batch, 3, records=1, append_time_ms=7)
    assert_consistent(log, stored[:7] + more)
    log.close()
    reopened = opened()
    assert reopened.recovery_report.indexes_rebuilt == () and reopened.recovery_report.truncated_bytes == 0
    assert_consistent(reopened, stored[:7] + more)


def test_truncate_to_across_segments_and_at_segment_bases(opened: Opener,
                                                          make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened()
    stored = fill(log, make_batch, 80, value_bytes=1000)
    bases = [int(f.name[:20]) for f in segment_files(log_dir)]
    assert len(bases) >= 4
    keep = next(i for i, b in enumerate(stored) if parse_header(b).base_offset > bases[2]) + 1
    log.truncate_to(parse_header(stored[keep]).base_offset)  # inside the third segment
    assert [int(f.name[:20]) for f in segment_files(log_dir)] == bases[:3]
    assert_consistent(log, stored[:keep])
    log.truncate_to(bases[2])  # exactly a segment base: the whole segment goes
    assert [int(f.name[:20]) for f in segment_files(log_dir)] == bases[:2]
    kept = [b for b in stored if parse_header(b).base_offset < bases[2]]
    assert_consistent(log, kept)
    kept += fill(log, make_batch, 30, value_bytes=1000)
    assert_consistent(log, kept)
    log.truncate_to(log.log_end_offset)  # a no-op
    with pytest.raises(InvariantViolation):
        log.truncate_to(1)  # not a batch boundary
    with pytest.raises(InvariantViolation):
        log.truncate_to(log.log_end_offset + 3)
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset, log.segment_count, log.last_batch) == (0, 0, 1, None)
    assert_consistent(log, [])
    assert_consistent(log, fill(log, make_batch, 2))


def test_reset_starts_empty_at_an_offset(opened: Opener, make_batch: MakeBatch,
                                         log_dir: Path) -> None:
    log = opened()
    fill(log, make_batch, 40, value_bytes=1000)
    log.reset(5_000)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (5_000, 5_000, 0)
    assert log.last_batch is None
    assert [f.name for f in segment_files(log_dir)] == ["00000000000000005000.log"]
    assert log.read(5_000, 100) == b""
    with pytest.raises(OffsetOutOfRange):
        log.read(0, 100)
    stored = fill(log, make_batch, 2)
    log.close()
    reopened = opened()
    assert reopened.log_start_offset == 5_000
    assert_consistent(reopened, stored)
    reopened.reset(10)  # backwards works too
    assert reopened.log_end_offset == 10 and reopened.segment_count == 1


# --- retention --------------------------------------------------------------------------------------


def test_retention_by_time_never_deletes_the_active_segment(opened: Opener,
                                                            make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened(config=LogConfig(segment_bytes=limits.segment_bytes_min, retention_ms=10_000))
    stored = fill(log, make_batch, 80, value_bytes=3000, append_time_ms=0, append_step_ms=1_000)
    bases = [int(f.name[:20]) for f in segment_files(log_dir)]
    assert len(bases) >= 4
    assert log.apply_retention(now_ms=10_000) == []  # nothing was appended before 10_000 - 10_000
    assert log.apply_retention(now_ms=10**9) == bases[:-1]  # everything expired; the active one stays
    assert log.segment_count == 1 and log.log_start_offset == bases[-1]
    with pytest.raises(OffsetOutOfRange) as caught:
        log.read(0, 10)
    assert caught.value.details["log_start_offset"] == log.log_start_offset
    kept = [b for b in stored if parse_header(b).base_offset >= log.log_start_offset]
    assert_consistent(log, kept)


def test_retention_by_time_stops_at_the_first_young_segment(opened: Opener,
                                                            make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened(config=LogConfig(segment_bytes=limits.segment_bytes_min, retention_ms=10_000))
    stored = fill(log, make_batch, 80, value_bytes=3000, append_time_ms=0, append_step_ms=1_000)
    bases = [int(f.name[:20]) for f in segment_files(log_dir)]
    headers = [parse_header(b) for b in stored]
    second_max_ms = max(h.append_time_ms for h in headers if bases[1] <= h.base_offset < bases[2])
    # now - retention must pass the second segment's newest batch to delete it.
    assert log.apply_retention(now_ms=second_max_ms + 10_000) == bases[:1]
    assert log.apply_retention(now_ms=second_max_ms + 10_001) == bases[1:2]
    assert log.log_start_offset == bases[2]


def test_retention_by_size(opened: Opener, make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened(config=LogConfig(segment_bytes=limits.segment_bytes_min,
                                  retention_bytes=2 * limits.segment_bytes_min))
    fill(log, make_batch, 100, value_bytes=1000)
    sizes = [f.stat().st_size for f in segment_files(log_dir)]
    bases = [int(f.name[:20]) for f in segment_files(log_dir)]
    deleted = log.apply_retention(now_ms=0)
    # Delete while what stays is still >= retention_bytes.
    expected = []
    total = sum(sizes)
    for base, size in zip(bases[:-1], sizes[:-1], strict=True):
        if total - size < log.config.retention_bytes:
            break
        expected.append(base)
        total -= size
    assert deleted == expected and deleted
    assert log.size_bytes == total >= log.config.retention_bytes
    assert log.apply_retention(now_ms=0) == []
    unlimited = opened(log_dir.parent / "unlimited", LogConfig(segment_bytes=limits.segment_bytes_min,
                                                               retention_ms=-1, retention_bytes=-1))
    fill(unlimited, make_batch, 60, value_bytes=1000)
    assert unlimited.segment_count > 1 and unlimited.apply_retention(now_ms=10**15) == []


# --- reopen and recovery ------------------------------------------------------------------------------


def test_reopen_after_close_has_the_same_state(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    stored = fill(log, make_batch, 70, value_bytes=3000, timestamp_ms=42)
    state = (log.log_start_offset, log.log_end_offset, log.size_bytes, log.last_batch, log.segment_count)
    log.close()
    log.close()  # idempotent
    with pytest.raises(StorageError):
        log.read(0, 10)
    reopened = opened()
    report = reopened.recovery_report
    assert report.segments == state[4] and report.truncated_bytes == 0 and report.reason is None
    assert report.indexes_rebuilt == () and report.truncated_at_offset is None
    assert (reopened.log_start_offset, reopened.log_end_offset, reopened.size_bytes, reopened.last_batch,
            reopened.segment_count) == state
    assert reopened.recovery_point_offset == reopened.log_end_offset
    # A clean close leaves a recovery point at the end: only the last segment is validated on open.
    assert report.batches_checked < len(stored)
    assert_consistent(reopened, stored)
    assert reopened.offset_for_timestamp(44) == 0


def damaged_reopen(opened: Opener, log_dir: Path, damage: Callable[[Path], object]
                   ) -> PartitionLog:
    """Crash-copy the directory, apply ``damage`` to the copy, and open it."""
    copy = crash_copy(log_dir)
    damage(copy)
    return opened(copy)


def last_log_file(directory: Path) -> Path:
    return segment_files(directory)[-1]


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


def check_cut(log: PartitionLog, stored: list[bytes], keep: int, make_batch: MakeBatch,
              reason_part: str) -> None:
    """The log was cut right before ``stored[keep]``, says so, and takes appends at the new end."""
    report = log.recovery_report
    cut_offset = parse_header(stored[keep]).base_offset if keep < len(stored) else parse_header(
        stored[-1]).next_offset
    assert report.truncated_at_offset == cut_offset
    assert report.reason is not None and reason_part in report.reason, report.reason
    assert f"at offset {cut_offset} in " in report.reason
    assert log.log_end_offset == cut_offset
    assert_consistent(log, stored[:keep])
    more = fill(log, make_batch, 2, records=1)
    assert_consistent(log, stored[:keep] + more)


@pytest.fixture
def three_segments(opened: Opener, make_batch: MakeBatch, log_dir: Path
                   ) -> tuple[PartitionLog, list[bytes]]:
    log = opened()
    stored = fill(log, make_batch, 55, value_bytes=1000)
    assert log.segment_count == 3
    return log, stored


def test_recovery_cuts_a_torn_tail(opened: Opener, make_batch: MakeBatch, log_dir: Path,
                                   three_segments: ThreeSegments) -> None:
    _, stored = three_segments

    def tear(directory: Path) -> None:
        path = last_log_file(directory)
        os.truncate(path, path.stat().st_size - 5)

    log = damaged_reopen(opened, log_dir, tear)
    assert log.recovery_report.truncated_bytes == len(stored[-1]) - 5
    check_cut(log, stored, len(stored) - 1, make_batch, "torn write")


def test_recovery_cuts_appended_garbage(opened: Opener, make_batch: MakeBatch, log_dir: Path,
                                        three_segments: ThreeSegments) -> None:
    _, stored = three_segments
    for garbage in (b"\x00" * 7, b"\x00" * 40, bytes(range(200, 256)) * 5):
        def append_garbage(directory: Path, garbage: bytes = garbage) -> None:
            with last_log_file(directory).open("ab") as f:
                f.write(garbage)

        log = damaged_reopen(opened, log_dir, append_garbage)
        assert log.recovery_report.truncated_bytes == len(garbage)
        check_cut(log, stored, len(stored), make_batch, "")
        log.close()
        shutil.rmtree(log_dir.parent / "crashed")


def test_recovery_cuts_a_flipped_byte_in_the_last_batch_body(
        opened: Opener, make_batch: MakeBatch, log_dir: Path,
        three_segments: ThreeSegments) -> None:
    _, stored = three_segments
    log = damaged_reopen(opened, log_dir,
                         lambda d: flip(last_log_file(d), last_log_file(d).stat().st_size - 10))
    assert log.recovery_report.truncated_bytes == len(stored[-1])
    check_cut(log, stored, len(stored) - 1, make_batch, "batch CRC-32C mismatch")


@pytest.mark.parametrize(("field_position", "reason"), [
    (16, "prefix CRC mismatch"),  # append_time_ms (the broker's prefix)
    (4, "prefix CRC mismatch"),  # raft_index (the broker's prefix)
    (22, "prefix CRC mismatch"),  # BaseOffset: outside the v2 CRC, under the prefix's
    (33, "prefix CRC mismatch"),  # PartitionLeaderEpoch: outside the v2 CRC, under the prefix's
    (58, "batch CRC-32C mismatch"),  # MaxTimestamp, covered by the producer's CRC
    (28, "length field is nonsense"),  # BatchLength: 256 MiB more
])
def test_recovery_cuts_a_flipped_byte_in_the_last_batch_header(
        opened: Opener, make_batch: MakeBatch, log_dir: Path,
        three_segments: ThreeSegments, field_position: int, reason: str) -> None:
    _, stored = three_segments

    def damage(directory: Path) -> None:
        path = last_log_file(directory)
        flip(path, path.stat().st_size - len(stored[-1]) + field_position)

    log = damaged_reopen(opened, log_dir, damage)
    check_cut(log, stored, len(stored) - 1, make_batch, reason)


def test_every_torn_length_and_every_flipped_byte_is_cut_at_the_right_batch(
        tmp_path: Path, make_batch: MakeBatch) -> None:
    with PartitionLog.open(tmp_path / "pristine", SMALL) as log:
        stored = fill(log, make_batch, 4, records=2, value_bytes=120)
    pristine = (tmp_path / "pristine" / "00000000000000000000.log").read_bytes()
    boundaries = [0]
    for batch in stored:
        boundaries.append(boundaries[-1] + len(batch))
    last_start = boundaries[-2]

    def reopen(data: bytes, case: str) -> PartitionLog:
        directory = tmp_path / case
        directory.mkdir()
        (directory / "00000000000000000000.log").write_bytes(data)
        return PartitionLog.open(directory, SMALL)

    # Sampled to stay fast: a torn write of many lengths (both sides of the boundary, each header field)...
    lengths = {*range(last_start - 3, last_start + 14), *range(last_start + 14, len(pristine), 11)}
    for length in sorted(lengths):
        with reopen(pristine[:length], f"torn-{length}") as log:
            keep = max(i for i, b in enumerate(boundaries) if b <= length)
            assert log.log_end_offset == 2 * keep and log.size_bytes == boundaries[keep], length
            assert log.recovery_report.truncated_bytes == length - boundaries[keep]
    # ...and a flipped byte in every header field and across the body: every byte is under a CRC.
    header_bytes = range(last_start, last_start + 79, 3)
    for position in sorted({*header_bytes, *range(last_start + 79, len(pristine), 13), len(pristine) - 1}):
        damaged = bytearray(pristine)
        damaged[position] ^= 0x01
        with reopen(bytes(damaged), f"flip-{position}") as log:
            assert log.log_end_offset == 6 and log.recovery_report.truncated_at_offset == 6, position
            assert log.read(0, 1 << 20) == b"".join(stored[:3])


def test_recovery_rebuilds_a_missing_or_corrupt_index(opened: Opener, make_batch: MakeBatch, log_dir: Path,
                                                      three_segments: ThreeSegments) -> None:
    log, stored = three_segments
    log.flush()
    first_index = segment_files(log_dir, ".index")[0]
    good = first_index.read_bytes()
    assert len(good) >= 16
    damages: list[Callable[[Path], object]] = [
        lambda d: (d / first_index.name).unlink(),
        lambda d: (d / first_index.name).write_bytes(good[8:16] + good[:8] + good[16:]),  # unsorted
        lambda d: (d / first_index.name).write_bytes(good + b"\xff" * 8),  # points past the end
        lambda d: (d / first_index.name).write_bytes(good[:5]),  # torn
        lambda d: (d / first_index.name.replace(".index", ".timeindex")).unlink(),
    ]
    for damage in damages:
        reopened = damaged_reopen(opened, log_dir, damage)
        report = reopened.recovery_report
        assert report.truncated_bytes == 0 and report.reason is None
        assert first_index.name in report.indexes_rebuilt or first_index.name.replace(
            ".index", ".timeindex") in report.indexes_rebuilt
        assert (log_dir.parent / "crashed" / first_index.name).read_bytes() == good
        assert_consistent(reopened, stored)
        reopened.close()
        shutil.rmtree(log_dir.parent / "crashed")


def test_recovery_checks_everything_after_a_stale_recovery_point(
        opened: Opener, make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened()
    stored = fill(log, make_batch, 5, value_bytes=1000)
    log.flush()  # recovery point at 15, in the first segment
    stored += fill(log, make_batch, 50, value_bytes=1000)
    assert log.segment_count == 3 and log.recovery_point_offset == 15
    # Damage a batch in the middle (not last) segment, above the recovery point: it was never fsynced.
    second = segment_files(log_dir)[1]
    victim = next(i for i, b in enumerate(stored) if parse_header(b).base_offset == int(second.name[:20])) + 2
    position = sum(len(b) for b in stored[:victim] if parse_header(b).base_offset >= int(second.name[:20]))
    crashed = damaged_reopen(opened, log_dir, lambda d: flip(d / second.name, position + 200))
    assert crashed.recovery_report.batches_checked == victim  # validated from the first segment on
    assert not (log_dir.parent / "crashed" / segment_files(log_dir)[2].name).exists()  # later segment deleted
    check_cut(crashed, stored, victim, make_batch, "batch CRC-32C mismatch")


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"1 99999999 00000000\n", None])
def test_recovery_without_a_valid_recovery_point_still_checks_the_last_segment(
        opened: Opener, make_batch: MakeBatch, log_dir: Path, content: bytes | None,
        three_segments: ThreeSegments) -> None:
    _, stored = three_segments

    def damage(directory: Path) -> None:
        if content is None:
            (directory / RECOVERY_POINT_FILE).unlink()
        else:
            (directory / RECOVERY_POINT_FILE).write_bytes(content)
        path = last_log_file(directory)
        os.truncate(path, path.stat().st_size - 1)

    log = damaged_reopen(opened, log_dir, damage)
    check_cut(log, stored, len(stored) - 1, make_batch, "torn write")


def test_recovery_point_beyond_the_end_still_checks_the_last_segment(
        opened: Opener, make_batch: MakeBatch, log_dir: Path,
        three_segments: ThreeSegments) -> None:
    _, stored = three_segments

    def damage(directory: Path) -> None:
        body = "1 1000000"  # a well-formed recovery point far beyond the end
        (directory / RECOVERY_POINT_FILE).write_text(f"{body} {zlib.crc32(body.encode()):08x}\n")
        path = last_log_file(directory)
        flip(path, path.stat().st_size - 3)

    log = damaged_reopen(opened, log_dir, damage)
    check_cut(log, stored, len(stored) - 1, make_batch, "batch CRC-32C mismatch")
    assert log.recovery_point_offset == log.log_end_offset - 2  # rewritten after recovery (+ 2 appends)


def test_recovery_cuts_an_offset_discontinuity_between_segments(
        opened: Opener, make_batch: MakeBatch, log_dir: Path,
        three_segments: ThreeSegments) -> None:
    _, stored = three_segments
    files = segment_files(log_dir)
    second_base = int(files[1].name[:20])
    keep = next(i for i, b in enumerate(stored) if parse_header(b).base_offset == second_base)

    def drop_second_segment(directory: Path) -> None:
        for suffix in (".log", ".index", ".timeindex"):
            (directory / files[1].name.replace(".log", suffix)).unlink()

    log = damaged_reopen(opened, log_dir, drop_second_segment)
    assert log.recovery_report.truncated_bytes == files[2].stat().st_size
    check_cut(log, stored, keep, make_batch, "offset discontinuity")


def test_recovery_removes_leftovers(opened: Opener, make_batch: MakeBatch, log_dir: Path,
                                    three_segments: ThreeSegments) -> None:
    log, stored = three_segments
    log.close()
    leftovers = ["recovery-point.tmp", "00000000000000000000.index.tmp", "00000000000000000007.log.deleted",
                 "00000000000000099999.index", "00000000000000099999.timeindex"]
    for name in leftovers:
        (log_dir / name).write_bytes(b"x")
    (log_dir / "someone-elses.tmp").write_bytes(b"x")
    reopened = opened()
    assert not any((log_dir / name).exists() for name in leftovers)
    assert (log_dir / "someone-elses.tmp").exists()
    assert_consistent(reopened, stored)


def test_crash_after_truncate_and_append_revalidates_the_rewritten_range(
        opened: Opener, make_batch: MakeBatch, log_dir: Path) -> None:
    log = opened()
    stored = fill(log, make_batch, 60, value_bytes=1000)
    log.flush()
    assert log.recovery_point_offset == 180 and log.segment_count == 3
    log.truncate_to(30)  # inside the first segment: the recovery point must come down with it
    assert log.recovery_point_offset == 30
    rewritten = stored[:10] + fill(log, make_batch, 50, value_bytes=900)
    assert log.segment_count == 3
    # Damage a rewritten batch in the middle segment, below the old recovery point (180).
    second = segment_files(log_dir)[1]
    second_base = int(second.name[:20])
    victim = next(i for i, b in enumerate(rewritten) if parse_header(b).base_offset == second_base) + 1
    crashed = damaged_reopen(opened, log_dir,
                             lambda d: flip(d / second.name, len(rewritten[victim - 1]) + 150))
    check_cut(crashed, rewritten, victim, make_batch, "batch CRC-32C mismatch")


def test_flush_persists_the_recovery_point(opened: Opener, make_batch: MakeBatch,
                                           log_dir: Path) -> None:
    log = opened()
    fill(log, make_batch, 10, value_bytes=1000)
    assert log.recovery_point_offset == 0
    log.flush()
    assert log.recovery_point_offset == 30
    assert (log_dir / RECOVERY_POINT_FILE).read_bytes().split()[:2] == [b"1", b"30"]


_APPENDER = """
import sys
from pathlib import Path
from raftmq.node.log import LogConfig, PartitionLog
from tests.unit.conftest import stamped_batch
log = PartitionLog.open(Path(sys.argv[1]), LogConfig(segment_bytes=65536, index_interval_bytes=512))
while True:
    for _ in range(5):
        log.append(stamped_batch(log.log_end_offset, records=2, value_bytes=700))
    log.flush()
    print(log.log_end_offset, flush=True)
"""


def test_sigkill_while_appending_loses_nothing_flushed(log_dir: Path, make_batch: MakeBatch) -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", _APPENDER, str(log_dir)], cwd=root,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)})
    assert child.stdout is not None
    acked = [int(child.stdout.readline()) for _ in range(40)]  # 40 flushes, ~4 segments
    child.kill()  # SIGKILL, wherever it is: mid-append, mid-roll, mid-flush
    child.wait()
    child.stdout.close()
    with PartitionLog.open(log_dir, SMALL) as log:
        assert log.log_end_offset >= acked[-1] and log.segment_count >= 3
        offset = 0
        for header, chunk in iter_stored(log.read(0, 1 << 30)):
            assert verify_stored(chunk).base_offset == header.base_offset == offset
            offset = header.next_offset
        assert offset == log.log_end_offset
        log.append(make_batch(log.log_end_offset))


# --- resources and threads -------------------------------------------------------------------------------


def test_memory_stays_flat_while_the_log_grows(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened(config=LogConfig(segment_bytes=4 * limits.MIB, index_interval_bytes=4096))
    fill(log, make_batch, 2, records=1, value_bytes=200_000)  # warm up caches and lazily built objects
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(60):  # ~12 MB of records
            log.append(make_batch(log.log_end_offset, records=1, value_bytes=200_000))
        for offset in range(0, log.log_end_offset, 5):
            log.read(offset, 300_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert log.size_bytes > 12_000_000
    assert after - before < 256 * 1024, f"the log kept {after - before} bytes"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts fds through /proc")
def test_open_file_descriptors_stay_bounded(opened: Opener, make_batch: MakeBatch) -> None:
    log = opened()
    stored = fill(log, make_batch, 25 * 22, value_bytes=1000)
    assert log.segment_count >= 25
    before = len(os.listdir("/proc/self/fd"))
    for offset in range(0, log.log_end_offset, 7):
        log.read(offset, 10)
    assert len(os.listdir("/proc/self/fd")) - before <= 16
    assert log.read(0, 1) == stored[0]


def test_reads_are_consistent_while_another_thread_appends(opened: Opener,
                                                           make_batch: MakeBatch) -> None:
    log = opened()
    batches_to_write = [make_batch(i, records=1, value_bytes=2000) for i in range(300)]
    failures: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for batch in batches_to_write:
                log.append(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 50:
        end = log.log_end_offset
        offset = reads % (end + 1)
        data = log.read(offset, 9000)
        for header, chunk in iter_stored(data):
            verify_stored(chunk)
            assert chunk == batches_to_write[header.base_offset]
        reads += 1
    thread.join()
    assert not failures
    assert log.read(0, 1 << 30) == b"".join(batches_to_write)


def test_a_read_never_waits_for_a_roll_fsync(opened: Opener, make_batch: MakeBatch,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch must not stall behind the writer: the writer's roll fsyncs the old segment with the log lock
    released, so a read in another thread completes while that fsync is (here: made to be) stuck."""
    log = opened()
    stored = fill(log, make_batch, 20, value_bytes=3000)
    while log.segment_count == 1 or log.log_end_offset == 0:
        stored += fill(log, make_batch, 1, value_bytes=3000)
    segments = log.segment_count
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def stuck_fsync(fd: int) -> None:
        if threading.current_thread().name == "writer":
            in_fsync.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stuck_fsync)

    def write_until_roll() -> None:
        while log.segment_count == segments:
            stored.extend(fill(log, make_batch, 1, value_bytes=3000))

    writer = threading.Thread(target=write_until_roll, name="writer")
    writer.start()
    try:
        assert in_fsync.wait(10), "the writer never rolled"
        read: list[bytes] = []
        reader = threading.Thread(target=lambda: read.append(log.read(0, 1 << 20)))
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the read waited for the writer's fsync"
        assert read[0] == b"".join(stored)[:len(read[0])] and read[0]
    finally:
        release.set()
        writer.join(10)
    assert log.segment_count == segments + 1
    assert_consistent(log, stored)
