"""raftmq: a distributed, replicated message broker (Kafka's model, Raft per partition), checked the Jepsen way.

One import name, one room per subpackage; each room's own docstring says what it owns and what it may import:

* ``raftmq.cluster``: pure and shared by every other room (errors, limits, record batches, wire bodies,
  metadata and partition state machines, routing). Imports no I/O module and no other room.
* ``raftmq.client``: the Python client library (Producer, Consumer, Admin, sync wrappers). Imports cluster.
* ``raftmq.node``: the broker process (storage, replication, the service, the HTTP API).
* ``raftmq.chaos``: fault injection and Jepsen-style checking. Treats brokers as black boxes.
* ``raftmq.deploy``: running brokers: the local cluster harness, an example config, a systemd unit.
* ``raftmq.cli``: the ``raftmq`` command: the only room that composes client, chaos, deploy and node.

``tests/unit/test_import_rules.py`` keeps these rules.
"""

__version__ = "0.1.0"
