"""The one-command demo, small, as it runs by default (retraining over Flower's Deployment
Engine: the devices train as SuperNodes): the loop closes (accuracy on the drifted devices
recovers) and nothing it started outlives it — neither after a normal end nor after SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from simulations.demo.runner import DemoConfig, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.timeout(1200)  # two Deployment Engine runs (the demo's default) on loaded cores
def test_demo_recovers_accuracy_and_leaves_no_process(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    config = DemoConfig(
        out_dir=tmp_path,
        agents=4,
        drifted=3,
        steps_before_drift=3,
        steps_after_retrain=3,
        drift_window=100,
        num_rounds=2,
        rollout_stages=({"count": 1}, {"percent": 100.0}),
        gate_window_s=1.0,
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
    assert s["retrain_run"]["start_accuracy"] == pytest.approx(
        s["retrain_run"]["champion_accuracy"]
    )
    assert (
        s["bytes"]["delta_bytes_if_devices_took_deltas"]
        < s["bytes"]["full_bytes_received_by_devices"]
    )
    states = {r["trigger"]: r["state"] for r in s["api_training_runs"]}  # read over the API
    assert states == {"manual": "deployed", "drift": "deployed"}
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["accuracy_recovered_pts"] == pytest.approx(s["accuracy_recovered_pts"])
    assert (runs[0] / "accuracy.png").stat().st_size > 1000
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not _alive(sorted(left)), f"processes left behind: {left}"


def test_sigterm_mid_demo_stops_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub.cli", "demo", "--agents", "3", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "every device said hello" in line or not line:
            break
    assert any("every device said hello" in x for x in seen), "".join(seen)
    spawned = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(spawned) >= 4  # broker + three devices
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while _alive(spawned) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(spawned), f"left behind after SIGTERM: {_alive(spawned)}"
