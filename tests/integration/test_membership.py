"""Membership changes of real Raft groups (node/replication.py over pysyncobj, node/raft_transport.py).

Goal: a group moves to other brokers one voter at a time without losing or reordering a committed entry,
with writes before, during and after; a dead voter is replaced; a restarted replica comes back with the
voters its log and snapshot say (not its spec); one change at a time (REASSIGNMENT_IN_PROGRESS); a removed
replica does not disturb the group; hostile membership entries on the peer port close only that connection.

Method: up to five ReplicationLoops in this process (real sockets on loopback, one peer port each), a
list-appending state machine per replica; brokers 1-3 start knowing only each other and learn of 4 and 5
through ``set_peer``, as brokers added after start do. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from raftmq.cluster import commands, limits
from raftmq.cluster.errors import LeaderNotAvailable, NotLeader, OutcomeUnknown, ReassignmentInProgress
from raftmq.deploy.local_cluster import find_free_ports
from raftmq.node import peer_protocol
from raftmq.node.config import Durability, PeerAddress, RaftTimers
from raftmq.node.groups import GroupSpec, MembershipChange
from raftmq.node.peer_protocol import Challenge, FrameReader, Hello, Welcome
from raftmq.node.raft_transport import NetworkListener, PeerNetwork
from raftmq.node.replication import RaftGroup, ReplicationLoop

from tests.conftest import wait_for_condition
from tests.list_machine import ListMachine

GROUP = "g"
CLUSTER = "membership-test"


class Broker:
    """One ReplicationLoop with at most one replica of GROUP."""

    def __init__(self, broker_id: int, ports: dict[int, int], known: set[int], root: Path,
                 loop: asyncio.AbstractEventLoop, timers: RaftTimers) -> None:
        self.broker_id = broker_id
        peers = {b: PeerAddress("127.0.0.1", ports[b]) for b in known if b != broker_id}

        def factory(listener: NetworkListener) -> PeerNetwork:
            return PeerNetwork(self_id=broker_id, cluster_id=CLUSTER, listen=PeerAddress("127.0.0.1", ports[broker_id]),
                               peers=peers, listener=listener)

        self.directory = root / f"b{broker_id}" / GROUP
        self.replication = ReplicationLoop(self_id=broker_id, network_factory=factory, durability=Durability.ALWAYS,
                                           asyncio_loop=loop, timers=timers)
        self.replication.start()
        self.machine = ListMachine()
        self.group: RaftGroup | None = None

    async def open(self, replica_ids: tuple[int, ...]) -> RaftGroup:
        spec = GroupSpec(GROUP, self.directory, replica_ids)
        self.group = await self.replication.open_group(spec, self.machine)  # type: ignore[arg-type]
        return self.group

    def stop(self) -> None:
        self.replication.stop()


class Cluster:
    def __init__(self, tmp_path: Path, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.ports = dict(zip(range(1, size + 1), find_free_ports(size), strict=True))
        self.timers = RaftTimers()
        self.tmp_path = tmp_path
        self.loop = loop
        self.brokers: dict[int, Broker] = {}
        self.acked: list[bytes] = []
        self.uncertain: list[bytes] = []

    def start(self, broker_id: int, known: set[int] | None = None) -> Broker:
        broker = self.brokers[broker_id] = Broker(broker_id, self.ports, known or set(self.ports), self.tmp_path,
                                                  self.loop, self.timers)
        return broker

    def stop(self, broker_id: int) -> None:
        self.brokers.pop(broker_id).stop()

    def groups(self) -> dict[int, RaftGroup]:
        return {b: broker.group for b, broker in self.brokers.items() if broker.group is not None}

    async def leader(self) -> RaftGroup:
        def find() -> RaftGroup | None:
            leaders = [g for g in self.groups().values() if g.status.is_leader and g.status.caught_up]
            return leaders[0] if len(leaders) == 1 else None

        return await wait_for_condition(find, timeout_s=20, what="one leader of the group")

    async def write(self, payload: bytes) -> None:
        """One acks=all write at the current leader; records whether it is acknowledged."""
        leader = await self.leader()
        try:
            await asyncio.wait_for(leader.submit(commands.encode(1, len(self.acked) + len(self.uncertain) + 1, 0,
                                                                 payload)), 10)
        except (OutcomeUnknown, LeaderNotAvailable, TimeoutError):
            self.uncertain.append(payload)
            return
        self.acked.append(payload)

    async def change(self, change: MembershipChange) -> None:
        """Apply one change at whichever broker leads, retrying where the engine says the outcome is definite."""
        async def attempt() -> bool:
            leader = await self.leader()
            try:
                await asyncio.wait_for(leader.change_membership(change), 20)
            except (NotLeader, LeaderNotAvailable, ReassignmentInProgress):
                return False
            return True

        await wait_for_condition(attempt, timeout_s=40, what=f"membership change {change}")

    async def caught_up(self, broker_id: int) -> None:
        async def check() -> bool:
            leader = await self.leader()
            group = self.brokers[broker_id].group
            return group is not None and group.status.applied_index >= leader.status.commit_index

        await wait_for_condition(check, timeout_s=30, what=f"broker {broker_id} caught up")

    async def check_final(self, voters: tuple[int, ...]) -> None:
        """Every voter holds every acknowledged entry, in one order, and agrees on the voters."""
        # One acknowledged write after the last change. It may take a few tries: right after replicas restart
        # the leader can lose its majority for a moment and answer OUTCOME_UNKNOWN (recorded as uncertain).
        attempts = 0

        async def final_acked() -> bool:
            nonlocal attempts
            attempts += 1
            await self.write(b"final-%d" % attempts)
            return self.acked[-1:] == [b"final-%d" % attempts]

        await wait_for_condition(final_acked, timeout_s=30, what="an acknowledged write at the end")
        for broker_id in voters:
            await self.caught_up(broker_id)
        histories = {b: self.brokers[b].machine.copy() for b in voters}
        reference = histories[voters[0]]
        for broker_id, history in histories.items():
            assert history == reference, f"broker {broker_id} differs"
            group = self.brokers[broker_id].group
            assert group is not None and group.status.voters == voters, (broker_id, group.status)
            # pysyncobj's own copy of the configuration agrees with the one the log describes.
            assert {node.broker_id for node in group.raft.otherNodes} == set(voters) - {broker_id}
            assert self.brokers[broker_id].machine.applied_twice == 0
        assert [p for p in reference if p in self.acked] == self.acked
        assert all(p in self.acked or p in self.uncertain for p in reference)

    def shutdown(self) -> None:
        for broker in self.brokers.values():
            broker.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, asyncio.get_running_loop(), 5)
    try:
        yield cluster
    finally:
        cluster.shutdown()


async def _initial_three(cluster: Cluster, writes: int = 10) -> None:
    for broker_id in (1, 2, 3):
        cluster.start(broker_id, known={1, 2, 3})
    for broker_id in (1, 2, 3):
        await cluster.brokers[broker_id].open((1, 2, 3))
    for i in range(writes):
        await cluster.write(b"before-%d" % i)
    assert len(cluster.acked) == writes


def _learn(cluster: Cluster, new: int) -> None:
    """Brokers 1-3 learn where ``new`` listens (from metadata in a real broker) and accept its handshake."""
    for broker in cluster.brokers.values():
        if broker.broker_id != new:
            broker.replication.set_peer(new, ("127.0.0.1", cluster.ports[new]))


async def _compact(cluster: Cluster, broker_id: int) -> None:
    broker = cluster.brokers[broker_id]
    group = broker.group
    assert group is not None
    taken = group.snapshotter.snapshots_taken
    await cluster.caught_up(broker_id)
    broker.replication.call(group.raft.forceLogCompaction).result(timeout=5)
    await wait_for_condition(lambda: group.snapshotter.snapshots_taken > taken, timeout_s=10,
                             what=f"a snapshot on broker {broker_id}")


async def _writer(cluster: Cluster, stop: asyncio.Event, prefix: bytes) -> None:
    i = 0
    while not stop.is_set():
        await cluster.write(prefix + b"-%d" % i)
        i += 1


async def test_move_a_group_to_three_other_brokers(cluster: Cluster) -> None:
    await _initial_three(cluster)
    stop = asyncio.Event()
    writer = asyncio.create_task(_writer(cluster, stop, b"during"))
    try:
        for new in (4, 5):
            cluster.start(new)
            _learn(cluster, new)
            voters = (await cluster.leader()).status.voters
            await cluster.brokers[new].open(tuple(sorted({*voters, new})))
            await cluster.change(MembershipChange(add=new))
            await cluster.caught_up(new)
        # Make broker 1 lead, then ask it to remove itself: it hands leadership over instead (NOT_LEADER,
        # nothing appended), and the change goes through at the new leader.
        first = cluster.brokers[1].group
        assert first is not None

        async def one_leads() -> bool:
            leader = await cluster.leader()
            if leader is not first:
                leader.transfer_leadership(1)  # refused while 1 is behind: asked again at the next poll
            return leader is first

        await wait_for_condition(one_leads, timeout_s=30, interval_s=0.2, what="broker 1 leading")
        with pytest.raises(NotLeader):
            await asyncio.wait_for(first.change_membership(MembershipChange(remove=1)), 10)
        for old in (1, 2):
            await cluster.change(MembershipChange(remove=old))
        await wait_for_condition(lambda: len(cluster.acked) > 20, timeout_s=20, what="writes during the move")
    finally:
        stop.set()
        await writer
    await cluster.check_final((3, 4, 5))
    leader = await cluster.leader()
    assert leader.replica_ids == [3, 4, 5] and not leader.status.membership_pending
    # The removed replicas cannot disturb the group. The leader stops sending to a replica when it appends
    # its removal, so a removed replica usually never learns of it: its election timer fires and it asks
    # for pre-votes, which the voters ignore. Wait until each has tried (or knows), then check nothing moved.
    term = leader.status.term
    removed = [group for group in (cluster.brokers[1].group, cluster.brokers[2].group) if group is not None]
    baseline = [group.prevote.rounds_started for group in removed]
    # A round a replica won while it was still a voter (its timer can fire during the move on a loaded
    # machine) may leave it campaigning at a term the voters, having since removed it, never hear of. What
    # must not happen is a round won once the removals are committed: no voter answers a removed replica.
    won = [group.prevote.rounds_won for group in removed]

    def tried_or_knows() -> bool:
        return all(group.self_id not in group.replica_ids or group.prevote.rounds_started > rounds
                   for group, rounds in zip(removed, baseline, strict=True))

    await wait_for_condition(tried_or_knows, timeout_s=20, what="the removed replicas' election timers")
    await cluster.write(b"after-the-removed-tried")
    assert (await cluster.leader()) is leader and leader.status.term == term
    assert [group.prevote.rounds_won for group in removed] == won


async def test_replace_a_dead_voter_then_restart_replicas(cluster: Cluster) -> None:
    await _initial_three(cluster)
    cluster.stop(3)
    await cluster.change(MembershipChange(remove=3))
    await cluster.write(b"without-3")
    # Both survivors compact: the new voter must start from a snapshot, whose header carries the voters.
    for survivor in (1, 2):
        await _compact(cluster, survivor)
    cluster.start(4)
    _learn(cluster, 4)
    await cluster.brokers[4].open((1, 2, 4))
    await cluster.change(MembershipChange(add=4))
    await cluster.caught_up(4)
    new_voter = cluster.brokers[4].group
    assert new_voter is not None and new_voter.snapshotter.snapshots_installed >= 1
    assert new_voter.membership.base_voters == {1, 2}
    # A snapshot on broker 2 records the voters (1, 2, 4); a change after it lives in its journal only.
    follower = next(b for b in (1, 2) if not cluster.brokers[b].group.status.is_leader)  # type: ignore[union-attr]
    await cluster.write(b"with-4")
    await _compact(cluster, follower)
    cluster.start(5)
    _learn(cluster, 5)
    await cluster.brokers[5].open((1, 2, 4, 5))
    await cluster.change(MembershipChange(add=5))
    await cluster.write(b"with-5")
    # Restart the snapshotted follower and the journal-only new voter with STALE specs: the log decides.
    for broker_id, spec in ((follower, (1, 2, 3)), (4, (1, 2, 4))):
        cluster.stop(broker_id)
        restarted = cluster.start(broker_id)
        reopened = await restarted.open(spec)
        assert reopened.replica_ids == [1, 2, 4, 5]  # at open, before it hears from anyone
        await wait_for_condition(lambda g=reopened: g.status.voters == (1, 2, 4, 5), timeout_s=10,  # type: ignore[misc]
                                 what=f"broker {broker_id}'s voters after a restart")
    await cluster.check_final((1, 2, 4, 5))


async def test_one_change_at_a_time(cluster: Cluster) -> None:
    # Two of four voters cannot commit: keep the leader from stepping down (CheckQuorum) meanwhile.
    cluster.timers = RaftTimers(leader_fallback_timeout_s=60)
    await _initial_three(cluster, writes=2)
    leader = await cluster.leader()
    down = next(b for b in (1, 2, 3) if b != leader.self_id)
    cluster.stop(down)
    cluster.start(4)
    _learn(cluster, 4)
    # Broker 4 runs but has no replica: {1, 2, 3, 4} needs 3 holders and only 2 are up, so this add stays
    # uncommitted until broker 4 opens its replica.
    first = leader.change_membership(MembershipChange(add=4))
    second = leader.change_membership(MembershipChange(add=5))  # the same pass: refused before it is queued
    with pytest.raises(ReassignmentInProgress):
        await asyncio.wait_for(second, 10)
    await wait_for_condition(lambda: leader.status.membership_pending and leader.status.voters == (1, 2, 3, 4),
                             timeout_s=10, what="the add appended, not committed")
    with pytest.raises(ReassignmentInProgress) as raised:
        await asyncio.wait_for(leader.change_membership(MembershipChange(remove=down)), 10)
    assert raised.value.code == "REASSIGNMENT_IN_PROGRESS"
    assert not first.done()
    await cluster.brokers[4].open((1, 2, 3, 4))
    await asyncio.wait_for(first, 30)
    await wait_for_condition(lambda: not leader.status.membership_pending, timeout_s=10, what="the add committed")
    # Idempotent: adding a voter again, or removing a broker that is not one, succeeds at once.
    await asyncio.wait_for((await cluster.leader()).change_membership(MembershipChange(add=4)), 10)
    await asyncio.wait_for((await cluster.leader()).change_membership(MembershipChange(remove=5)), 10)
    follower = cluster.brokers[4].group
    assert follower is not None
    with pytest.raises(NotLeader):
        await asyncio.wait_for(follower.change_membership(MembershipChange(remove=down)), 10)


# --- hostile membership entries on the peer port ---------------------------------------------------

def _handshake(sock: socket.socket, as_id: int) -> None:
    reader = FrameReader(limits.peer_frame_bytes_max)
    while not (bodies := reader.bodies()):
        reader.feed(sock.recv(65536))
    assert isinstance(peer_protocol.decode(bodies[0]), Challenge)
    sock.sendall(peer_protocol.encode_hello(Hello(peer_protocol.PROTOCOL_VERSION, CLUSTER, as_id, 1, b"")))
    while not (bodies := reader.bodies()):
        reader.feed(sock.recv(65536))
    assert isinstance(peer_protocol.decode(bodies[0]), Welcome)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


HOSTILE_ENTRIES = {
    "pickled-node": b"\x02\x80\x02]q\x00(X\x03\x00\x00\x00addq\x01X\x01\x00\x00\x004q\x02e.",
    "bad-msgpack": b"\x02RMQM\xc1",
    "negative-id": b"\x02RMQM" + msgpack.packb(["add", -1]),
    "string-id": b"\x02RMQM" + msgpack.packb(["add", "4"]),
    "unknown-kind": b"\x02RMQM" + msgpack.packb(["drop", 4]),
    "trailing-bytes": b"\x02RMQM" + msgpack.packb(["add", 4]) + b"\x00",
    "three-fields": b"\x02RMQM" + msgpack.packb(["add", 4, 5]),
    "oversized": b"\x02RMQM" + msgpack.packb(["add", 4]) + b" " * 64,
}


async def test_hostile_membership_entries_close_only_their_connection(cluster: Cluster) -> None:
    await _initial_three(cluster, writes=2)
    target = cluster.brokers[1]
    # Broker 5 is a known peer that is not running: the attacker passes the handshake under its id.
    target.replication.set_peer(5, ("127.0.0.1", cluster.ports[5]))
    group = target.group
    assert group is not None
    term = group.status.term
    for name, entry in HOSTILE_ENTRIES.items():
        message = {"type": "append_entries", "term": term + 5, "commit_index": 0, "prevLogIdx": 1,
                   "prevLogTerm": 0, "entries": [[entry, 2, term + 5]]}
        frame = [peer_protocol.KIND_RAFT, GROUP, message]
        body = msgpack.packb(frame, use_bin_type=True)
        errors_before = target.replication.network.stats["protocol_errors"]
        with socket.create_connection(("127.0.0.1", cluster.ports[1]), timeout=5) as sock:
            sock.settimeout(5)
            await asyncio.to_thread(_handshake, sock, 5)
            sock.sendall(peer_protocol.LENGTH.pack(len(body)) + body)
            assert await asyncio.to_thread(_closed_by_peer, sock), name
        assert target.replication.network.stats["protocol_errors"] == errors_before + 1, name
    assert target.replication.failure is None
    assert group.status.term < term + 5 and group.status.voters == (1, 2, 3)
    await cluster.check_final((1, 2, 3))
