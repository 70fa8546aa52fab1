"""One peer port per broker, one TCP connection per broker pair, every Raft group multiplexed over it.

pysyncobj's stock transport opens a port and a connection per group and a thread per group; a broker with
many partitions would need many ports and threads, and the chaos proxies could not sit on one link per
broker pair. Here:

* ``PeerNetwork`` owns the listening socket and one ``PeerLink`` per peer. It is driven by the replication
  thread (``poll()``), never by a thread of its own, so Raft messages are handled on the thread that ticks
  the groups, with no hand-off and no locks (pysyncobj's Raft handlers take no locks, so they must run on
  the thread that ticks the group).
* Who dials: the broker with the larger id dials the smaller one, always at the peer's *dial address*
  (a chaos proxy, or its canonical peer address). Identity is the broker id carried in the handshake,
  never the TCP address, so routing a link through a proxy never changes who is who.
* Handshake: the acceptor sends a random challenge; the dialer answers with cluster id, its id, the id it
  wants, and (if a cluster secret is set) an HMAC of the challenge; the acceptor welcomes it. A link is
  "up" only after the welcome, so a black-holed link never counts as connected and an isolated broker
  does not campaign (pysyncobj campaigns only when it sees a connected peer).
* Frames: ``[u32 length][msgpack payload]`` (``node/peer_protocol.py``: kinds, encoding, and a schema for
  every frame and every Raft message type). msgpack, not pickle, so a peer cannot make us execute code; and
  every frame is checked against its schema before anything uses it. A frame that fails its check, or whose
  handling raises, closes that one connection (logged, counted in ``stats``), never the replication thread.
* Limits: a frame above ``peer_frame_bytes_max`` (``peer_handshake_frame_bytes_max`` before the handshake
  is done) is a protocol error; at most ``peer_pending_connections_max`` accepted connections may be in the
  handshake (the oldest makes room); a link whose send
  buffer grows past ``peer_send_buffer_bytes_max`` is cut (Raft resends); above the soft limit Raft
  AppendEntries are dropped (Raft recovers from loss) while every other message is kept.
* Liveness: pings when idle; a link that received nothing for ``connection_timeout_s`` is closed and,
  on the dialing side, redialled every ``connect_retry_s``.

``GroupTransport`` is the pysyncobj ``Transport`` one group sees. It raises pysyncobj's events on the
replication thread and, under the ``always`` durability policy, holds back a follower's AppendEntries
acknowledgement (``next_node_idx``) until the group's journal has been fsynced (group commit).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pysyncobj.node import Node
from pysyncobj.transport import Transport
from raftmq.cluster import limits
from raftmq.cluster.errors import invariant
from raftmq.node import peer_protocol
from raftmq.node.config import PeerAddress
from raftmq.node.peer_protocol import (
    PROTOCOL_VERSION,
    Challenge,
    FrameReader,
    Hello,
    PeerProtocolError,
    Ping,
    RaftFrame,
    Reject,
    Welcome,
)

log = logging.getLogger(__name__)



class BrokerNode(Node):
    """A pysyncobj node identified by broker id (pysyncobj needs a str id)."""

    def __init__(self, broker_id: int) -> None:
        super().__init__(str(broker_id))
        self.broker_id = broker_id


def handshake_mac(secret: bytes, challenge: bytes, cluster_id: str, from_id: int, to_id: int) -> bytes:
    """HMAC-SHA256 of the acceptor's challenge and both identities, keyed by the cluster secret."""
    text = b"|".join([challenge, cluster_id.encode(), str(from_id).encode(), str(to_id).encode()])
    return hmac.new(secret, text, hashlib.sha256).digest()


def hello_rejection(hello: Hello, *, cluster_id: str, self_id: int, peers: dict[int, Any], challenge: bytes,
                    secret: bytes) -> str | None:
    """Why an acceptor must refuse this HELLO (None: welcome it). Pure; the HELLO's types are checked."""
    if hello.version != PROTOCOL_VERSION:
        return f"protocol version {hello.version} != {PROTOCOL_VERSION}"
    if hello.cluster_id != cluster_id:
        return f"cluster id {hello.cluster_id[:80]!r} != {cluster_id!r}"
    if hello.to_id != self_id:
        return f"dialed broker {hello.to_id} but this is broker {self_id}"
    if hello.from_id not in peers or hello.from_id < self_id:
        return f"broker {hello.from_id} is not a peer that dials this broker"
    if secret and not hmac.compare_digest(
            hello.mac, handshake_mac(secret, challenge, cluster_id, hello.from_id, self_id)):
        return "bad cluster secret"
    return None


class PeerLink:
    """One TCP connection to one peer: framing, buffers, handshake state. Owned by PeerNetwork."""

    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    UP = "up"
    CLOSED = "closed"

    def __init__(self, sock: socket.socket, *, dialer: bool, peer_id: int | None, now: float, remote: str) -> None:
        self.sock = sock
        self.remote = remote  # dialer: the address it dialed (peer or proxy); acceptor: the TCP peer
        self.dialer = dialer
        self.peer_id = peer_id
        self.state = PeerLink.CONNECTING if dialer else PeerLink.HANDSHAKE
        self.challenge = b""
        self.created_at = now
        self.last_recv = now
        self.last_send = now
        # Until the handshake is done only small frames are accepted: an unauthenticated peer cannot make
        # the broker buffer more than a few KiB.
        self.reader = FrameReader(limits.peer_handshake_frame_bytes_max)
        self._out: deque[memoryview] = deque()
        self.out_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue(self, frame: bytes) -> None:
        self._out.append(memoryview(frame))
        self.out_bytes += len(frame)

    def flush(self, now: float) -> bool:
        """Write what the socket takes. Returns True when everything queued was written."""
        while self._out:
            buffers = [self._out[i] for i in range(min(len(self._out), limits.peer_send_buffers_per_call))]
            try:
                sent = self.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                return False
            if sent <= 0:
                return False
            self.bytes_sent += sent
            self.out_bytes -= sent
            self.last_send = now
            while sent:
                head = self._out[0]
                if len(head) <= sent:
                    sent -= len(head)
                    self._out.popleft()
                else:
                    self._out[0] = head[sent:]
                    sent = 0
        return True

    def receive(self, now: float) -> bool:
        """Read what is available (bounded per call). Returns False on EOF."""
        budget = limits.peer_recv_budget_bytes if self.state == PeerLink.UP else limits.peer_handshake_frame_bytes_max
        while budget > 0:
            try:
                chunk = self.sock.recv(min(limits.peer_recv_chunk_bytes, budget))
            except (BlockingIOError, InterruptedError):
                return True
            if not chunk:
                return False
            self.reader.feed(chunk)
            self.bytes_received += len(chunk)
            self.last_recv = now
            budget -= len(chunk)
        return True


class NetworkListener:
    """What PeerNetwork tells its owner (the replication loop)."""

    def on_peer_up(self, peer_id: int) -> None: ...

    def on_peer_down(self, peer_id: int) -> None: ...

    def on_raft_message(self, peer_id: int, group_id: str, message: dict[str, Any]) -> None: ...


class PeerNetwork:
    """The broker's one peer port and its links. Single-threaded: every method runs on the replication
    thread (``start`` may run before that thread exists)."""

    def __init__(self, *, self_id: int, cluster_id: str, listen: PeerAddress, peers: dict[int, PeerAddress],
                 listener: NetworkListener, secret: str = "",
                 connection_timeout_s: float = limits.raft_connection_timeout_s,
                 connect_retry_s: float = limits.peer_connect_retry_s,
                 handshake_timeout_s: float = limits.peer_handshake_timeout_s) -> None:
        invariant(self_id not in peers, "a broker is not its own peer")
        self.self_id = self_id
        self.cluster_id = cluster_id
        self.listen_address = listen
        self.peers = dict(peers)  # peer id -> dial address
        self.listener = listener
        self._secret = secret.encode()
        self.connection_timeout_s = connection_timeout_s
        self.connect_retry_s = connect_retry_s
        self.handshake_timeout_s = handshake_timeout_s
        self.selector = selectors.DefaultSelector()
        self._server: socket.socket | None = None
        self._links: dict[int, PeerLink] = {}      # peer id -> link that is up
        self._pending: set[PeerLink] = set()       # links still connecting or in handshake
        self._next_dial: dict[int, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._dirty_links: set[PeerLink] = set()
        # Bumped whenever a link goes up or down: groups republish their status only when it (or their own
        # state) changed (RaftGroup.publish_status).
        self.links_version = 0
        self.stats = {"links_opened": 0, "links_closed": 0, "frames_dropped": 0, "links_cut_overflow": 0,
                      "protocol_errors": 0, "handshakes_rejected": 0, "pending_evicted": 0}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        server = socket.socket(socket.AF_INET6 if ":" in self.listen_address.host else socket.AF_INET,
                               socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.listen_address.host, self.listen_address.port))
        server.listen(64)
        server.setblocking(False)
        self._server = server
        self.selector.register(server, selectors.EVENT_READ, None)
        log.info("peer port listening on %s", self.listen_address)

    @property
    def bound_port(self) -> int:
        invariant(self._server is not None, "network not started")
        return int(self._server.getsockname()[1])  # type: ignore[union-attr]

    def stop(self) -> None:
        for link in list(self._links.values()) + list(self._pending):
            self._close(link, "shutdown")
        if self._server is not None:
            self.selector.unregister(self._server)
            self._server.close()
            self._server = None
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def wake(self) -> None:
        """Interrupt a poll() in progress (any thread)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already signalled
        except OSError:
            pass  # closed during shutdown

    def set_peer(self, peer_id: int, address: PeerAddress | None) -> None:
        """Learn where a peer listens (a broker that joined after this one started), or forget it (None): its
        links close and its handshakes are refused from now on (``hello_rejection`` checks ``peers``)."""
        if peer_id == self.self_id:
            return
        if address is None:
            self.peers.pop(peer_id, None)
            self._next_dial.pop(peer_id, None)
            for link in [self._links.get(peer_id), *[p for p in self._pending if p.peer_id == peer_id]]:
                if link is not None:
                    self._close(link, f"broker {peer_id} is no longer a peer")
            return
        if self.peers.get(peer_id) != address:
            log.info("peer broker %d listens on %s", peer_id, address)
            self.peers[peer_id] = address
            self._next_dial.pop(peer_id, None)  # dial the new address at the next maintain()

    # --- queries ------------------------------------------------------------------------------

    def is_up(self, peer_id: int) -> bool:
        return peer_id in self._links

    def up_peers(self) -> list[int]:
        return list(self._links)

    def queued_bytes(self, peer_id: int) -> int:
        link = self._links.get(peer_id)
        return link.out_bytes if link is not None else 0

    def link_stats(self) -> list[dict[str, Any]]:
        """One row per link that is up (replication thread; the loop publishes a copy for other threads)."""
        return [{"peer_id": peer_id, "dialer": link.dialer, "remote": link.remote, "bytes_sent": link.bytes_sent,
                 "bytes_received": link.bytes_received, "queued_bytes": link.out_bytes}
                for peer_id, link in sorted(self._links.items())]

    # --- sending ------------------------------------------------------------------------------

    def send_raft(self, peer_id: int, group_id: str, message: dict[str, Any]) -> bool:
        """Queue a Raft message. False when the link is down (pysyncobj then treats it as lost)."""
        link = self._links.get(peer_id)
        if link is None:
            return False
        if link.out_bytes > limits.peer_send_buffer_soft_bytes and message.get("type") == "append_entries" \
                and message.get("entries"):
            # Raft tolerates a lost AppendEntries: the follower answers with its next index and the leader
            # resends from there. Queueing without bound would instead cost memory and latency.
            self.stats["frames_dropped"] += 1
            return False
        frame = peer_protocol.encode_raft(group_id, message)
        if link.out_bytes + len(frame) > limits.peer_send_buffer_bytes_max:
            self.stats["links_cut_overflow"] += 1
            self._close(link, f"send buffer above {limits.peer_send_buffer_bytes_max} bytes")
            return False
        link.queue(frame)
        self._dirty_links.add(link)
        return True

    def flush(self) -> None:
        """Write queued frames (end of a replication pass)."""
        now = time.monotonic()
        for link in list(self._dirty_links):
            self._flush_link(link, now)
        self._dirty_links.clear()

    def _flush_link(self, link: PeerLink, now: float) -> None:
        if link.state == PeerLink.CLOSED or link.state == PeerLink.CONNECTING:
            return
        try:
            done = link.flush(now)
        except OSError as exc:
            self._close(link, f"send failed: {exc}")
            return
        events = selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE)
        try:
            self.selector.modify(link.sock, events, link)
        except (KeyError, ValueError):
            pass

    # --- the poll step ------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for socket events and handle them (accept, connect, read, write)."""
        for key, events in self.selector.select(max(0.0, timeout_s)):
            if key.data is None:
                if key.fileobj is self._server:
                    self._accept()
                else:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                continue
            link: PeerLink = key.data
            if link.state == PeerLink.CLOSED:
                continue
            if link.state == PeerLink.CONNECTING and events & selectors.EVENT_WRITE:
                self._finish_connect(link)
                continue
            if events & selectors.EVENT_WRITE:
                self._flush_link(link, time.monotonic())
            if events & selectors.EVENT_READ and link.state != PeerLink.CLOSED:
                self._read(link)

    def maintain(self) -> None:
        """Timers: dial missing links, time out handshakes and silent links, ping idle ones."""
        now = time.monotonic()
        for peer_id, address in self.peers.items():
            if peer_id < self.self_id and peer_id not in self._links \
                    and not any(p.peer_id == peer_id for p in self._pending) \
                    and now >= self._next_dial.get(peer_id, 0.0):
                self._next_dial[peer_id] = now + self.connect_retry_s
                self._dial(peer_id, address, now)
        for link in list(self._pending):
            if now - link.created_at > self.handshake_timeout_s:
                self._close(link, "handshake timed out")
        for link in list(self._links.values()):
            if now - link.last_recv > self.connection_timeout_s:
                self._close(link, f"nothing received for {self.connection_timeout_s:.1f} s")
            elif now - link.last_send > limits.peer_ping_interval_s and link.out_bytes == 0:
                link.queue(peer_protocol.encode_ping())
                self._dirty_links.add(link)

    # --- connection setup ---------------------------------------------------------------------

    def _configure(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.peer_socket_buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, limits.peer_socket_buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _dial(self, peer_id: int, address: PeerAddress, now: float) -> None:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_STREAM)
            self._configure(sock)
            code = sock.connect_ex((address.host, address.port))
        except OSError as exc:
            log.debug("dial %s (%s) failed: %s", peer_id, address, exc)
            return
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            return
        link = PeerLink(sock, dialer=True, peer_id=peer_id, now=now, remote=str(address))
        self._pending.add(link)
        self.selector.register(sock, selectors.EVENT_WRITE, link)

    def _finish_connect(self, link: PeerLink) -> None:
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            self._close(link, f"connect failed: {os.strerror(code)}", quiet=True)
            return
        link.state = PeerLink.HANDSHAKE
        self.selector.modify(link.sock, selectors.EVENT_READ, link)

    def _accept(self) -> None:
        invariant(self._server is not None, "accept without a server socket")
        for _ in range(16):
            try:
                sock, address = self._server.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            try:
                self._configure(sock)
            except OSError:
                sock.close()  # reset before we got to it
                continue
            accepted = [pending for pending in self._pending if not pending.dialer]
            if len(accepted) >= limits.peer_pending_connections_max:
                # Whoever floods the peer port with connections that never finish the handshake must not
                # lock the brokers out: the oldest unfinished one makes room.
                oldest = min(accepted, key=lambda pending: pending.created_at)
                self.stats["pending_evicted"] += 1
                self._close(oldest, "too many unfinished handshakes", quiet=True)
            link = PeerLink(sock, dialer=False, peer_id=None, now=time.monotonic(), remote=f"{address[0]}:{address[1]}")
            link.challenge = os.urandom(peer_protocol.CHALLENGE_BYTES)
            link.queue(peer_protocol.encode_challenge(link.challenge))
            self._pending.add(link)
            self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, link)

    # --- reading ------------------------------------------------------------------------------

    def _read(self, link: PeerLink) -> None:
        try:
            alive = link.receive(time.monotonic())
        except OSError as exc:
            self._close(link, f"receive failed: {exc}")
            return
        while link.state != PeerLink.CLOSED:
            # Handshake frames one at a time: the one that brings the link up raises the frame limit, and the
            # peer's first (large) Raft frame may already be buffered behind it.
            handshaking = link.state != PeerLink.UP
            try:
                bodies = link.reader.bodies(1 if handshaking else None)
            except PeerProtocolError as exc:
                self._close_hostile(link, str(exc))
                return
            if not bodies or not self._handle_bodies(link, bodies) or not handshaking:
                break
        if not alive and link.state != PeerLink.CLOSED:
            self._close(link, "peer closed the connection", quiet=True)

    def _handle_bodies(self, link: PeerLink, bodies: list[bytes]) -> bool:
        """Handle frames in order; False once the link was closed because of one."""
        for body in bodies:
            if link.state == PeerLink.CLOSED:
                return False
            try:
                self._handle_frame(link, peer_protocol.decode(body))
            except PeerProtocolError as exc:
                self._close_hostile(link, str(exc))
                return False
            except OSError:
                raise  # this broker's own disk or socket failed while handling a valid frame: not the peer's doing
            except Exception as exc:  # noqa: BLE001 - a frame must never stop the replication thread
                log.exception("closing the link to %s: handling a frame failed", link.peer_id or link.remote)
                self._close(link, f"handling a frame failed: {exc!r}")
                return False
        return link.state != PeerLink.CLOSED

    def _close_hostile(self, link: PeerLink, reason: str) -> None:
        self.stats["protocol_errors"] += 1
        log.warning("closing the peer connection from %s: protocol error: %s",
                    f"broker {link.peer_id}" if link.state == PeerLink.UP else link.remote, reason)
        self._close(link, f"protocol error: {reason}", quiet=True)

    def _handle_frame(self, link: PeerLink, frame: peer_protocol.Frame) -> None:
        if link.state == PeerLink.UP:
            if isinstance(frame, RaftFrame):
                invariant(link.peer_id is not None, "an up link knows its peer")
                self.listener.on_raft_message(link.peer_id, frame.group_id, frame.message)  # type: ignore[arg-type]
            elif not isinstance(frame, Ping):
                raise PeerProtocolError(f"{type(frame).__name__} frame on a link that is up")
            return
        if link.dialer and isinstance(frame, Challenge):
            peer_id = link.peer_id
            invariant(peer_id is not None, "a dialing link knows its peer")
            assert peer_id is not None  # for the type checker: invariant() just raised otherwise
            mac = handshake_mac(self._secret, frame.nonce, self.cluster_id, self.self_id, peer_id) \
                if self._secret else b""
            link.queue(peer_protocol.encode_hello(Hello(PROTOCOL_VERSION, self.cluster_id, self.self_id,
                                                        peer_id, mac)))
            self._dirty_links.add(link)
        elif not link.dialer and isinstance(frame, Hello):
            self._accept_hello(link, frame)
        elif link.dialer and isinstance(frame, Welcome):
            self._link_up(link)
        elif isinstance(frame, Reject):
            self._close(link, f"peer rejected the handshake: {frame.reason}")
        else:
            raise PeerProtocolError(f"{type(frame).__name__} frame during the handshake")

    def _accept_hello(self, link: PeerLink, hello: Hello) -> None:
        reason = hello_rejection(hello, cluster_id=self.cluster_id, self_id=self.self_id, peers=self.peers,
                                 challenge=link.challenge, secret=self._secret)
        if reason is not None:
            self.stats["handshakes_rejected"] += 1
            log.warning("rejecting peer connection from %s: %s", link.remote, reason)
            link.queue(peer_protocol.encode_reject(reason))
            self._flush_link(link, time.monotonic())
            self._close(link, reason, quiet=True)
            return
        from_id = hello.from_id
        old = self._links.get(from_id)
        if old is not None:
            # The dialer only dials when it has no link, so the old one is dead from its point of view.
            self._close(old, "superseded by a new connection from the same broker")
        link.peer_id = from_id
        link.queue(peer_protocol.encode_welcome(self.self_id))
        self._dirty_links.add(link)
        self._link_up(link)

    def _link_up(self, link: PeerLink) -> None:
        invariant(link.peer_id is not None, "link up without a peer id")
        self._pending.discard(link)
        link.state = PeerLink.UP
        link.reader.frame_bytes_max = limits.peer_frame_bytes_max
        link.last_recv = time.monotonic()
        self._links[link.peer_id] = link  # type: ignore[index]
        self.links_version += 1
        self.stats["links_opened"] += 1
        log.info("peer link to broker %s up (%s)", link.peer_id, "dialed" if link.dialer else "accepted")
        self.listener.on_peer_up(link.peer_id)  # type: ignore[arg-type]

    def _close(self, link: PeerLink, reason: str, *, quiet: bool = False) -> None:
        if link.state == PeerLink.CLOSED:
            return
        was_up = link.state == PeerLink.UP
        link.state = PeerLink.CLOSED
        self._pending.discard(link)
        self._dirty_links.discard(link)
        try:
            self.selector.unregister(link.sock)
        except (KeyError, ValueError):
            pass
        try:
            link.sock.close()
        except OSError:
            pass
        if was_up and self._links.get(link.peer_id) is link:  # type: ignore[arg-type]
            del self._links[link.peer_id]  # type: ignore[arg-type]
            self.links_version += 1
            self.stats["links_closed"] += 1
            log.info("peer link to broker %s down: %s", link.peer_id, reason)
            self.listener.on_peer_down(link.peer_id)  # type: ignore[arg-type]
        elif not quiet:
            log.debug("peer connection closed before it was up: %s", reason)


class GroupTransport(Transport):
    """The pysyncobj Transport of one Raft group, over the shared PeerNetwork.

    Built by pysyncobj inside ``SyncObj.__init__`` through a factory bound to the network and group id.
    Events are raised on the replication thread: connection changes by ``PeerNetwork`` via the loop,
    messages as they are read.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *, network: PeerNetwork,  # noqa: N803
                 group_id: str) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.network = network
        self.group_id = group_id
        self.nodes: dict[int, BrokerNode] = {node.broker_id: node for node in otherNodes}
        # Under the `always` policy: acknowledgements waiting for the journal fsync.
        self.hold_acks = False
        self.has_unsynced_writes: Callable[[], bool] = lambda: False
        self._held: list[tuple[int, dict[str, Any]]] = []
        # Extra fields this replica attaches to its acknowledgements (e.g. its log end offset), and what
        # peers attached to theirs: lets a leader start a snapshot stream where the follower's log ends.
        self.local_annotations: dict[str, Any] = {}
        self.peer_annotations: dict[int, dict[str, Any]] = {}
        # Quiescence (node/quiescence.py), then pre-vote (node/prevote.py), see every message first and consume
        # their own.
        self.quiescence: Any = None
        self.prevote: Any = None

    # pysyncobj Transport interface ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return True

    def tryGetReady(self) -> None:  # noqa: N802
        return None

    def waitReady(self) -> None:  # noqa: N802
        return None

    def addNode(self, node: Any) -> None:  # noqa: N802
        """pysyncobj appended (or un-truncated) a change that makes ``node`` a voter: route its messages to
        the group, and tell pysyncobj at once if the link is already up (it hears only of later changes)."""
        self.nodes[node.broker_id] = node
        if self.network.is_up(node.broker_id):
            self._onNodeConnected(node)

    def dropNode(self, node: Any) -> None:  # noqa: N802
        """``node`` is no longer a voter: its messages are ignored from now on (``deliver``), and pysyncobj must
        not count it as connected (elections and its quorum check use the connected set)."""
        known = self.nodes.pop(node.broker_id, None)
        self.peer_annotations.pop(node.broker_id, None)
        if known is not None:
            self._onNodeDisconnected(known)

    def send(self, node: Any, message: Any) -> bool:
        peer_id = node.broker_id
        if message.get("type") == "next_node_idx":
            if self.local_annotations:
                message = {**message, **self.local_annotations}
            if self.hold_acks and self.has_unsynced_writes():
                # Group commit: the follower acknowledges an append only once it is on disk.
                self._held.append((peer_id, message))
                return True
        return self.network.send_raft(peer_id, self.group_id, message)

    def destroy(self) -> None:
        self._held.clear()

    # driven by the replication loop --------------------------------------------------------------

    def send_control(self, peer_id: int, message: dict[str, Any]) -> bool:
        """A raftmq message of this group that pysyncobj never sees (pre-vote)."""
        return self.network.send_raft(peer_id, self.group_id, message)

    def drop_held(self) -> None:
        """The fsync these acknowledgements waited for failed: they are never sent."""
        self._held.clear()

    def release_held(self) -> None:
        held, self._held = self._held, []
        for peer_id, message in held:
            self.network.send_raft(peer_id, self.group_id, message)

    def deliver(self, peer_id: int, message: dict[str, Any]) -> None:
        node = self.nodes.get(peer_id)
        if node is None:
            # Not a voter in this replica's log. Only a leader's AppendEntries gets through: a replica whose log
            # is behind (e.g. it holds a change that removed the current leader, which a later entry re-added)
            # must still be brought up to date. The rest is dropped: pysyncobj's leader bookkeeping would look
            # up a node it does not track (an acknowledgement raises KeyError), and a removed replica must not
            # disturb the group with (pre-)votes. The cost: a voter added by an entry this replica has not
            # received yet gets no vote from it until it has; another candidate, or a later election, wins.
            if message.get("type") != "append_entries":
                return
            node = BrokerNode(peer_id)
        quiescence = self.quiescence
        if quiescence is not None:
            if quiescence.handle(peer_id, message):
                return
            if self.prevote is not None and quiescence.leader_contact_now():
                # a quiet follower whose link to the leader is up refuses pre-votes as if just heard from it
                self.prevote.last_leader_contact = self.prevote.clock()
        if self.prevote is not None:
            self.prevote.observe(message)
            if self.prevote.handle(peer_id, message):
                return
        if message.get("type") == "next_node_idx":
            extra = {k: v for k, v in message.items() if k.startswith("rmq_")}
            if extra:
                self.peer_annotations[peer_id] = extra
        self._onMessageReceived(node, message)

    def peer_up(self, peer_id: int) -> None:
        node = self.nodes.get(peer_id)
        if node is not None:
            self._onNodeConnected(node)

    def peer_down(self, peer_id: int) -> None:
        node = self.nodes.get(peer_id)
        if node is not None:
            self._onNodeDisconnected(node)
