"""The closed loop in the default suite: a short ``cloud-hub demo`` (four device processes,
two serving steps per phase, one rollout stage) with the slow test's assertions — accuracy
on the drifted devices recovers — and deltas actually received, as the devices measured them
(the bytes they report in ``download_complete``), not as the hub planned them — and the
summary's phase timings (where the wall time went)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.demo.phases import PHASES
from simulations.demo.report import summary_table
from simulations.demo.runner import DemoConfig, run_demo

pytestmark = pytest.mark.integration


def test_short_demo_recovers_accuracy_with_deltas_the_devices_received(tmp_path: Path) -> None:
    config = DemoConfig(
        out_dir=tmp_path,
        agents=4,
        drifted=3,
        steps_before_drift=2,
        steps_after_retrain=2,
        drift_window=100,
        num_rounds=2,
        training_engine="inprocess",  # the default-suite variant: the in-process grid
        # the drifted site first, then the rest: the serving after the retraining goes on
        # until the second stage is done
        rollout_stages=({"labels": {"site": "plant-3"}}, {"percent": 100.0}),
        gate_window_s=1.0,  # the second stage starts >= 1 s after the drifted site serves
        plots=False,
        quiet=True,
    )
    result = run_demo(config)
    s = result.summary
    assert s["accuracy_before_drift"] > 0.9
    assert s["accuracy_after_drift"] < s["accuracy_before_drift"] - 0.2
    assert s["accuracy_after_retrain"] > s["accuracy_after_drift"] + 0.2
    assert s["accuracy_recovered_pts"] > 20
    # the retraining started from the champion's weights and kept the other sites' accuracy
    assert s["retrain_run"]["rounds"] == config.retrain_rounds
    assert s["healthy_accuracy_after_retrain"] > 0.9
    # ... measured on the retrained model: every other-site device answered with it
    other_sites = {r["device"] for r in result.timeline if not r["drifted"]}
    answered_with_retrained = {
        r["device"]
        for r in result.timeline
        if r["phase"] == "after_retrain" and r["version"] == s["retrain_run"]["version"]
    }
    assert other_sites <= answered_with_retrained
    assert s["retrain_run"]["start_accuracy"] == pytest.approx(
        s["retrain_run"]["champion_accuracy"]
    )
    # where the wall time went: every phase of the loop timed, in order, within the wall time
    assert list(s["phases_s"]) == list(PHASES), s["phases_s"]
    assert all(seconds >= 0 for seconds in s["phases_s"].values())
    assert 0.9 * s["wall_s"] <= sum(s["phases_s"].values()) <= s["wall_s"]
    assert s["phases_s"]["initial_training"] >= s["initial_run"]["train"]
    assert s["phases_s"]["retraining"] >= s["retrain_run"]["train"]
    assert s["phases_s"]["drift_detection"] > 0
    recovered = ("drift_detection", "retraining", "rollout_to_drifted")
    assert sum(s["phases_s"][p] for p in recovered) == pytest.approx(
        s["drift_to_recovered_s"], abs=0.01
    )
    assert "phase: retraining" in summary_table(s)
    initial = s["bytes"]["rollouts"][s["rollouts"]["initial"]["rollout_id"]]
    retrain = s["bytes"]["rollouts"][s["rollouts"]["retrain"]["rollout_id"]]
    # the first model reached every device as a full bundle, measured on the devices
    assert len(initial["device_bytes_received"]) == 4, initial
    assert all(b >= initial["bundle_bytes"] for b in initial["device_bytes_received"].values())
    # the retrained model reached them as deltas: each device received less than the full bundle
    received = retrain["device_bytes_received"]
    assert len(received) == 4, received
    assert all(0 < b < retrain["bundle_bytes"] for b in received.values()), (
        received,
        retrain["bundle_bytes"],
    )
