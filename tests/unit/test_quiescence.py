"""Quiescence rules (node/quiescence.py), on a stand-in Raft view, links and a manual clock.

Goal: an idle leader goes quiet only after every follower agreed at its exact log end; a follower agrees only
with its own leader, at that term, with everything committed; pure heartbeats and pre-votes leave a quiet
replica quiet, anything else wakes it; a lost link to the leader makes a quiet follower campaign within the
wake window; a quiet leader that wakes counts its connected followers as just heard from. Plus a property:
whatever the message sequence, a replica that is not quiet never has its election timer pushed to forever."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.node.quiescence import CANDIDATE, FOLLOWER, LEADER, QUIESCE, QUIESCE_ACK, Quiescence

IDLE_AFTER_S = 0.5
WAKE_WINDOW_S = 0.1
ELECTION_S = (0.3, 0.6)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRaft:
    def __init__(self, clock: Clock, *, role: int = FOLLOWER, term: int = 4, leader: int | None = 1,
                 last: int = 10, commit: int = 10) -> None:
        self.clock = clock
        self.state = role
        self.term = term
        self.leader = leader
        self.last = last
        self.commit = commit
        self.election_deadline = clock() + 0.4
        self.refreshed: list[list[int]] = []

    def role(self) -> int:
        return self.state

    def current_term(self) -> int:
        return self.term

    def leader_id(self) -> int | None:
        return self.leader

    def last_log(self) -> tuple[int, int]:
        return self.last, self.term

    def commit_index(self) -> int:
        return self.commit

    def refresh_followers(self, connected: list[int]) -> None:
        self.refreshed.append(list(connected))


class Harness:
    def __init__(self, *, self_id: int, role: int, leader: int | None = 1) -> None:
        self.clock = Clock()
        self.raft = FakeRaft(self.clock, role=role, leader=leader)
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.links = {1: True, 2: True, 3: True}
        self.q = Quiescence(raft=self.raft, send=lambda peer, message: self.sent.append((peer, message)),
                            link_up=lambda peer: self.links[peer], clock=self.clock, self_id=self_id,
                            replica_ids=[1, 2, 3], idle_after_s=IDLE_AFTER_S, wake_window_s=WAKE_WINDOW_S,
                            election_timeout_s=ELECTION_S, rng=random.Random(7))

    def take(self) -> list[tuple[int, dict[str, Any]]]:
        sent, self.sent = self.sent, []
        return sent


def _leader_proposes(h: Harness) -> int:
    h.q.after_tick(True)
    assert not h.take()  # idle from now on
    h.clock.now += IDLE_AFTER_S / 2
    h.q.after_tick(True)
    assert not h.take()  # not idle long enough
    h.clock.now += IDLE_AFTER_S
    h.q.after_tick(True)
    sent = h.take()
    assert sorted(peer for peer, _ in sent) == [2, 3]
    message = sent[0][1]
    assert message["type"] == QUIESCE and message["term"] == 4 and message["index"] == 10
    return int(message["round"])


def test_leader_goes_quiet_only_when_every_follower_agreed() -> None:
    h = Harness(self_id=1, role=LEADER)
    round_ = _leader_proposes(h)
    h.q.after_tick(True)
    assert not h.take()  # one round at a time
    assert not h.q.handle(2, {"type": "next_node_idx", "next_node_idx": 11, "success": True}) and not h.q.quiet
    assert h.q.handle(2, {"type": QUIESCE_ACK, "round": round_, "ok": True}) and not h.q.quiet
    assert h.q.handle(3, {"type": QUIESCE_ACK, "round": round_ - 1, "ok": True}) and not h.q.quiet  # stale round
    assert h.q.handle(3, {"type": QUIESCE_ACK, "round": round_, "ok": True})
    assert h.q.quiet and not h.q.ticks_needed()


def test_a_refusal_or_a_new_entry_restarts_the_idle_period() -> None:
    h = Harness(self_id=1, role=LEADER)
    round_ = _leader_proposes(h)
    h.q.handle(2, {"type": QUIESCE_ACK, "round": round_, "ok": False})
    h.q.handle(3, {"type": QUIESCE_ACK, "round": round_, "ok": True})
    assert not h.q.quiet
    h.q.after_tick(True)
    assert not h.take()  # a fresh idle period first
    h.clock.now += IDLE_AFTER_S * 1.5
    h.q.after_tick(True)
    assert len(h.take()) == 2
    h.q.after_tick(False)  # a write arrived meanwhile: the round is void
    h.raft.last = 11
    h.q.handle(2, {"type": QUIESCE_ACK, "round": round_ + 1, "ok": True})
    h.q.handle(3, {"type": QUIESCE_ACK, "round": round_ + 1, "ok": True})
    assert not h.q.quiet


def test_no_proposal_while_a_follower_link_is_down() -> None:
    h = Harness(self_id=1, role=LEADER)
    h.links[3] = False
    for _ in range(5):
        h.q.after_tick(True)
        h.clock.now += IDLE_AFTER_S
    assert not h.take()


def test_follower_agrees_only_with_its_leader_at_its_log_end() -> None:
    request = {"type": QUIESCE, "round": 1, "term": 4, "index": 10}
    cases = [
        ({}, 1, True),
        ({}, 2, False),  # not its leader
        ({"term": 5}, 1, False),
        ({"last": 11}, 1, False),  # its log goes further than the leader thinks
        ({"commit": 9}, 1, False),  # has the entry but not yet its commit
        ({"state": CANDIDATE}, 1, False),
    ]
    for change, sender, agreed in cases:
        h = Harness(self_id=2, role=FOLLOWER)
        for name, value in change.items():
            if name == "term":
                h.raft.term = int(value)
            else:
                setattr(h.raft, name, value)
        assert h.q.handle(sender, dict(request))
        assert h.take() == [(sender, {"type": QUIESCE_ACK, "round": 1, "ok": agreed})], change
        assert h.q.quiet is agreed
        if agreed:
            assert h.raft.election_deadline > h.clock() + 10 ** 6


def _quiet_follower() -> Harness:
    h = Harness(self_id=2, role=FOLLOWER)
    h.q.handle(1, {"type": QUIESCE, "round": 1, "term": 4, "index": 10})
    h.take()
    assert h.q.quiet
    return h


def test_pure_heartbeats_and_prevotes_keep_a_follower_quiet() -> None:
    h = _quiet_follower()
    heartbeat = {"type": "append_entries", "term": 4, "commit_index": 10, "prevLogIdx": 10, "prevLogTerm": 4}
    assert not h.q.handle(1, dict(heartbeat)) and h.q.quiet
    h.raft.election_deadline = h.clock() + 0.3  # what the library does on a heartbeat
    h.q.before_tick()
    assert h.raft.election_deadline > h.clock() + 10 ** 6
    assert not h.q.handle(3, {"type": "rmq_prevote", "round": 1, "term": 5, "last_log_index": 10,
                              "last_log_term": 4}) and h.q.quiet
    assert h.q.leader_contact_now()
    h.links[1] = False
    assert not h.q.leader_contact_now()


def test_anything_else_wakes_a_quiet_follower() -> None:
    wakers = [
        (1, {"type": "append_entries", "term": 4, "commit_index": 10, "entries": [(b"x", 11, 4)]}),
        (1, {"type": "append_entries", "term": 4, "commit_index": 11}),
        (1, {"type": "append_entries", "term": 5, "commit_index": 10}),
        (3, {"type": "request_vote", "term": 5, "last_log_index": 10, "last_log_term": 4}),
        (1, {"type": "timeout_now", "term": 4}),
    ]
    for sender, message in wakers:
        h = _quiet_follower()
        assert not h.q.handle(sender, message)
        assert not h.q.quiet, message
        assert h.clock() + ELECTION_S[0] <= h.raft.election_deadline <= h.clock() + ELECTION_S[1]


def test_losing_the_link_to_the_leader_campaigns_within_the_wake_window() -> None:
    h = _quiet_follower()
    h.q.link_down(3)  # another follower: nothing changes
    assert h.q.quiet
    h.q.link_down(1)
    assert not h.q.quiet
    assert h.clock() <= h.raft.election_deadline <= h.clock() + WAKE_WINDOW_S


def test_a_quiet_leader_wakes_counting_connected_followers_as_heard() -> None:
    h = Harness(self_id=1, role=LEADER)
    round_ = _leader_proposes(h)
    for peer in (2, 3):
        h.q.handle(peer, {"type": QUIESCE_ACK, "round": round_, "ok": True})
    assert h.q.quiet
    # a late answer to a heartbeat sent before the round settled changes nothing
    assert not h.q.handle(2, {"type": "next_node_idx", "next_node_idx": 11, "success": True, "reset": False})
    assert h.q.quiet
    h.links[3] = False
    h.q.link_down(3)
    assert not h.q.quiet and h.raft.refreshed == [[2]]


def test_a_vote_request_wakes_a_quiet_leader() -> None:
    h = Harness(self_id=1, role=LEADER)
    round_ = _leader_proposes(h)
    for peer in (2, 3):
        h.q.handle(peer, {"type": QUIESCE_ACK, "round": round_, "ok": True})
    assert not h.q.handle(2, {"type": "request_vote", "term": 9, "last_log_index": 10, "last_log_term": 4})
    assert not h.q.quiet and h.raft.refreshed == [[2, 3]]


MESSAGES = st.sampled_from([
    (1, {"type": QUIESCE, "round": 1, "term": 4, "index": 10}),
    (3, {"type": QUIESCE, "round": 1, "term": 4, "index": 10}),
    (1, {"type": "append_entries", "term": 4, "commit_index": 10}),
    (1, {"type": "append_entries", "term": 4, "commit_index": 10, "entries": [(b"x", 11, 4)]}),
    (3, {"type": "request_vote", "term": 5, "last_log_index": 10, "last_log_term": 4}),
    (3, {"type": "rmq_prevote", "round": 1, "term": 5, "last_log_index": 10, "last_log_term": 4}),
    (1, "link_down"),
    (3, "link_down"),
    (1, "link_up"),
    (0, "tick"),
    (0, "wake"),
])


@settings(max_examples=200, deadline=None)
@given(st.lists(MESSAGES, max_size=30))
def test_only_a_quiet_follower_has_its_election_timer_held_off(steps: list[tuple[int, Any]]) -> None:
    h = Harness(self_id=2, role=FOLLOWER)
    for peer, step in steps:
        if step == "link_down":
            h.links[peer] = False
            h.q.link_down(peer)
        elif step == "link_up":
            h.links[peer] = True
        elif step == "tick":
            h.q.before_tick()
        elif step == "wake":
            h.q.wake()
        else:
            h.q.handle(peer, dict(step))
        held_off = h.raft.election_deadline > h.clock() + 10 ** 6
        assert held_off == h.q.quiet
        if h.q.quiet:
            assert h.q._leader == 1  # only ever quiet under its own leader
