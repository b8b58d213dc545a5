"""``cloud-hub rollout``: building the configuration from flags, and errors at the boundary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cloud_hub.cli import build_parser, main
from cloud_hub.commands.rollout import build_config
from cloud_hub.errors import HubConfigError


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["rollout", "create", *argv])


def test_flags_build_a_validated_config() -> None:
    cfg = build_config(
        _args(
            "--bundle",
            "b-2",
            "--device-class",
            "rpi4",
            "--label",
            "site=plant-3",
            "--canary",
            "2",
            "--waves",
            "10,50,100",
            "--window",
            "30",
            "--seed",
            "7",
            "--max-error-rate",
            "0.02",
            "--abort-percent",
            "10",
            "--abort-min-finished",
            "4",
        )
    )
    assert cfg.bundle_id == "b-2" and cfg.target.labels == {"site": "plant-3"}
    assert [s.to_dict() for s in cfg.stages] == [
        {"count": 2},
        {"percent": 10.0},
        {"percent": 50.0},
        {"percent": 100.0},
    ]
    assert cfg.gates.max_error_rate == 0.02 and cfg.gates.min_install_success == 0.95
    assert (cfg.abort.failure_percent, cfg.abort.min_finished) == (10.0, 4)
    assert (cfg.gate_window_s, cfg.seed) == (30.0, 7)


def test_config_file_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "bundle_id": "b-1",
                "target": {"device_class": "x86-cpu"},
                "stages": [{"device_ids": ["a", "b"]}, {"labels": {"line": "2"}}],
                "gates": {"max_p95_ratio": 2.0},
            }
        )
    )
    cfg = build_config(_args("--config", str(path), "--max-drift-score", "0.3"))
    assert cfg.stages[0].device_ids == ("a", "b")
    assert cfg.gates.max_p95_ratio == 2.0 and cfg.gates.max_drift_score == 0.3


@pytest.mark.parametrize(
    "argv",
    [
        ("--bundle", "b"),  # no target
        ("--bundle", "b", "--device-class", "c", "--waves", "50,10"),
        ("--bundle", "b", "--device-class", "c", "--label", "site"),
        ("--bundle", "b", "--device-class", "c", "--waves", "x"),
        ("--bundle", "b", "--device-class", "c", "--max-error-rate", "2"),
    ],
)
def test_bad_flags_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(HubConfigError):
        build_config(_args(*argv))


def test_cli_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["rollout", "status", "r-1", "--api", "http://127.0.0.1:9", "--token", "t"])
    assert rc == 2
    assert "cannot reach the hub" in capsys.readouterr().err
    rc = main(["rollout", "create", "--bundle", "b", "--token", "t", "--api", "http://x"])
    assert rc == 2 and "device-class" in capsys.readouterr().err
