"""A power cut of every broker, end to end, through the fault file system.

Goal: with durability "always", cutting the power of all three brokers mid-load (each loses what it had not
fsynced, with torn tails) and restarting them loses no acknowledged acks=all write, invents nothing and lets
no replica diverge; the run records what each broker lost. Method: ``chaos.runner.run_once`` with the
shipped ``power-loss-all`` scenario, 20 s of workload, a fixed seed (bounded: about 35 s with set-up and
drain). Skipped, with the reason, where FUSE cannot be mounted; the run itself then says SKIP, never PASS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from raftmq.chaos.faultfs import unavailable_reason
from raftmq.chaos.runner import RunSettings, run_once
from raftmq.chaos.scenario import load

from tests.chaos.test_scenarios import ACKED_MIN, DURATION_S, RATE, _explain

_REASON = unavailable_reason()


@pytest.mark.chaos
@pytest.mark.timeout(180)
@pytest.mark.skipif(_REASON is not None, reason=f"fault file system unavailable: {_REASON}")
def test_power_loss_of_every_broker_loses_nothing_acknowledged_at_acks_all(tmp_path: Path) -> None:
    settings = RunSettings(duration_s=DURATION_S, seed=31, rate=RATE, durability="always")
    result = asyncio.run(run_once(load("power-loss-all"), "all", settings, tmp_path / "report"))
    detail = _explain(result)
    assert result.error is None, detail
    assert result.check is not None, detail
    check = result.check
    assert check.lost == 0 and check.unexpected == 0 and check.divergence == 0, detail
    assert check.acked_offset_mismatch == 0 and check.failed_but_present == 0, detail
    assert result.verdict == "PASS", detail
    assert check.acked >= ACKED_MIN, detail
    cuts = result.stats["disks"]["power_cuts"]
    assert cuts and sorted(cuts[0]["nodes"]) == [1, 2, 3], detail
    assert all(lost["problems"] == [] for lost in cuts[0]["lost"].values()), detail


def test_a_disk_scenario_without_fuse_is_skipped_not_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raftmq.chaos import runner

    monkeypatch.setattr(runner, "unavailable_reason", lambda: "no /dev/fuse (test)")
    settings = RunSettings(duration_s=DURATION_S, seed=1, rate=RATE)
    result = asyncio.run(run_once(load("power-loss-one"), "all", settings, tmp_path / "report"))
    assert result.verdict == "SKIP"
    assert result.error is not None and "no /dev/fuse (test)" in result.error
    from raftmq.chaos.report import overall_verdict

    assert overall_verdict([result]) == "SKIP"
