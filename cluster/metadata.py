"""Cluster metadata: topics, their configuration and replica sets, and producer-id allocation.

``MetadataState`` is the state machine of the metadata Raft group (replicated on every broker). It is pure:
``apply`` takes a decoded command and returns a result (or an error instance, never raised, so every
replica reaches the same state whatever the outcome). Validation of a request happens before it is
proposed (``parse_create_topic``), so a bad request never reaches the log; ``apply`` re-checks only what
depends on the state at apply time (does the topic exist?).

For now every partition is replicated on every broker (replication factor = cluster size); placement on a
subset of brokers comes with the controller.

No I/O here.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.errors import (
    InvalidConfig,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidRequest,
    InvalidTopic,
    RaftMQError,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")  # used with fullmatch: "$" would accept a trailing newline
_CONFIG_KEYS = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "min_insync_replicas")
_SEGMENT_BYTES_MAX = 1024 * limits.MIB


@dataclass(frozen=True)
class TopicConfig:
    retention_ms: int = limits.retention_ms_default
    retention_bytes: int = limits.retention_bytes_default
    segment_bytes: int = limits.segment_bytes_default
    segment_ms: int = limits.segment_ms_default
    min_insync_replicas: int = 1

    def to_wire(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Topic:
    name: str
    topic_id: int
    partitions: int
    replication_factor: int
    replicas: tuple[tuple[int, ...], ...]  # per partition; first = preferred leader
    config: TopicConfig
    created_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "topic_id": self.topic_id, "partitions": self.partitions,
                "replication_factor": self.replication_factor, "replicas": [list(r) for r in self.replicas],
                "config": self.config.to_wire(), "created_ms": self.created_ms}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Topic:
        return cls(name=data["name"], topic_id=int(data["topic_id"]), partitions=int(data["partitions"]),
                   replication_factor=int(data["replication_factor"]),
                   replicas=tuple(tuple(int(b) for b in r) for r in data["replicas"]),
                   config=TopicConfig(**{k: int(v) for k, v in data["config"].items() if k in _CONFIG_KEYS}),
                   created_ms=int(data["created_ms"]))


def majority(replication_factor: int) -> int:
    return replication_factor // 2 + 1


def validate_topic_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidTopic("topic name must be a non-empty string")
    if len(name) > limits.topic_name_chars_max:
        raise InvalidTopic(f"topic name longer than {limits.topic_name_chars_max} characters", name=name[:64])
    if name in (".", "..") or not _TOPIC_NAME.fullmatch(name):
        raise InvalidTopic("topic names use only [a-zA-Z0-9._-] and are not '.' or '..'", name=name)
    return name


def _int_field(body: Mapping[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if type(value) is not int:
        raise InvalidRequest(f"{key} must be an integer", field=key)
    return value


def parse_topic_config(raw: Any, replication_factor: int) -> TopicConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidConfig("config must be an object")
    unknown = sorted(set(raw) - set(_CONFIG_KEYS))
    if unknown:
        raise InvalidConfig(f"unknown config keys: {', '.join(map(str, unknown))}", keys=unknown,
                            known=list(_CONFIG_KEYS))
    values: dict[str, int] = {}
    for key in _CONFIG_KEYS:
        if key in raw:
            value = raw[key]
            if type(value) is not int:
                raise InvalidConfig(f"{key} must be an integer", key=key)
            values[key] = value
    config = TopicConfig(**values) if values else TopicConfig()
    quorum = majority(replication_factor)
    config = TopicConfig(**{**asdict(config), "min_insync_replicas": values.get("min_insync_replicas", quorum)})
    if config.retention_ms != -1 and config.retention_ms < 1:
        raise InvalidConfig("retention_ms must be -1 (keep forever) or at least 1", key="retention_ms")
    if config.retention_bytes != -1 and config.retention_bytes < 1:
        raise InvalidConfig("retention_bytes must be -1 (no size limit) or at least 1", key="retention_bytes")
    if not limits.segment_bytes_min <= config.segment_bytes <= _SEGMENT_BYTES_MAX:
        raise InvalidConfig(f"segment_bytes must be between {limits.segment_bytes_min} and {_SEGMENT_BYTES_MAX}",
                            key="segment_bytes")
    if config.segment_ms < 1:
        raise InvalidConfig("segment_ms must be at least 1", key="segment_ms")
    if not quorum <= config.min_insync_replicas <= replication_factor:
        raise InvalidConfig(
            f"min_insync_replicas must be between {quorum} (a Raft majority, which acks=all always needs) "
            f"and the replication factor {replication_factor}", key="min_insync_replicas")
    return config


def assign_replicas(partitions: int, broker_ids: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Every broker replicates every partition; the preferred leader rotates so leaders spread out."""
    ordered = sorted(broker_ids)
    return tuple(tuple(ordered[(p + i) % len(ordered)] for i in range(len(ordered))) for p in range(partitions))


def parse_create_topic(body: Any, broker_ids: Sequence[int]) -> dict[str, Any]:
    """Validate a create-topic request; returns the command payload (replicas decided here)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - {"name", "partitions", "replication_factor", "config"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    name = validate_topic_name(body.get("name"))
    partitions = _int_field(body, "partitions", 1)
    if not 1 <= partitions <= limits.partitions_per_topic_max:
        raise InvalidPartitions(f"partitions must be between 1 and {limits.partitions_per_topic_max}",
                                partitions=partitions)
    broker_count = len(broker_ids)
    replication_factor = _int_field(body, "replication_factor", broker_count)
    if replication_factor != broker_count:
        raise InvalidReplicationFactor(
            f"replication_factor must equal the number of brokers ({broker_count}) in this version: every "
            "partition is replicated on every broker", replication_factor=replication_factor,
            brokers=broker_count)
    config = parse_topic_config(body.get("config"), replication_factor)
    return {"name": name, "partitions": partitions, "replication_factor": replication_factor,
            "config": config.to_wire(), "replicas": [list(r) for r in assign_replicas(partitions, broker_ids)]}


class ProducerCheck(enum.Enum):
    """What the metadata says about the producer id a produce request carries."""

    CURRENT = "current"  # allocated, and no newer instance of its name exists
    FENCED = "fenced"    # allocated, but its name was initialised again since: a newer instance exists
    UNKNOWN = "unknown"  # not allocated (yet, as far as this replica has applied)


def parse_producer_name(body: Any) -> str | None:
    """The optional ``name`` of an init-producer request: a producer that starts again under the same name
    fences the older instance (see MetadataState)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - {"name"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    name = body.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or not 1 <= len(name) <= limits.producer_name_chars_max or not name.isprintable():
        raise InvalidRequest(f"name must be 1-{limits.producer_name_chars_max} printable characters", field="name")
    return name


@dataclass
class MetadataState:
    """Topics and producer ids.

    Producer ids and epochs (Kafka's InitProducerId): an unnamed producer gets a new id at epoch 0. A
    *named* producer (a stable name, like Kafka's transactional.id) that initialises again gets a NEW id
    with the next epoch, and every older id of that name is fenced: partition leaders refuse it with
    PRODUCER_FENCED. The epoch is carried by the id rather than stored beside it in each batch, so the
    partitions' replicated duplicate table (cluster/producer_state.py) needs no epoch and every batch it
    has stored keeps its meaning.
    """

    topics: dict[str, Topic] = field(default_factory=dict)
    next_producer_id: int = 1
    topics_version: int = 0  # bumped on every topic change; lets brokers notice they must reconcile
    # Named producers, least recently initialised first: name -> [current producer id, epoch].
    producer_names: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)
    # Ids superseded by a newer instance of their name, oldest first (bounded by producer_fenced_max).
    fenced_producer_ids: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def apply(self, index: int, op: int, time_ms: int, payload: Mapping[str, Any]) -> Any:
        if op == MetadataOp.CREATE_TOPIC:
            return self._create_topic(index, time_ms, payload)
        if op == MetadataOp.DELETE_TOPIC:
            name = payload.get("name")
            topic = self.topics.pop(name, None) if isinstance(name, str) else None
            if topic is None:
                return UnknownTopicOrPartition(f"topic {name!r} does not exist", topic=name)
            self.topics_version += 1
            return {"deleted": topic.name, "topic_id": topic.topic_id}
        if op == MetadataOp.ALLOCATE_PRODUCER_ID:
            name = payload.get("name")
            return self._init_producer(name if isinstance(name, str) else None)
        return InvalidRequest(f"unknown metadata operation {op}")

    # --- producers ------------------------------------------------------------------------------

    def _init_producer(self, name: str | None) -> dict[str, int]:
        producer_id = self.next_producer_id
        self.next_producer_id += 1
        if name is None:
            return {"producer_id": producer_id, "producer_epoch": 0}
        known = self.producer_names.pop(name, None)
        epoch = 0
        if known is not None:
            self.fenced_producer_ids[known[0]] = None
            while len(self.fenced_producer_ids) > limits.producer_fenced_max:
                self.fenced_producer_ids.popitem(last=False)
            epoch = min(known[1] + 1, limits.producer_epoch_max)
        self.producer_names[name] = [producer_id, epoch]
        while len(self.producer_names) > limits.producer_names_max:
            self.producer_names.popitem(last=False)  # its id stays valid; a restart gets epoch 0 again
        return {"producer_id": producer_id, "producer_epoch": epoch}

    def check_producer(self, producer_id: int) -> ProducerCheck:
        """Read-only; safe to call from another thread than the one applying (an int read, a dict lookup)."""
        if not 0 < producer_id < self.next_producer_id:
            return ProducerCheck.UNKNOWN
        if producer_id in self.fenced_producer_ids:
            return ProducerCheck.FENCED
        return ProducerCheck.CURRENT

    # --- topics ---------------------------------------------------------------------------------

    def _create_topic(self, index: int, time_ms: int, payload: Mapping[str, Any]) -> Topic | RaftMQError:
        name = payload["name"]
        if name in self.topics:
            return TopicAlreadyExists(f"topic {name!r} already exists", topic=name)
        if len(self.topics) >= limits.topics_max:
            return InvalidRequest(f"the cluster already has {limits.topics_max} topics (topics_max)")
        topic = Topic(name=name, topic_id=index, partitions=int(payload["partitions"]),
                      replication_factor=int(payload["replication_factor"]),
                      replicas=tuple(tuple(int(b) for b in r) for r in payload["replicas"]),
                      config=TopicConfig(**payload["config"]), created_ms=time_ms)
        self.topics[name] = topic
        self.topics_version += 1
        return topic

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": 1, "topics": [t.to_wire() for t in self.topics.values()],
                              "next_producer_id": self.next_producer_id,
                              "topics_version": self.topics_version,
                              "producer_names": [[name, ids[0], ids[1]] for name, ids in self.producer_names.items()],
                              "fenced_producer_ids": list(self.fenced_producer_ids)},
                             use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> MetadataState:
        raw = msgpack.unpackb(data, raw=False)
        topics = {t["name"]: Topic.from_wire(t) for t in raw["topics"]}
        names = OrderedDict((str(name), [int(pid), int(epoch)]) for name, pid, epoch in raw.get("producer_names", []))
        fenced = OrderedDict((int(pid), None) for pid in raw.get("fenced_producer_ids", []))
        return cls(topics=topics, next_producer_id=int(raw["next_producer_id"]),
                   topics_version=int(raw.get("topics_version", 0)), producer_names=names,
                   fenced_producer_ids=fenced)
