"""``cloud-hub retrain``: its argument checks and the run listing, on a real SQLite registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_hub.cli import main
from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, open_registry


def test_retrain_lists_runs_and_refuses_incomplete_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    registry = open_registry(db)
    with registry.session() as s:
        admin.create_training_run(
            s,
            run_id="rt-1",
            model_name="sensor-mlp",
            state="refused",
            trigger="drift",
            config={"device_class": "x86-cpu"},
            now=time.time(),
        )
    registry.close()
    base = ["retrain", "--db", db, "--data-dir", str(tmp_path)]
    assert main([*base, "--list"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["state"]) for r in runs] == [("rt-1", "refused")]

    assert main([*base, "--class", "x86-cpu"]) == 2  # no key store yet
    assert "keys init" in capsys.readouterr().err
    KeyStore.init(tmp_path / "keys")
    assert main([*base, "--class", "x86-cpu"]) == 2
    assert "--samples and --validation" in capsys.readouterr().err
    assert main([*base, "--approve", "rt-1"]) == 2  # refused runs have nothing to approve
    assert "not awaiting approval" in capsys.readouterr().err
