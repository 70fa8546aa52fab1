"""``raftmq node start --config FILE``: run one broker in the foreground (what a host runs under systemd).

It is exactly ``python -m raftmq.node --config FILE``: the same code, the same exit codes (0 after a clean stop
on SIGTERM/SIGINT, 2 for a bad config).
"""

from __future__ import annotations

from pathlib import Path

import click

from raftmq.cli.common import RaftMQGroup


@click.group("node", cls=RaftMQGroup)
def node() -> None:
    """Run a broker process."""


@node.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The node's TOML file (see deploy/node.example.toml).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this file once the broker serves clients.")
def start(config_path: Path, ready_file: Path | None) -> None:
    """Run one broker until SIGTERM or Ctrl-C, then stop it cleanly."""
    from raftmq.node.__main__ import main as node_main  # the broker's own entry point (imports the server)

    argv = ["--config", str(config_path)]
    if ready_file is not None:
        argv += ["--ready-file", str(ready_file)]
    code = node_main(argv)
    if code:
        raise click.exceptions.Exit(code)
