"""Running brokers: the local N-node cluster harness (``local_cluster.py``: configs, data folders, processes,
readiness), an example node config with every key explained, and a systemd unit for separate hosts.

May import: ``raftmq.node`` (its public config names only, never a node module) and ``raftmq.cluster``.
"""
