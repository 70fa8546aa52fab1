"""Pre-vote for pysyncobj groups (Raft dissertation §9.6), which pysyncobj lacks.

Without it a broker that cannot hear its leader (a bridge partition, a one-way cut, a flapping link)
campaigns, raises its term, and on the next contact deposes a healthy leader; under a bridge the two cut-off
brokers take turns doing so forever, and every change costs acks=1 writes and availability.

With it, a replica whose election timer fires first asks its peers "would you vote for me at term + 1?"
without changing any state. A peer says yes only if it has not heard from a leader for at least the minimum
election timeout (and is not the leader itself) and the candidate's log is at least as up to date as its
own. Only with a majority of yeses does the real election (pysyncobj's) go ahead; otherwise the timer is
re-armed and the term stays put. A leadership transfer (TimeoutNow) skips the pre-vote: the leader asked
for that election.

Mechanics: ``gate()`` runs before each ``doTick`` and holds pysyncobj's election deadline in the future
until a pre-vote succeeds; requests and replies travel as ``rmq_prevote`` / ``rmq_prevote_reply`` messages
of the group on the peer link, handled here and never given to pysyncobj. Replication thread only.
"""

from __future__ import annotations

import random
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock  # the clock pysyncobj's deadlines use

_FOLLOWER, _CANDIDATE, _LEADER = 0, 1, 2
PREVOTE = "rmq_prevote"
PREVOTE_REPLY = "rmq_prevote_reply"


class PreVote:
    def __init__(self, *, raft: Any, transport: Any, self_id: int, replica_ids: list[int],
                 election_timeout_min_s: float, election_timeout_max_s: float,
                 rng: random.Random | None = None) -> None:
        self.raft = raft
        self.transport = transport
        self.self_id = self_id
        self.replica_ids = list(replica_ids)
        self.election_timeout_min_s = election_timeout_min_s
        self.election_timeout_max_s = election_timeout_max_s
        self.rng = rng or random.Random()
        self.last_leader_contact = raft_clock()
        self._round = 0
        self._round_term = 0
        self._granted: set[int] = set()
        self._go = False
        self.rounds_started = 0
        self.rounds_won = 0

    # --- raft internals, read here only ----------------------------------------------------------

    def _state(self) -> int:
        return int(self.raft._SyncObj__raftState)

    def _last_log(self) -> tuple[int, int]:
        last = self.raft._SyncObj__raftLog[-1]
        return int(last[1]), int(last[2])

    # --- before every tick ------------------------------------------------------------------------

    def gate(self) -> None:
        """Hold pysyncobj's election until a pre-vote round wins."""
        raft = self.raft
        if len(self.replica_ids) == 1 or self._state() == _LEADER:
            self._go = False
            return
        now = raft_clock()
        if raft._SyncObj__raftElectionDeadline >= now or raft._SyncObj__transferInProgress:
            return
        if self._go:
            self._go = False  # this election may run; the next one needs a new round
            return
        # Re-arm the timer and ask the peers instead.
        raft._SyncObj__raftElectionDeadline = now + self.rng.uniform(self.election_timeout_min_s,
                                                                     self.election_timeout_max_s)
        self._start_round()

    def _start_round(self) -> None:
        self._round += 1
        self._round_term = int(self.raft.raftCurrentTerm) + 1
        self._granted = {self.self_id}
        self.rounds_started += 1
        last_index, last_term = self._last_log()
        request = {"type": PREVOTE, "round": self._round, "term": self._round_term,
                   "last_log_index": last_index, "last_log_term": last_term}
        for peer_id in self.replica_ids:
            if peer_id != self.self_id:
                self.transport.send_control(peer_id, dict(request))

    # --- messages ---------------------------------------------------------------------------------

    def observe(self, message: dict[str, Any]) -> None:
        """Every message before pysyncobj sees it: an AppendEntries from a leader of our term or later is
        leader contact."""
        if message.get("type") == "append_entries" and message.get("term", -1) >= self.raft.raftCurrentTerm:
            self.last_leader_contact = raft_clock()

    def handle(self, peer_id: int, message: dict[str, Any]) -> bool:
        """Consume pre-vote messages. Returns False for anything else (pysyncobj's)."""
        kind = message.get("type")
        if kind == PREVOTE:
            self.transport.send_control(peer_id, {"type": PREVOTE_REPLY, "round": message.get("round"),
                                                  "granted": self._would_vote(message)})
            return True
        if kind == PREVOTE_REPLY:
            if message.get("round") == self._round and message.get("granted") is True \
                    and self.raft.raftCurrentTerm < self._round_term:
                self._granted.add(peer_id)
                if 2 * len(self._granted) > len(self.replica_ids) and self._state() != _LEADER:
                    self.rounds_won += 1
                    self._go = True
                    self.raft._SyncObj__raftElectionDeadline = 0  # campaign at the next tick
            return True
        return False

    def _would_vote(self, request: dict[str, Any]) -> bool:
        if self._state() == _LEADER:
            return False  # a working leader does not help depose itself
        if raft_clock() - self.last_leader_contact < self.election_timeout_min_s:
            return False  # our leader is alive: the candidate is the one cut off
        term = request.get("term")
        if not isinstance(term, int) or term <= self.raft.raftCurrentTerm:
            return False
        last_index, last_term = self._last_log()
        their_index, their_term = request.get("last_log_index"), request.get("last_log_term")
        if not isinstance(their_index, int) or not isinstance(their_term, int):
            return False
        return their_term > last_term or (their_term == last_term and their_index >= last_index)
