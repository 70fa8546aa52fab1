"""``raftmq cluster add-broker``'s mailbox and the layout file (raftmq/cli/cluster_local.py); no brokers.

Goal: a request is served exactly once and its reply reaches the waiting add-broker; a request nobody takes
fails within the deadline and is withdrawn; `up` without --nodes takes the size the folder recorded.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from raftmq.cli import cluster_local
from raftmq.cli.cluster_cmd import _check_layout
from raftmq.cli.common import ConfigProblem


def test_a_request_is_served_once_and_answered(tmp_path: Path) -> None:
    served: list[dict] = []  # type: ignore[type-arg]
    stop = threading.Event()

    def up_side() -> None:
        while not stop.wait(0.05):  # the `up` watch loop's polling, bounded by the test's stop
            for claimed, request in cluster_local.pending_requests(tmp_path):
                served.append(request)
                cluster_local.answer(claimed, {"ok": True, "broker_id": 4})

    thread = threading.Thread(target=up_side)
    thread.start()
    try:
        reply = cluster_local.request_add_broker(tmp_path, rack="r1", timeout_s=10)
    finally:
        stop.set()
        thread.join(5)
    assert reply == {"ok": True, "broker_id": 4} and served == [{"rack": "r1"}]
    assert list((tmp_path / cluster_local.MAILBOX_DIR).iterdir()) == []


def test_a_request_nobody_takes_times_out_and_is_withdrawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_local, "TAKE_DEADLINE_S", 0.3)
    with pytest.raises(TimeoutError, match="did not take the request"):
        cluster_local.request_add_broker(tmp_path, rack=None, timeout_s=5)
    assert cluster_local.pending_requests(tmp_path) == []


def test_up_takes_the_recorded_size_and_refuses_another(tmp_path: Path) -> None:
    assert _check_layout(tmp_path, None) == (None, 3)
    cluster_local.write_layout(tmp_path, {"nodes": 4, "base_port": 9101, "up_pid": None})
    assert _check_layout(tmp_path, None)[1] == 4
    with pytest.raises(ConfigProblem, match="holds a 4-node cluster"):
        _check_layout(tmp_path, 3)
    cluster_local.write_layout(tmp_path, {"nodes": 4, "up_pid": os.getpid()})
    assert cluster_local.up_running(cluster_local.read_layout(tmp_path))
    with pytest.raises(ConfigProblem, match="already in use"):
        _check_layout(tmp_path, None)
