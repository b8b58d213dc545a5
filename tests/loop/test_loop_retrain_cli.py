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


def test_retrain_by_hand_then_approve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from cloud_hub.registry import devices, rollouts
    from edge_agent.samples.store import SampleStore, SampleStoreConfig
    from shared.data.sensors import generate_sensor_data
    from shared.messages import Hello
    from simulations.demo.fleet import PROBLEM_SEED

    db = f"sqlite:///{tmp_path / 'hub.db'}"
    ids = ["a-0", "a-1", "a-2"]
    registry = open_registry(db)
    with registry.session() as s:
        devices.record_hellos(
            s, [Hello(d, "x86-cpu", "0.1", [], 1 << 30, 1 << 30) for d in ids], now=time.time()
        )
        devices.set_online(s, dict.fromkeys(ids, True))
    registry.close()
    for i, d in enumerate(ids):
        x, y = generate_sensor_data(100, seed=PROBLEM_SEED, sample_seed=i)
        store = SampleStore(SampleStoreConfig(path=tmp_path / "fleet" / d / "state" / "samples.db"))
        for k in range(len(y)):
            store.add(f"s{k}", x[k], model_version=0, label=int(y[k]))
        store.close()
    x, y = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=99)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    KeyStore.init(tmp_path / "keys")
    base = ["retrain", "--db", db, "--data-dir", str(tmp_path)]
    code = main(
        [
            *base,
            "--class",
            "x86-cpu",
            "--samples",
            str(tmp_path / "fleet"),
            "--validation",
            str(tmp_path / "val.npz"),
            "--rounds",
            "1",
            "--require-approval",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["state"] == "awaiting_approval", out
    assert out["version"] == 1 and (tmp_path / "bundles" / f"{out['bundle_id']}.ffb").exists()
    assert main([*base, "--approve", out["run_id"]]) == 0
    approved = json.loads(capsys.readouterr().out)
    assert approved["rollout_id"] == out["rollout_id"]
    registry = open_registry(db)
    with registry.session() as s:
        assert rollouts.get_rollout(s, out["rollout_id"]).state == "canary"
        assert admin.get_training_run(s, out["run_id"]).state == "rolling_out"
    registry.close()
    # the cooldown now holds a second manual request back
    assert (
        main(
            [
                *base,
                "--class",
                "x86-cpu",
                "--samples",
                str(tmp_path / "fleet"),
                "--validation",
                str(tmp_path / "val.npz"),
            ]
        )
        == 1
    )
    assert "cooldown" in json.loads(capsys.readouterr().out)["reason"]
