"""The OTA demo and the OTA benchmark run end to end (slow: torch export, agent processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_ota_demo_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "simulations/ota_demo.py"),
            "--agents",
            "3",
            "--out",
            str(out),
            "--keep",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["ok"] and [s["step"] for s in summary["steps"]] == [
        "deploy v1",
        "deploy v2",
        "signed rollback to v1",
    ]
    assert (tmp_path / "work" / "fleet" / "dev-000" / "agent.toml").exists()
    # every agent process had its config under tmp_path: none may still be running
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_ota_benchmark_quick_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/ota.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "agents",
        "bundle_mb",
        "goodput_mb_s",
        "raw_mb_s",
        "goodput_ratio",
        "time_to_all_committed_s",
    ):
        assert figures[key] > 0, key
