"""``cloud-hub simulate-async``: scenario files, flag overrides and refusals (the CLI entry)."""

from __future__ import annotations

import json
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


def test_cli_runs_a_small_scenario_and_writes_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.cli import main

    out = tmp_path / "out"
    argv = ["simulate-async", "online30_quick", "--devices", "24", "--updates", "24"]
    argv += ["--cohort", "4", "--buffer-size", "4", "--concurrency", "12", "--target", "0.8"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["devices"] == 24 and summary["buffers"] == summary["buffers_secure"] > 0
    assert (out / "time_to_accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert main(["simulate-async", "online30_quick", "--devices", "0"]) != 0
    assert "devices" in capsys.readouterr().err
