"""The client's view of the cluster: brokers, topics, partition leaders (aiokafka's ``ClusterMetadata`` idea).

``ClusterView`` performs no I/O and reads no clock: it changes only when the caller feeds it a decoded
``GET /v1/metadata`` response (:meth:`ClusterView.update`) or the details of a ``NOT_LEADER`` error
(:meth:`ClusterView.apply_not_leader`), and callers pass the current monotonic time in. That keeps it
testable with canned responses; the fetching lives in ``client/connection.py`` (``MetadataFetcher``).

Leader epochs fence stale answers: partition fields in a metadata response are the answering broker's
local Raft view, so a lagging follower may still name an old leader. A partition's leader is only
replaced by information with an epoch at least as new as the one the view holds.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from raftmq.cluster import limits
from raftmq.cluster.errors import UnexpectedResponse


def normalize_url(url: str) -> str:
    """``http://h:p/`` -> ``http://h:p``: broker URLs are compared and joined without a trailing slash.

    Raises:
        ValueError: the URL is not http(s).
    """
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"broker URL must start with http:// or https://: {url!r}")
    return url


# Broker states (docs/api.md "Health and metadata"). A broker that predates the controller sends no state: it
# is taken as alive, which is what every broker of such a cluster is as long as it answers.
BROKER_STATES = ("alive", "fenced", "draining", "removed")


@dataclass(frozen=True)
class BrokerInfo:
    """One broker as listed by ``/v1/metadata``: its id, client URL and peer address, and (from brokers with
    a controller) its state, rack, incarnation, whether it votes in the metadata group, how many partitions
    it hosts / leads, and the age of its last heartbeat (only the controller knows it: None elsewhere).
    Fields an older broker does not send keep their defaults (None: unknown)."""

    broker_id: int
    url: str
    peer: str | None = None
    state: str = "alive"
    rack: str | None = None
    incarnation: int | None = None
    metadata_voter: bool | None = None
    replicas: int | None = None
    leaders: int | None = None
    heartbeat_age_s: float | None = None


@dataclass(frozen=True)
class PartitionInfo:
    """One partition. ``partition`` and ``replicas`` are cluster-wide facts; the other fields are the
    answering broker's local Raft view (``isr`` is only meaningful on the leader). ``leader_id`` is None
    when no leader is known."""

    topic: str
    partition: int
    leader_id: int | None
    leader_epoch: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...] = ()
    commit_index: int | None = None
    applied_index: int | None = None
    log_start_offset: int | None = None
    high_watermark: int | None = None
    role: str | None = None
    # The replica set an ongoing move heads for (None: no move); grows with every change of ``replicas``;
    # the Raft group's own voters as the answering broker's replica sees them (() when it hosts none).
    target: tuple[int, ...] | None = None
    partition_epoch: int | None = None
    voters: tuple[int, ...] = ()


@dataclass(frozen=True)
class TopicInfo:
    """One topic: its partitions in partition order and its config (as the broker reported it)."""

    name: str
    topic_id: int | None
    replication_factor: int | None
    partitions: tuple[PartitionInfo, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def partition_count(self) -> int:
        return len(self.partitions)


@dataclass(frozen=True)
class MoveProgress:
    """How far the replica being added has caught up: its Raft match index against the leader's last index."""

    broker: int | None
    match_index: int | None
    leader_last_index: int | None

    @property
    def fraction(self) -> float | None:
        """0.0-1.0, or None when the indexes are unknown."""
        if self.match_index is None or self.leader_last_index is None:
            return None
        if self.leader_last_index <= 0:
            return 1.0
        return max(0.0, min(1.0, self.match_index / self.leader_last_index))


@dataclass(frozen=True)
class MoveInfo:
    """One partition whose replica set is changing (``moves`` in ``/v1/metadata``). ``running_s`` and
    ``progress`` are only filled in by the controller (None elsewhere)."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    target: tuple[int, ...]
    reason: str | None = None
    adding: int | None = None
    removing: int | None = None
    running_s: float | None = None
    progress: MoveProgress | None = None

    def involves(self, broker_id: int) -> bool:
        return broker_id in self.replicas or broker_id in self.target


@dataclass(frozen=True)
class ClusterMetadata:
    """A decoded ``GET /v1/metadata`` answer: the cluster as ONE broker sees it."""

    cluster_id: str | None
    broker_id: int | None
    controller_id: int | None
    brokers: tuple[BrokerInfo, ...]
    topics: tuple[TopicInfo, ...]
    controller_url: str | None = None
    moves: tuple[MoveInfo, ...] = ()

    @property
    def from_controller(self) -> bool:
        """True when the answering broker is the controller (only its answer has move progress and
        heartbeat ages)."""
        return self.broker_id is not None and self.broker_id == self.controller_id

    def broker(self, broker_id: int) -> BrokerInfo | None:
        return next((b for b in self.brokers if b.broker_id == broker_id), None)

    def topic(self, name: str) -> TopicInfo | None:
        return next((t for t in self.topics if t.name == name), None)


# --- parsing (pure; raises UnexpectedResponse on a shape that is not the documented one) ---------------


def _opt_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise UnexpectedResponse(f"{what} is not an integer", field=what)
    return value


def _req_int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise UnexpectedResponse(f"{what} is missing or not an integer", field=what)
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or any(type(v) is not int for v in value):
        raise UnexpectedResponse(f"{what} is not a list of integers", field=what)
    return tuple(value)


# The controller's fields (docs/api.md: broker state, partition target/epoch/voters, moves) are read leniently:
# a value of the wrong type counts as unknown instead of failing the whole answer, because the same answer
# feeds the leader lookups of every producer and consumer (ClusterView.update), and those must keep working
# whatever a newer or older broker adds.


def _loose_int(value: Any) -> int | None:
    return value if type(value) is int else None


def _loose_float(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _loose_ids(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list | tuple) or any(type(v) is not int for v in value):
        return None
    return tuple(value)


def parse_partition(topic: str, raw: Any) -> PartitionInfo:
    """Decode one partition object of a topic. Raises UnexpectedResponse."""
    if not isinstance(raw, Mapping):
        raise UnexpectedResponse("partition entry is not an object", topic=topic)
    role = raw.get("role")
    return PartitionInfo(
        topic=topic,
        partition=_req_int(raw.get("partition"), "partition"),
        leader_id=_opt_int(raw.get("leader_id"), "leader_id"),
        leader_epoch=_opt_int(raw.get("leader_epoch"), "leader_epoch"),
        replicas=_int_tuple(raw.get("replicas"), "replicas"),
        isr=_int_tuple(raw.get("isr"), "isr"),
        commit_index=_opt_int(raw.get("commit_index"), "commit_index"),
        applied_index=_opt_int(raw.get("applied_index"), "applied_index"),
        log_start_offset=_opt_int(raw.get("log_start_offset"), "log_start_offset"),
        high_watermark=_opt_int(raw.get("high_watermark"), "high_watermark"),
        role=role if isinstance(role, str) else None,
        target=_loose_ids(raw.get("target")),
        partition_epoch=_loose_int(raw.get("partition_epoch")),
        voters=_loose_ids(raw.get("voters")) or (),
    )


def parse_topic(raw: Any) -> TopicInfo:
    """Decode one topic object (as in ``/v1/metadata``, ``/v1/topics``). Raises UnexpectedResponse."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise UnexpectedResponse("topic entry is not an object with a name")
    name = raw["name"]
    raw_partitions = raw.get("partitions") or []
    if not isinstance(raw_partitions, list):
        raise UnexpectedResponse("topic partitions is not a list", topic=name)
    partitions = sorted((parse_partition(name, p) for p in raw_partitions), key=lambda p: p.partition)
    if [p.partition for p in partitions] != list(range(len(partitions))):
        raise UnexpectedResponse("topic partitions are not numbered 0..n-1", topic=name)
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        raise UnexpectedResponse("topic config is not an object", topic=name)
    return TopicInfo(
        name=name,
        topic_id=_opt_int(raw.get("topic_id"), "topic_id"),
        replication_factor=_opt_int(raw.get("replication_factor"), "replication_factor"),
        partitions=tuple(partitions),
        config=dict(config),
    )


def parse_broker(item: Any) -> BrokerInfo:
    """Decode one broker object (as in ``/v1/metadata`` and the drain answers). Raises UnexpectedResponse."""
    if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
        raise UnexpectedResponse("broker entry is not an object with a url")
    try:
        url = normalize_url(item["url"])
    except ValueError as exc:
        raise UnexpectedResponse(str(exc)) from None
    peer, rack, state, voter = item.get("peer"), item.get("rack"), item.get("state"), item.get("metadata_voter")
    return BrokerInfo(
        broker_id=_req_int(item.get("id"), "broker id"),
        url=url,
        peer=peer if isinstance(peer, str) else None,
        state=state if isinstance(state, str) else "alive",
        rack=rack if isinstance(rack, str) else None,
        incarnation=_loose_int(item.get("incarnation")),
        metadata_voter=voter if isinstance(voter, bool) else None,
        replicas=_loose_int(item.get("replicas")),
        leaders=_loose_int(item.get("leaders")),
        heartbeat_age_s=_loose_float(item.get("heartbeat_age_s")),
    )


def parse_move(raw: Any) -> MoveInfo | None:
    """Decode one ``moves`` entry; None when it lacks the topic, partition or replica sets."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("topic"), str):
        return None
    partition, replicas, target = _loose_int(raw.get("partition")), _loose_ids(raw.get("replicas")), \
        _loose_ids(raw.get("target"))
    if partition is None or replicas is None or target is None:
        return None
    reason, progress = raw.get("reason"), raw.get("progress")
    return MoveInfo(
        topic=raw["topic"], partition=partition, replicas=replicas, target=target,
        reason=reason if isinstance(reason, str) else None,
        adding=_loose_int(raw.get("adding")), removing=_loose_int(raw.get("removing")),
        running_s=_loose_float(raw.get("running_s")),
        progress=MoveProgress(_loose_int(progress.get("broker")), _loose_int(progress.get("match_index")),
                              _loose_int(progress.get("leader_last_index")))
        if isinstance(progress, Mapping) else None,
    )


def parse_metadata(raw: Any) -> ClusterMetadata:
    """Decode a ``GET /v1/metadata`` body. Raises UnexpectedResponse."""
    if not isinstance(raw, Mapping):
        raise UnexpectedResponse("metadata response is not an object")
    raw_brokers = raw.get("brokers")
    raw_topics = raw.get("topics") or []
    if not isinstance(raw_brokers, list) or not isinstance(raw_topics, list):
        raise UnexpectedResponse("metadata response needs lists 'brokers' and 'topics'")
    cluster_id, controller_url, raw_moves = raw.get("cluster_id"), raw.get("controller_url"), raw.get("moves")
    try:
        controller_url = normalize_url(controller_url) if isinstance(controller_url, str) else None
    except ValueError:
        controller_url = None
    moves = [parse_move(m) for m in raw_moves] if isinstance(raw_moves, list) else []
    return ClusterMetadata(
        cluster_id=cluster_id if isinstance(cluster_id, str) else None,
        broker_id=_opt_int(raw.get("broker_id"), "broker_id"),
        controller_id=_opt_int(raw.get("controller_id"), "controller_id"),
        brokers=tuple(parse_broker(b) for b in raw_brokers),
        topics=tuple(parse_topic(t) for t in raw_topics),
        controller_url=controller_url,
        moves=tuple(m for m in moves if m is not None),
    )


# --- the view ---------------------------------------------------------------------------------------------


def _newer_or_equal(new_epoch: int | None, old_epoch: int | None) -> bool:
    """Whether information at ``new_epoch`` may replace information at ``old_epoch`` (None = unknown)."""
    return old_epoch is None or (new_epoch is not None and new_epoch >= old_epoch)


class ClusterView:
    """The client's cached view of brokers and partition leaders. Not thread-safe; one event loop owns it.

    Args:
        bootstrap_urls: broker client URLs to start from; kept as fallbacks after metadata arrives.
        max_age_ms: after this long without a successful update the view counts as stale.

    Raises:
        ValueError: no bootstrap URL, or one that is not http(s).
    """

    def __init__(self, bootstrap_urls: Sequence[str], *,
                 max_age_ms: int = limits.client_metadata_max_age_ms) -> None:
        if isinstance(bootstrap_urls, str):
            bootstrap_urls = [bootstrap_urls]
        urls = list(dict.fromkeys(normalize_url(u) for u in bootstrap_urls))
        if not urls:
            raise ValueError("at least one bootstrap URL is needed")
        if max_age_ms <= 0:
            raise ValueError("max_age_ms must be > 0")
        self.bootstrap_urls: tuple[str, ...] = tuple(urls)
        self.max_age_ms = max_age_ms
        self.cluster_id: str | None = None
        self.controller_id: int | None = None
        # The controller's URL as the last answer named it (used when its id is not in the broker list).
        self._controller_url: str | None = None
        self._brokers: dict[int, str] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._updated_at_s: float | None = None
        self._stale = True
        # Bumped on every change; lets concurrent refreshers see that someone else already refreshed.
        self.version = 0
        # The URL that answered last: asked first next time.
        self._preferred_url: str | None = None

    # -- reads ------------------------------------------------------------------------------------

    @property
    def brokers(self) -> Mapping[int, str]:
        """broker id -> client URL (a copy)."""
        return dict(self._brokers)

    @property
    def topics(self) -> Mapping[str, TopicInfo]:
        """topic name -> TopicInfo (a copy)."""
        return dict(self._topics)

    def topic(self, topic: str) -> TopicInfo | None:
        return self._topics.get(topic)

    def partition_count(self, topic: str) -> int | None:
        """Number of partitions of ``topic``, or None when the view does not know the topic."""
        info = self._topics.get(topic)
        return None if info is None else len(info.partitions)

    def partition(self, topic: str, partition: int) -> PartitionInfo | None:
        info = self._topics.get(topic)
        if info is None or not 0 <= partition < len(info.partitions):
            return None
        return info.partitions[partition]

    def leader_id(self, topic: str, partition: int) -> int | None:
        part = self.partition(topic, partition)
        return None if part is None else part.leader_id

    def leader_url(self, topic: str, partition: int) -> str | None:
        """Client URL of the partition leader, or None when the topic, the leader or its URL is unknown."""
        leader = self.leader_id(topic, partition)
        return None if leader is None else self._brokers.get(leader)

    def broker_url(self, broker_id: int) -> str | None:
        return self._brokers.get(broker_id)

    def broker_id_for_url(self, url: str) -> int | None:
        """Reverse lookup (the produce answer does not name the broker that acknowledged)."""
        for broker_id, broker_url in self._brokers.items():
            if broker_url == url:
                return broker_id
        return None

    def controller_url(self) -> str | None:
        if self.controller_id is not None and self.controller_id in self._brokers:
            return self._brokers[self.controller_id]
        return self._controller_url

    def replica_urls(self, topic: str, partition: int) -> list[str]:
        """Client URLs of the partition's replicas (those whose URL is known), in replica order."""
        part = self.partition(topic, partition)
        if part is None:
            return []
        return [url for url in (self._brokers.get(b) for b in part.replicas) if url is not None]

    def leaderless_partitions(self) -> int:
        """How many known partitions have no leader in this view (a refresh should ask another broker)."""
        return sum(1 for topic in self._topics.values() for part in topic.partitions if part.leader_id is None)

    def candidate_urls(self) -> list[str]:
        """URLs to ask for metadata, best first: the last one that answered, known brokers, bootstrap."""
        urls: list[str] = []
        if self._preferred_url is not None:
            urls.append(self._preferred_url)
        urls.extend(self._brokers.values())
        urls.extend(self.bootstrap_urls)
        return list(dict.fromkeys(urls))

    def is_stale(self, now_s: float) -> bool:
        """True before the first update, after :meth:`mark_stale`, or when older than ``max_age_ms``."""
        if self._stale or self._updated_at_s is None:
            return True
        return (now_s - self._updated_at_s) * 1000.0 >= self.max_age_ms

    # -- writes ------------------------------------------------------------------------------------

    def mark_stale(self) -> None:
        """Called on errors flagged ``refresh_metadata``: the next user refreshes before going on."""
        self._stale = True

    def update(self, response: Any, *, now_s: float, source_url: str | None = None) -> ClusterMetadata:
        """Apply a decoded ``GET /v1/metadata`` body.

        Brokers and the topic list are replaced by the response's; a partition keeps the leader it has
        when the response's ``leader_epoch`` is older (a lagging broker's view).

        Raises:
            UnexpectedResponse: the body does not have the documented shape (the view is unchanged).
        """
        parsed = parse_metadata(response)
        self.cluster_id = parsed.cluster_id
        self.controller_id = parsed.controller_id
        self._controller_url = parsed.controller_url
        if parsed.brokers:
            self._brokers = {b.broker_id: b.url for b in parsed.brokers}
        topics: dict[str, TopicInfo] = {}
        for new in parsed.topics:
            old = self._topics.get(new.name)
            topics[new.name] = new if old is None else self._merge_topic(old, new, parsed.broker_id)
        self._topics = topics
        self._updated_at_s = now_s
        self._stale = False
        if source_url is not None:
            self._preferred_url = normalize_url(source_url)
        self.version += 1
        return parsed

    def merge_topic(self, raw: Any, *, source_url: str | None = None) -> None:
        """Apply one topic as ``GET /v1/topics/{name}`` describes it (``raw`` is its ``topic`` field), merged with
        the view's by leader epoch like :meth:`update`; the rest of the view is unchanged.

        Raises:
            UnexpectedResponse: the body does not have the documented shape (the view is unchanged).
        """
        new = parse_topic(raw)
        source = self.broker_id_for_url(source_url) if source_url is not None else None
        old = self._topics.get(new.name)
        self._topics[new.name] = new if old is None else self._merge_topic(old, new, source)
        self.version += 1

    @staticmethod
    def _merge_topic(old: TopicInfo, new: TopicInfo, source_broker_id: int | None) -> TopicInfo:
        """Keep the better leader of each partition: a newer epoch wins; at the same epoch a known leader
        is kept over "no leader" unless the answer comes from that leader itself (it says "not me": a
        leader that lost its majority stops advertising itself)."""
        if old.topic_id is not None and new.topic_id is not None and old.topic_id != new.topic_id:
            return new  # deleted and re-created: nothing of the old one applies
        if len(old.partitions) != len(new.partitions):
            return new
        merged = []
        for old_part, new_part in zip(old.partitions, new.partitions, strict=True):
            if old_part.leader_id is not None:
                if new_part.leader_id is None:
                    strictly_newer = (new_part.leader_epoch is not None and old_part.leader_epoch is not None
                                      and new_part.leader_epoch > old_part.leader_epoch)
                    keep_old = not strictly_newer and old_part.leader_id != source_broker_id
                else:
                    keep_old = not _newer_or_equal(new_part.leader_epoch, old_part.leader_epoch)
                if keep_old:
                    new_part = replace(new_part, leader_id=old_part.leader_id, leader_epoch=old_part.leader_epoch)
            merged.append(new_part)
        return replace(new, partitions=tuple(merged))

    def apply_not_leader(self, topic: str, partition: int, details: Mapping[str, Any],
                         *, failed_url: str | None = None) -> str | None:
        """Apply a ``NOT_LEADER`` error's details (``leader_id``, ``leader_url``, ``leader_epoch``) at once.

        Returns the URL to retry at (None: no leader known, refresh metadata first). Details older than
        the view (by epoch) are ignored except that a broker which said "not me" stops being the leader.
        The view is marked stale either way, so the next refresh confirms.
        """
        self._stale = True
        info = self._topics.get(topic)
        leader_id = details.get("leader_id")
        leader_url = details.get("leader_url")
        leader_epoch = details.get("leader_epoch")
        leader_id = leader_id if type(leader_id) is int else None
        leader_epoch = leader_epoch if type(leader_epoch) is int else None
        try:
            leader_url = normalize_url(leader_url) if isinstance(leader_url, str) and leader_url else None
        except ValueError:
            leader_url = None
        if leader_id is not None and leader_url is not None and self._brokers.get(leader_id) != leader_url:
            self._brokers[leader_id] = leader_url
        if leader_url is None and leader_id is not None:
            leader_url = self._brokers.get(leader_id)
        if info is None or not 0 <= partition < len(info.partitions):
            return leader_url
        current = info.partitions[partition]
        if _newer_or_equal(leader_epoch, current.leader_epoch) or leader_epoch is None:
            epoch = leader_epoch if leader_epoch is not None else current.leader_epoch
            new_part = replace(current, leader_id=leader_id, leader_epoch=epoch)
        elif (failed_url is not None
              and self._brokers.get(current.leader_id or -1) == normalize_url(failed_url)):
            # Old details, but the broker we believed to lead says it does not: forget it.
            new_part = replace(current, leader_id=None)
            leader_url = None
        else:
            return self.leader_url(topic, partition)
        parts = list(info.partitions)
        parts[partition] = new_part
        self._topics[topic] = replace(info, partitions=tuple(parts))
        self.version += 1
        return leader_url

    def forget_topics(self, names: Iterable[str]) -> None:
        """Drop topics (after a delete), so the next user refreshes instead of using them."""
        for name in names:
            self._topics.pop(name, None)
        self.version += 1
