"""One log segment: ``<base_offset:020d>.log`` with its sparse ``.index`` and ``.timeindex`` (Kafka's layout).

This module owns the on-disk format of a segment and of its two indexes: append, positional reads, header
scans, ``recover()`` (re-validate every batch, cut a bad tail, rebuild the indexes) and ``truncate_to()``.
Plain synchronous file I/O on raw file descriptors (``os.pread``/``os.write``, no mmap, no buffered files).
No networking, no threads, no clock. A ``Segment`` is NOT thread-safe: ``node.log.PartitionLog`` calls it
under its lock and decides which segments keep a file descriptor open.

Files (integers big-endian)::

    .log        stored batches back to back, exactly the bytes cluster.batch.stamp() returned: a 20-byte
                broker prefix (CRC, Raft index, append time), then the Kafka RecordBatch v2 bytes
    .index      8-byte entries  (u32 batch base_offset - segment base_offset, u32 file position)
    .timeindex  12-byte entries (i64 max_timestamp_ms so far, u32 relative base offset of the batch that
                first reached it)

A segment holds the offsets ``[base_offset, next_offset)`` in the bytes ``[0, size_bytes)`` of its .log.

The one indexing rule (``Segment._index_rule``, shared by append, truncate and rebuild, so a rebuilt index
is byte for byte the index that appends wrote): the batch at position ``p > 0`` earns an offset-index entry
when ``p - (position of the previous entry, or 0) >= index_interval_bytes``; at each such entry, once the
batch is counted, a time-index entry ``(max timestamp so far, offset of the batch that first reached it)``
is added if the max grew since the last time-index entry. Both rules depend only on the batches in
``[0, p]``, so truncating a segment keeps exactly a prefix of each index.

Indexes carry no checksum (as in Kafka): they are sanity-checked on open and rebuilt from the .log when in
doubt. In memory they are compact ``array`` columns, loaded only while ``PartitionLog`` keeps the segment
open, so memory does not grow with the size of the log.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

from raftmq.cluster import batch as batches
from raftmq.cluster import limits
from raftmq.cluster.batch import BatchHeader
from raftmq.cluster.errors import CorruptBatch, InvariantViolation, StorageError, invariant
from raftmq.node.fsutil import write_all, write_file_atomically

LOG_SUFFIX: Final = ".log"
INDEX_SUFFIX: Final = ".index"
TIME_INDEX_SUFFIX: Final = ".timeindex"

U32_MAX: Final = 0xFFFF_FFFF

assert array("I").itemsize == 4 and array("q").itemsize == 8, "index columns need 4- and 8-byte items"


def segment_file_name(base_offset: int, suffix: str) -> str:
    """``<base_offset:020d><suffix>``: 20 digits, so ``ls`` sorts segments by offset."""
    return f"{base_offset:020d}{suffix}"


def parse_segment_file_name(name: str) -> tuple[int, str] | None:
    """``(base_offset, suffix)`` for a segment file name, None for anything else."""
    stem, dot, suffix = name.partition(".")
    if not dot or len(stem) != 20 or not (stem.isascii() and stem.isdigit()):
        return None
    suffix = "." + suffix
    if suffix not in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
        return None
    return int(stem), suffix


# --- small file helpers -------------------------------------------------------------------------


def pread_exact(fd: int, size: int, position: int, path: Path) -> bytes:
    """Read exactly ``size`` bytes; a short read means the file shrank under us (not by this process)."""
    data = os.pread(fd, size, position)
    if len(data) != size:
        raise StorageError(f"{path}: expected {size} bytes at position {position}, the file ends before them",
                           path=str(path), position=position, size_bytes=size)
    return data


def _big_endian(column: array[int]) -> bytes:
    if sys.byteorder == "little":
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _from_big_endian(typecode: str, data: bytes) -> array[int]:
    column = array(typecode)
    column.frombytes(data)
    if sys.byteorder == "little":
        column.byteswap()
    return column


def _strictly_increasing(column: array[int]) -> bool:
    return all(a < b for a, b in zip(column, column[1:]))  # noqa: B905 - lengths differ by design


# --- indexes ------------------------------------------------------------------------------------


class OffsetIndex:
    """The sparse offset index of one segment: (relative base offset, position) of some batches.

    Entries are strictly increasing in both columns. Position 0 (the first batch) is never indexed: a lookup
    with no entry at or below the target starts at the top of the segment.
    """

    ENTRY_BYTES: Final = 8

    def __init__(self, base_offset: int) -> None:
        self.base_offset = base_offset
        self._relative_offsets: array[int] = array("I")
        self._positions: array[int] = array("I")

    @classmethod
    def from_bytes(cls, base_offset: int, data: bytes) -> OffsetIndex:
        """Decode an .index file; ``check()`` says whether it makes sense."""
        index = cls(base_offset)
        usable = len(data) - len(data) % cls.ENTRY_BYTES
        both = _from_big_endian("I", data[:usable])
        index._relative_offsets = both[0::2]
        index._positions = both[1::2]
        return index

    def to_bytes(self) -> bytes:
        both = array("I", bytes(len(self) * self.ENTRY_BYTES))
        both[0::2] = self._relative_offsets
        both[1::2] = self._positions
        return _big_endian(both)

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def last_position(self) -> int:
        """Position of the last entry; 0 when there is none (the segment's first batch)."""
        return self._positions[-1] if self._positions else 0

    @property
    def last_offset(self) -> int:
        return self.base_offset + self._relative_offsets[-1] if self._relative_offsets else self.base_offset

    def append(self, offset: int, position: int) -> bytes:
        """Add an entry; returns its 8 bytes for the file."""
        relative = offset - self.base_offset
        invariant(0 < relative <= U32_MAX and 0 < position <= U32_MAX,
                  f"index entry ({offset}, {position}) out of range for segment {self.base_offset}")
        invariant(position > self.last_position and offset > self.last_offset,
                  f"index entry ({offset}, {position}) does not follow "
                  f"({self.last_offset}, {self.last_position})")
        self._relative_offsets.append(relative)
        self._positions.append(position)
        return struct.pack(">II", relative, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """``(offset, position)`` of the greatest entry <= ``offset``; ``(base_offset, 0)`` if none."""
        i = bisect.bisect_right(self._relative_offsets, offset - self.base_offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self._relative_offsets[i], self._positions[i]

    def keep(self, count: int) -> None:
        """Keep the first ``count`` entries."""
        del self._relative_offsets[count:]
        del self._positions[count:]

    def check(self, file_size: int, size_bytes: int) -> str | None:
        """Why these entries cannot be trusted for a .log of ``size_bytes`` (None if they can)."""
        if file_size % self.ENTRY_BYTES:
            return f"size {file_size} is not a multiple of {self.ENTRY_BYTES}"
        if not self._positions:
            return None
        if not (_strictly_increasing(self._relative_offsets) and _strictly_increasing(self._positions)):
            return "entries are not sorted"
        if self._relative_offsets[0] == 0 or self._positions[0] == 0:
            return "an entry points at the first batch, which is never indexed"
        if self._positions[-1] >= size_bytes:
            return f"last entry points at position {self._positions[-1]}, the log has {size_bytes} bytes"
        return None


class TimeIndex:
    """The sparse time index of one segment: (max timestamp so far, relative offset of the batch holding it).

    An entry ``(T, o)`` says: every batch before offset ``o`` has max_timestamp_ms < T and the batch at ``o``
    has max_timestamp_ms == T. Entries are strictly increasing in both columns.
    """

    ENTRY_BYTES: Final = 12
    _ENTRY: Final = struct.Struct(">qI")

    def __init__(self, base_offset: int) -> None:
        self.base_offset = base_offset
        self._timestamps: array[int] = array("q")
        self._relative_offsets: array[int] = array("I")

    @classmethod
    def from_bytes(cls, base_offset: int, data: bytes) -> TimeIndex:
        index = cls(base_offset)
        usable = len(data) - len(data) % cls.ENTRY_BYTES
        for timestamp_ms, relative in cls._ENTRY.iter_unpack(data[:usable]):
            index._timestamps.append(timestamp_ms)
            index._relative_offsets.append(relative)
        return index

    def to_bytes(self) -> bytes:
        return b"".join(self._ENTRY.pack(t, o) for t, o in zip(self._timestamps, self._relative_offsets,
                                                                 strict=True))

    def __len__(self) -> int:
        return len(self._timestamps)

    @property
    def last_timestamp_ms(self) -> int | None:
        return self._timestamps[-1] if self._timestamps else None

    def append(self, timestamp_ms: int, offset: int) -> bytes:
        relative = offset - self.base_offset
        invariant(0 <= relative <= U32_MAX,
                  f"time index offset {offset} out of range for segment {self.base_offset}")
        invariant(not self._timestamps or (timestamp_ms > self._timestamps[-1]
                                           and relative > self._relative_offsets[-1]),
                  f"time index entry ({timestamp_ms}, {offset}) does not follow the last one")
        self._timestamps.append(timestamp_ms)
        self._relative_offsets.append(relative)
        return self._ENTRY.pack(timestamp_ms, relative)

    def lookup(self, timestamp_ms: int) -> int | None:
        """Offset of the greatest entry with timestamp <= ``timestamp_ms``: no batch before it can reach
        ``timestamp_ms``. None when there is no such entry."""
        i = bisect.bisect_right(self._timestamps, timestamp_ms) - 1
        return None if i < 0 else self.base_offset + self._relative_offsets[i]

    def keep(self, count: int) -> None:
        del self._timestamps[count:]
        del self._relative_offsets[count:]

    def check(self, file_size: int) -> str | None:
        if file_size % self.ENTRY_BYTES:
            return f"size {file_size} is not a multiple of {self.ENTRY_BYTES}"
        if not self._timestamps:
            return None
        if not (_strictly_increasing(self._timestamps) and _strictly_increasing(self._relative_offsets)):
            return "entries are not sorted"
        if self._timestamps[0] < 0:
            return "negative timestamp"
        return None

    def last_relative_offset(self) -> int | None:
        return self._relative_offsets[-1] if self._relative_offsets else None


# --- scanning -----------------------------------------------------------------------------------


class _BatchWalker:
    """Walks the batches stored in ``[start_position, end_position)`` of a .log file, in order.

    Reads in chunks (bounded memory, few syscalls). Stops at the first batch that is not sound and says why
    in ``problem``; ``position`` and ``next_offset`` are then where the sound prefix ends. With ``verify``
    both CRCs of every batch are checked (recovery); without, only the fields a walk relies on (lookups,
    trusted tails, rebuilds).
    """

    def __init__(self, fd: int, *, start_position: int, end_position: int, expected_offset: int, verify: bool,
                 chunk_bytes: int = limits.segment_scan_chunk_bytes) -> None:
        self._fd = fd
        self._end = end_position
        self._verify = verify
        self._chunk_bytes = chunk_bytes
        self._buffer = b""
        self._buffer_start = 0
        self.position = start_position
        self.next_offset = expected_offset
        self.problem: str | None = None

    def _view(self, position: int, size: int) -> memoryview:
        offset = position - self._buffer_start
        if offset < 0 or offset + size > len(self._buffer):
            want = min(max(size, self._chunk_bytes), self._end - position)
            self._buffer = os.pread(self._fd, want, position)
            self._buffer_start = position
            offset = 0
            if len(self._buffer) < size:
                # The file is shorter than its recorded size: only another process could do that.
                raise StorageError(f"log file shrank while being read (position {position})",
                                   position=position)
        return memoryview(self._buffer)[offset:offset + size]

    def __iter__(self) -> Iterator[tuple[int, BatchHeader]]:
        """Yields ``(position, header)``; advances ``position``/``next_offset`` past each sound batch."""
        while self.position < self._end:
            remaining = self._end - self.position
            if remaining < batches.STORED_LENGTH_BYTES:
                self.problem = f"torn write: {remaining} trailing bytes"
                return
            size = batches.batch_length_at(self._view(self.position, batches.STORED_LENGTH_BYTES))
            assert size is not None
            if not batches.STORED_HEADER_BYTES <= size <= batches.STORED_BATCH_BYTES_MAX:
                self.problem = f"batch length field is nonsense ({size} bytes)"
                return
            if size > remaining:
                self.problem = f"torn write: a batch of {size} bytes but only {remaining} bytes left"
                return
            if self._verify:
                try:
                    header = batches.verify_stored(self._view(self.position, size))
                except CorruptBatch as exc:
                    self.problem = exc.message
                    return
            else:
                header = batches.parse_header(self._view(self.position, batches.STORED_HEADER_BYTES))
                if header.magic != batches.MAGIC:
                    self.problem = f"unknown batch magic {header.magic}"
                    return
            if header.base_offset != self.next_offset:
                self.problem = f"offset discontinuity (the batch says base_offset {header.base_offset})"
                return
            if header.record_count < 1:
                self.problem = "batch holds no records"
                return
            yield self.position, header
            self.position += size
            self.next_offset = header.next_offset


class SegmentRecovery(NamedTuple):
    """What ``Segment.recover()`` found: the sound prefix it kept and what it cut."""

    batches_checked: int
    truncated_bytes: int
    truncated_at_offset: int | None
    reason: str | None
    indexes_rebuilt: tuple[str, ...]


# --- the segment --------------------------------------------------------------------------------


class Segment:
    """One .log file and its two indexes. Offsets ``[base_offset, next_offset)``, bytes ``[0, size_bytes)``.

    File descriptors and index columns are opened lazily; ``close_files()`` releases them (the owner keeps
    only a few segments open). The *active* segment (``activate()``) also holds the index files open for
    appending. Not thread-safe.
    """

    def __init__(self, directory: Path, base_offset: int, *, index_interval_bytes: int,
                 size_bytes: int) -> None:
        invariant(base_offset >= 0, f"segment base offset {base_offset} is negative")
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self.log_path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        self.index_path = directory / segment_file_name(base_offset, INDEX_SUFFIX)
        self.time_index_path = directory / segment_file_name(base_offset, TIME_INDEX_SUFFIX)
        self.size_bytes = size_bytes
        self.next_offset = base_offset
        self.last_header: BatchHeader | None = None
        # append_time_ms of the first batch (roll by age) and the largest one seen (retention by time).
        self.first_append_time_ms: int | None = None
        self.max_append_time_ms: int | None = None
        # Largest batch max_timestamp_ms and the first offset that reached it (-1: empty).
        self.max_timestamp_ms = -1
        self.offset_of_max_timestamp = base_offset
        self.deleted = False
        self.active = False
        self._fd: int | None = None
        self._index: OffsetIndex | None = None
        self._time_index: TimeIndex | None = None
        self._index_fd: int | None = None
        self._time_index_fd: int | None = None
        # A failed append could not be cut back (_undo_append): the files may hold bytes past their ends, and an
        # O_APPEND write would land after them. The entry counts the index files must be cut to (None: that
        # file was not written); cut before the next append, or refuse it.
        self._tail_to_cut: tuple[int | None, int | None] | None = None

    def __repr__(self) -> str:
        return (f"Segment({self.log_path.name}, offsets=[{self.base_offset}, {self.next_offset}), "
                f"size_bytes={self.size_bytes})")

    @property
    def name(self) -> str:
        return self.log_path.name

    @property
    def is_empty(self) -> bool:
        return self.size_bytes == 0

    # --- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, *, index_interval_bytes: int) -> Segment:
        """A new, empty, active segment. Refuses to overwrite an existing .log (a bookkeeping bug)."""
        segment = cls(directory, base_offset, index_interval_bytes=index_interval_bytes, size_bytes=0)
        try:
            fd = os.open(segment.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL,
                         0o644)
        except FileExistsError:
            raise InvariantViolation(f"{segment.log_path} already exists; cannot start a segment there"
                                     ) from None
        segment._fd = fd
        for path in (segment.index_path, segment.time_index_path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        segment._index = OffsetIndex(base_offset)
        segment._time_index = TimeIndex(base_offset)
        segment.activate()
        return segment

    @classmethod
    def existing(cls, directory: Path, base_offset: int, *, index_interval_bytes: int) -> Segment:
        """A segment found on disk; its content is unknown until ``load_trusted()`` or ``recover()``."""
        size = (directory / segment_file_name(base_offset, LOG_SUFFIX)).stat().st_size
        return cls(directory, base_offset, index_interval_bytes=index_interval_bytes, size_bytes=size)

    def _log_fd(self) -> int:
        if self._fd is None:
            invariant(not self.deleted, f"{self.log_path} was deleted")
            self._fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND)
        return self._fd

    def _indexes(self) -> tuple[OffsetIndex, TimeIndex]:
        """The index columns, loaded on first use. A segment that passed open() has sane files; if they went
        bad since, that is a storage fault, not something to serve from."""
        if self._index is None or self._time_index is None:
            index, time_index, problem = self._load_indexes()
            if problem is not None:
                raise StorageError(f"{self.directory}: {problem}; restart the broker to rebuild it",
                                   path=str(self.directory))
            self._index, self._time_index = index, time_index
        return self._index, self._time_index

    def _load_indexes(self) -> tuple[OffsetIndex, TimeIndex, str | None]:
        """Read both index files and sanity-check them against the .log size (not its content)."""
        index = OffsetIndex(self.base_offset)
        time_index = TimeIndex(self.base_offset)
        try:
            index_data = self.index_path.read_bytes()
            time_data = self.time_index_path.read_bytes()
        except FileNotFoundError as exc:
            return index, time_index, f"{Path(exc.filename).name} is missing"
        index = OffsetIndex.from_bytes(self.base_offset, index_data)
        time_index = TimeIndex.from_bytes(self.base_offset, time_data)
        problem = index.check(len(index_data), self.size_bytes)
        if problem is not None:
            return index, time_index, f"{self.index_path.name}: {problem}"
        problem = time_index.check(len(time_data))
        if problem is not None:
            return index, time_index, f"{self.time_index_path.name}: {problem}"
        return index, time_index, None

    def activate(self) -> None:
        """Make this the segment appends go to: the index files stay open for appending."""
        self._indexes()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        if self._index_fd is None:
            self._index_fd = os.open(self.index_path, flags, 0o644)
        if self._time_index_fd is None:
            self._time_index_fd = os.open(self.time_index_path, flags, 0o644)
        self.active = True

    def deactivate(self, *, sync: bool = True) -> None:
        """Called when a newer segment takes over appends: sync everything (unless the caller just did),
        then drop the index fds."""
        if sync:
            self.fsync()
        for fd in (self._index_fd, self._time_index_fd):
            if fd is not None:
                os.close(fd)
        self._index_fd = self._time_index_fd = None
        self.active = False

    def fsync(self) -> None:
        """fsync the .log and both index files (through the open fds, else by opening the files)."""
        os.fsync(self._log_fd())
        for fd, path in ((self._index_fd, self.index_path), (self._time_index_fd, self.time_index_path)):
            if fd is not None:
                os.fsync(fd)
            else:
                read_fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(read_fd)
                finally:
                    os.close(read_fd)

    def sync_fds(self) -> list[int]:
        """Duplicates of the fds ``fsync()`` would sync, so the caller can sync outside its lock."""
        self._log_fd()
        return [os.dup(fd) for fd in (self._fd, self._index_fd, self._time_index_fd) if fd is not None]

    def dup_log_fd(self) -> int:
        """A duplicate fd of the .log: it keeps the file readable even after the segment is deleted."""
        return os.dup(self._log_fd())

    def close_files(self) -> None:
        """Release fds and index columns (reopened on demand). Idempotent."""
        for fd in (self._fd, self._index_fd, self._time_index_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._index_fd = self._time_index_fd = None
        self._index = self._time_index = None
        self.active = False

    def delete(self) -> None:
        """Remove the files, .log first: a crash in between leaves orphan indexes, which open() removes."""
        self.close_files()
        self.deleted = True
        for path in (self.log_path, self.index_path, self.time_index_path):
            path.unlink(missing_ok=True)

    # --- append -----------------------------------------------------------------------------------

    def _count(self, position: int, header: BatchHeader) -> None:
        """Fold the batch at ``position`` into the segment's summary (sizes, offsets, times)."""
        if self.first_append_time_ms is None:
            self.first_append_time_ms = header.append_time_ms
        if self.max_append_time_ms is None or header.append_time_ms > self.max_append_time_ms:
            self.max_append_time_ms = header.append_time_ms
        if header.max_timestamp_ms > self.max_timestamp_ms:
            self.max_timestamp_ms = header.max_timestamp_ms
            self.offset_of_max_timestamp = header.base_offset
        self.size_bytes = position + header.size_bytes
        self.next_offset = header.next_offset
        self.last_header = header

    def _index_rule(self, position: int, header: BatchHeader, index: OffsetIndex, time_index: TimeIndex
                    ) -> tuple[bytes, bytes]:
        """The one indexing rule (module docstring), for a batch already ``_count``-ed. Returns the bytes to
        append to the .index and .timeindex files (b"" for no entry)."""
        index_entry = time_entry = b""
        if position > 0 and position - index.last_position >= self.index_interval_bytes:
            index_entry = index.append(header.base_offset, position)
            last_timestamp_ms = time_index.last_timestamp_ms
            if last_timestamp_ms is None or self.max_timestamp_ms > last_timestamp_ms:
                time_entry = time_index.append(self.max_timestamp_ms, self.offset_of_max_timestamp)
        return index_entry, time_entry

    def _reset_summary(self) -> None:
        self.size_bytes = 0
        self.next_offset = self.base_offset
        self.last_header = None
        self.first_append_time_ms = self.max_append_time_ms = None
        self.max_timestamp_ms = -1
        self.offset_of_max_timestamp = self.base_offset

    def _summary(self) -> tuple[int, int, BatchHeader | None, int | None, int | None, int, int]:
        return (self.size_bytes, self.next_offset, self.last_header, self.first_append_time_ms,
                self.max_append_time_ms, self.max_timestamp_ms, self.offset_of_max_timestamp)

    def _restore_summary(self, summary: tuple[int, int, BatchHeader | None, int | None, int | None, int, int]
                         ) -> None:
        (self.size_bytes, self.next_offset, self.last_header, self.first_append_time_ms,
         self.max_append_time_ms, self.max_timestamp_ms, self.offset_of_max_timestamp) = summary

    def append(self, batch: bytes, header: BatchHeader) -> None:
        """Append one verified, stamped batch with ONE os.write, then its index entries (if it earns any).

        On any failure the .log and the indexes are cut back to where they were, so the segment never holds
        half a batch, and StorageError is raised.
        """
        invariant(self.active, f"append to {self.name}, which is not the active segment")
        invariant(header.base_offset == self.next_offset,
                  f"batch at offset {header.base_offset} does not continue {self.name} at {self.next_offset}")
        invariant(self.size_bytes + len(batch) <= U32_MAX, f"{self.name} would exceed 4 GiB")
        index, time_index = self._indexes()
        fd = self._log_fd()
        if self._tail_to_cut is not None:
            try:
                self._cut_tail(*self._tail_to_cut)
            except OSError as exc:
                raise StorageError(f"cannot append to {self.log_path}: a failed write left bytes after its end that "
                                   f"cannot be cut yet ({exc}); nothing was stored", path=str(self.log_path)) from exc
        position = self.size_bytes
        summary = self._summary()
        index_count, time_count = len(index), len(time_index)
        index_written = time_written = False
        try:
            written = os.write(fd, batch)
            if written != len(batch):
                raise OSError(f"short write: {written} of {len(batch)} bytes (disk full?)")
            self._count(position, header)
            index_entry, time_entry = self._index_rule(position, header, index, time_index)
            if index_entry:
                assert self._index_fd is not None
                write_all(self._index_fd, index_entry)
                index_written = True
            if time_entry:
                assert self._time_index_fd is not None
                write_all(self._time_index_fd, time_entry)
                time_written = True
        except OSError as exc:
            self._undo_append(position, summary, index_count, time_count, index_written, time_written)
            raise StorageError(f"cannot append to {self.log_path}: {exc}", path=str(self.log_path)) from exc

    def _undo_append(self, position: int, summary: tuple[int, int, BatchHeader | None, int | None, int | None,
                                                          int, int],
                     index_count: int, time_count: int, index_written: bool, time_written: bool) -> None:
        index, time_index = self._indexes()
        index.keep(index_count)
        time_index.keep(time_count)
        self._restore_summary(summary)
        # If this fails too, the next append tries again before it writes (the files are O_APPEND: a write must
        # never land after leftover bytes), and recovery at the next open cuts whatever is left.
        counts = (index_count if index_written else None, time_count if time_written else None)
        try:
            self._cut_tail(*counts)
        except OSError:
            self._tail_to_cut = counts

    def _cut_tail(self, index_count: int | None, time_count: int | None) -> None:
        """Cut the .log at size_bytes, and each index that was written at its entry count."""
        os.ftruncate(self._log_fd(), self.size_bytes)
        if index_count is not None and self._index_fd is not None:
            os.ftruncate(self._index_fd, index_count * OffsetIndex.ENTRY_BYTES)
        if time_count is not None and self._time_index_fd is not None:
            os.ftruncate(self._time_index_fd, time_count * TimeIndex.ENTRY_BYTES)
        self._tail_to_cut = None

    # --- reads ------------------------------------------------------------------------------------

    def _walk(self, start_position: int, expected_offset: int, *, verify: bool = False,
              end_position: int | None = None, chunk_bytes: int = limits.segment_lookup_chunk_bytes) -> _BatchWalker:
        return _BatchWalker(self._log_fd(), start_position=start_position,
                            end_position=self.size_bytes if end_position is None else end_position,
                            expected_offset=expected_offset, verify=verify, chunk_bytes=chunk_bytes)

    def _storage_fault(self, walker: _BatchWalker) -> StorageError:
        return StorageError(f"{walker.problem} at offset {walker.next_offset} in {self.log_path} "
                            f"(position {walker.position}); the file changed after it was recovered",
                            path=str(self.log_path), position=walker.position)

    def find_batch(self, offset: int) -> tuple[int, BatchHeader]:
        """``(position, header)`` of the batch that contains ``offset``, which must be in ``[base_offset,
        next_offset)``: the greatest index entry <= offset, then a header scan forward."""
        invariant(self.base_offset <= offset < self.next_offset,
                  f"offset {offset} is not in {self.name} [{self.base_offset}, {self.next_offset})")
        index, _ = self._indexes()
        entry_offset, position = index.lookup(offset)
        walker = self._walk(position, entry_offset)
        for batch_position, header in walker:
            if header.next_offset > offset:
                return batch_position, header
        raise self._storage_fault(walker) if walker.problem else InvariantViolation(
            f"offset {offset} not found in {self.name} although next_offset is {self.next_offset}")

    def read_header(self, position: int) -> BatchHeader:
        invariant(0 <= position < self.size_bytes, f"position {position} outside {self.name}")
        data = pread_exact(self._log_fd(), batches.STORED_HEADER_BYTES, position, self.log_path)
        return batches.parse_header(data)

    def iter_headers(self, position: int, offset: int) -> Iterator[tuple[int, BatchHeader]]:
        """``(position, header)`` of each batch from ``position`` (the batch at ``offset``) to the end."""
        walker = self._walk(position, offset)
        yield from walker
        if walker.problem:
            raise self._storage_fault(walker)

    def read_batches(self, position: int, max_bytes: int, *, at_least_one: bool) -> bytes:
        """Whole batches from ``position`` (a batch start) totalling at most ``max_bytes``; with
        ``at_least_one`` the first batch is returned even when it alone is larger."""
        fd = self._log_fd()
        available = self.size_bytes - position
        if available <= 0:
            return b""
        if available <= max_bytes:
            return pread_exact(fd, available, position, self.log_path)  # the file ends on a batch boundary
        data = pread_exact(fd, max(max_bytes, 0), position, self.log_path) if max_bytes > 0 else b""
        end = 0
        while True:
            size = batches.batch_length_at(data, end)
            if size is None or end + size > len(data):
                break
            if size < batches.STORED_HEADER_BYTES:
                raise StorageError(f"batch length {size} at position {position + end} in {self.log_path}",
                                   path=str(self.log_path))
            end += size
        if end:
            return data[:end]
        if not at_least_one:
            return b""
        size = batches.batch_length_at(pread_exact(fd, batches.STORED_LENGTH_BYTES, position, self.log_path))
        assert size is not None
        if not batches.STORED_HEADER_BYTES <= size <= available:
            raise StorageError(f"batch length {size} at position {position} in {self.log_path}",
                               path=str(self.log_path))
        return pread_exact(fd, size, position, self.log_path)

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch here whose max_timestamp_ms >= ``timestamp_ms``, None if none."""
        if self.is_empty or self.max_timestamp_ms < timestamp_ms:
            return None
        _, time_index = self._indexes()
        start_offset = time_index.lookup(timestamp_ms)
        position, header = self.find_batch(self.base_offset if start_offset is None else start_offset)
        for _, candidate in self.iter_headers(position, header.base_offset):
            if candidate.max_timestamp_ms >= timestamp_ms:
                return candidate.base_offset
        raise InvariantViolation(f"{self.name}: max timestamp {self.max_timestamp_ms}, no batch reaches it")

    # --- open, recover, truncate ------------------------------------------------------------------

    def load_trusted(self, next_base_offset: int) -> str | None:
        """Learn a segment below the recovery point cheaply: sanity-check both indexes, then walk the batch
        headers from the last index entry to the end (about ``index_interval_bytes``). Returns why the segment
        is in doubt (the caller then recovers it fully), or None. Leaves no file open.

        ``max_append_time_ms`` becomes the largest append time of the walked tail, which includes the last
        batch. Append times come from the Raft leader's clock and grow except across a leader change with
        clock skew, so this can undershoot the true maximum by that skew at most.
        """
        try:
            return self._load_trusted(next_base_offset)
        finally:
            self.close_files()

    def _load_trusted(self, next_base_offset: int) -> str | None:
        index, time_index, problem = self._load_indexes()
        if problem is not None:
            return problem
        if len(index) and not len(time_index):
            return f"{self.time_index_path.name} is empty but {self.index_path.name} is not"
        if self.size_bytes < batches.STORED_HEADER_BYTES:
            return f"the segment holds {self.size_bytes} bytes but is not the last one"
        first = batches.parse_header(os.pread(self._log_fd(), batches.STORED_HEADER_BYTES, 0))
        if first.base_offset != self.base_offset:
            return f"its first batch has base_offset {first.base_offset}"
        self._reset_summary()
        self.first_append_time_ms = first.append_time_ms
        last_timestamp_ms = time_index.last_timestamp_ms
        if last_timestamp_ms is not None:
            # Running max at the last time entry = max over every batch up to the last index entry.
            last_relative = time_index.last_relative_offset()
            assert last_relative is not None
            self.max_timestamp_ms = last_timestamp_ms
            self.offset_of_max_timestamp = self.base_offset + last_relative
        file_size = os.fstat(self._log_fd()).st_size
        walker = _BatchWalker(self._log_fd(), start_position=index.last_position, end_position=file_size,
                              expected_offset=index.last_offset, verify=False,
                              chunk_bytes=limits.segment_lookup_chunk_bytes)
        for position, header in walker:
            self._count(position, header)
        if walker.problem is not None:
            return f"{walker.problem} at offset {walker.next_offset} (position {walker.position})"
        if self.next_offset != next_base_offset:
            return f"it ends at offset {self.next_offset} but the next segment starts at {next_base_offset}"
        if self.offset_of_max_timestamp >= self.next_offset:
            return f"{self.time_index_path.name} points past the end of the segment"
        self.size_bytes = file_size
        return None

    def recover(self) -> SegmentRecovery:
        """Validate every batch (both CRCs, lengths, offset continuity from ``base_offset``); cut the file at
        the first bad one (ftruncate + fsync); rebuild both indexes from the sound prefix and rewrite a file
        that differs from the rebuilt one (reported in ``indexes_rebuilt``)."""
        fd = self._log_fd()
        file_size = os.fstat(fd).st_size
        self._reset_summary()
        index, time_index = OffsetIndex(self.base_offset), TimeIndex(self.base_offset)
        walker = _BatchWalker(fd, start_position=0, end_position=file_size, expected_offset=self.base_offset,
                              verify=True)
        checked = 0
        for position, header in walker:
            self._count(position, header)
            self._index_rule(position, header, index, time_index)
            checked += 1
        truncated_bytes = file_size - walker.position
        reason = truncated_at = None
        if walker.problem is not None:
            truncated_at = walker.next_offset
            reason = (f"{walker.problem} at offset {walker.next_offset} in {self.name} "
                      f"(position {walker.position})")
            os.ftruncate(fd, walker.position)
            os.fsync(fd)
        self.size_bytes = walker.position
        self.next_offset = walker.next_offset
        rebuilt = []
        for path, data in ((self.index_path, index.to_bytes()),
                           (self.time_index_path, time_index.to_bytes())):
            try:
                unchanged = path.stat().st_size == len(data) and path.read_bytes() == data
            except FileNotFoundError:
                unchanged = False
            if not unchanged:
                self._close_index_fds()
                write_file_atomically(path, data)
                rebuilt.append(path.name)
        self._index, self._time_index = index, time_index
        return SegmentRecovery(checked, truncated_bytes, truncated_at, reason, tuple(rebuilt))

    def _close_index_fds(self) -> None:
        # A rewrite replaces the index file (rename): an fd open on the old inode would append to a ghost.
        for fd in (self._index_fd, self._time_index_fd):
            if fd is not None:
                os.close(fd)
        self._index_fd = self._time_index_fd = None

    def truncate_to(self, offset: int) -> int:
        """Drop every batch with base_offset >= ``offset``, which must be a batch boundary in ``[base_offset,
        next_offset]``. Cuts the .log (ftruncate + fsync) and keeps the matching prefix of each index.
        Returns the bytes removed. The segment must be active."""
        invariant(self.active, f"truncate {self.name}, which is not the active segment")
        invariant(self.base_offset <= offset <= self.next_offset,
                  f"truncate {self.name} to {offset}: outside [{self.base_offset}, {self.next_offset}]")
        if offset == self.next_offset:
            return 0
        position, header = self.find_batch(offset)
        invariant(header.base_offset == offset,
                  f"truncate to {offset}: not a batch boundary (the batch there starts at "
                  f"{header.base_offset})")
        fd = self._log_fd()
        removed = self.size_bytes - position
        os.ftruncate(fd, position)
        os.fsync(fd)
        # Both indexing rules depend only on the batches before the cut, so a rebuild of the kept prefix
        # yields exactly a prefix of each index: re-derive it (and the summary) from a header walk.
        self._reset_summary()
        index, time_index = OffsetIndex(self.base_offset), TimeIndex(self.base_offset)
        walker = self._walk(0, self.base_offset, end_position=position, chunk_bytes=limits.segment_scan_chunk_bytes)
        for batch_position, batch_header in walker:
            self._count(batch_position, batch_header)
            self._index_rule(batch_position, batch_header, index, time_index)
        if walker.problem is not None:
            raise self._storage_fault(walker)
        self._index, self._time_index = index, time_index
        assert self._index_fd is not None and self._time_index_fd is not None
        for index_fd, data in ((self._index_fd, index.to_bytes()),
                               (self._time_index_fd, time_index.to_bytes())):
            os.ftruncate(index_fd, 0)
            write_all(index_fd, data)  # O_APPEND: lands at the new end, 0
            os.fsync(index_fd)
        return removed
