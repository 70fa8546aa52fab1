"""Value types of the public client API (immutable; NamedTuples where one is built per record, for speed).

No I/O here.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from raftmq.cluster.errors import RaftMQError

DeliveryStatus = Literal["ok", "failed", "unknown"]
AcksSetting = Literal[0, 1, "all", -1]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class DeliveryReport(NamedTuple):
    """The outcome of one ``Producer.send`` (exactly one per send).

    * ``ok``: stored. ``offset`` is the record's offset for ``acks="all"``; None for ``acks=0``/``1``
      (the broker assigns offsets at commit) and for a ``DUPLICATE_SEQUENCE`` answer (stored earlier,
      offset forgotten). ``duplicate`` is True when the broker recognised a retry of a stored batch.
    * ``failed``: certainly NOT stored (every attempt ended with a definite error, or none was sent).
    * ``unknown``: maybe stored (some attempt ended without a definite answer: a timeout, a dropped
      connection, ``OUTCOME_UNKNOWN`` ...) and no later attempt got an answer. Jepsen's ``info``.

    ``error`` is set for ``failed`` and ``unknown``. ``leader_id``/``leader_epoch`` name the broker that
    acknowledged and the Raft term of the entry (``ok`` only; ``leader_id`` may be None if the broker's
    id was not known to the client).
    """

    status: DeliveryStatus
    topic: str
    partition: int
    offset: int | None
    error: RaftMQError | None = None
    leader_id: int | None = None
    leader_epoch: int | None = None
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_status(self) -> DeliveryReport:
        """Return self when ok; else raise ``error`` (a RaftMQError; ``error.definite`` False for unknown)."""
        if self.status != "ok":
            assert self.error is not None
            raise self.error
        return self


class ProducerCounters(NamedTuple):
    """A snapshot of a producer's counters (records unless named otherwise), for the CLI and benchmarks."""

    sent: int  # records accepted by send()
    acked: int  # records resolved ok
    failed: int  # records resolved failed
    unknown: int  # records resolved unknown
    retries: int  # produce requests beyond the first of each batch
    batches: int  # batches sent (first attempts)
    requests: int  # produce requests sent (all attempts)
    producer_id_resets: int  # times a partition moved to a new producer id
    buffered_bytes: int  # bytes waiting or in flight now


class ConsumerRecord(NamedTuple):
    """One record as returned by ``Consumer.poll``. ``headers`` keep their order and may repeat keys."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class OffsetInfo(NamedTuple):
    """An answer of the offsets endpoint. ``offset`` is None for a timestamp after every record."""

    topic: str
    partition: int
    offset: int | None
    log_start_offset: int | None
    high_watermark: int | None


class HealthInfo(NamedTuple):
    """``GET /v1/health``: ``ready`` is False while the broker replays its metadata group."""

    url: str
    status: str
    broker_id: int | None
    ready: bool
