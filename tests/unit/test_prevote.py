"""Pre-vote rules, on a stand-in RaftView and a manual clock.

Goal: the election is held back until a majority agrees it is needed; a replica that still hears its leader,
or a leader, says no; a candidate with a shorter log gets no; a leadership transfer is not held back."""

from __future__ import annotations

import random
from typing import Any

from raftmq.node.prevote import PREVOTE, PREVOTE_REPLY, PreVote

NOW = [1000.0]


def raft_clock() -> float:
    return NOW[0]


class FakeRaft:
    def __init__(self, *, state: int = 0, term: int = 3, log: list[tuple[bytes, int, int]] | None = None) -> None:
        self.state = state
        self.term = term
        self.log = log or [(b"", 1, 1), (b"", 2, 3)]
        self.election_deadline = raft_clock() + 100
        self.transfer = False

    def role(self) -> int:
        return self.state

    def current_term(self) -> int:
        return self.term

    def last_log(self) -> tuple[int, int]:
        return self.log[-1][1], self.log[-1][2]

    def transfer_in_progress(self) -> bool:
        return self.transfer


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def send_control(self, peer_id: int, message: dict[str, Any]) -> bool:
        self.sent.append((peer_id, message))
        return True


def _prevote(raft: FakeRaft, transport: FakeTransport, self_id: int = 1) -> PreVote:
    return PreVote(raft=raft, send=transport.send_control, clock=raft_clock, self_id=self_id, replica_ids=[1, 2, 3],
                   election_timeout_min_s=0.6, election_timeout_max_s=1.2, rng=random.Random(1))


def test_election_waits_for_a_prevote_majority() -> None:
    raft, transport = FakeRaft(), FakeTransport()
    prevote = _prevote(raft, transport)
    prevote.gate()
    assert not transport.sent  # the timer has not fired
    raft.election_deadline = raft_clock() - 1  # it fires
    prevote.gate()
    assert raft.election_deadline > raft_clock()  # held back
    assert [peer for peer, _ in transport.sent] == [2, 3]
    request = transport.sent[0][1]
    assert request["type"] == PREVOTE and request["term"] == 4 and raft.term == 3  # no term change
    prevote.handle(2, {"type": PREVOTE_REPLY, "round": request["round"], "granted": True})
    assert raft.election_deadline == 0  # majority (self + 2): campaign at the next tick
    prevote.gate()  # lets that election run
    assert raft.election_deadline == 0


def test_refusals_and_stale_replies_keep_the_term() -> None:
    raft, transport = FakeRaft(), FakeTransport()
    prevote = _prevote(raft, transport)
    raft.election_deadline = raft_clock() - 1
    prevote.gate()
    round_id = transport.sent[0][1]["round"]
    prevote.handle(2, {"type": PREVOTE_REPLY, "round": round_id, "granted": False})
    prevote.handle(3, {"type": PREVOTE_REPLY, "round": round_id - 1, "granted": True})  # an old round
    assert raft.election_deadline > raft_clock()


def test_voter_rules() -> None:
    transport = FakeTransport()
    follower = FakeRaft(term=3)
    prevote = _prevote(follower, transport, self_id=2)
    good = {"type": PREVOTE, "round": 7, "term": 4, "last_log_index": 2, "last_log_term": 3}
    prevote.handle(1, good)
    assert transport.sent[-1] == (1, {"type": PREVOTE_REPLY, "round": 7, "granted": False})  # heard a leader just now
    prevote.last_leader_contact = raft_clock() - 5
    prevote.handle(1, good)
    assert transport.sent[-1][1]["granted"] is True
    for bad in ({**good, "last_log_term": 2}, {**good, "last_log_index": 1}, {**good, "term": 3}):
        prevote.handle(1, bad)
        assert transport.sent[-1][1]["granted"] is False
    leader = FakeRaft(state=2)
    leader_vote = _prevote(leader, transport, self_id=3)
    leader_vote.last_leader_contact = raft_clock() - 5
    leader_vote.handle(1, good)
    assert transport.sent[-1][1]["granted"] is False


def test_leader_contact_is_observed_from_append_entries() -> None:
    raft, transport = FakeRaft(term=5), FakeTransport()
    prevote = _prevote(raft, transport)
    prevote.last_leader_contact = 0.0
    prevote.observe({"type": "append_entries", "term": 4})  # a stale leader does not count
    assert prevote.last_leader_contact == 0.0
    prevote.observe({"type": "append_entries", "term": 5})
    assert prevote.last_leader_contact > 0


def test_transfer_and_single_replica_are_not_held() -> None:
    raft, transport = FakeRaft(), FakeTransport()
    prevote = _prevote(raft, transport)
    raft.election_deadline = 0
    raft.transfer = True
    prevote.gate()
    assert raft.election_deadline == 0 and not transport.sent
    solo = PreVote(raft=FakeRaft(), send=transport.send_control, clock=raft_clock, self_id=1, replica_ids=[1],
                   election_timeout_min_s=0.6, election_timeout_max_s=1.2)
    solo.raft.election_deadline = 0
    solo.gate()
    assert solo.raft.election_deadline == 0
