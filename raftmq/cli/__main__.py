"""``python -m raftmq.cli ...`` is the same as ``raftmq ...``."""

from raftmq.cli import main

main()
