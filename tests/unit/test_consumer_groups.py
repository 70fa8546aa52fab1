"""Consumer groups as a pure state machine (cluster/consumer_groups.py) and its assignor (cluster/group_assignor.py).

Goal: the coordinator's decisions are safe whatever the order of joins, heartbeats, releases, leaves and
expiries: a partition is owned by at most one member at a time, it reaches a new owner only after the old one
released it (or left the group), members keep what they hold where balance allows, static members survive a
restart without a reassignment, and offset commits are fenced. Method: examples for each rule, and hypothesis
driving random command sequences through ``GroupsState.apply`` with one invariant checker after every step.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raftmq.cluster.consumer_groups import (
    GroupOp,
    GroupsState,
    HeartbeatResult,
    glob_matches,
    group_partition_for,
    validate_group_id,
)
from raftmq.cluster.errors import (
    FencedMemberEpoch,
    InvalidGroupId,
    NonEmptyGroup,
    StaleMemberEpoch,
    UnknownMemberId,
)
from raftmq.cluster.group_assignor import assign

TOPICS = {"orders": 6, "payments": 3}
G = "g"


def join(state: GroupsState, member: str, *, topics: list[str] | None = None, pattern: str | None = None,
         instance: str | None = None, now: int = 0, known: dict[str, int] | None = None) -> Any:
    return state.apply(GroupOp.HEARTBEAT, now, {
        "group_id": G, "member_id": member, "instance_id": instance, "member_epoch": 0, "client_id": "test",
        "subscription": {"topics": topics if topics is not None else ["orders"], "pattern": pattern},
        "topics": known if known is not None else TOPICS, "session_timeout_ms": 1000,
        "rebalance_timeout_ms": 5000})


def beat(state: GroupsState, member: str, epoch: int, owned: Any = None, *, now: int = 0,
         known: dict[str, int] | None = None) -> Any:
    payload: dict[str, Any] = {"group_id": G, "member_id": member, "member_epoch": epoch,
                               "topics": known if known is not None else TOPICS}
    if owned is not None:
        payload["owned"] = [list(p) for p in owned]
    return state.apply(GroupOp.HEARTBEAT, now, payload)


def commit(state: GroupsState, member: str, epoch: int, partitions: list[tuple[str, int]], offset: int = 5) -> Any:
    return state.apply(GroupOp.COMMIT_OFFSETS, 0, {"group_id": G, "member_id": member, "member_epoch": epoch,
                                                   "offsets": [[t, p, offset, "meta"] for t, p in partitions]})


def owners(state: GroupsState) -> dict[tuple[str, int], str]:
    """Every owned partition -> its owner; fails if two members own one."""
    found: dict[tuple[str, int], str] = {}
    group = state.groups.get(G)
    for member in (group.members.values() if group else ()):
        assert not member.assigned & member.revoking
        for partition in member.owned:
            assert partition not in found, f"{partition} owned by {found[partition]} and {member.member_id}"
            found[partition] = member.member_id
    return found


def settle(state: GroupsState) -> dict[str, HeartbeatResult]:
    """Every member heartbeats with exactly what it was told it owns, until nothing changes."""
    answers: dict[str, HeartbeatResult] = {}
    for _ in range(10):
        group = state.groups[G]
        before = group.to_wire()
        for member in list(group.members.values()):
            answer = beat(state, member.member_id, member.member_epoch, member.assigned)
            assert isinstance(answer, HeartbeatResult)
            answers[member.member_id] = answer
        if group.to_wire() == before:
            return answers
    raise AssertionError("the group did not settle")


# --- the hash rule -------------------------------------------------------------------------------------


def test_group_partition_is_kafkas_rule() -> None:
    # Java: "hello".hashCode() == 99162322; "polygenelubricants".hashCode() == Integer.MIN_VALUE, whose
    # Utils.abs (x & 0x7fffffff) is 0 (Math.abs would stay negative).
    assert group_partition_for("hello", 50) == 99162322 % 50
    assert group_partition_for("polygenelubricants", 50) == 0
    assert group_partition_for("", 5) == 0
    assert {group_partition_for(f"group-{i}", 5) for i in range(50)} == set(range(5))


def test_group_ids_and_globs() -> None:
    assert validate_group_id("orders.billing-1") == "orders.billing-1"
    for bad in ("", "a b", "x" * 300, 5):
        with pytest.raises(InvalidGroupId):
            validate_group_id(bad)
    assert glob_matches("order.*", "order.eu")
    assert not glob_matches("order.*", "orders")
    assert glob_matches("o?ders", "orders")
    assert not glob_matches("*", "__consumer_offsets")


# --- the assignor --------------------------------------------------------------------------------------


Parts = frozenset[tuple[str, int]]


def check_target(eligible: dict[str, Parts], target: dict[str, Parts]) -> None:
    everything = frozenset().union(*eligible.values()) if eligible else frozenset()
    seen: set[tuple[str, int]] = set()
    for member, parts in target.items():
        assert parts <= eligible[member]
        assert not seen & parts
        seen |= parts
    assert seen == everything


@settings(max_examples=300, deadline=None)
@given(members=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
       partitions=st.integers(0, 30), previous_seed=st.data())
def test_identical_subscriptions_are_balanced_and_sticky(members: list[str], partitions: int,
                                                         previous_seed: st.DataObject) -> None:
    universe = frozenset(("t", p) for p in range(partitions))
    eligible = {m: universe for m in members}
    owner = previous_seed.draw(st.lists(st.sampled_from([*members, "gone"]), min_size=partitions,
                                        max_size=partitions))
    previous = {m: frozenset(("t", p) for p in range(partitions) if owner[p] == m) for m in [*members, "gone"]}
    target = assign(eligible, previous)
    check_target(eligible, target)
    counts = [len(parts) for parts in target.values()]
    assert max(counts) - min(counts) <= 1
    quota = partitions // len(members)
    for member in members:  # sticky: nobody loses a partition it could keep within its fair share
        assert len(target[member] & previous[member]) >= min(len(previous[member]), quota)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_subscriptions_give_each_partition_to_one_eligible_member(data: st.DataObject) -> None:
    members = data.draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
    universe = [(t, p) for t in "xyz" for p in range(4)]
    eligible = {m: frozenset(data.draw(st.lists(st.sampled_from(universe), max_size=12))) for m in members}
    previous = {m: frozenset(data.draw(st.lists(st.sampled_from(universe), max_size=6))) for m in members}
    check_target(eligible, assign(eligible, previous))
    assert assign(eligible, previous) == assign(dict(reversed(eligible.items())), previous)  # deterministic


# --- membership and incremental assignment -----------------------------------------------------------


def test_join_then_a_second_member_gets_partitions_only_after_they_are_released() -> None:
    state = GroupsState()
    first = join(state, "a")
    assert isinstance(first, HeartbeatResult) and len(first.assignment) == 6 and first.member_epoch == 2
    assert not first.reconciling
    second = join(state, "b")
    assert second.assignment == () and second.reconciling  # a still owns everything: b waits
    group = state.groups[G]
    assert len(group.target["b"]) == 3 and group.members["a"].revoking == set()  # a has not heard yet
    a = beat(state, "a", first.member_epoch)  # a learns what to give up; no owned list: nothing released yet
    assert len(a.assignment) == 3 and a.member_epoch == 3 and a.reconciling
    assert len(group.members["a"].revoking) == 3
    assert beat(state, "b", second.member_epoch).assignment == ()  # still held by a
    a = beat(state, "a", a.member_epoch, a.assignment)  # a released the three
    assert not a.reconciling and group.members["a"].revoking == set()
    b = beat(state, "b", second.member_epoch)
    assert len(b.assignment) == 3 and set(a.assignment).isdisjoint(b.assignment)
    assert state.groups[G].state() == "stable"


def test_a_leaving_member_s_partitions_go_to_the_others_on_their_next_heartbeat() -> None:
    state = GroupsState()
    join(state, "a")
    join(state, "b")
    answers = settle(state)
    gone = state.apply(GroupOp.HEARTBEAT, 0, {"group_id": G, "member_id": "a", "member_epoch": -1})
    assert gone.member_epoch == -1
    assert len(beat(state, "b", answers["b"].member_epoch).assignment) == 6


def test_expiry_removes_the_member_and_fences_its_commits() -> None:
    state = GroupsState()
    join(state, "a")
    join(state, "b")
    answers = settle(state)
    a_parts = list(answers["a"].assignment)
    assert state.apply(GroupOp.EXPIRE_MEMBER, 0, {"group_id": G, "member_id": "a"}) == \
        {"expired": "a", "reason": "session"}
    assert isinstance(commit(state, "a", answers["a"].member_epoch, a_parts), UnknownMemberId)
    assert isinstance(beat(state, "a", answers["a"].member_epoch), UnknownMemberId)
    b = beat(state, "b", answers["b"].member_epoch)
    assert len(b.assignment) == 6
    assert commit(state, "b", b.member_epoch, a_parts) == {"committed": 3}


def test_commits_are_fenced_by_epoch_and_ownership() -> None:
    state = GroupsState()
    a = join(state, "a")
    assert commit(state, "a", a.member_epoch, list(a.assignment)) == {"committed": 6}
    join(state, "b")
    a2 = beat(state, "a", a.member_epoch)  # revocation started: three partitions are revoking
    revoking = sorted(state.groups[G].members["a"].revoking)
    assert len(revoking) == 3
    assert commit(state, "a", a2.member_epoch, revoking, offset=9) == {"committed": 3}  # final commit before release
    a3 = beat(state, "a", a2.member_epoch, a2.assignment)
    refused = commit(state, "a", a3.member_epoch, revoking)  # released: b owns them now (or will)
    assert isinstance(refused, StaleMemberEpoch)
    assert isinstance(commit(state, "a", a3.member_epoch - 5, list(a3.assignment)), StaleMemberEpoch)
    assert state.committed(G)[revoking[0]].offset == 9
    assert isinstance(commit(state, "", -1, revoking), UnknownMemberId)  # no outside commits while members exist


def test_an_unknown_epoch_is_fenced_and_a_lost_answer_is_tolerated() -> None:
    state = GroupsState()
    a = join(state, "a")
    assert isinstance(beat(state, "a", a.member_epoch + 7), FencedMemberEpoch)
    join(state, "b")
    a2 = beat(state, "a", a.member_epoch)  # the answer carrying epoch a2 is "lost": a keeps using the old one
    again = beat(state, "a", a.member_epoch)
    assert isinstance(again, HeartbeatResult) and again.member_epoch == a2.member_epoch


def test_static_member_restart_keeps_its_partitions_without_a_rebalance() -> None:
    state = GroupsState()
    join(state, "a1", instance="host-a")
    join(state, "b", instance="host-b")
    answers = settle(state)
    epoch_before = state.groups[G].group_epoch
    held = answers["a1"].assignment
    left = state.apply(GroupOp.HEARTBEAT, 0, {"group_id": G, "member_id": "a1", "member_epoch": -2})
    assert left.member_epoch == -2 and state.groups[G].members["a1"].left_static
    assert state.groups[G].members["b"].assigned == set(answers["b"].assignment)  # nothing moved to b
    back = join(state, "a2", instance="host-a")
    assert back.assignment == held and state.groups[G].group_epoch == epoch_before
    assert "a1" not in state.groups[G].members
    assert isinstance(commit(state, "a1", answers["a1"].member_epoch, list(held)), UnknownMemberId)


def test_glob_subscription_follows_new_topics() -> None:
    state = GroupsState()
    known = {"order.eu": 2, "other": 2}
    a = join(state, "a", topics=[], pattern="order.*", known=known)
    assert a.assignment == (("order.eu", 0), ("order.eu", 1))
    assert state.peek_heartbeat({"group_id": G, "member_id": "a", "member_epoch": a.member_epoch,
                                 "topics": known}) == a
    grown = {**known, "order.us": 1}
    assert state.peek_heartbeat({"group_id": G, "member_id": "a", "member_epoch": a.member_epoch,
                                 "topics": grown}) is None  # a new matching topic: must be proposed
    a2 = beat(state, "a", a.member_epoch, known=grown)
    assert ("order.us", 0) in a2.assignment


def test_offsets_of_an_empty_group_can_be_reset_and_state_survives_a_snapshot() -> None:
    state = GroupsState()
    assert commit(state, "", -1, [("orders", 0), ("orders", 1)]) == {"committed": 2}
    a = join(state, "a")
    assert isinstance(state.apply(GroupOp.DELETE_OFFSETS, 0, {"group_id": G, "partitions": None}), NonEmptyGroup)
    copy = GroupsState.from_bytes(state.to_bytes())
    assert copy.groups[G].to_wire() == state.groups[G].to_wire()
    assert copy.peek_heartbeat({"group_id": G, "member_id": "a", "member_epoch": a.member_epoch,
                                "topics": TOPICS}) == a
    state.apply(GroupOp.HEARTBEAT, 0, {"group_id": G, "member_id": "a", "member_epoch": -1})
    assert state.apply(GroupOp.DELETE_OFFSETS, 0, {"group_id": G, "partitions": [["orders", 0]]}) == {"deleted": 1}
    assert set(state.committed(G)) == {("orders", 1)}


def test_an_empty_group_expires_with_its_offsets_once_its_retention_ran_out() -> None:
    """Kafka's offsets retention: counted from the last member leaving or the last commit, whichever is later;
    re-checked in log order, so a member that joined (or a commit that landed) in between keeps the group."""
    day = 86_400_000
    state = GroupsState()
    join(state, "a", now=0)
    settled = settle(state)["a"]
    assert commit(state, "a", settled.member_epoch, [("orders", 0)]) == {"committed": 1}
    assert state.expired_groups(100 * day, day) == []  # it has a member
    state.apply(GroupOp.HEARTBEAT, 5 * day, {"group_id": G, "member_id": "a", "member_epoch": -1})
    assert state.groups[G].empty_since_ms == 5 * day
    expire = {"group_id": G, "retention_ms": 7 * day}
    assert state.expired_groups(12 * day - 1, 7 * day) == []
    assert state.apply(GroupOp.EXPIRE_GROUP, 12 * day - 1, expire) == {"expired": None}
    # A snapshot keeps when it became empty.
    assert GroupsState.from_bytes(state.to_bytes()).expired_groups(12 * day, 7 * day) == [G]
    # Decided while empty, applied after someone joined: kept.
    join(state, "b", now=12 * day)
    assert state.expired_groups(12 * day, 7 * day) == []
    assert state.apply(GroupOp.EXPIRE_GROUP, 12 * day, expire) == {"expired": None} and G in state.groups
    state.apply(GroupOp.HEARTBEAT, 13 * day, {"group_id": G, "member_id": "b", "member_epoch": -1})
    assert state.apply(GroupOp.EXPIRE_GROUP, 20 * day - 1, expire) == {"expired": None}
    assert state.apply(GroupOp.EXPIRE_GROUP, 20 * day, expire) == {"expired": G, "offsets": 1}
    assert G not in state.groups and state.committed(G) == {}


def test_a_group_that_only_commits_is_kept_while_it_commits() -> None:
    day = 86_400_000
    state = GroupsState()
    state.apply(GroupOp.COMMIT_OFFSETS, 0, {"group_id": G, "member_id": "", "member_epoch": -1,
                                            "offsets": [["orders", 0, 3, ""]]})
    state.apply(GroupOp.COMMIT_OFFSETS, 6 * day, {"group_id": G, "member_id": "", "member_epoch": -1,
                                                  "offsets": [["orders", 1, 4, ""]]})
    assert state.expired_groups(8 * day, 7 * day) == []
    assert state.expired_groups(13 * day, 7 * day) == [G]
    # Groups written by an older version (no empty_since_ms) count from their last commit.
    wire = state.groups[G].to_wire()
    del wire["empty_since_ms"]
    from raftmq.cluster.consumer_groups import Group
    assert Group.from_wire(wire).idle_since_ms() == 6 * day


def test_a_client_side_assignment_can_be_installed() -> None:
    state = GroupsState()
    join(state, "a")
    join(state, "b")
    settle(state)
    epoch = state.groups[G].group_epoch
    everything = [["orders", p] for p in range(6)]
    assert state.apply(GroupOp.SET_TARGET, 0, {"group_id": G, "group_epoch": epoch,
                                               "target": {"a": everything, "b": []}}) == {"group_epoch": epoch}
    answers = settle(state)
    assert len(answers["a"].assignment) == 6 and answers["b"].assignment == ()
    assert isinstance(state.apply(GroupOp.SET_TARGET, 0, {"group_id": G, "group_epoch": epoch - 1, "target": {}}),
                      StaleMemberEpoch)


# --- random command sequences --------------------------------------------------------------------------

ACTIONS = st.lists(st.tuples(st.sampled_from(["join", "release", "hold", "leave", "expire", "static", "topics"]),
                             st.sampled_from("abcde"), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(actions=ACTIONS)
def test_random_sequences_never_share_a_partition_and_revoke_before_reassigning(
        actions: list[tuple[str, str, bool]]) -> None:
    state = GroupsState()
    known = dict(TOPICS)
    for step, (action, member, flag) in enumerate(actions):
        before = owners(state)
        group = state.groups.get(G)
        current = group.members.get(member) if group is not None else None
        released: set[tuple[str, int]] = set()
        removed = False
        answer: Any = None
        if action == "join":
            answer = join(state, member, topics=["orders", "payments"] if flag else ["orders"], now=step,
                 instance=f"i-{member}" if flag else None, known=known)
        elif current is None:
            continue
        elif action == "release":  # the member releases everything it was told to give up
            answer = beat(state, member, current.member_epoch, current.assigned, now=step, known=known)
            released = set(current.revoking) if isinstance(answer, HeartbeatResult) else set()
        elif action == "hold":  # the member heartbeats but still holds what it is revoking
            answer = beat(state, member, current.member_epoch, current.owned, now=step, known=known)
        elif action == "leave":
            removed = True
            state.apply(GroupOp.HEARTBEAT, step, {"group_id": G, "member_id": member, "member_epoch": -1})
        elif action == "expire":
            removed = True
            state.apply(GroupOp.EXPIRE_MEMBER, step, {"group_id": G, "member_id": member})
        elif action == "static":
            removed = current.instance_id is None  # a static leave without an instance id is a leave
            state.apply(GroupOp.HEARTBEAT, step, {"group_id": G, "member_id": member, "member_epoch": -2})
        elif action == "topics":
            known = {"orders": 6 + (step % 3), "payments": 3}
            answer = beat(state, member, current.member_epoch, current.owned, now=step, known=known)
        after = owners(state)
        for partition, new_owner in after.items():
            old_owner = before.get(partition)
            if old_owner is None or old_owner == new_owner:
                continue
            # Ownership moved in one step: only because the old owner released it or is gone.
            # (a member joining again with epoch 0 owns nothing any more: what it held is released)
            assert old_owner == member and (partition in released or removed or action == "join"), \
                f"{partition} moved from {old_owner} to {new_owner} on {action} by {member}"
        group = state.groups.get(G)
        acting = group.members.get(member) if group is not None else None
        if acting is not None and isinstance(answer, HeartbeatResult):  # (a static member that left is fenced)
            # its own heartbeat moved it to its target: nothing outside it is still assigned
            assert group is not None and acting.assigned <= group.target.get(member, frozenset())
    group = state.groups.get(G)
    if group is not None and group.members:
        for static_left in [m for m in group.members.values() if m.left_static]:
            state.apply(GroupOp.EXPIRE_MEMBER, 99, {"group_id": G, "member_id": static_left.member_id})
        if state.groups.get(G) is not None and state.groups[G].members:
            settle(state)  # live members that heartbeat and release reach the target: nobody starves
            assert state.groups[G].state() == "stable"


def test_groups_and_offsets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from raftmq.cluster import limits
    from raftmq.cluster.errors import GroupLimitReached

    monkeypatch.setattr(limits, "group_state_groups_max", 1)
    monkeypatch.setattr(limits, "group_offsets_max", 2)
    state = GroupsState()
    assert commit(state, "", -1, [("orders", 0), ("orders", 1)]) == {"committed": 2}
    assert isinstance(commit(state, "", -1, [("orders", 2)]), GroupLimitReached)
    assert commit(state, "", -1, [("orders", 1)], offset=9) == {"committed": 1}  # an existing offset moves
    other = state.apply(GroupOp.COMMIT_OFFSETS, 0, {"group_id": "other", "member_id": "", "member_epoch": -1,
                                                    "offsets": [["orders", 0, 1, ""]]})
    assert isinstance(other, GroupLimitReached) and "other" not in state.groups


def test_a_commit_overtaken_by_a_later_one_of_the_same_member_is_ignored() -> None:
    state = GroupsState()
    a = join(state, "a")

    def ordered(offset: int, sequence: int) -> Any:
        return state.apply(GroupOp.COMMIT_OFFSETS, 0, {"group_id": G, "member_id": "a", "member_epoch": a.member_epoch,
                                                       "offsets": [["orders", 0, offset, ""]], "sequence": sequence})

    assert ordered(33, 5) == {"committed": 1}
    assert ordered(29, 4) == {"committed": 0, "superseded": True}  # sent earlier, arrived later
    assert state.committed(G)[("orders", 0)].offset == 33
    assert ordered(10, 6) == {"committed": 1}  # a deliberate seek back, committed later: applied
