"""The broker process: every side effect of raftmq lives here (disk, sockets, threads, clocks).

What this room owns, and where (README "Architecture" draws the data path):

* ``broker.py``: the composition root (start/stop of one broker); ``replicas.py``: the partition replicas
  this broker hosts (open, close, reconcile with metadata, housekeeping); ``service.py``: the protocol-neutral
  operations every listener calls (produce, fetch, offsets, topic admin, describe); ``controller.py``:
  decisions made by the metadata leader (placement); ``api.py`` and ``http_server.py``: the HTTP listener;
  ``kafka_api.py`` and ``kafka_listener.py``: the Kafka-protocol listener (the same service operations).
* ``groups.py``: the replication-group protocol the rest of the broker depends on; ``replication.py`` and
  ``raft_transport.py`` implement it over pysyncobj (the only modules that import it), ``memory_groups.py``
  in memory (deterministic, for tests); ``prevote.py``, ``peer_protocol.py``, ``journal.py`` help them.
* ``partition.py``, ``metadata_sm.py``: the state machines; ``log.py``, ``segment.py``, ``fsutil.py``: storage.

Public surface (what deploy/, chaos/ and the CLI may use): the config names below. Everything else is
internal to the broker. May import: ``raftmq.cluster``, aiohttp, msgpack, pysyncobj (two modules only).
"""

from __future__ import annotations

from raftmq.node.config import (
    BrokerEntry,
    Durability,
    Liveness,
    NodeConfig,
    PeerAddress,
    RaftTimers,
    load_config,
    parse_config,
    render_config,
)

__all__ = ["BrokerEntry", "Durability", "Liveness", "NodeConfig", "PeerAddress", "RaftTimers", "load_config",
           "parse_config",           "render_config"]
