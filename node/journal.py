"""The Raft journal of one group: pysyncobj's ``Journal`` interface on a checksummed, fsync-able file.

pysyncobj's own ``FileJournal`` writes through mmap, never fsyncs, has no checksums, keeps every command
in memory and rewrites itself in place on compaction (not crash-atomic). This one:

* appends records ``[u32 payload length][u32 crc32(payload)][u64 index][u64 term][command]`` with one
  ``os.writev`` each, and cuts a torn or corrupt tail when it is opened;
* keeps only ``(term, file position, length)`` per entry in memory plus a bounded cache of the newest
  commands (``journal_cache_bytes_max``); older commands are read back with ``pread`` when pysyncobj asks
  (a lagging follower, replay at start), through lazy slices so a large range never sits in memory;
* makes durability explicit: ``sync()`` fdatasyncs what was appended, and the replication loop decides when
  (group commit before acknowledging under the ``always`` policy); term and vote are written with
  tmp + fsync + rename before pysyncobj sends the vote that depends on them;
* turns every write the disk refuses (append, fsync, truncation, compaction, term and vote) into a coded
  STORAGE_ERROR without recording anything as done; after a failed fsync it never trusts the entries that
  fsync was to cover (a later fsync may succeed without writing them), and ``recover`` (once a probe write
  and fsync succeed) cuts them, never below what the replica has committed;
* compacts atomically (new file + fsync + rename), and on open finishes a compaction that a crash
  interrupted between writing the snapshot and rewriting the journal (pysyncobj replaces a journal whose
  first two entries differ from its snapshot's by those two), so pysyncobj never throws away entries that
  follow its snapshot.

It also keeps the membership change entries it holds (commands starting with ``config_prefix``) in
``config_entries``, so the group can say which voters its log describes (Raft applies a configuration entry
when it is appended and reverts it when the entry is truncated), and, in its meta file, the voters the
group started with (``initial_voters``): the base those entries apply to when there is no snapshot.

Raft indexes in a journal are contiguous, so entry ``i`` (position in the journal) has index
``first_index + i``. Thread use: only the replication thread touches a journal.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.errors import StorageError, invariant
from raftmq.node.fsutil import fsync_directory, make_directories, write_all, write_file_atomically

log = logging.getLogger(__name__)

_MAGIC = b"RMQJRNL1"
_RECORD_HEAD = struct.Struct(">IIQQ")  # payload length, crc, index, term
_RECORD_HEAD_BYTES = _RECORD_HEAD.size  # 24
_LEN_CRC = struct.Struct(">II")
_INDEX_TERM = struct.Struct(">QQ")

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape


class _LazyEntries:
    """A read-only sequence of journal entries materialised on access (pysyncobj slices and iterates)."""

    def __init__(self, journal: DurableJournal, start: int, stop: int) -> None:
        self._journal = journal
        self._start = start
        self._stop = stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __bool__(self) -> bool:
        return self._stop > self._start

    def __iter__(self) -> Iterator[Entry]:
        for position in range(self._start, self._stop):
            yield self._journal._entry_at(position)

    def __getitem__(self, item: int | slice) -> Any:
        length = self._stop - self._start
        if isinstance(item, slice):
            # A slice of a lazy range is what pysyncobj sends or applies (it cuts the range to
            # appendEntriesBatchSizeBytes first): always a real list, which the transport can encode.
            start, stop, step = item.indices(length)
            invariant(step == 1, "journal slices have step 1")
            return [self._journal._entry_at(self._start + position) for position in range(start, max(start, stop))]
        if item < 0:
            item += length
        if not 0 <= item < length:
            raise IndexError(item)
        return self._journal._entry_at(self._start + item)


class DurableJournal:
    """See the module docstring. ``durable`` False means: never fsync (the ``never`` policy).

    It has every method of pysyncobj's ``Journal`` interface (which node/replication.py hands it to), without
    importing pysyncobj: only the two replication modules do."""

    def __init__(self, path: Path, *, durable: bool, snapshot_entries: tuple[Entry, Entry] | None = None,
                 cache_bytes_max: int = limits.journal_cache_bytes_max, config_prefix: bytes = b"") -> None:
        self.path = path
        self._config_prefix = config_prefix
        # index -> command of every membership change entry in the journal, in index order.
        self.config_entries: dict[int, bytes] = {}
        self.durable = durable
        self._meta_path = path.with_name(path.name + ".meta")
        self._cache_bytes_max = cache_bytes_max
        self._first_index = 0
        self._terms = array("Q")
        self._positions = array("Q")
        self._lengths = array("I")  # command lengths
        # Newest commands, keyed by position; always holds at least the last entry.
        self._cache: dict[int, bytes] = {}
        self._cache_bytes = 0
        self._cache_start = 0
        self._end_position = len(_MAGIC)
        self._unsynced = False
        # Entries known to be on disk: every entry below this position was covered by a sync that succeeded.
        # After a failed fsync the pages it was to write may be lost while the kernel marks them clean (a
        # later fsync can then succeed without writing them), so the entries from here on are not trusted.
        self._synced_count = 0
        self._sync_failed = False
        self._meta: dict[str, Any] = {}
        self._meta_dirty = False
        self.truncated_tail_bytes = 0
        self.on_append: Callable[[bytes, int, int], None] | None = None
        self._fd = self._open_file()
        self._load_meta()
        self._scan()
        if snapshot_entries is not None:
            self._finish_interrupted_compaction(snapshot_entries)

    # --- opening ------------------------------------------------------------------------------

    def _open_file(self) -> int:
        make_directories(self.path.parent, durable=self.durable)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size < len(_MAGIC):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC, 0)
            if self.durable:
                os.fsync(fd)
                fsync_directory(self.path.parent)
        elif os.pread(fd, len(_MAGIC), 0) != _MAGIC:
            os.close(fd)
            raise OSError(f"{self.path} is not a raftmq journal (bad magic)")
        return fd

    def _load_meta(self) -> None:
        try:
            raw = self._meta_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            meta = msgpack.unpackb(raw, raw=False)
            if isinstance(meta, dict):
                self._meta = meta
        except Exception:  # noqa: BLE001 - a torn meta file (only possible without fsync) reads as empty
            log.warning("journal meta %s is unreadable; starting with term 0", self._meta_path)

    def _scan(self) -> None:
        """Read every record header, verify CRCs, cut the tail at the first bad record."""
        size = os.fstat(self._fd).st_size
        position = len(_MAGIC)
        expected_index = None
        reason = None
        while position < size:
            head = os.pread(self._fd, _RECORD_HEAD_BYTES, position)
            if len(head) < _RECORD_HEAD_BYTES:
                reason = "torn record header"
                break
            length, crc, index, term = _RECORD_HEAD.unpack(head)
            if length < 16 or position + 8 + length > size:
                reason = "record length runs past the end of the file"
                break
            payload = os.pread(self._fd, length, position + 8)
            if zlib.crc32(payload) != crc:
                reason = "record CRC mismatch"
                break
            if expected_index is not None and index != expected_index:
                reason = f"index {index} does not follow {expected_index - 1}"
                break
            if expected_index is None:
                self._first_index = index
            self._note_config(index, payload, 16)
            self._terms.append(term)
            self._positions.append(position)
            self._lengths.append(length - 16)
            expected_index = index + 1
            position += 8 + length
        if position < size:
            self.truncated_tail_bytes = size - position
            log.warning("journal %s: cut %d bytes at offset %d (%s)", self.path, size - position, position, reason)
            os.ftruncate(self._fd, position)
            if self.durable:
                os.fsync(self._fd)
        self._end_position = position
        self._synced_count = len(self._terms)  # what is on disk now is all there is to trust
        self._cache_start = len(self._terms)
        self._refill_cache_tail()

    def _refill_cache_tail(self) -> None:
        """After open or truncation: cache the newest commands up to the byte budget."""
        self._cache.clear()
        self._cache_bytes = 0
        count = len(self._terms)
        start = count
        budget = self._cache_bytes_max
        while start > 0 and (start == count or self._lengths[start - 1] <= budget):
            budget -= self._lengths[start - 1]
            start -= 1
        for position in range(start, count):
            command = self._read_command(position)
            self._cache[position] = command
            self._cache_bytes += len(command)
        self._cache_start = start

    def _finish_interrupted_compaction(self, snapshot_entries: tuple[Entry, Entry]) -> None:
        """pysyncobj replaces the whole journal by the snapshot's two entries when the journal's first two
        entries differ from them. If a crash hit after the snapshot was written but before the journal was
        compacted, drop the prefix here instead so the entries after the snapshot survive."""
        prev_entry, last_entry = snapshot_entries
        prev_index = prev_entry[1]
        position = prev_index - self._first_index
        if len(self) < 2 or position <= 0 or position + 1 >= len(self):
            return
        if self[position] == tuple(prev_entry) and self[position + 1] == tuple(last_entry):
            log.info("journal %s: finishing an interrupted compaction up to index %d", self.path, prev_index)
            self.deleteEntriesTo(position)

    def _note_config(self, index: int, data: bytes, offset: int) -> None:
        """Remember entry ``index`` if its command (``data[offset:]``) is a membership change."""
        prefix = self._config_prefix
        if prefix and data[offset:offset + len(prefix)] == prefix:
            self.config_entries[index] = bytes(data[offset:])

    def _forget_config(self, *, below: int | None = None, from_index: int | None = None) -> None:
        self.config_entries = {index: command for index, command in self.config_entries.items()
                               if (below is None or index >= below) and (from_index is None or index < from_index)}

    # --- reading ------------------------------------------------------------------------------

    def _read_command(self, position: int) -> bytes:
        length = self._lengths[position]
        command = os.pread(self._fd, length, self._positions[position] + _RECORD_HEAD_BYTES)
        invariant(len(command) == length, f"short read of journal entry at position {position}")
        return command

    def _entry_at(self, position: int) -> Entry:
        command = self._cache.get(position)
        if command is None:
            command = self._read_command(position)
        return (command, self._first_index + position, self._terms[position])

    def _slice(self, start: int, stop: int) -> list[Entry] | _LazyEntries:
        if stop - start > limits.journal_lazy_slice_entries:
            return _LazyEntries(self, start, stop)
        return [self._entry_at(position) for position in range(start, stop)]

    def __getitem__(self, item: int | slice) -> Any:
        count = len(self._terms)
        if isinstance(item, slice):
            start, stop, step = item.indices(count)
            invariant(step == 1, "journal slices have step 1")
            return self._slice(start, max(start, stop))
        if item < 0:
            item += count
        if not 0 <= item < count:
            raise IndexError(item)
        return self._entry_at(item)

    def __len__(self) -> int:
        return len(self._terms)

    @property
    def first_index(self) -> int | None:
        return self._first_index if self._terms else None

    @property
    def last_index(self) -> int | None:
        return self._first_index + len(self._terms) - 1 if self._terms else None

    def term_at(self, index: int) -> int | None:
        position = index - self._first_index
        if 0 <= position < len(self._terms):
            return int(self._terms[position])
        return None

    @property
    def size_bytes(self) -> int:
        return self._end_position

    # --- writing ------------------------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        if self._terms:
            invariant(idx == self._first_index + len(self._terms),
                      f"journal append of index {idx} after {self._first_index + len(self._terms) - 1}")
        else:
            self._first_index = idx
        command = bytes(command)
        index_term = _INDEX_TERM.pack(idx, term)
        crc = zlib.crc32(command, zlib.crc32(index_term))
        head = _LEN_CRC.pack(16 + len(command), crc) + index_term
        try:
            written = os.pwritev(self._fd, [head, command], self._end_position)
        except OSError as exc:  # nothing is recorded as appended: a retry writes at the same position
            raise _write_failed(self.path, "append to", exc) from exc
        invariant(written == len(head) + len(command), "short journal write")
        position = len(self._terms)
        self._terms.append(term)
        self._positions.append(self._end_position)
        self._lengths.append(len(command))
        self._end_position += written
        self._unsynced = True
        self._cache[position] = command
        self._cache_bytes += len(command)
        self._evict_cache()
        self._note_config(idx, command, 0)
        if self.on_append is not None:
            self.on_append(command, idx, term)

    def _evict_cache(self) -> None:
        last = len(self._terms) - 1
        while self._cache_bytes > self._cache_bytes_max and self._cache_start < last:
            command = self._cache.pop(self._cache_start, None)
            if command is not None:
                self._cache_bytes -= len(command)
            self._cache_start += 1

    def clear(self) -> None:
        os.ftruncate(self._fd, len(_MAGIC))
        self._terms = array("Q")
        self._positions = array("Q")
        self._lengths = array("I")
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_start = 0
        self._end_position = len(_MAGIC)
        self._unsynced = True
        self._synced_count = 0
        self.config_entries = {}

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 - pysyncobj's name
        """Drop entries at positions >= entryFrom (a follower resolving a conflict with its leader)."""
        if entryFrom >= len(self._terms):
            return
        entry_from = max(entryFrom, 0)
        self._synced_count = min(self._synced_count, entry_from)
        self._forget_config(from_index=self._first_index + entry_from)
        end_position = self._positions[entry_from] if entry_from < len(self._positions) else self._end_position
        try:
            os.ftruncate(self._fd, end_position)
        except OSError as exc:  # nothing is recorded as deleted: the journal still matches its file
            raise _write_failed(self.path, "truncate", exc) from exc
        self._end_position = end_position
        del self._terms[entry_from:]
        del self._positions[entry_from:]
        del self._lengths[entry_from:]
        for position in [p for p in self._cache if p >= entry_from]:
            self._cache_bytes -= len(self._cache.pop(position))
        if self._cache_start > len(self._terms) or (self._terms and len(self._terms) - 1 not in self._cache):
            self._refill_cache_tail()
        self._unsynced = True

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 - pysyncobj's name
        """Drop entries at positions < entryTo (after a snapshot): write the rest to a new file and rename
        it over the old one, so a crash leaves either the old or the new journal, never a mix."""
        if entryTo <= 0:
            return
        entry_to = min(entryTo, len(self._terms))
        keep_from = self._positions[entry_to] if entry_to < len(self._positions) else self._end_position
        tmp = self.path.with_name(self.path.name + ".compact")
        try:
            fd = self._write_compacted(tmp, keep_from)
            os.replace(tmp, self.path)
            if self.durable:
                fsync_directory(self.path.parent)
        except OSError as exc:  # the old journal is untouched and still in use; the new one is garbage
            tmp.unlink(missing_ok=True)
            raise _write_failed(self.path, "compact", exc) from exc
        os.close(self._fd)
        self._fd = fd
        shift = keep_from - len(_MAGIC)
        self._first_index += entry_to
        self._synced_count = max(0, self._synced_count - entry_to)
        self._forget_config(below=self._first_index)
        self._terms = self._terms[entry_to:]
        self._lengths = self._lengths[entry_to:]
        self._positions = array("Q", (p - shift for p in self._positions[entry_to:]))
        self._end_position -= shift
        self._cache = {p - entry_to: c for p, c in self._cache.items() if p >= entry_to}
        self._cache_bytes = sum(len(c) for c in self._cache.values())
        self._cache_start = max(0, self._cache_start - entry_to)
        if self._terms and len(self._terms) - 1 not in self._cache:
            self._refill_cache_tail()

    def _write_compacted(self, tmp: Path, keep_from: int) -> int:
        """Write the magic and the records from ``keep_from`` on to ``tmp``; returns its open fd."""
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, _MAGIC)
            copied = 0
            remaining = self._end_position - keep_from
            while copied < remaining:
                chunk = os.pread(self._fd, min(remaining - copied, 4 * limits.MIB), keep_from + copied)
                invariant(len(chunk) > 0, "journal shrank during compaction")
                write_all(fd, chunk)
                copied += len(chunk)
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # --- durability ---------------------------------------------------------------------------

    @property
    def unsynced(self) -> bool:
        return self._unsynced

    def sync(self) -> None:
        """fdatasync what was appended since the last sync (group commit: many appends, one sync)."""
        if self._unsynced:
            if self.durable:
                try:
                    os.fdatasync(self._fd)
                except OSError as exc:
                    self._sync_failed = True
                    raise _write_failed(self.path, "fsync", exc) from exc
            self._unsynced = False
            if not self._sync_failed:  # after a failed fsync a later one proves nothing about the earlier pages
                self._synced_count = len(self._terms)

    def recover(self, *, keep_through_index: int) -> int:
        """After a write or fsync this journal's disk refused: check that the disk takes a write and an fsync
        again (raises StorageError while it does not), then make the journal trustworthy. If an fsync failed,
        the entries it was to cover are cut (a power cut could have taken them just the same; this replica
        never acknowledged them nor counted itself for them), but never an entry at or below
        ``keep_through_index`` (what this replica has committed: under the ``always`` policy it is all synced
        anyway). Term, vote and commit index are written again. Returns the number of entries cut."""
        probe = self.path.with_name(self.path.name + ".probe")
        try:
            write_file_atomically(probe, bytes(limits.journal_probe_bytes), durable=self.durable)
            probe.unlink()
        except OSError as exc:
            probe.with_name(probe.name + ".tmp").unlink(missing_ok=True)
            raise _write_failed(self.path, "write a probe file next to", exc) from exc
        cut = 0
        if self._sync_failed:
            keep = max(self._synced_count, keep_through_index - self._first_index + 1, 1 if self._terms else 0)
            cut = max(0, len(self._terms) - keep)
            if cut:
                log.warning("journal %s: cutting %d entries from index %d whose fsync failed", self.path, cut,
                            self._first_index + keep)
                self.deleteEntriesFrom(keep)
        self._sync_failed = False  # what is left is trusted once this fsync succeeds
        self._unsynced = True  # fsync whatever is there, even if nothing changed since the failure
        self.sync()
        try:
            self._store_meta(durable=self.durable)
        except OSError as exc:
            raise _write_failed(self.path, "write the term and vote of", exc) from exc
        return cut

    def flush(self) -> None:
        self.sync()
        self._store_meta(durable=self.durable)

    def _store_meta(self, *, durable: bool) -> None:
        write_file_atomically(self._meta_path, msgpack.packb(self._meta, use_bin_type=True), durable=durable)
        self._meta_dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        # Stored at most once a second (onOneSecondTimer): the commit index is a hint, Raft re-learns it.
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802,N803
        # Raft: currentTerm and votedFor must be durable before any message that reflects them is sent. If
        # the disk refuses, the raised error stops this replica before pysyncobj sends that message.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        try:
            self._store_meta(durable=self.durable)
        except OSError as exc:
            raise _write_failed(self.path, "write the term and vote of", exc) from exc

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.get("voted_for")

    @property
    def initial_voters(self) -> tuple[int, ...] | None:
        """The voters this group had at its first entry, as stored by ``set_initial_voters`` (None: never)."""
        voters = self._meta.get("initial_voters")
        if not isinstance(voters, list) or not all(type(v) is int for v in voters):
            return None
        return tuple(voters)

    def set_initial_voters(self, voters: tuple[int, ...]) -> None:
        self._meta["initial_voters"] = list(voters)
        self._store_meta(durable=self.durable)

    def onOneSecondTimer(self) -> None:  # noqa: N802
        # Durable like every meta write: the file also holds the term and the vote. An unsynced file renamed
        # over it becomes durable by name at the next fsync of the directory (a segment roll does one) while
        # its bytes may not be: after a power cut the meta would read as empty, the vote forgotten.
        if self._meta_dirty:
            try:
                self._store_meta(durable=self.durable)
            except OSError as exc:
                raise _write_failed(self.path, "write the commit index of", exc) from exc

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._destroy()


def _write_failed(path: Path, what: str, exc: OSError) -> StorageError:
    """The coded error for a journal write the disk refused (full, failing). Raised, never swallowed: Raft
    must not count an entry as stored that is not, so the replication thread takes the replica out of its
    group (it neither acknowledges nor leads) until the disk takes writes again."""
    hint = {errno.ENOSPC: "the disk is full: free space; the replica resumes by itself once writes succeed",
            errno.EIO: "the disk reported an I/O error: check it; the replica resumes once writes succeed"}
    advice = hint.get(exc.errno or 0, "check the data directory; the replica resumes once writes succeed")
    return StorageError(f"cannot {what} the Raft journal {path}: {exc.strerror or exc}; {advice}", path=str(path))
