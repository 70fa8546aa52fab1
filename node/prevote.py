"""Pre-vote (the Raft extension in which a would-be candidate first asks its peers) for pysyncobj groups.

Without it a broker that cannot hear its leader (a bridge partition, a one-way cut, a flapping link)
campaigns, raises its term, and on the next contact deposes a healthy leader; under a bridge the two cut-off
brokers take turns doing so forever, and every change costs acks=1 writes and availability.

With it, a replica whose election timer fires first asks its peers "would you vote for me at term + 1?"
without changing any state. A peer says yes only if it has not heard from a leader for at least the minimum
election timeout (and is not the leader itself) and the candidate's log is at least as up to date as its
own. Only with a majority of yeses does the real election (pysyncobj's) go ahead; otherwise the timer is
re-armed and the term stays put. A leadership transfer (TimeoutNow) skips the pre-vote: the leader asked
for that election.

Membership changes: ``set_voters`` follows the group's configuration. A replica that is not a voter in its
own log (it was removed) never campaigns, and only voters' grants count. A removed replica that never saw
its removal still asks, but the voters neither answer nor count it (``node/raft_transport.py``
``GroupTransport.deliver`` drops a non-voter's messages), so it cannot win a round.

Mechanics: ``gate()`` runs before each tick and holds the Raft library's election deadline in the future
until a pre-vote succeeds; requests and replies travel as ``rmq_prevote`` / ``rmq_prevote_reply`` messages
of the group on the peer link, handled here and never given to the library. This module sees the Raft
state only through ``RaftView`` (``node/replication.py`` adapts pysyncobj to it) and time only through the
clock it is given, so it is tested on its own. Replication thread only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2
PREVOTE = "rmq_prevote"
PREVOTE_REPLY = "rmq_prevote_reply"


class RaftView(Protocol):
    """The few fields of a Raft replica pre-vote reads, and the one it moves (the election deadline)."""

    election_deadline: float  # on the view's clock; an election starts once it has passed

    def role(self) -> int:
        """FOLLOWER, CANDIDATE or LEADER."""

    def current_term(self) -> int: ...

    def last_log(self) -> tuple[int, int]:
        """(index, term) of the last entry in the log."""

    def transfer_in_progress(self) -> bool:
        """A leadership transfer (TimeoutNow) asked this replica to campaign now."""


class PreVote:
    """Pre-vote for one replica of one group. ``send(peer_id, message)`` queues a control message to a peer."""

    def __init__(self, *, raft: RaftView, send: Callable[[int, dict[str, Any]], Any], clock: Callable[[], float],
                 self_id: int, replica_ids: list[int], election_timeout_min_s: float,
                 election_timeout_max_s: float, rng: random.Random | None = None) -> None:
        self.raft = raft
        self.send = send
        self.clock = clock
        self.self_id = self_id
        self.replica_ids = list(replica_ids)
        self.election_timeout_min_s = election_timeout_min_s
        self.election_timeout_max_s = election_timeout_max_s
        self.rng = rng or random.Random()
        self.last_leader_contact = clock()
        self._round = 0
        self._round_term = 0
        self._granted: set[int] = set()
        self._go = False
        self.rounds_started = 0
        self.rounds_won = 0

    def set_voters(self, voters: list[int]) -> None:
        """The group's voters changed (a membership change was appended or truncated)."""
        self.replica_ids = list(voters)
        self._granted &= set(voters) | {self.self_id}

    # --- before every tick ------------------------------------------------------------------------

    def gate(self) -> None:
        """Hold the library's election until a pre-vote round wins."""
        raft = self.raft
        if self.self_id not in self.replica_ids:
            # Removed: never campaign, not even when a leader asks for it (it cannot ask a non-voter).
            self._go = False
            raft.election_deadline = self.clock() + self.election_timeout_max_s
            return
        if len(self.replica_ids) == 1 or raft.role() == LEADER:
            self._go = False
            return
        now = self.clock()
        if raft.election_deadline >= now or raft.transfer_in_progress():
            return
        if self._go:
            self._go = False  # this election may run; the next one needs a new round
            return
        # Re-arm the timer and ask the peers instead.
        raft.election_deadline = now + self.rng.uniform(self.election_timeout_min_s, self.election_timeout_max_s)
        self._start_round()

    def _start_round(self) -> None:
        self._round += 1
        self._round_term = self.raft.current_term() + 1
        self._granted = {self.self_id}
        self.rounds_started += 1
        last_index, last_term = self.raft.last_log()
        request = {"type": PREVOTE, "round": self._round, "term": self._round_term,
                   "last_log_index": last_index, "last_log_term": last_term}
        for peer_id in self.replica_ids:
            if peer_id != self.self_id:
                self.send(peer_id, dict(request))

    # --- messages ---------------------------------------------------------------------------------

    def observe(self, message: dict[str, Any]) -> None:
        """Every message before the Raft library sees it: an AppendEntries from a leader of our term or later is
        leader contact."""
        if message.get("type") == "append_entries" and message.get("term", -1) >= self.raft.current_term():
            self.last_leader_contact = self.clock()

    def handle(self, peer_id: int, message: dict[str, Any]) -> bool:
        """Consume pre-vote messages. Returns False for anything else (the library's)."""
        kind = message.get("type")
        if kind == PREVOTE:
            self.send(peer_id, {"type": PREVOTE_REPLY, "round": message.get("round"),
                                "granted": self._would_vote(message)})
            return True
        if kind == PREVOTE_REPLY:
            if message.get("round") == self._round and message.get("granted") is True \
                    and peer_id in self.replica_ids and self.raft.current_term() < self._round_term:
                self._granted.add(peer_id)
                if 2 * len(self._granted) > len(self.replica_ids) and self.raft.role() != LEADER:
                    self.rounds_won += 1
                    self._go = True
                    self.raft.election_deadline = 0  # campaign at the next tick
            return True
        return False

    def _would_vote(self, request: dict[str, Any]) -> bool:
        if self.raft.role() == LEADER:
            return False  # a working leader does not help depose itself
        if self.clock() - self.last_leader_contact < self.election_timeout_min_s:
            return False  # our leader is alive: the candidate is the one cut off
        term = request.get("term")
        if not isinstance(term, int) or term <= self.raft.current_term():
            return False
        last_index, last_term = self.raft.last_log()
        their_index, their_term = request.get("last_log_index"), request.get("last_log_term")
        if not isinstance(their_index, int) or not isinstance(their_term, int):
            return False
        return their_term > last_term or (their_term == last_term and their_index >= last_index)
