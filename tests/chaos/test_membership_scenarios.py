"""The short chaos suite for membership changes (issue 9): a broker killed for good, a broker added under
load, a broker drained while another fault runs. Five (or four) real brokers behind fault proxies, replication
factor 3, short controller timings from each scenario's [liveness] table.

Goal: acks=all loses nothing and replicas never diverge while the controller moves replicas; after the run
every partition is back to 3 replicas, none moving, all caught up (the runner's convergence wait), every final
replica is read back directly (fetch with replica=any) and agrees; and the heal / balance / drain time is
measured (chaos/placement.py).

Method: ``chaos.runner.run_once`` with the shipped scenario files, 15 s of workload, fixed seeds. Nothing
sleeps to synchronise: the runner waits for conditions with deadlines; only the fault schedule is timed.
Skipped while the server still refuses a replication factor below the broker count (cluster/placement.py
before the controller of issue 9 lands).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Final

import pytest
from raftmq.chaos.runner import RunResult, RunSettings, run_once
from raftmq.chaos.scenario import load

from tests.chaos.test_scenarios import _explain

DURATION_S: Final = 15.0
RATE: Final = 100.0
# Heal needs the session timeout + heal grace (3 s) plus the copies; generous for a loaded CI machine.
CONVERGE_TIMEOUT_S: Final = 30.0
ACKED_MIN: Final = 200


def _subset_placement_supported() -> bool:
    try:
        from raftmq.cluster.errors import InvalidReplicationFactor
        from raftmq.cluster.placement import assign_replicas
    except ImportError:
        return True  # the placement module was reorganised: the new server is there
    try:
        assign_replicas(1, 3, [1, 2, 3, 4, 5])
    except InvalidReplicationFactor:
        return False
    except Exception:  # noqa: BLE001 - another signature: the new server, let the run decide
        return True
    return True


pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150),
              pytest.mark.skipif(not _subset_placement_supported(),
                                 reason="the server does not place partitions on a subset of brokers yet "
                                        "(issue 9's controller)")]


def _run(scenario: str, seed: int, tmp_path: Path) -> RunResult:
    settings = RunSettings(duration_s=DURATION_S, seed=seed, rate=RATE, converge_timeout_s=CONVERGE_TIMEOUT_S)
    return asyncio.run(run_once(load(scenario), "all", settings, tmp_path / "report"))


def _assert_safe(result: RunResult) -> str:
    detail = _explain(result) + f"\nplacement: {result.placement}"
    assert result.error is None, detail
    assert result.check is not None, detail
    check = result.check
    assert check.lost == 0 and check.unexpected == 0 and check.divergence == 0, detail
    assert check.acked_offset_mismatch == 0 and check.failed_but_present == 0, detail
    assert check.acked >= ACKED_MIN, detail
    assert result.verdict == "PASS", detail
    return detail


def _final_replicas(result: RunResult) -> dict[int, list[int]]:
    """partition -> the brokers whose own copy the drain read (replica=any)."""
    history = json.loads((result.run_dir / "history.json").read_text())
    read: dict[int, list[int]] = {}
    for log in history.get("replicas") or []:
        read.setdefault(int(log["partition"]), []).append(int(log["broker_id"]))
    return read


def _assert_left(result: RunResult, action: str, detail: str) -> None:
    """Every partition ends on 3 replicas read back, none of them the broker ``action`` took away."""
    (gone,) = [row["node"] for row in result.placement if row["action"] == action]
    final = _final_replicas(result)
    assert len(final) == 3, f"every partition is read from its replicas\n{detail}"
    for partition, brokers in final.items():
        assert len(brokers) == 3 and gone not in brokers, f"partition {partition}: {brokers}\n{detail}"


def test_kill_broker_for_good_heals_back_to_three_replicas(tmp_path: Path) -> None:
    result = _run("kill-broker-for-good", 31, tmp_path)
    detail = _assert_safe(result)
    assert result.placement_ms("heal_ms") is not None, f"the cluster never healed\n{detail}"
    _assert_left(result, "kill-for-good", detail)


def test_add_broker_under_load_balances_onto_it(tmp_path: Path) -> None:
    result = _run("add-broker-under-load", 32, tmp_path)
    detail = _assert_safe(result)
    assert result.placement_ms("balance_ms") is not None, f"the cluster never balanced\n{detail}"
    hosting = {b for brokers in _final_replicas(result).values() for b in brokers}
    assert 5 in hosting, f"the new broker 5 hosts no replica\n{detail}"


def test_drain_under_faults_empties_the_drained_broker(tmp_path: Path) -> None:
    result = _run("drain-under-faults", 33, tmp_path)
    detail = _assert_safe(result)
    assert result.placement_ms("drain_ms") is not None, f"the drain never finished\n{detail}"
    _assert_left(result, "drain", detail)
