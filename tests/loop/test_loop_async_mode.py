"""A class in asynchronous mode, end to end: order -> train -> secure buffer -> new version ->
gates -> bundle -> rollout (real registry, keys, SecAgg+, compression, rollout service)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.loop.policy import RetrainPolicy
from cloud_hub.registry import admin, catalog, devices, open_registry, rollouts
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import RolloutService
from shared.data.sensors import generate_sensor_data
from shared.messages import Hello
from simulations.demo.fleet import PROBLEM_SEED
from simulations.demo.sample_stores import DeviceSampleStores
from tests.loop.test_loop_pipeline import CLASS, DEVICES, seeded_fleet


def _config(root: Path, **changes: Any) -> LoopConfig:
    base: dict[str, Any] = {
        "work_dir": root / "loop",
        "training_engine": "inprocess",
        "local_epochs": 2,
        "policy": RetrainPolicy(min_devices=3, cooldown_s=0, require_approval=False),
        "rollout_stages": ({"count": 1}, {"percent": 100.0}),
        "class_modes": {CLASS: "async"},
        "async_buffer_size": 3,
        "async_buffers": 2,
    }
    return LoopConfig(**{**base, **changes})


def test_an_async_class_is_retrained_end_to_end(tmp_path: Path) -> None:
    from tests.loop.test_loop_async_eligibility import report_fit

    registry, keys = seeded_fleet(tmp_path)
    report_fit(registry, DEVICES)  # online, cool, idle, with labelled samples: eligible
    xc, yc = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=1)
    delivery = RecordedDelivery()
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=RolloutService(registry, delivery, keys),
        cohort_data=DeviceSampleStores.under(tmp_path / "fleet"),
        validation=(xc, yc),
        calibration=(xc, yc),
        config=_config(tmp_path),
    )
    try:
        out = pipeline.run(CLASS, DEVICES, trigger="manual", reason="async")
        assert out.state == "rolling_out", out.detail
        assert out.version == 1 and out.candidate_accuracy is not None
        assert out.candidate_accuracy > 0.5
        with registry.session() as s:
            run = admin.get_training_run(s, out.run_id)
            assert run.config["mode"] == "async"
            assert run.metrics["mode"] == "async" and len(run.metrics["buffers"]) == 2
            for buffer in run.metrics["buffers"]:
                assert buffer["secure"] and buffer["new_version"] is not None
                assert sorted(f["device"] for f in buffer["folded"]) == DEVICES
            assert run.metrics["buffers"][1]["folded"][0]["staleness"] == 0
            version = catalog.get_model_version(s, "sensor-mlp", 1)
            assert version.lineage["federated"]["mode"] == "async"
            rollout = rollouts.get_rollout(s, out.rollout_id or "")
            assert rollout.state == "canary"  # started: the same gates as a sync version
            assert catalog.get_bundle(s, out.bundle_id or "").kind == "full"
    finally:
        registry.close()


@pytest.mark.parametrize(
    "changes",
    [
        {"class_modes": {CLASS: "eventually"}},
        {"secagg": False, "policy": RetrainPolicy(min_devices=3)},
        {"async_buffer_size": 2},
        {"async_buffer_size": 4},  # above policy.min_devices: a cohort could not fill it
    ],
)
def test_bad_async_settings_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    with pytest.raises(HubConfigError):
        _config(tmp_path, **changes)


def test_classes_not_named_train_synchronously(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.mode_of(CLASS) == "async" and config.mode_of("rpi4") == "sync"
    assert np.isfinite(config.async_server_lr)


def test_an_async_class_may_train_on_the_devices(tmp_path: Path) -> None:
    config = _config(tmp_path, training_engine="deployment")
    assert config.mode_of(CLASS) == "async" and config.training_engine == "deployment"


def test_retrain_cli_runs_an_async_class_through_the_eligibility_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cloud-hub retrain --mode async`` trains on the devices (Deployment Engine): the run
    starts in asynchronous mode and its gate orders only fit devices; online devices that
    sent no telemetry get no order, so the run stops there, saying why."""
    import json

    from cloud_hub.cli import main

    db = f"sqlite:///{tmp_path / 'hub.db'}"
    registry = open_registry(db)
    with registry.session() as s:
        devices.record_hellos(
            s, [Hello(d, CLASS, "0.1", [], 1 << 30, 1 << 30) for d in DEVICES], now=time.time()
        )
        devices.set_online(s, dict.fromkeys(DEVICES, True))
    registry.close()
    x, y = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=99)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    KeyStore.init(tmp_path / "keys")
    CertificateAuthority.load_or_create(tmp_path / "ca")  # the SuperLink's TLS comes from it
    argv = ["retrain", "--db", db, "--data-dir", str(tmp_path), "--class", CLASS]
    argv += ["--validation", str(tmp_path / "val.npz")]
    assert main([*argv, "--mode", "async", "--buffer-size", "3", "--buffers", "2"]) == 1
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["state"] == "failed"
    assert outcome["detail"].startswith("only 0 of 3 devices may take an asynchronous order")
    registry = open_registry(db)
    try:
        with registry.session() as s:
            run = admin.get_training_run(s, outcome["run_id"])
        assert run.config["mode"] == "async" and run.config["engine"] == "deployment"
        assert run.metrics["eligibility"][0]["not_eligible"]["no recent telemetry"] == 3
    finally:
        registry.close()
    with pytest.raises(SystemExit):  # argparse refuses an unknown mode
        main([*argv, "--mode", "eventually"])
