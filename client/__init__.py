"""raftmq's Python client: asyncio ``Producer``, ``Consumer``, ``GroupConsumer``, ``Admin``, and blocking
``Sync*`` wrappers.

The client depends only on ``cluster/`` (errors, batch format, routing, limits), never on ``node/``.
Every error a call can raise is a :class:`RaftMQError` (re-exported here); ``error.definite`` False means
the operation may or may not have happened (timeouts, dropped connections, ``OUTCOME_UNKNOWN``).

    async with Producer(["http://127.0.0.1:9101"]) as producer:
        report = await producer.send_and_wait("orders", b"hello", key=b"user-1")

    async with Consumer(["http://127.0.0.1:9101"]) as consumer:
        consumer.assign([("orders", 0)])
        records = await consumer.poll(timeout_ms=1000)
"""

from __future__ import annotations

from raftmq.client.admin import Admin
from raftmq.client.connection import Connection, MetadataFetcher
from raftmq.client.consumer import Consumer
from raftmq.client.exactly_once import ExactlyOnceProcessor
from raftmq.client.group_consumer import GroupConsumer
from raftmq.client.metadata import (
    BrokerInfo,
    ClusterMetadata,
    ClusterView,
    MoveInfo,
    MoveProgress,
    PartitionInfo,
    TopicInfo,
)
from raftmq.client.producer import Producer
from raftmq.client.publisher import ExchangePublisher, PublishReceipt
from raftmq.client.push_consumer import GroupPushConsumer, PushConsumer, PushRecord
from raftmq.client.share_consumer import ShareConsumer, ShareRecord
from raftmq.client.sync import SyncAdmin, SyncConsumer, SyncGroupConsumer, SyncProducer
from raftmq.client.types import (
    ConsumerRecord,
    DeliveryReport,
    DeliveryStatus,
    HealthInfo,
    OffsetInfo,
    ProducerCounters,
    TopicPartition,
)
from raftmq.cluster.errors import (
    BufferExhausted,
    ClientTimeout,
    ConnectionFailed,
    CorruptBatch,
    NotLeader,
    OffsetOutOfRange,
    ProducerClosed,
    RaftMQError,
    RecordTooLarge,
    UnexpectedResponse,
    UnknownTopicOrPartition,
    error_from_wire,
)

__all__ = [
    "Admin",
    "BrokerInfo",
    "BufferExhausted",
    "ClientTimeout",
    "ClusterMetadata",
    "ClusterView",
    "Connection",
    "ConnectionFailed",
    "Consumer",
    "ConsumerRecord",
    "CorruptBatch",
    "DeliveryReport",
    "ExchangePublisher",
    "DeliveryStatus",
    "ExactlyOnceProcessor",
    "GroupConsumer",
    "HealthInfo",
    "MetadataFetcher",
    "MoveInfo",
    "MoveProgress",
    "NotLeader",
    "OffsetInfo",
    "OffsetOutOfRange",
    "PartitionInfo",
    "Producer",
    "PublishReceipt",
    "GroupPushConsumer",
    "PushConsumer",
    "PushRecord",
    "ProducerClosed",
    "ProducerCounters",
    "RaftMQError",
    "RecordTooLarge",
    "ShareConsumer",
    "ShareRecord",
    "SyncAdmin",
    "SyncConsumer",
    "SyncGroupConsumer",
    "SyncProducer",
    "TopicInfo",
    "TopicPartition",
    "UnexpectedResponse",
    "UnknownTopicOrPartition",
    "error_from_wire",
]
