"""The envelope of every replicated command (what a Raft entry carries), and the operations inside it.

An entry's command is ``MAGIC | u8 op | u64 proposal_id | i64 time_ms | payload``:

* ``op`` says which state-machine operation this is (``PartitionOp`` / ``MetadataOp``);
* ``proposal_id`` is unique per proposing broker; the proposer uses it to notice its entry in its own
  journal (acks=1) and nothing else: state machines ignore it, so replay stays deterministic;
* ``time_ms`` is the proposer's wall clock, carried IN the entry so that every replica applies the same
  time (append time, retention decisions, producer expiry) and replay gives the same result;
* ``payload`` is op-specific: a record batch for APPEND, msgpack for metadata operations.

The envelope is plain bytes instead of pysyncobj's pickled method call: pickling 1 MiB batches with protocol 2
costs a latin-1 round trip, and unpickling bytes from the network would let a peer run code.

No I/O here.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

MAGIC: Final = b"RMQ1"
_HEAD = struct.Struct(">4sBQq")
HEAD_BYTES: Final = _HEAD.size  # 21


class PartitionOp(enum.IntEnum):
    APPEND = 1  # payload: a record batch (cluster/batch.py), validated by the leader before proposing


class MetadataOp(enum.IntEnum):
    CREATE_TOPIC = 101
    DELETE_TOPIC = 102
    ALLOCATE_PRODUCER_ID = 103
    REGISTER_BROKER = 104       # a broker starts (id, addresses, rack, incarnation)
    SET_BROKER_STATE = 105      # fence / unfence / draining / alive / removed
    CREATE_PARTITIONS = 106     # raise a topic's partition count
    SET_REPLICATION_FACTOR = 107
    BEGIN_REASSIGNMENT = 108    # a partition gets a target replica set
    SET_PARTITION_REPLICAS = 109  # one membership step committed in the partition's group: its voters now
    END_REASSIGNMENT = 110      # the move is over (target reached or cancelled)
    CREATE_EXCHANGE = 111       # cluster/exchanges.py; a replica that predates these ops answers INVALID_REQUEST
    DELETE_EXCHANGE = 112
    BIND_EXCHANGE = 113         # exchange -> topic binding
    UNBIND_EXCHANGE = 114
    SET_GROUP_DEAD_LETTER = 115  # a share group's dead-letter exchange (cluster/dead_lettering.py), or none


class Command(NamedTuple):
    op: int
    proposal_id: int
    time_ms: int
    payload: memoryview


def encode(op: int, proposal_id: int, time_ms: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(MAGIC, op, proposal_id, time_ms) + payload


def decode(command: bytes) -> Command:
    """Raises ValueError for anything that is not a raftmq command."""
    if len(command) < HEAD_BYTES:
        raise ValueError("command shorter than its envelope")
    magic, op, proposal_id, time_ms = _HEAD.unpack_from(command)
    if magic != MAGIC:
        raise ValueError("not a raftmq command")
    return Command(op, proposal_id, time_ms, memoryview(command)[HEAD_BYTES:])


def proposal_id_of(command: bytes, offset: int = 0) -> int | None:
    """The proposal id of an encoded command starting at ``offset``, or None (cheap, for the acks=1 hook)."""
    if len(command) < offset + HEAD_BYTES or command[offset:offset + 4] != MAGIC:
        return None
    return int.from_bytes(command[offset + 5:offset + 13], "big")
