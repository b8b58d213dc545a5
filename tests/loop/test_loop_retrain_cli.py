"""``cloud-hub retrain``: its argument checks, the run listing and approval, on a real SQLite
registry. The devices train (Flower's Deployment Engine): the command takes no device data,
and ``--class`` refuses to start without the hub CA its SuperLink's TLS comes from. The
run itself over real devices is the lab scenario's (tests/lab/test_lab_retrain.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, open_registry
from shared.data.sensors import generate_sensor_data
from simulations.demo.fleet import PROBLEM_SEED


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
    assert "--class needs --validation" in capsys.readouterr().err
    x, y = generate_sensor_data(60, seed=PROBLEM_SEED, sample_seed=99)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    with_validation = [*base, "--class", "x86-cpu", "--validation", str(tmp_path / "val.npz")]
    assert main(with_validation) == 2  # no hub CA: the SuperLink would have no TLS
    assert "enroll-init" in capsys.readouterr().err
    assert main([*base, "--approve", "rt-1"]) == 2  # refused runs have nothing to approve
    assert "not awaiting approval" in capsys.readouterr().err


def test_device_data_is_no_option(capsys: pytest.CaptureFixture[str]) -> None:
    """The hub reading device sample stores left the product: ``--samples`` is unknown."""
    with pytest.raises(SystemExit):
        main(["retrain", "--class", "x86-cpu", "--samples", "fleet", "--validation", "v.npz"])
    assert "--samples" in capsys.readouterr().err


def test_a_run_waiting_for_approval_is_approved_by_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.loop.config import LoopConfig
    from cloud_hub.loop.pipeline import RetrainPipeline
    from cloud_hub.loop.policy import RetrainPolicy
    from cloud_hub.registry import rollouts
    from cloud_hub.rollout.delivery import RecordedDelivery
    from cloud_hub.rollout.engine import RolloutService
    from simulations.demo.sample_stores import DeviceSampleStores
    from tests.loop.test_loop_pipeline import CLASS, DEVICES, seeded_fleet

    registry, keys = seeded_fleet(tmp_path)  # tmp_path/hub.db, tmp_path/keys
    x, y = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=99)
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=RolloutService(registry, RecordedDelivery(), keys),
        cohort_data=DeviceSampleStores.under(tmp_path / "fleet"),
        validation=(x, y),
        calibration=(x, y),
        config=LoopConfig(
            work_dir=tmp_path / "loop",
            training_engine="inprocess",
            num_rounds=1,
            policy=RetrainPolicy(min_devices=3, require_approval=True),
        ),
    )
    out = pipeline.run(CLASS, DEVICES, trigger="manual", reason="operator")
    registry.close()
    assert out.state == "awaiting_approval", out.detail
    base = ["retrain", "--db", f"sqlite:///{tmp_path / 'hub.db'}", "--data-dir", str(tmp_path)]
    assert main([*base, "--approve", out.run_id]) == 0
    approved = json.loads(capsys.readouterr().out)
    assert approved["rollout_id"] == out.rollout_id
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    with registry.session() as s:
        assert rollouts.get_rollout(s, out.rollout_id or "").state == "canary"
        assert admin.get_training_run(s, out.run_id).state == "rolling_out"
    registry.close()
