"""Cluster metadata: topics, their configuration and replica sets, and producer-id allocation.

``MetadataState`` is the state machine of the metadata Raft group (replicated on every broker). It is pure:
``apply`` takes a decoded command and returns a result (or an error instance, never raised, so every
replica reaches the same state whatever the outcome). Validation of a request happens before it is
proposed (``parse_create_topic``, then the controller's placement and ``create_topic_payload``), so a bad
request never reaches the log; ``apply`` re-checks only what depends on the state at apply time (does the
topic exist?). Placement itself is ``cluster/placement.py``.

No I/O here.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import msgpack
from raftmq.cluster import limits
from raftmq.cluster.commands import MetadataOp
from raftmq.cluster.dead_lettering import DeadLetterTarget, GroupDeadLetters, parse_dead_letter_target
from raftmq.cluster.errors import (
    InvalidConfig,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidRequest,
    InvalidTopic,
    RaftMQError,
    StaleBrokerIncarnation,
    TopicAlreadyExists,
    UnknownBroker,
    UnknownTopicOrPartition,
)
from raftmq.cluster.exchanges import ExchangeTable

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")  # used with fullmatch: "$" would accept a trailing newline
_CONFIG_KEYS = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "min_insync_replicas",
                "message_ttl_ms")  # integers
_TEXT_CONFIG_KEYS = ("dead_letter_exchange", "dead_letter_routing_key")


@dataclass(frozen=True)
class TopicConfig:
    retention_ms: int = limits.retention_ms_default
    retention_bytes: int = limits.retention_bytes_default
    segment_bytes: int = limits.segment_bytes_default
    segment_ms: int = limits.segment_ms_default
    min_insync_replicas: int = 1
    # A record older than this (its timestamp) is not delivered to share-group consumers (push or pull): it
    # is dead-lettered with reason "expired" (RabbitMQ's per-queue message TTL). Reads by offset (fetch,
    # consumer groups) still return it: the log keeps it until retention. -1: records do not expire.
    message_ttl_ms: int = -1
    # Where this topic's dead records go when neither the push subscription nor the share group names an
    # exchange (cluster/dead_lettering.py); "" routing key: the record's own.
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str = ""

    @property
    def dead_letter(self) -> DeadLetterTarget | None:
        if self.dead_letter_exchange is None:
            return None
        return DeadLetterTarget(self.dead_letter_exchange, self.dead_letter_routing_key)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TopicConfig:
        values: dict[str, Any] = {k: int(v) for k, v in data.items() if k in _CONFIG_KEYS}
        if data.get("dead_letter_exchange") is not None:
            values["dead_letter_exchange"] = str(data["dead_letter_exchange"])
            values["dead_letter_routing_key"] = str(data.get("dead_letter_routing_key") or "")
        return cls(**values)


@dataclass(frozen=True)
class Topic:
    name: str
    topic_id: int
    partitions: int
    replication_factor: int
    replicas: tuple[tuple[int, ...], ...]  # per partition: the committed voters; first = preferred leader
    config: TopicConfig
    created_ms: int
    # Per partition: the replica set an ongoing move heads for (None: no move), why, and how many times the
    # replica set changed (the partition epoch).
    targets: tuple[tuple[int, ...] | None, ...] = ()
    move_reasons: tuple[str | None, ...] = ()
    epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.targets) != self.partitions:  # a topic made without moves (create, old snapshots)
            object.__setattr__(self, "targets", (None,) * self.partitions)
            object.__setattr__(self, "move_reasons", (None,) * self.partitions)
        if len(self.epochs) != self.partitions:
            object.__setattr__(self, "epochs", (0,) * self.partitions)

    def hosted_by(self, partition: int, broker_id: int) -> bool:
        """Whether ``broker_id`` holds (or is getting) a replica: one of the replicas or in a move's target.
        On every produce and fetch (node/replicas.py), so it allocates nothing."""
        target = self.targets[partition]
        return broker_id in self.replicas[partition] or (target is not None and broker_id in target)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "topic_id": self.topic_id, "partitions": self.partitions,
                "replication_factor": self.replication_factor, "replicas": [list(r) for r in self.replicas],
                "config": self.config.to_wire(), "created_ms": self.created_ms,
                "targets": [list(t) if t is not None else None for t in self.targets],
                "move_reasons": list(self.move_reasons), "epochs": list(self.epochs)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Topic:
        targets = data.get("targets") or ()
        return cls(name=data["name"], topic_id=int(data["topic_id"]), partitions=int(data["partitions"]),
                   replication_factor=int(data["replication_factor"]),
                   replicas=tuple(tuple(int(b) for b in r) for r in data["replicas"]),
                   config=TopicConfig.from_wire(data["config"]),
                   created_ms=int(data["created_ms"]),
                   targets=tuple(tuple(int(b) for b in t) if t is not None else None for t in targets),
                   move_reasons=tuple(data.get("move_reasons") or ()),
                   epochs=tuple(int(e) for e in data.get("epochs") or ()))


class BrokerState(enum.StrEnum):
    ALIVE = "alive"        # heartbeating
    FENCED = "fenced"      # missed heartbeats for the session timeout
    DRAINING = "draining"  # asked to leave: its replicas move off
    REMOVED = "removed"    # gone (fenced or drained) and hosts nothing; starting again rejoins it


@dataclass(frozen=True)
class BrokerRecord:
    """A broker as the controller registered it."""

    broker_id: int
    url: str
    peer: str  # host:port of its peer port
    rack: str | None
    incarnation: int
    state: BrokerState = BrokerState.ALIVE
    state_since_ms: int = 0
    kafka: str | None = None  # host:port its Kafka listener advertises (Kafka Metadata lists it)

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.broker_id, "url": self.url, "peer": self.peer, "rack": self.rack,
                "incarnation": self.incarnation, "state": self.state.value, "state_since_ms": self.state_since_ms,
                "kafka": self.kafka}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> BrokerRecord:
        return cls(broker_id=int(data["id"]), url=str(data["url"]), peer=str(data["peer"]),
                   rack=data.get("rack"), incarnation=int(data["incarnation"]), state=BrokerState(data["state"]),
                   state_since_ms=int(data.get("state_since_ms", 0)), kafka=data.get("kafka"))


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
    unknown = sorted(set(raw) - set(_CONFIG_KEYS) - set(_TEXT_CONFIG_KEYS))
    if unknown:
        raise InvalidConfig(f"unknown config keys: {', '.join(map(str, unknown))}", keys=unknown,
                            known=[*_CONFIG_KEYS, *_TEXT_CONFIG_KEYS])
    values: dict[str, Any] = {}
    try:
        dead_letter = parse_dead_letter_target(raw.get("dead_letter_exchange"), raw.get("dead_letter_routing_key"))
    except RaftMQError as exc:
        raise InvalidConfig(exc.message, key=exc.details.get("field", "dead_letter_exchange")) from None
    if dead_letter is not None:
        values.update(dead_letter_exchange=dead_letter.exchange, dead_letter_routing_key=dead_letter.routing_key)
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
    if not limits.segment_bytes_min <= config.segment_bytes <= limits.segment_bytes_max:
        raise InvalidConfig(f"segment_bytes must be between {limits.segment_bytes_min} and {limits.segment_bytes_max}",
                            key="segment_bytes")
    if config.message_ttl_ms != -1 and config.message_ttl_ms < 1:
        raise InvalidConfig("message_ttl_ms must be -1 (records do not expire) or at least 1", key="message_ttl_ms")
    if config.segment_ms < 1:
        raise InvalidConfig("segment_ms must be at least 1", key="segment_ms")
    if not quorum <= config.min_insync_replicas <= replication_factor:
        raise InvalidConfig(
            f"min_insync_replicas must be between {quorum} (a Raft majority, which acks=all always needs) "
            f"and the replication factor {replication_factor}", key="min_insync_replicas")
    return config


@dataclass(frozen=True)
class CreateTopicRequest:
    """A create-topic request whose fields have the right types and ranges (``parse_create_topic``); the
    controller decides the replication factor default and the replicas, and checks the config against them."""

    name: str
    partitions: int
    replication_factor: int | None  # None: the controller's default
    config: Mapping[str, Any]


def parse_create_topic(body: Any) -> CreateTopicRequest:
    """Validate the shape of a create-topic request (HTTP body, or a Kafka CreateTopics entry mapped to it)."""
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
    replication_factor = body.get("replication_factor")
    if replication_factor is not None and type(replication_factor) is not int:
        raise InvalidRequest("replication_factor must be an integer", field="replication_factor")
    config = body.get("config")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise InvalidConfig("config must be an object")
    return CreateTopicRequest(name, partitions, replication_factor, dict(config))


@dataclass(frozen=True)
class AlterTopicRequest:
    partitions: int | None
    replication_factor: int | None


def parse_alter_topic(body: Any) -> AlterTopicRequest:
    """Validate the shape of an alter-topic request (PATCH /v1/topics/{topic})."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body must be an object")
    unknown = sorted(set(body) - {"partitions", "replication_factor"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}", fields=unknown)
    partitions = body.get("partitions")
    replication_factor = body.get("replication_factor")
    if partitions is None and replication_factor is None:
        raise InvalidRequest("give partitions and/or replication_factor")
    if partitions is not None and (type(partitions) is not int
                                   or not 1 <= partitions <= limits.partitions_per_topic_max):
        raise InvalidPartitions(f"partitions must be an integer between 1 and {limits.partitions_per_topic_max}")
    if replication_factor is not None and (type(replication_factor) is not int or replication_factor < 1):
        raise InvalidReplicationFactor("replication_factor must be a positive integer")
    return AlterTopicRequest(partitions, replication_factor)


def create_topic_payload(request: CreateTopicRequest, replicas: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The CREATE_TOPIC command payload for ``request`` placed on ``replicas`` (one replica list per partition,
    preferred leader first); checks the config against the replication factor."""
    replication_factor = len(replicas[0])
    config = parse_topic_config(request.config, replication_factor)
    return {"name": request.name, "partitions": request.partitions, "replication_factor": replication_factor,
            "config": config.to_wire(), "replicas": [list(r) for r in replicas]}


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
    brokers: dict[int, BrokerRecord] = field(default_factory=dict)
    brokers_version: int = 0  # bumped on every broker change
    exchanges: ExchangeTable = field(default_factory=ExchangeTable)  # cluster/exchanges.py
    group_dead_letters: GroupDeadLetters = field(default_factory=GroupDeadLetters)  # cluster/dead_lettering.py

    def apply(self, index: int, op: int, time_ms: int, payload: Mapping[str, Any]) -> Any:
        if op == MetadataOp.CREATE_TOPIC:
            return self._create_topic(index, time_ms, payload)
        if op == MetadataOp.DELETE_TOPIC:
            name = payload.get("name")
            topic = self.topics.pop(name, None) if isinstance(name, str) else None
            if topic is None:
                return UnknownTopicOrPartition(f"topic {name!r} does not exist", topic=name)
            self.topics_version += 1
            self.exchanges.forget_topic(topic.name)
            return {"deleted": topic.name, "topic_id": topic.topic_id}
        if op == MetadataOp.ALLOCATE_PRODUCER_ID:
            name = payload.get("name")
            return self._init_producer(name if isinstance(name, str) else None)
        if op == MetadataOp.REGISTER_BROKER:
            return self._register_broker(time_ms, payload)
        if op == MetadataOp.SET_BROKER_STATE:
            return self._set_broker_state(time_ms, payload)
        if op in _PARTITION_OPS:
            return self._change_topic(op, payload)
        if op == MetadataOp.CREATE_EXCHANGE:
            return self.exchanges.create(time_ms, payload)
        if op == MetadataOp.DELETE_EXCHANGE:
            return self.exchanges.delete(payload)
        if op == MetadataOp.BIND_EXCHANGE:
            return self.exchanges.bind(payload, self.topics.__contains__)
        if op == MetadataOp.UNBIND_EXCHANGE:
            return self.exchanges.unbind(payload)
        if op == MetadataOp.SET_GROUP_DEAD_LETTER:
            return self.group_dead_letters.set(payload)
        return InvalidRequest(f"unknown metadata operation {op}")

    # --- brokers --------------------------------------------------------------------------------

    def _register_broker(self, time_ms: int, payload: Mapping[str, Any]) -> BrokerRecord | RaftMQError:
        broker_id = int(payload["id"])
        known = self.brokers.get(broker_id)
        incarnation = int(payload["incarnation"])
        if known is not None and incarnation < known.incarnation:
            return StaleBrokerIncarnation(f"broker {broker_id} incarnation {incarnation} is older than the "
                                          f"registered {known.incarnation}", broker_id=broker_id)
        state = BrokerState.ALIVE
        if known is not None and known.state is BrokerState.DRAINING:
            state = BrokerState.DRAINING  # a restart does not cancel a drain
        since = known.state_since_ms if known is not None and known.state is state else time_ms
        record = BrokerRecord(broker_id, str(payload["url"]), str(payload["peer"]), payload.get("rack"),
                              incarnation, state, since, payload.get("kafka"))
        if record != known:
            self.brokers[broker_id] = record
            self.brokers_version += 1
        return record

    def _set_broker_state(self, time_ms: int, payload: Mapping[str, Any]) -> BrokerRecord | RaftMQError:
        broker_id = int(payload["id"])
        known = self.brokers.get(broker_id)
        if known is None:
            return UnknownBroker(f"broker {broker_id} is not registered", broker_id=broker_id)
        expected = payload.get("expect")  # compare-and-set: the controller decided on this state
        if expected is not None and known.state.value != expected:
            return InvalidRequest(f"broker {broker_id} is {known.state.value}, not {expected}", broker_id=broker_id,
                                  state=known.state.value)
        state = BrokerState(payload["state"])
        if state is not known.state:
            self.brokers[broker_id] = replace(known, state=state, state_since_ms=time_ms)
            self.brokers_version += 1
        return self.brokers[broker_id]

    # --- partition changes ----------------------------------------------------------------------

    def _change_topic(self, op: int, payload: Mapping[str, Any]) -> Topic | RaftMQError:
        name = payload["name"]
        topic = self.topics.get(name)
        if topic is None or topic.topic_id != int(payload["topic_id"]):
            return UnknownTopicOrPartition(f"topic {name!r} (id {payload['topic_id']}) does not exist", topic=name)
        if op == MetadataOp.CREATE_PARTITIONS:
            added = tuple(tuple(int(b) for b in r) for r in payload["replicas"])
            if int(payload["from"]) != topic.partitions:
                return InvalidPartitions(f"topic {name!r} has {topic.partitions} partitions now", topic=name)
            changed = replace(topic, partitions=topic.partitions + len(added), replicas=topic.replicas + added,
                              targets=topic.targets + (None,) * len(added),
                              move_reasons=topic.move_reasons + (None,) * len(added),
                              epochs=topic.epochs + (0,) * len(added))
        elif op == MetadataOp.SET_REPLICATION_FACTOR:
            changed = replace(topic, replication_factor=int(payload["replication_factor"]))
        else:
            partition = int(payload["partition"])
            if not 0 <= partition < topic.partitions:
                return UnknownTopicOrPartition(f"{name}-{partition} does not exist", topic=name, partition=partition)
            changed = _change_partition(topic, op, partition, payload)
        self.topics[name] = changed
        self.topics_version += 1
        return changed

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
                      config=TopicConfig.from_wire(payload["config"]), created_ms=time_ms)
        self.topics[name] = topic
        self.topics_version += 1
        return topic

    def to_bytes(self) -> bytes:
        data: bytes = msgpack.packb({"v": 3, "topics": [t.to_wire() for t in self.topics.values()],
                              "brokers": [b.to_wire() for b in self.brokers.values()],
                              "brokers_version": self.brokers_version,
                              "next_producer_id": self.next_producer_id,
                              "topics_version": self.topics_version,
                              "producer_names": [[name, ids[0], ids[1]] for name, ids in self.producer_names.items()],
                              "fenced_producer_ids": list(self.fenced_producer_ids),
                              "exchanges": self.exchanges.to_wire(), "exchanges_version": self.exchanges.version,
                              "group_dead_letters": self.group_dead_letters.to_wire(),
                              "group_dead_letters_version": self.group_dead_letters.version},
                             use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> MetadataState:
        raw = msgpack.unpackb(data, raw=False)
        topics = {t["name"]: Topic.from_wire(t) for t in raw["topics"]}
        names = OrderedDict((str(name), [int(pid), int(epoch)]) for name, pid, epoch in raw.get("producer_names", []))
        fenced = OrderedDict((int(pid), None) for pid in raw.get("fenced_producer_ids", []))
        brokers = {int(b["id"]): BrokerRecord.from_wire(b) for b in raw.get("brokers", [])}
        return cls(topics=topics, next_producer_id=int(raw["next_producer_id"]),
                   topics_version=int(raw.get("topics_version", 0)), producer_names=names,
                   fenced_producer_ids=fenced, brokers=brokers, brokers_version=int(raw.get("brokers_version", 0)),
                   exchanges=ExchangeTable.from_wire(raw.get("exchanges", ()), int(raw.get("exchanges_version", 0))),
                   group_dead_letters=GroupDeadLetters.from_wire(raw.get("group_dead_letters", ()),
                                                                 int(raw.get("group_dead_letters_version", 0))))


_PARTITION_OPS = frozenset({MetadataOp.CREATE_PARTITIONS, MetadataOp.SET_REPLICATION_FACTOR,
                            MetadataOp.BEGIN_REASSIGNMENT, MetadataOp.SET_PARTITION_REPLICAS,
                            MetadataOp.END_REASSIGNMENT})


def _with(values: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return values[:index] + (value,) + values[index + 1:]


def _change_partition(topic: Topic, op: int, partition: int, payload: Mapping[str, Any]) -> Topic:
    if op == MetadataOp.BEGIN_REASSIGNMENT:
        target = tuple(int(b) for b in payload["target"])
        return replace(topic, targets=_with(topic.targets, partition, target),
                       move_reasons=_with(topic.move_reasons, partition, str(payload.get("reason", "admin"))))
    if op == MetadataOp.SET_PARTITION_REPLICAS:
        replicas = tuple(int(b) for b in payload["replicas"])
        if replicas == topic.replicas[partition]:
            return topic
        return replace(topic, replicas=_with(topic.replicas, partition, replicas),
                       epochs=_with(topic.epochs, partition, topic.epochs[partition] + 1))
    # END_REASSIGNMENT: the move is over; the replicas take the target's order (its first is the preferred
    # leader) when they are the target's members.
    heading = topic.targets[partition]
    current = topic.replicas[partition]
    if heading is not None and set(heading) == set(current) and heading != current:
        topic = replace(topic, replicas=_with(topic.replicas, partition, heading))
    return replace(topic, targets=_with(topic.targets, partition, None),
                   move_reasons=_with(topic.move_reasons, partition, None))
