"""The partition log: one replica's directory of segments, Kafka style, and everything done to it as a whole.

Owns the ordered list of segments, the roll policy, retention, crash recovery on open, the recovery point,
offset lookups and reads (``read``, ``iter_headers``, ``open_stream``, ``offset_for_timestamp``), and the
truncation a diverged Raft follower needs. The per-file format lives in ``node.segment``. Synchronous file
I/O only: no networking, no asyncio, no clock (roll and retention take their times as arguments or from
the batches, so replicas decide alike).

Directory::

    <base_offset:020d>.log / .index / .timeindex   one segment (see node.segment)
    recovery-point                                 "1 <offset> <crc32 hex>\\n": every batch below <offset>
                                                   was fsynced; replaced with tmp + fsync + rename

Offsets: the log holds ``[log_start_offset, log_end_offset)``; segment ``i`` holds ``[base_i, base_{i+1})``
and only the last (active) segment takes appends. Nothing holds record bytes beyond the call that reads
them; the indexes of old segments are in memory only while their file is open (a small LRU).

Threads: the replication thread appends, truncates, resets and flushes while HTTP threads read. One lock
per log guards the segment list, the offsets and every file operation; reads ``pread`` under it too, so a
truncate followed by an append can never hand a reader half-old, half-new bytes. ``flush`` fsyncs outside
the lock. ``LogStream`` reads outside the lock from duplicated fds, so retention may delete its segments.

Crash safety, the invariants recovery relies on:

* Before a new segment is created, the previous one (data and indexes) and the directory are fsynced, so
  a segment followed by another one is on disk in full.
* ``recovery-point`` only grows through ``flush`` (after the fsync it vouches for) and is lowered by
  ``truncate_to``/``reset`` *before* they change files, so it never vouches for bytes written later.
* ``open`` validates every batch (both CRCs, lengths, offset continuity) of the segment holding the
  recovery point and every later one: always at least the last segment. Earlier segments get cheap checks
  (index sanity, a header walk of their tail, continuity with the next segment); any doubt moves the full
  validation back to them. The first bad batch is cut, with every later segment.
"""

from __future__ import annotations

import bisect
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple

from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.batch import BatchHeader
from raftmq.cluster.errors import CorruptBatch, InvalidConfig, OffsetOutOfRange, StorageError, invariant
from raftmq.node.fsutil import fsync_directory, make_directories, write_file_atomically
from raftmq.node.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    U32_MAX,
    Segment,
    parse_segment_file_name,
    pread_exact,
)

RECOVERY_POINT_FILE: Final = "recovery-point"
_RECOVERY_POINT_VERSION: Final = 1


@dataclass(frozen=True)
class LogConfig:
    """Per-partition storage settings (topic config). Times are append times in ms, sizes in bytes."""

    segment_bytes: int = limits.segment_bytes_default
    segment_ms: int = limits.segment_ms_default
    retention_ms: int = limits.retention_ms_default  # -1 = unlimited
    retention_bytes: int = limits.retention_bytes_default  # -1 = unlimited
    index_interval_bytes: int = limits.index_interval_bytes_default

    def validate(self) -> None:
        """Raise InvalidConfig naming the first bad setting."""

        def whole(name: str, value: object) -> int:
            if type(value) is not int:
                raise InvalidConfig(f"{name} must be an integer, got {value!r}", setting=name)
            return value

        segment_bytes = whole("segment_bytes", self.segment_bytes)
        if not limits.segment_bytes_min <= segment_bytes <= limits.segment_bytes_max:
            raise InvalidConfig(f"segment_bytes must be between {limits.segment_bytes_min} and "
                                f"{limits.segment_bytes_max}, got {segment_bytes}", setting="segment_bytes")
        if whole("segment_ms", self.segment_ms) < 1:
            raise InvalidConfig(f"segment_ms must be at least 1, got {self.segment_ms}", setting="segment_ms")
        if whole("retention_ms", self.retention_ms) < -1:
            raise InvalidConfig(f"retention_ms must be -1 (unlimited) or at least 0, got {self.retention_ms}",
                                setting="retention_ms")
        if whole("retention_bytes", self.retention_bytes) < -1:
            raise InvalidConfig(f"retention_bytes must be -1 (unlimited) or at least 0, got "
                                f"{self.retention_bytes}", setting="retention_bytes")
        if not 0 <= whole("index_interval_bytes", self.index_interval_bytes) <= segment_bytes:
            raise InvalidConfig(f"index_interval_bytes must be between 0 and segment_bytes "
                                f"({segment_bytes}), got {self.index_interval_bytes}",
                                setting="index_interval_bytes")


class RecoveryReport(NamedTuple):
    """What ``PartitionLog.open`` found and did."""

    segments: int  # segment files found on disk (before any was cut)
    batches_checked: int  # batches validated with both CRCs
    truncated_bytes: int  # bytes cut from the tail, later segments included (0 if clean)
    truncated_at_offset: int | None  # the new log end offset when something was cut
    reason: str | None  # e.g. "batch CRC mismatch at offset 812 in 00000000000000000000.log (position 9120)"
    indexes_rebuilt: tuple[str, ...]  # index file names rewritten because they were missing, stale or corrupt


def _read_whole_batches(pieces: list[tuple[int, int, int]], max_bytes: int, directory: Path) -> bytes:
    """Read ``pieces`` (fd, start, stop) in order: whole batches only, at most ``max_bytes`` except that the
    first batch is always whole; the next piece is read only once the previous one was used up."""
    chunks: list[bytes] = []
    budget = max_bytes
    for fd, start, stop in pieces:
        available = stop - start
        if not chunks:
            want = min(available, max(budget, _first_batch_size(fd, start, stop, directory)))
        else:
            want = min(available, budget)
        if want <= 0:
            break
        data = pread_exact(fd, want, start, directory)
        if want < available:
            data = data[:_whole_batches_length(data)]
        if not data:
            break
        chunks.append(data)
        budget -= len(data)
        if len(data) < available or budget <= 0:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _first_batch_size(fd: int, start: int, stop: int, directory: Path) -> int:
    prefix = pread_exact(fd, min(batches.STORED_LENGTH_BYTES, stop - start), start, directory)
    size = batches.batch_length_at(prefix)
    return size if size is not None else stop - start


def _whole_batches_length(data: bytes) -> int:
    end = 0
    while True:
        size = batches.batch_length_at(data, end)
        if size is None or end + size > len(data):
            return end
        end += size


class LogStream:
    """The raw bytes of whole batches ``[start, end)`` of a log, read in chunks (a snapshot for a follower).

    Holds a duplicated fd per segment of the range, so retention deleting a segment does not disturb it. A
    ``truncate_to``/``reset`` of the log after the stream was opened makes the next ``read`` raise
    StorageError: the bytes under it may have changed. ``read`` is file-like; use ``close()`` or ``with``.
    """

    def __init__(self, pieces: list[tuple[int, int, int]], still_valid: Callable[[], bool]) -> None:
        self._pieces = pieces  # (fd, position, end position) per segment, in order; [position, end) unread
        self._still_valid = still_valid
        self.size_bytes = sum(end - position for _, position, end in pieces)
        self._remaining = self.size_bytes
        self.closed = False

    @property
    def remaining_bytes(self) -> int:
        return self._remaining

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); b"" at the end."""
        if self.closed:
            raise ValueError("read from a closed LogStream")
        want = self._remaining if size < 0 else min(size, self._remaining)
        chunks = []
        while want > 0:
            fd, position, end = self._pieces[0]
            n = min(want, end - position)
            data = os.pread(fd, n, position)
            if len(data) != n or not self._still_valid():
                raise StorageError("the log was truncated or reset while a stream was reading it")
            chunks.append(data)
            want -= n
            self._remaining -= n
            if position + n == end:
                os.close(fd)
                self._pieces.pop(0)
            else:
                self._pieces[0] = (fd, position + n, end)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Release the fds. Idempotent."""
        pieces, self._pieces = self._pieces, []
        self.closed = True
        for fd, _, _ in pieces:
            os.close(fd)

    def __enter__(self) -> LogStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # Safety net for a stream dropped without close(): fds are a bounded resource.
        if not getattr(self, "closed", True):
            self.close()


def _encode_recovery_point(offset: int) -> bytes:
    body = f"{_RECOVERY_POINT_VERSION} {offset}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def _decode_recovery_point(data: bytes) -> int | None:
    """The offset, or None when the file is not one this code wrote intact."""
    try:
        version, offset, crc = data.decode("ascii").split()
        expected_crc = zlib.crc32(f"{version} {offset}".encode())
        if int(version) != _RECOVERY_POINT_VERSION or int(crc, 16) != expected_crc:
            return None
        value = int(offset)
    except ValueError:
        return None
    return value if value >= 0 else None


class PartitionLog:
    """The log of one partition replica. Build it with ``PartitionLog.open``. Thread-safe."""

    def __init__(self, directory: Path, config: LogConfig) -> None:
        """Use ``open()``: this only sets fields."""
        self.directory = directory
        self.config = config
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time; held while fsyncing outside _lock
        self._close_lock = threading.Lock()
        self._segments: list[Segment] = []
        self._open_segments: OrderedDict[int, Segment] = OrderedDict()  # LRU of old segments holding fds
        self._log_start_offset = 0
        self._log_end_offset = 0
        self._size_bytes = 0
        self._last_batch: BatchHeader | None = None
        self._recovery_point = 0
        # Bumped by truncate_to/reset: a flush that began before must not raise the recovery point over the
        # rewritten range, and open streams must stop.
        self._generation = 0
        self._directory_dirty = False  # files created or deleted since the directory was last fsynced
        self._closed = False
        self.recovery_report = RecoveryReport(0, 0, 0, None, None, ())

    # --- properties (plain reads: an int or reference load is atomic, no lock needed) -------------

    @property
    def log_start_offset(self) -> int:
        """First offset still stored."""
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        """Next offset to assign; the log holds [log_start_offset, log_end_offset)."""
        return self._log_end_offset

    @property
    def size_bytes(self) -> int:
        """Total bytes of all .log files (indexes not counted, as in Kafka)."""
        return self._size_bytes

    @property
    def last_batch(self) -> BatchHeader | None:
        """Header of the last stored batch; None when the log is empty."""
        return self._last_batch

    @property
    def recovery_point_offset(self) -> int:
        """Every batch below this offset is known to be fsynced."""
        return self._recovery_point

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    # --- open and recovery --------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, config: LogConfig) -> PartitionLog:
        """Open (creating the directory if missing) and recover the log; see ``recovery_report``.

        Raises InvalidConfig for a bad config and StorageError when the disk fails.
        """
        config.validate()
        directory = Path(directory)
        log = cls(directory, config)
        try:
            make_directories(directory)  # durable names: a power cut must not take the directory away
            log._recover()
        except OSError as exc:
            log._close_files()
            raise StorageError(f"cannot open the log in {directory}: {exc}", path=str(directory)) from exc
        except BaseException:
            log._close_files()
            raise
        return log

    def _clean_leftovers(self) -> list[int]:
        """Delete our leftovers (``*.tmp`` of an interrupted atomic write, ``*.deleted``, indexes whose .log
        is gone after an interrupted delete) and return the base offsets of the .log files, sorted. Files
        that are not ours are left alone: the directory may be shared."""
        names = os.listdir(self.directory)
        bases = sorted(parsed[0] for name in names
                       if (parsed := parse_segment_file_name(name)) is not None and parsed[1] == LOG_SUFFIX)
        known = set(bases)
        for name in names:
            stem, _, leftover = name.rpartition(".")
            ours_tmp = stem == RECOVERY_POINT_FILE or parse_segment_file_name(stem) is not None
            parsed = parse_segment_file_name(name)
            if (leftover in ("tmp", "deleted") and ours_tmp) or (
                    parsed is not None and parsed[1] != LOG_SUFFIX and parsed[0] not in known):
                (self.directory / name).unlink(missing_ok=True)
        return bases

    def _read_recovery_point(self) -> int | None:
        try:
            return _decode_recovery_point((self.directory / RECOVERY_POINT_FILE).read_bytes())
        except FileNotFoundError:
            return None

    def _write_recovery_point(self, offset: int) -> None:
        write_file_atomically(self.directory / RECOVERY_POINT_FILE, _encode_recovery_point(offset))
        self._recovery_point = offset

    def _recover(self) -> None:
        bases = self._clean_leftovers()
        interval = self.config.index_interval_bytes
        segments = [Segment.existing(self.directory, base, index_interval_bytes=interval) for base in bases]
        self._segments = segments
        found = len(segments)
        if not segments:
            segments.append(Segment.create(self.directory, 0, index_interval_bytes=interval))
            fsync_directory(self.directory)
            self._write_recovery_point(0)
            self.recovery_report = RecoveryReport(0, 0, 0, None, None, ())
            return

        # Where full validation starts: the segment holding the recovery point (else the last one: a segment
        # followed by another was fsynced before that one was created), or the first segment in doubt.
        start = found - 1
        recovery_point = self._read_recovery_point()
        if recovery_point is not None:
            start = min(start, max(bisect.bisect_right(bases, recovery_point) - 1, 0))
        for i in range(start):
            if segments[i].load_trusted(segments[i + 1].base_offset) is not None:
                start = i
                break

        checked = 0
        truncated_bytes = 0
        truncated_at: int | None = None
        reason: str | None = None
        rebuilt: list[str] = []
        keep = found
        expected = segments[start].base_offset
        for i in range(start, found):
            segment = segments[i]
            if segment.base_offset != expected:
                keep = i
                truncated_at = expected
                reason = (f"offset discontinuity at offset {expected} in {segment.name} (the previous "
                          f"segment ends at {expected}, this one starts at {segment.base_offset})")
                break
            result = segment.recover()
            checked += result.batches_checked
            rebuilt.extend(result.indexes_rebuilt)
            if result.reason is not None:
                keep = i + 1
                truncated_bytes = result.truncated_bytes
                truncated_at, reason = result.truncated_at_offset, result.reason
                break
            expected = segment.next_offset
        for segment in reversed(segments[keep:]):  # newest first: a crash in between leaves a contiguous log
            truncated_bytes += segment.size_bytes
            segment.delete()
        del segments[keep:]

        # What was validated may sit only in the page cache (a killed process): make it durable before the
        # recovery point vouches for it.
        for segment in segments[start:]:
            segment.fsync()
        fsync_directory(self.directory)
        for segment in segments[:-1]:
            segment.close_files()
        segments[-1].activate()
        self._refresh_offsets()
        self._write_recovery_point(self._log_end_offset)
        self.recovery_report = RecoveryReport(found, checked, truncated_bytes, truncated_at, reason,
                                              tuple(rebuilt))

    def _refresh_offsets(self) -> None:
        segments = self._segments
        self._log_start_offset = segments[0].base_offset
        self._log_end_offset = segments[-1].next_offset
        self._size_bytes = sum(segment.size_bytes for segment in segments)
        # Only the last segment can be empty (a roll whose first append failed): look one further back.
        self._last_batch = next((s.last_header for s in reversed(segments) if s.last_header is not None),
                                None)

    # --- helpers (call with the lock held) -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the log in {self.directory} is closed", path=str(self.directory))

    def _check_range(self, offset: int) -> None:
        if not self._log_start_offset <= offset <= self._log_end_offset:
            raise OffsetOutOfRange(
                f"offset {offset} is outside the log [{self._log_start_offset}, {self._log_end_offset}]",
                offset=offset, log_start_offset=self._log_start_offset, log_end_offset=self._log_end_offset)

    def _use(self, segment: Segment) -> Segment:
        """Note that ``segment``'s files are about to be used; close the least recently used ones beyond
        the bound. The active segment is never in the LRU: it stays open."""
        if not segment.active:
            self._open_segments[segment.base_offset] = segment
            self._open_segments.move_to_end(segment.base_offset)
            while len(self._open_segments) > limits.log_open_segments_max:
                _, evicted = self._open_segments.popitem(last=False)
                evicted.close_files()
        return segment

    def _segment_index(self, offset: int) -> int:
        """Index of the segment whose range holds ``offset`` (the last one with base_offset <= offset)."""
        return max(bisect.bisect_right(self._segments, offset, key=lambda s: s.base_offset) - 1, 0)

    def _locate(self, offset: int) -> tuple[int, int, BatchHeader]:
        """``(segment index, position, header)`` of the batch containing ``offset`` in [start, end)."""
        i = self._segment_index(offset)
        position, header = self._use(self._segments[i]).find_batch(offset)
        return i, position, header

    def _delete_segment(self, segment: Segment) -> None:
        self._open_segments.pop(segment.base_offset, None)
        segment.delete()
        self._directory_dirty = True

    def _close_files(self) -> None:
        for segment in self._segments:
            segment.close_files()
        self._open_segments.clear()

    # --- writes ---------------------------------------------------------------------------------------

    def append(self, batch: bytes) -> BatchHeader:
        """Store one stamped batch at the log end; returns its header.

        Verifies both CRCs first (CorruptBatch: nothing stored). Raises InvariantViolation unless the batch's
        base_offset is ``log_end_offset``, StorageError when the disk fails (nothing stored then either).
        """
        header = batches.verify_stored(batch)  # outside the lock: CRC work does not stall readers
        if header.record_count < 1:
            raise CorruptBatch("a stored batch needs at least one record", base_offset=header.base_offset)
        with self._lock:
            self._check_open()
            invariant(header.base_offset == self._log_end_offset,
                      f"append at offset {header.base_offset} but the log ends at {self._log_end_offset} "
                      f"({self.directory})")
            rolling = self._should_roll(self._segments[-1], header, len(batch))
            try:
                sync_fds = self._segments[-1].sync_fds() if rolling else []
            except OSError as exc:
                raise StorageError(f"cannot roll a new segment in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
        try:
            if rolling:
                self._roll_prepare(sync_fds)
        except OSError as exc:
            raise StorageError(f"cannot roll a new segment in {self.directory}: {exc}",
                               path=str(self.directory)) from exc
        with self._lock:
            active = self._segments[-1]
            if rolling:
                try:
                    active = self._roll(header.base_offset, synced=True)
                except OSError as exc:
                    raise StorageError(f"cannot roll a new segment in {self.directory}: {exc}",
                                       path=str(self.directory)) from exc
            active.append(batch, header)
            self._log_end_offset = header.next_offset
            self._size_bytes += len(batch)
            self._last_batch = header
        return header

    def _roll_prepare(self, fds: list[int]) -> None:
        """Outside the lock (only the one writer thread rolls): the active segment (``fds``: duplicates, closed
        here) and the directory reach the disk before the next segment exists, so readers are never held up
        by these fsyncs."""
        try:
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        fsync_directory(self.directory)

    def _should_roll(self, active: Segment, header: BatchHeader, size_bytes: int) -> bool:
        """Kafka's shouldRoll, on the batch's append time (never the wall clock: replicas roll alike)."""
        if active.is_empty:
            return False
        assert active.first_append_time_ms is not None
        return (active.size_bytes + size_bytes > self.config.segment_bytes
                or header.append_time_ms - active.first_append_time_ms >= self.config.segment_ms
                or header.base_offset - active.base_offset > U32_MAX)  # index offsets are u32 relative

    def _roll(self, base_offset: int, *, synced: bool = False) -> Segment:
        """A new active segment at ``base_offset``. ``synced``: the caller fsynced the old one and the
        directory (``_roll_prepare``) since the last append."""
        old = self._segments[-1]
        # Order matters for recovery: the old segment and its name are on disk before the new one exists.
        try:
            old.deactivate(sync=not synced)
            if not synced:
                fsync_directory(self.directory)
            new = Segment.create(self.directory, base_offset,
                                 index_interval_bytes=self.config.index_interval_bytes)
        except BaseException:
            old.activate()  # appends keep going to the old segment; the roll is retried on the next append
            raise
        self._segments.append(new)
        self._use(old)
        self._directory_dirty = True
        return new

    def truncate_to(self, offset: int) -> None:
        """Drop every batch with base_offset >= ``offset`` (Raft divergence). ``offset`` must be a batch
        boundary in [log_start_offset, log_end_offset] (else InvariantViolation; below the log start, use
        ``reset``). Durable when it returns."""
        with self._lock:
            self._check_open()
            invariant(self._log_start_offset <= offset <= self._log_end_offset,
                      f"truncate_to({offset}) outside [{self._log_start_offset}, {self._log_end_offset}] "
                      "(use reset() to drop the whole log)")
            if offset == self._log_end_offset:
                return
            try:
                self._truncate_to(offset)
            except OSError as exc:
                raise StorageError(f"cannot truncate the log in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc

    def _truncate_to(self, offset: int) -> None:
        i, _, header = self._locate(offset)
        invariant(header.base_offset == offset,
                  f"truncate_to({offset}) is not a batch boundary: the batch there starts at "
                  f"{header.base_offset}")
        # Lower the recovery point before touching a file: a crash from here on re-validates the cut region.
        self._generation += 1
        if self._recovery_point > offset:
            self._write_recovery_point(offset)
        keep = i if offset == self._segments[i].base_offset and i > 0 else i + 1
        for segment in reversed(self._segments[keep:]):  # newest first: a crash leaves a contiguous log
            self._delete_segment(segment)
        del self._segments[keep:]
        active = self._segments[-1]
        if not active.active:
            self._open_segments.pop(active.base_offset, None)
            active.activate()
        active.truncate_to(offset)
        fsync_directory(self.directory)
        self._directory_dirty = False
        self._refresh_offsets()

    def reset(self, start_offset: int) -> None:
        """Delete every segment and start empty at ``start_offset`` (a follower entirely behind the leader's
        log start). Durable when it returns."""
        invariant(start_offset >= 0, f"reset to a negative offset {start_offset}")
        with self._lock:
            self._check_open()
            try:
                self._generation += 1
                for segment in self._segments:  # oldest first: a crash leaves a contiguous (shorter) log
                    self._delete_segment(segment)
                self._segments = []
                fsync_directory(self.directory)
                self._segments = [Segment.create(self.directory, start_offset,
                                                 index_interval_bytes=self.config.index_interval_bytes)]
                fsync_directory(self.directory)
                self._directory_dirty = False
                self._write_recovery_point(start_offset)
            except OSError as exc:
                if not self._segments:
                    self._closed = True  # no segment left to append to: only a reopen can recover
                raise StorageError(f"cannot reset the log in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
            finally:
                if self._segments:
                    self._refresh_offsets()

    def flush(self) -> None:
        """fsync everything appended so far (the active segment and its indexes: older segments were synced
        when they rolled; the directory if files came or went), then persist the recovery point.

        The fsync runs outside the log lock, so readers are not stalled by it.
        """
        with self._flush_lock:
            with self._lock:
                self._check_open()
                target = self._log_end_offset
                generation = self._generation
                try:
                    fds = self._segments[-1].sync_fds()
                except OSError as exc:
                    raise StorageError(f"cannot flush the log in {self.directory}: {exc}",
                                       path=str(self.directory)) from exc
                sync_dir, self._directory_dirty = self._directory_dirty, False
            try:
                for fd in fds:
                    os.fsync(fd)
                if sync_dir:
                    fsync_directory(self.directory)
                with self._lock:
                    # A truncate/reset since we started may have rewritten part of [recovery point, target).
                    if generation == self._generation and target > self._recovery_point:
                        self._write_recovery_point(target)
            except OSError as exc:
                with self._lock:
                    self._directory_dirty = self._directory_dirty or sync_dir
                raise StorageError(f"cannot flush the log in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
            finally:
                for fd in fds:
                    os.close(fd)

    def apply_retention(self, now_ms: int) -> list[int]:
        """Delete whole old segments, oldest first and never the active one: while the oldest one's max
        append_time_ms < now_ms - retention_ms, or while size_bytes minus its size >= retention_bytes.
        Returns the deleted base offsets; log_start_offset moves up to the new first segment."""
        if len(self._segments) < 2:
            return []  # only the active segment, which is never deleted (cheap: most idle partitions)
        retention_ms, retention_bytes = self.config.retention_ms, self.config.retention_bytes

        def expendable(oldest: Segment, _next: Segment) -> bool:
            expired = (retention_ms >= 0 and oldest.max_append_time_ms is not None
                       and oldest.max_append_time_ms < now_ms - retention_ms)
            return expired or (retention_bytes >= 0 and self._size_bytes - oldest.size_bytes >= retention_bytes)

        return self._delete_oldest_while(expendable)

    def delete_segments_before(self, offset: int) -> list[int]:
        """Delete the whole segments that hold only offsets below ``offset`` (never the active one), as an
        operator's delete-records does; returns their base offsets."""
        return self._delete_oldest_while(lambda _oldest, following: following.base_offset <= offset)

    def roll(self) -> None:
        """Start a new segment at the log end now (unless the active one is empty), as Kafka's Log.roll."""
        with self._lock:
            self._check_open()
            if not self._segments[-1].is_empty:
                try:
                    self._roll(self._log_end_offset)
                except OSError as exc:
                    raise StorageError(f"cannot roll a new segment in {self.directory}: {exc}",
                                       path=str(self.directory)) from exc

    def _delete_oldest_while(self, expendable: Callable[[Segment, Segment], bool]) -> list[int]:
        deleted: list[int] = []
        with self._lock:
            self._check_open()
            try:
                while len(self._segments) > 1:
                    oldest = self._segments[0]
                    if not expendable(oldest, self._segments[1]):
                        break
                    self._delete_segment(oldest)
                    self._segments.pop(0)
                    self._size_bytes -= oldest.size_bytes
                    self._log_start_offset = self._segments[0].base_offset
                    deleted.append(oldest.base_offset)
            except OSError as exc:
                raise StorageError(f"cannot delete a segment in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
        return deleted

    def close(self) -> None:
        """Flush, then release every fd. Idempotent; the log is unusable afterwards."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                with self._flush_lock, self._lock:
                    self._closed = True
                    self._close_files()

    def __enter__(self) -> PartitionLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- reads ----------------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Whole batches from the one containing ``offset``, at most ``max_bytes`` but always at least one
        batch (even a larger one); continues into later segments while the budget lasts. b"" when
        ``offset == log_end_offset``; OffsetOutOfRange outside [log_start_offset, log_end_offset].

        The lock is held only to find the bytes and duplicate the segments' fds: the reads happen outside
        it, so a fetch never waits for an append, a roll or its fsync, and an append never waits for a
        slow read. A read that a concurrent truncation invalidated is done again."""
        for _attempt in range(limits.log_read_attempts):
            generation, pieces = self._plan_read(offset, max_bytes)
            if not pieces:
                return b""
            try:
                data = _read_whole_batches(pieces, max_bytes, self.directory)
            except OSError as exc:
                raise StorageError(f"cannot read the log in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
            finally:
                for fd, _, _ in pieces:
                    os.close(fd)
            if generation == self._generation:
                return data
        raise StorageError(f"the log in {self.directory} was truncated during {limits.log_read_attempts} reads in "
                           "a row", path=str(self.directory))

    def _plan_read(self, offset: int, max_bytes: int) -> tuple[int, list[tuple[int, int, int]]]:
        """Under the lock: (generation, [(dup fd, start, stop)...]) covering at least ``max_bytes`` from the
        batch holding ``offset`` (or its whole first batch), in segment order."""
        with self._lock:
            self._check_open()
            self._check_range(offset)
            if offset == self._log_end_offset:
                return self._generation, []
            i, position, _ = self._locate(offset)
            pieces: list[tuple[int, int, int]] = []
            budget = max_bytes
            try:
                for segment in self._segments[i:]:
                    begin = position if not pieces else 0
                    stop = segment.size_bytes
                    if stop > begin:
                        pieces.append((self._use(segment).dup_log_fd(), begin, stop))
                        budget -= stop - begin
                    if budget <= 0:
                        break
            except OSError as exc:
                for fd, _, _ in pieces:
                    os.close(fd)
                raise StorageError(f"cannot read the log in {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
            return self._generation, pieces

    def iter_headers(self, from_offset: int) -> Iterator[BatchHeader]:
        """Headers of the batches from the one containing ``from_offset`` to the log end as it is at each
        step (79 bytes read per batch, the lock taken per batch). OffsetOutOfRange at once when
        ``from_offset`` is out of range, and later if retention deletes the batches ahead."""
        with self._lock:
            self._check_open()
            self._check_range(from_offset)
            if from_offset == self._log_end_offset:
                return iter(())
            i, position, header = self._locate(from_offset)
            segment = self._segments[i]
        return self._headers_from(segment, position, header)

    def _headers_from(self, segment: Segment, position: int, header: BatchHeader) -> Iterator[BatchHeader]:
        while True:
            yield header
            position += header.size_bytes
            next_offset = header.next_offset
            with self._lock:
                self._check_open()
                if next_offset >= self._log_end_offset:
                    return
                self._check_range(next_offset)
                if segment.deleted or position >= segment.size_bytes:
                    i, position, header = self._locate(next_offset)
                    segment = self._segments[i]
                else:
                    header = self._use(segment).read_header(position)
                    if header.base_offset != next_offset:  # truncated and rewritten since the last step
                        i, position, header = self._locate(next_offset)
                        segment = self._segments[i]

    def open_stream(self, from_offset: int, end_offset: int) -> LogStream:
        """A stream of the whole batches from the one containing ``from_offset`` up to, not including, the
        batch starting at ``end_offset`` (a batch boundary or log_end_offset). OffsetOutOfRange when either
        is outside the log, InvariantViolation when ``end_offset`` is not a boundary or precedes the start."""
        with self._lock:
            self._check_open()
            self._check_range(from_offset)
            self._check_range(end_offset)
            invariant(from_offset <= end_offset,
                      f"open_stream({from_offset}, {end_offset}): the end is before the start")
            last = len(self._segments) - 1
            if end_offset == self._log_end_offset:
                end_index, end_position = last, self._segments[last].size_bytes
            else:
                end_index, end_position, end_header = self._locate(end_offset)
                invariant(end_header.base_offset == end_offset,
                          f"open_stream end {end_offset} is not a batch boundary (the batch there starts "
                          f"at {end_header.base_offset})")
            if from_offset == end_offset:
                return LogStream([], lambda: True)
            start_index, start_position, _ = self._locate(from_offset)
            pieces: list[tuple[int, int, int]] = []
            try:
                for i in range(start_index, end_index + 1):
                    segment = self._segments[i]
                    begin = start_position if i == start_index else 0
                    stop = end_position if i == end_index else segment.size_bytes
                    if stop > begin:
                        pieces.append((self._use(segment).dup_log_fd(), begin, stop))
            except OSError as exc:
                for fd, _, _ in pieces:
                    os.close(fd)
                raise StorageError(f"cannot open a stream on {self.directory}: {exc}",
                                   path=str(self.directory)) from exc
            generation = self._generation
        return LogStream(pieces, lambda: self._generation == generation)

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp_ms >= ``timestamp_ms`` (batch granularity, as
        in Kafka); None when no batch reaches it."""
        with self._lock:
            self._check_open()
            for segment in self._segments:
                if not segment.is_empty and segment.max_timestamp_ms >= timestamp_ms:
                    return self._use(segment).offset_for_timestamp(timestamp_ms)
        return None


__all__ = ["LogConfig", "LogStream", "PartitionLog", "RecoveryReport", "RECOVERY_POINT_FILE", "INDEX_SUFFIX",
           "LOG_SUFFIX", "TIME_INDEX_SUFFIX"]
