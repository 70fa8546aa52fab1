"""Jepsen-style fault injection and checking, treating brokers as black boxes.

Owns the Toxiproxy-compatible fault proxy (``toxiproxy/``) and its client (``proxy_client.py``), a local
cluster wired through proxies (``harness.py``), declarative scenarios (``scenario.py``, ``scenarios/``),
seeded fault schedules (``nemesis.py``), the workload that records a history (``workload.py``), the pure
checker (``checker.py``), the runner and reports; its tunables are in ``limits.py``.

May import: ``raftmq.cluster``, ``raftmq.client``, ``raftmq.deploy``, and ``raftmq.node`` (its public config
names only, never a node module). ``tests/unit/test_import_rules.py`` checks it.
"""
