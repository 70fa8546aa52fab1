"""Where a topic's partition replicas go: a pure decision the controller (``node/controller.py``) makes.

Today every partition is replicated on every broker (the replication factor must equal the broker count);
the preferred leader (the first replica) rotates with the partition number, so leaders spread evenly.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftmq.cluster.errors import InvalidReplicationFactor
from raftmq.cluster.metadata import CreateTopicRequest, create_topic_payload

Assignment = tuple[tuple[int, ...], ...]  # per partition: its replicas, preferred leader first


def assign_replicas(partitions: int, replication_factor: int, broker_ids: Sequence[int]) -> Assignment:
    """Place ``partitions`` partitions of ``replication_factor`` replicas on ``broker_ids``."""
    ordered = sorted(set(broker_ids))
    if replication_factor != len(ordered):
        raise InvalidReplicationFactor(
            f"replication_factor must equal the number of brokers ({len(ordered)}) in this version: every "
            "partition is replicated on every broker", replication_factor=replication_factor,
            brokers=len(ordered))
    return tuple(tuple(ordered[(p + i) % len(ordered)] for i in range(replication_factor))
                 for p in range(partitions))


def plan_create_topic(request: CreateTopicRequest, broker_ids: Sequence[int]) -> dict[str, Any]:
    """The CREATE_TOPIC payload for ``request``: the replication factor defaults to the broker count."""
    replication_factor = request.replication_factor if request.replication_factor is not None else len(broker_ids)
    return create_topic_payload(request, assign_replicas(request.partitions, replication_factor, broker_ids))


__all__ = ["Assignment", "assign_replicas", "plan_create_topic"]
