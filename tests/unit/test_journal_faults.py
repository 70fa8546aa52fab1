"""The Raft journal on a disk that refuses writes (tests/faulty_disk.py: ENOSPC on writes, EIO on fsync).

Goal: nothing the disk refused is recorded as appended; after a failed fsync the entries it was to cover are
never trusted again, even if a later fsync succeeds, and ``recover`` cuts them (but never what was
committed); ``recover`` refuses while the disk still does; term and vote that could not be written raise, and
are written again by ``recover``; every error is a coded STORAGE_ERROR that says what happens next."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftmq.cluster.errors import StorageError
from raftmq.node.journal import DurableJournal

from tests.faulty_disk import FaultyDisk


def _entry(index: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"command-%d" % index, index, term)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
    (tmp_path / "g").mkdir()
    return FaultyDisk(tmp_path / "g").install(monkeypatch)


def test_an_append_the_disk_refuses_is_not_recorded(disk: FaultyDisk) -> None:
    journal = DurableJournal(disk.directory / "raft.journal", durable=True)
    for index in (1, 2, 3):
        journal.add(*_entry(index))
    disk.full = True
    with pytest.raises(StorageError) as refused:
        journal.add(*_entry(4))
    assert refused.value.code == "STORAGE_ERROR" and "disk is full" in refused.value.message
    assert "resumes by itself" in refused.value.message
    assert len(journal) == 3 and journal.last_index == 3
    disk.full = False
    journal.add(*_entry(4))  # the retry lands where the refused append would have
    journal.sync()
    journal.close()
    reopened = DurableJournal(disk.directory / "raft.journal", durable=True)
    assert [reopened[i] for i in range(len(reopened))] == [_entry(i) for i in (1, 2, 3, 4)]
    assert reopened.truncated_tail_bytes == 0


def test_entries_whose_fsync_failed_are_cut_by_recover(disk: FaultyDisk) -> None:
    journal = DurableJournal(disk.directory / "raft.journal", durable=True)
    for index in range(1, 6):
        journal.add(*_entry(index))
    journal.sync()  # 1..5 on disk
    for index in range(6, 11):
        journal.add(*_entry(index))
    disk.failing_fsync = True
    with pytest.raises(StorageError, match="I/O error"):
        journal.sync()
    disk.failing_fsync = False
    journal.add(*_entry(11))
    journal.sync()  # succeeds, but proves nothing about the pages the failed one was to write
    disk.full = True
    with pytest.raises(StorageError):
        journal.recover(keep_through_index=5)  # the probe: the disk still refuses
    assert len(journal) == 11
    disk.full = False
    assert journal.recover(keep_through_index=7) == 4  # 8..11 cut; 6 and 7 are committed, so they stay
    assert journal.last_index == 7
    journal.add(*_entry(8, term=2))  # appends go on from there
    journal.sync()
    journal.add(*_entry(9, term=2))
    assert journal.recover(keep_through_index=0) == 0  # no fsync failed since: nothing is cut
    assert journal.last_index == 9
    assert not list(disk.directory.glob("*.probe*"))


def test_term_and_vote_the_disk_refuses_raise_and_recover_writes_them(disk: FaultyDisk) -> None:
    path = disk.directory / "raft.journal"
    journal = DurableJournal(path, durable=True)
    journal.add(*_entry(1))
    journal.setCurrentTerm(3, "2")
    disk.full = True
    with pytest.raises(StorageError, match="term and vote"):
        journal.setCurrentTerm(4, "1")
    disk.full = False
    journal.recover(keep_through_index=1)
    journal.close()
    reopened = DurableJournal(path, durable=True)
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (4, "1")
