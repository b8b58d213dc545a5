"""``cloud-hub simulate-async``: scenario files, flag overrides and refusals (real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.errors import HubConfigError
from simulations.async_fl.scenario import load_availability_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulations" / "async_fl" / "scenarios"


def test_shipped_scenarios_load() -> None:
    big = load_availability_scenario(SCENARIOS / "online30_1000.toml")
    assert big.trace.devices == 1000 and big.trace.online_fraction == 0.3
    quick = load_availability_scenario(SCENARIOS / "online30_quick.toml")
    assert quick.clock.buffer_size == 10


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[trace]\ndevcies = 3\n", "devcies"),
        ("[traces]\n", "traces"),
        ("[target]\naccuracy = 2\n", "accuracy"),
        ("[trace]\nonline_fraction = 0\n", "online_fraction"),
        ("not toml ===", "TOML"),
    ],
)
def test_bad_scenarios_are_refused_by_name(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(HubConfigError, match=needle):
        load_availability_scenario(path)


def test_cli_runs_a_small_scenario_and_writes_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["online30_quick", "--devices", "24", "--updates", "24", "--cohort", "4"]
    argv += ["--buffer-size", "4", "--concurrency", "12", "--target", "0.8", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", "simulate-async", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["devices"] == 24 and summary["buffers"] == summary["buffers_secure"] > 0
    assert (out / "time_to_accuracy.png").read_bytes().startswith(b"\x89PNG")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_hub.cli",
            "simulate-async",
            "online30_quick",
            "--devices",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "devices" in bad.stderr
