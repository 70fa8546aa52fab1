"""The operations of a broker, as plain values: what every listener (HTTP today, the Kafka protocol next)
hands to ``node/service.py`` and gets back.

Requests are built by a listener's decoder after it has checked the fields; results are frozen dataclasses
that each listener encodes its own way (``to_wire`` gives the HTTP API's shape, docs/api.md). Errors are
the coded ``RaftMQError``s of ``cluster/errors.py``, raised by the service.

Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from raftmq.cluster.wire import Acks
from raftmq.node.stages import StageTrace

OffsetSpec = Literal["earliest", "latest"] | int  # an int is a timestamp in ms


@dataclass(frozen=True)
class ProduceRequest:
    topic: str
    partition: int
    batch: bytes  # a record batch (cluster/batch.py), not yet validated
    acks: Acks
    timeout_ms: int
    # Per-stage timestamps (node/stages.py); set by the listener for acks=all, None = not measured.
    trace: StageTrace | None = None


@dataclass(frozen=True)
class ProduceResult:
    topic: str
    partition: int
    broker_id: int
    acks: Acks
    base_offset: int | None  # acks=all only
    record_count: int
    leader_epoch: int
    raft_index: int | None  # acks=1 and acks=all
    duplicate: bool
    log_append_time_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "broker_id": self.broker_id,
                "acks": self.acks.wire, "base_offset": self.base_offset, "record_count": self.record_count,
                "leader_epoch": self.leader_epoch, "raft_index": self.raft_index, "duplicate": self.duplicate,
                "log_append_time_ms": self.log_append_time_ms}


@dataclass(frozen=True)
class FetchRequest:
    topic: str
    partition: int
    offset: int
    max_bytes: int
    max_wait_ms: int
    any_replica: bool = False


@dataclass(frozen=True)
class FetchResult:
    topic: str
    partition: int
    batches: bytes  # whole stored batches, the first one holding ``offset`` (it may start before it)
    high_watermark: int
    log_start_offset: int


@dataclass(frozen=True)
class OffsetRequest:
    topic: str
    partition: int
    at: OffsetSpec
    any_replica: bool = False


@dataclass(frozen=True)
class OffsetResult:
    topic: str
    partition: int
    offset: int | None  # None: no record at or after the timestamp
    log_start_offset: int
    high_watermark: int

    def to_wire(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "log_start_offset": self.log_start_offset, "high_watermark": self.high_watermark}


@dataclass(frozen=True)
class ProducerIdentity:
    producer_id: int
    producer_epoch: int

    def to_wire(self) -> dict[str, Any]:
        return {"producer_id": self.producer_id, "producer_epoch": self.producer_epoch}


@dataclass(frozen=True)
class DeletedTopic:
    name: str
    topic_id: int

    def to_wire(self) -> dict[str, Any]:
        return {"deleted": self.name, "topic_id": self.topic_id}


@dataclass(frozen=True)
class PartitionDescription:
    """A partition as this broker sees it: the assignment, and this broker's local Raft view of it."""

    partition: int
    replicas: tuple[int, ...]
    hosted: bool = False  # this broker has the replica open; the fields below are meaningful only then
    leader_id: int | None = None  # None while no leader is known or the local leader has no quorum
    target: tuple[int, ...] | None = None  # where an ongoing move heads
    partition_epoch: int = 0
    voters: tuple[int, ...] = ()
    leader_epoch: int | None = None
    role: str | None = None
    quorum: bool = False
    isr: tuple[int, ...] = ()
    commit_index: int | None = None
    applied_index: int | None = None
    last_index: int | None = None
    match_index: tuple[tuple[int, int], ...] = ()
    log_start_offset: int | None = None
    high_watermark: int | None = None
    size_bytes: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"partition": self.partition, "replicas": list(self.replicas),
                                "target": list(self.target) if self.target is not None else None,
                                "partition_epoch": self.partition_epoch, "voters": list(self.voters),
                                "leader_id": self.leader_id, "leader_epoch": self.leader_epoch,
                                "isr": list(self.isr), "role": self.role, "commit_index": self.commit_index,
                                "applied_index": self.applied_index, "log_start_offset": self.log_start_offset,
                                "high_watermark": self.high_watermark}
        if self.hosted:
            wire.update(quorum=self.quorum, last_index=self.last_index,
                        match_index={str(k): v for k, v in self.match_index}, size_bytes=self.size_bytes)
        return wire


@dataclass(frozen=True)
class TopicDescription:
    name: str
    topic_id: int
    replication_factor: int
    config: dict[str, int]
    created_ms: int
    partitions: tuple[PartitionDescription, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "topic_id": self.topic_id, "replication_factor": self.replication_factor,
                "replicas": [list(p.replicas) for p in self.partitions], "config": dict(self.config),
                "created_ms": self.created_ms, "partitions": [p.to_wire() for p in self.partitions],
                "partition_count": len(self.partitions)}


@dataclass(frozen=True)
class BrokerDescription:
    broker_id: int
    url: str
    peer: str
    connected: bool
    state: str | None = None  # alive | fenced | draining | removed (None: not registered yet)
    rack: str | None = None
    incarnation: int | None = None
    metadata_voter: bool = False
    replicas: int = 0
    leaders: int = 0
    heartbeat_age_s: float | None = None  # known on the controller only
    kafka: str | None = None  # its Kafka listener's advertised host:port, when this broker's config knows it

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.broker_id, "url": self.url, "peer": self.peer, "connected": self.connected,
                "state": self.state, "rack": self.rack, "incarnation": self.incarnation,
                "metadata_voter": self.metadata_voter, "replicas": self.replicas, "leaders": self.leaders,
                "heartbeat_age_s": self.heartbeat_age_s, "kafka": self.kafka}


@dataclass(frozen=True)
class ClusterDescription:
    cluster_id: str
    broker_id: int
    controller_id: int | None
    metadata_term: int | None
    metadata_commit_index: int | None
    metadata_applied_index: int | None
    metadata_ready: bool
    peer_links: tuple[dict[str, Any], ...]
    brokers: tuple[BrokerDescription, ...]
    topics: tuple[TopicDescription, ...]
    controller_url: str | None = None
    metadata_voter: bool = True
    moves: tuple[dict[str, Any], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "broker_id": self.broker_id, "controller_id": self.controller_id,
                "controller_url": self.controller_url,
                "metadata": {"term": self.metadata_term, "commit_index": self.metadata_commit_index,
                             "applied_index": self.metadata_applied_index, "ready": self.metadata_ready,
                             "voter": self.metadata_voter},
                "peer_links": [dict(link) for link in self.peer_links],
                "brokers": [b.to_wire() for b in self.brokers], "topics": [t.to_wire() for t in self.topics],
                "moves": [dict(m) for m in self.moves]}


@dataclass(frozen=True)
class Health:
    ok: bool
    broker_id: int
    cluster_id: str
    ready: bool
    partitions: int
    uptime_s: float
    durability: str

    def to_wire(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "degraded", "broker_id": self.broker_id,
                "cluster_id": self.cluster_id, "ready": self.ready, "partitions": self.partitions,
                "uptime_s": round(self.uptime_s, 1), "durability": self.durability}


__all__ = ["BrokerDescription", "ClusterDescription", "DeletedTopic", "FetchRequest", "FetchResult", "Health",
           "OffsetRequest", "OffsetResult", "OffsetSpec", "PartitionDescription", "ProduceRequest", "ProduceResult",
           "ProducerIdentity", "TopicDescription"]
