"""``python -m client.cli ...`` is the same as ``raftmq ...``."""

from client.cli import main

main()
