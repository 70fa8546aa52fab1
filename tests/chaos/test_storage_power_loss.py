"""The broker's storage survives a power cut with what it fsynced (regressions found by the fault file system).

Method: open the real storage classes (partition log, Raft journal, a partition directory's claim) on a fault
file system mount, make them durable the way the broker does, cut the power (``lose-unsynced``: everything not
fsynced, including directory entries whose directory was not fsynced, is gone), reopen and compare. Each test
failed before its fix:

* a partition directory (and ``partitions/`` above it) was created without an fsync of its parent, so a power
  cut took the whole directory, log and journal included, however often the files inside were fsynced;
* the journal's once-a-second meta write (commit index) renamed an unsynced file over ``raft.journal.meta``;
  the next fsync of the directory made the rename durable but not the bytes, and a power cut left an empty
  meta file: the broker forgot its term and its vote (Raft's safety needs both on disk);
* a partition's claim marker (``partition.json``) was written without fsync, and the log's directory fsync
  made its name durable: after a cut the empty marker could not be parsed and the broker could not start.

Skipped, with the reason, where FUSE cannot be mounted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.faultfs.process import FaultFsMount
from raftmq.cluster import limits
from raftmq.cluster.batch import encode_batch, stamp
from raftmq.node.fsutil import fsync_directory
from raftmq.node.journal import DurableJournal
from raftmq.node.log import LogConfig, PartitionLog
from raftmq.node.replicas import _claim_directory

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"fault file system unavailable: {_REASON}")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[FaultFsMount]:
    with FaultFsMount(tmp_path / "data", seed=11) as mounted:
        yield mounted


def _batch(offset: int) -> bytes:
    produced = encode_batch([(None, f"value-{offset}".encode(), [], 1_000)])
    return stamp(produced, base_offset=offset, leader_epoch=1, raft_index=offset + 1, append_time_ms=1_000)


def test_a_flushed_partition_log_in_new_directories_survives_a_power_cut(mount: FaultFsMount) -> None:
    directory = mount.mountpoint / "partitions" / "chaos-0"
    config = LogConfig(segment_bytes=limits.segment_bytes_min, index_interval_bytes=1024)
    log = PartitionLog.open(directory, config)
    for offset in range(5):
        log.append(_batch(offset))
    log.flush()
    log.close()
    mount.lose_unsynced()
    reopened = PartitionLog.open(directory, config)
    try:
        assert reopened.log_end_offset == 5
    finally:
        reopened.close()


def test_a_durable_journal_keeps_its_term_and_vote_across_a_power_cut(mount: FaultFsMount) -> None:
    path = mount.mountpoint / "partitions" / "chaos-1" / "raft.journal"
    journal = DurableJournal(path, durable=True)
    journal.add(b"command", 1, 3)
    journal.sync()
    journal.setCurrentTerm(3, 2)
    journal.setRaftCommitIndex(1)
    journal.onOneSecondTimer()  # the commit-index hint is stored
    fsync_directory(path.parent)  # as a segment roll in the same directory does
    mount.lose_unsynced()  # the power goes before the journal is closed
    reopened = DurableJournal(path, durable=True)
    try:
        assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (3, 2)
        assert len(reopened) == 1
    finally:
        reopened.close()


def test_a_claimed_partition_directory_is_readable_after_a_power_cut(mount: FaultFsMount) -> None:
    directory = mount.mountpoint / "partitions" / "chaos-2"
    topic = SimpleNamespace(name="chaos", topic_id=6)
    assert _claim_directory(directory, topic, 2)  # type: ignore[arg-type]
    fsync_directory(directory)  # the log opened in it fsyncs the directory
    mount.lose_unsynced()
    marker = json.loads((directory / "partition.json").read_text())
    assert marker["topic_id"] == 6
    assert _claim_directory(directory, topic, 2)  # type: ignore[arg-type]


def test_a_full_disk_fails_a_journal_append_with_a_coded_error_and_keeps_the_journal_whole(
        mount: FaultFsMount) -> None:
    from raftmq.cluster.errors import StorageError

    path = mount.mountpoint / "partitions" / "chaos-3" / "raft.journal"
    journal = DurableJournal(path, durable=True)
    try:
        journal.add(b"first", 1, 1)
        journal.sync()
        rule = mount.add_rule(ops=["write"], errno="ENOSPC")
        with pytest.raises(StorageError, match="disk is full") as refused:
            journal.add(b"second", 2, 1)
        assert refused.value.code == "STORAGE_ERROR"
        assert len(journal) == 1  # not counted as stored
        mount.clear_rules(rule)  # space returns: the same index is appended
        journal.add(b"second", 2, 1)
        journal.sync()
    finally:
        journal.close()
    reopened = DurableJournal(path, durable=True)
    try:
        assert [bytes(entry[0]) for entry in (reopened[0], reopened[1])] == [b"first", b"second"]
    finally:
        reopened.close()
