"""Server-side partition assignment for consumer groups: every subscribed partition to one member, balanced,
and sticky (a member keeps what it held where balance allows).

KIP-848 moved the assignor from the group's leader member to the coordinator; this is that assignor (Kafka
calls its equivalent ``uniform``). It only computes the *target*: moving from the current ownership to the
target without two members owning a partition at once is ``cluster/consumer_groups.py``'s job (revoke first,
then grant).

The rule, in order:

1. each member keeps the partitions of its previous target that it is still eligible for (subscribed to,
   still existing, and not kept by an earlier member in member-id order);
2. every partition nobody kept goes to the eligible member holding the fewest (ties: smallest member id);
3. while some member holds at least two more than another member eligible for one of its partitions, one
   such partition moves (the donor gives a partition it did not hold before first, so that the move undoes
   step 2's choice rather than a kept partition). Each move lowers the sum of squared counts, so the loop
   ends; with identical subscriptions it ends with counts differing by at most one.

Deterministic: the same inputs give the same target on every replica. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping

Partition = tuple[str, int]
Assignment = dict[str, frozenset[Partition]]


def assign(eligible: Mapping[str, frozenset[Partition]],
           previous: Mapping[str, frozenset[Partition]]) -> Assignment:
    """``eligible``: member id -> the partitions it may own (its subscription resolved against the topics).
    ``previous``: member id -> its previous target (members that left are ignored). Returns every member's
    new target; a partition no member is eligible for is in no target."""
    members = sorted(eligible)
    owner: dict[Partition, str] = {}
    held: dict[str, set[Partition]] = {member: set() for member in members}
    for member in members:
        for partition in sorted(previous.get(member, frozenset()) & eligible[member]):
            if partition not in owner:
                owner[partition] = member
                held[member].add(partition)
    candidates: dict[Partition, list[str]] = {}
    for member in members:
        for partition in eligible[member]:
            candidates.setdefault(partition, []).append(member)
    for partition in sorted(candidates):
        if partition not in owner:
            chosen = min(candidates[partition], key=lambda m: (len(held[m]), m))
            owner[partition] = chosen
            held[chosen].add(partition)
    _balance(members, held, owner, candidates, previous)
    return {member: frozenset(held[member]) for member in members}


def _balance(members: list[str], held: dict[str, set[Partition]], owner: dict[Partition, str],
             candidates: dict[Partition, list[str]], previous: Mapping[str, frozenset[Partition]]) -> None:
    moves_max = len(owner) * max(1, len(members))  # a bound the strictly decreasing measure never reaches
    for _ in range(moves_max):
        move = _find_move(members, held, candidates, previous)
        if move is None:
            return
        partition, donor, receiver = move
        held[donor].discard(partition)
        held[receiver].add(partition)
        owner[partition] = receiver


def _find_move(members: list[str], held: dict[str, set[Partition]], candidates: dict[Partition, list[str]],
               previous: Mapping[str, frozenset[Partition]]) -> tuple[Partition, str, str] | None:
    for donor in sorted(members, key=lambda m: (-len(held[m]), m)):
        kept = previous.get(donor, frozenset())
        for partition in sorted(held[donor], key=lambda p: (p in kept, p)):
            receivers = [m for m in candidates[partition] if len(held[m]) + 1 < len(held[donor])]
            if receivers:
                return partition, donor, min(receivers, key=lambda m: (len(held[m]), m))
    return None


__all__ = ["Assignment", "Partition", "assign"]
