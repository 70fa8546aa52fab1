"""Quiescence: an idle Raft group stops ticking and heartbeating; the broker-pair link stands in for it.

Why: a Raft leader heartbeats every group it leads several times a second and each follower runs an election
timer per group, so a broker with a thousand idle partitions spends most of a core saying "still here" a
thousand times over one TCP connection per peer. The link between two brokers already proves that: it pings
when idle and is closed when nothing arrives for the link timeout (``node/raft_transport.py``). So a group
with nothing to do goes quiet, and the link's liveness vouches for its leader until something happens.

Protocol (a two-phase hand-shake, so no replica is left waiting for heartbeats that will never come):

1. A leader whose group has been idle for ``idle_after_s`` (everything committed and applied, every follower's
   log matches, no command queued, no transfer or membership change under way, every follower's link up)
   sends ``rmq_quiesce {round, term, index}`` to every follower and goes on heartbeating.
2. A follower agrees (``rmq_quiesce_ack {round, ok: true}``) only if that sender is its leader at that term and
   its own log ends at, and has committed, ``index``: then it stops its election timer. Otherwise it says no
   and the leader tries again after another idle period.
3. When every follower has agreed, the leader stops ticking the group too. The group costs nothing now.

Waking (any replica, at once):

* the leader: a command, a leadership transfer or a membership change (``wake``), any message from a
  follower but an acknowledgement of this round or a late answer to a heartbeat sent before the round settled
  (it says only what the leader already knows), or a follower's link going down. It then counts its
  connected followers as just heard from (the link vouched for them) and heartbeats at once; entries reach the
  followers in the same pass, so a write to a quiet group waits for no timer.
* a follower: anything from its leader but a pure heartbeat of the quiet point (same term, no entries, the
  same commit index), or a message from anyone else that is not a pre-vote (a vote request, a transfer),
  or its link to the leader going down. A follower woken by the link draws an election deadline within
  ``wake_window_s``: the silence of the link already took the place of the election timeout, so failover of a
  quiet group is the link timeout plus a short election, not two timeouts in a row.

A quiet follower refuses pre-votes while its link to the leader is up (``leader_contact_now``): a replica that
lost only its own link to the leader must not get a majority to depose a leader the others still reach. The
leader sees that link go down as well, wakes and heartbeats, and the group runs as a normal Raft group until
the cut-off replica is back.

Safety does not depend on any of this: quiescence only decides when timers run. Raft's votes, terms and commit
rule are untouched, and a quiet leader holds no lease (reads are served from committed data as always).

This module sees the Raft state only through ``QuiesceView`` and time through the clock it is given, so it is
tested on its own. Replication thread only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2
QUIESCE = "rmq_quiesce"
QUIESCE_ACK = "rmq_quiesce_ack"
# pre-vote's messages (node/prevote.py): answered by a quiet follower without waking it
_PREVOTE_TYPES = frozenset({"rmq_prevote", "rmq_prevote_reply"})
# An election deadline far enough away never to fire while quiet (seconds on the view's clock).
_FOREVER_S = 10.0 ** 9


class QuiesceView(Protocol):
    """The Raft fields quiescence reads, and the ones it moves."""

    election_deadline: float  # on the view's clock

    def role(self) -> int: ...

    def current_term(self) -> int: ...

    def leader_id(self) -> int | None: ...

    def last_log(self) -> tuple[int, int]:
        """(index, term) of the last entry in the log."""

    def commit_index(self) -> int: ...

    def refresh_followers(self, connected: list[int]) -> None:
        """Leader waking: count these followers as heard from now, and send AppendEntries at the next tick."""


class Quiescence:
    """Quiescence of one replica of one group. ``send(peer_id, message)`` queues a control message to a peer;
    ``link_up(peer_id)`` says whether the broker-pair link is up."""

    def __init__(self, *, raft: QuiesceView, send: Callable[[int, dict[str, Any]], Any],
                 link_up: Callable[[int], bool], clock: Callable[[], float], self_id: int, replica_ids: list[int],
                 idle_after_s: float, wake_window_s: float, election_timeout_s: tuple[float, float],
                 rng: random.Random | None = None) -> None:
        self.raft = raft
        self.send = send
        self.link_up = link_up
        self.clock = clock
        self.self_id = self_id
        self.replica_ids = list(replica_ids)
        self.idle_after_s = idle_after_s
        self.wake_window_s = wake_window_s
        self.election_timeout_s = election_timeout_s
        self.rng = rng or random.Random()
        self.quiet = False
        self._leader: int | None = None  # follower: the leader it went quiet under
        self._point: tuple[int, int] = (0, 0)  # (term, index) of the quiet point
        self._idle_since: float | None = None  # leader: idle since (view clock)
        self._round = 0
        self._proposed: tuple[int, int] | None = None  # leader: (round, index) asked and not yet settled
        self._agreed: set[int] = set()
        self.times_quiet = 0  # counters (tests, debugging)
        self.times_woken = 0

    @property
    def followers(self) -> list[int]:
        return [b for b in self.replica_ids if b != self.self_id]

    def set_voters(self, voters: list[int]) -> None:
        """The group's voters changed: a quiet group wakes (the change is itself an entry, so it already has)."""
        self.replica_ids = list(voters)
        self.wake()

    # --- around every tick --------------------------------------------------------------------------

    def before_tick(self) -> None:
        """A quiet follower holds the library's election timer off; pysyncobj resets it on every heartbeat."""
        if self.quiet and self.raft.role() != LEADER:
            self.raft.election_deadline = self.clock() + _FOREVER_S

    def after_tick(self, idle: bool) -> None:
        """Leader, after the library's tick: ``idle`` says whether the group has nothing to do (see the module
        doc). Proposes quiescence once it has been idle for ``idle_after_s``."""
        raft = self.raft
        if raft.role() != LEADER or self.quiet:
            return
        now = self.clock()
        followers = self.followers
        if not idle or not followers or not all(self.link_up(b) for b in followers):
            self._idle_since = None
            self._proposed = None
            return
        if self._idle_since is None:
            self._idle_since = now
            return
        if self._proposed is not None or now - self._idle_since < self.idle_after_s:
            return
        self._round += 1
        index = raft.last_log()[0]
        self._proposed = (self._round, index)
        self._agreed = set()
        request = {"type": QUIESCE, "round": self._round, "term": raft.current_term(), "index": index}
        for peer_id in followers:
            self.send(peer_id, dict(request))

    def ticks_needed(self) -> bool:
        """False while quiet: no timer of this group needs a tick."""
        return not self.quiet

    # --- messages ---------------------------------------------------------------------------------

    def handle(self, peer_id: int, message: dict[str, Any]) -> bool:
        """Every message of the group before pre-vote and the library see it. Consumes quiescence's own
        (returns True); wakes the replica for anything that needs its timers."""
        kind = message.get("type")
        if kind == QUIESCE:
            self.send(peer_id, {"type": QUIESCE_ACK, "round": message.get("round"),
                                "ok": self._agree(peer_id, message)})
            return True
        if kind == QUIESCE_ACK:
            self._on_ack(peer_id, message)
            return True
        if self.quiet and not self._keeps_quiet(peer_id, message):
            self.wake()
        return False

    def leader_contact_now(self) -> bool:
        """A quiet follower whose link to the leader is up has, for pre-vote's purposes, just heard from it."""
        return self.quiet and self._leader is not None and self.raft.role() != LEADER and self.link_up(self._leader)

    def _agree(self, peer_id: int, message: dict[str, Any]) -> bool:
        raft = self.raft
        term, index = message.get("term"), message.get("index")
        ok = (raft.role() == FOLLOWER and raft.leader_id() == peer_id and term == raft.current_term()
              and type(index) is int and raft.last_log()[0] == index and raft.commit_index() == index
              and self.link_up(peer_id))
        if ok:
            assert isinstance(term, int) and isinstance(index, int)
            if not self.quiet:
                self.times_quiet += 1
            self.quiet = True
            self._leader = peer_id
            self._point = (term, index)
            raft.election_deadline = self.clock() + _FOREVER_S
        return ok

    def _on_ack(self, peer_id: int, message: dict[str, Any]) -> None:
        proposed = self._proposed
        if proposed is None or message.get("round") != proposed[0] or self.raft.role() != LEADER:
            return  # an answer to an older round, or the leader has moved on
        if message.get("ok") is not True:
            self._proposed = None
            self._idle_since = self.clock()  # try again after another idle period
            return
        self._agreed.add(peer_id)
        if self._agreed >= set(self.followers) and self.raft.last_log()[0] == proposed[1]:
            self._proposed = None
            self.quiet = True
            self._point = (self.raft.current_term(), proposed[1])
            self.times_quiet += 1

    def _keeps_quiet(self, peer_id: int, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind in _PREVOTE_TYPES:
            return True  # answered from leader_contact_now; a pre-vote changes no state
        if self.raft.role() == LEADER:
            # A follower's answer to a heartbeat sent before the last agreement arrived changes nothing.
            return (kind == "next_node_idx" and message.get("success") is True
                    and message.get("next_node_idx") == self._point[1] + 1)
        return (peer_id == self._leader and kind == "append_entries" and not message.get("entries")
                and message.get("term") == self._point[0] and message.get("commit_index") == self._point[1])

    # --- waking -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Leave quiet (no-op if not quiet). A leader counts its connected followers as heard from and
        heartbeats at its next tick; a follower's election timer runs again from the library's own deadline."""
        self._proposed = None
        self._idle_since = None
        if not self.quiet:
            return
        self.quiet = False
        self.times_woken += 1
        if self.raft.role() == LEADER:
            self.raft.refresh_followers([b for b in self.followers if self.link_up(b)])
        else:
            self.raft.election_deadline = self.clock() + self.rng.uniform(*self.election_timeout_s)

    def link_down(self, peer_id: int) -> None:
        """A broker-pair link went down. A quiet follower of that leader campaigns soon (the link's silence
        was the failure detector); a leader wakes to heartbeat the others. A leader proposing quiescence to
        that peer gives the round up (it cannot be answered)."""
        if self.raft.role() == LEADER and peer_id in self.followers:
            self._proposed = None
            self._idle_since = None
            self.wake()
            return
        if self.quiet and peer_id == self._leader:
            self.quiet = False
            self.times_woken += 1
            self.raft.election_deadline = self.clock() + self.rng.uniform(0.0, self.wake_window_s)
