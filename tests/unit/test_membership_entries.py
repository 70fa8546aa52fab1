"""Membership change entries: raftmq's envelope instead of pysyncobj's pickle (node/peer_protocol.py,
node/replication.py ``_CommandCodec``), the journal's record of them (node/journal.py), the voters a log
describes (``GroupMembership``) and pre-vote for a removed replica (node/prevote.py).

Goal: what pysyncobj writes for ``addNodeToCluster`` round-trips through the codec as a BrokerNode without
pickle; only exactly that envelope passes the peer schema; the voters follow appends, truncations and
compactions of the journal, also after reopening it; a replica that is not a voter never campaigns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from raftmq.node import peer_protocol
from raftmq.node.journal import DurableJournal
from raftmq.node.peer_protocol import PeerProtocolError
from raftmq.node.prevote import FOLLOWER, PreVote
from raftmq.node.raft_transport import BrokerNode
from raftmq.node.replication import _CONFIG_PREFIX, GroupMembership, _CommandCodec, encode_snapshot, read_snapshot


def test_command_type_matches_pysyncobj() -> None:
    from pysyncobj.syncobj import _COMMAND_TYPE

    assert peer_protocol.COMMAND_MEMBERSHIP == _COMMAND_TYPE.MEMBERSHIP


def test_codec_round_trips_a_membership_change_without_pickle() -> None:
    body = _CommandCodec.dumps(["add", "4", BrokerNode(4)])
    assert body == peer_protocol.MEMBERSHIP_MAGIC + msgpack.packb(["add", 4])
    kind, node_id, node = _CommandCodec.loads(body)
    assert (kind, node_id) == ("add", "4") and isinstance(node, BrokerNode) and node.broker_id == 4
    assert node == BrokerNode(4)


@pytest.mark.parametrize("body", [
    b"RMQM", b"RMQM\xc1", b"RMQM" + msgpack.packb(["add", -1]), b"RMQM" + msgpack.packb(["add", True]),
    b"RMQM" + msgpack.packb(["add", "4"]), b"RMQM" + msgpack.packb(["drop", 4]),
    b"RMQM" + msgpack.packb(["add", 4]) + b"\x00", b"RMQM" + msgpack.packb(["rem", 4, 5]),
    b"RMQM" + msgpack.packb({"add": 4}), b"RMQM" + msgpack.packb(["add", 2**64 - 1]),
    b"RMQM" + msgpack.packb(["add", 4]) + b" " * 40, b"XXXX" + msgpack.packb(["add", 4]),
])
def test_only_the_exact_envelope_is_a_membership_change(body: bytes) -> None:
    with pytest.raises(PeerProtocolError):
        peer_protocol.decode_membership(body)
    message = {"type": "append_entries", "term": 2, "commit_index": 0, "prevLogIdx": 1, "prevLogTerm": 1,
               "entries": ((b"\x02" + body, 2, 2),)}
    with pytest.raises(PeerProtocolError):
        peer_protocol.validate_raft_message(message)


def test_a_membership_entry_passes_the_peer_schema() -> None:
    command = b"\x02" + peer_protocol.encode_membership("rem", 3)
    message = {"type": "append_entries", "term": 2, "commit_index": 0, "prevLogIdx": 1, "prevLogTerm": 1,
               "entries": ((command, 2, 2),)}
    assert peer_protocol.validate_raft_message(message) == message
    assert peer_protocol.validate_raft_message({"type": "apply_command", "command": command, "request_id": 1})


def _change(kind: str, broker_id: int) -> bytes:
    return bytes([peer_protocol.COMMAND_MEMBERSHIP]) + peer_protocol.encode_membership(kind, broker_id)


REGULAR = b"\x00RMQ1" + b"\x00" * 17


def test_voters_follow_appends_truncations_and_compactions(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = DurableJournal(path, durable=False, config_prefix=_CONFIG_PREFIX)
    for index, command in enumerate([b"\x01", _change("add", 4), REGULAR, _change("rem", 1), REGULAR], start=1):
        journal.add(command, index, 1)
    membership = GroupMembership(journal, (1, 2, 3), 0)
    assert membership.voters_at() == {2, 3, 4}
    assert membership.voters_at(3) == {1, 2, 3, 4}
    assert membership.last_change_index() == 4
    journal.deleteEntriesFrom(3)  # a new leader cut index 4 (position 3): the removal is undone
    assert membership.voters_at() == {1, 2, 3, 4} and membership.last_change_index() == 2
    journal.add(_change("add", 5), 4, 2)
    reopened = DurableJournal(path, durable=False, config_prefix=_CONFIG_PREFIX)
    assert GroupMembership(reopened, (1, 2, 3), 0).voters_at() == {1, 2, 3, 4, 5}
    # A snapshot at index 3 holds {1, 2, 3, 4}; compaction drops the entries before it.
    membership = GroupMembership(reopened, (1, 2, 3), 0)
    membership.rebase(membership.voters_at(3), 3)
    reopened.deleteEntriesTo(1)
    assert sorted(reopened.config_entries) == [2, 4]
    assert membership.voters_at() == {1, 2, 3, 4, 5} and membership.last_change_index() == 4


def test_initial_voters_are_stored_in_the_meta_file(tmp_path: Path) -> None:
    journal = DurableJournal(tmp_path / "journal", durable=True)
    assert journal.initial_voters is None
    journal.set_initial_voters((1, 2, 3))
    journal.close()
    assert DurableJournal(tmp_path / "journal", durable=True).initial_voters == (1, 2, 3)


def test_snapshot_header_carries_the_voters() -> None:
    import io

    data = encode_snapshot((b"\x01", 9, 2), (b"\x01", 8, 2), b"state", (2, 3, 4))
    header = read_snapshot(io.BytesIO(data))
    assert header.voters == (2, 3, 4) and header.last == (b"\x01", 9, 2) and header.state == b"state"


class _View:
    def __init__(self) -> None:
        self.election_deadline = 0.0

    def role(self) -> int:
        return FOLLOWER

    def current_term(self) -> int:
        return 3

    def last_log(self) -> tuple[int, int]:
        return 10, 3

    def transfer_in_progress(self) -> bool:
        return False


def test_a_replica_that_is_not_a_voter_never_campaigns() -> None:
    sent: list[tuple[int, dict[str, Any]]] = []
    view = _View()
    prevote = PreVote(raft=view, send=lambda peer, message: sent.append((peer, message)), clock=lambda: 100.0,
                      self_id=1, replica_ids=[1, 2, 3], election_timeout_min_s=0.6, election_timeout_max_s=1.2)
    prevote.set_voters([2, 3, 4])
    prevote.gate()
    assert sent == [] and view.election_deadline > 100.0
    # A voter's round: grants count only from voters.
    prevote.set_voters([1, 2, 3])
    view.election_deadline = 0.0
    prevote.gate()
    round_id = sent[-1][1]["round"]
    assert not prevote.handle(5, {"type": "x"})
    prevote.handle(5, {"type": "rmq_prevote_reply", "round": round_id, "granted": True})
    assert prevote.rounds_won == 0
    prevote.handle(2, {"type": "rmq_prevote_reply", "round": round_id, "granted": True})
    assert prevote.rounds_won == 1
