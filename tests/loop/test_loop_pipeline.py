"""The retraining pipeline on real parts: SQLite registry, key store, Flower with SecAgg+
(the in-process grid, asked for explicitly: the product trains on the devices), compression for the x86-cpu profile, signed full + delta bundles, the
real rollout service (its delivery is the boundary: recorded, not published)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.keys import KeyStore
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.controller import RetrainController
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.loop.policy import RetrainPolicy
from cloud_hub.registry import Registry, admin, catalog, devices, open_registry, reports, rollouts
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import RolloutService
from edge_agent.samples.store import SampleStore, SampleStoreConfig
from shared.data.sensors import generate_sensor_data
from shared.messages import DriftReport, Hello, InstalledModel, Status
from simulations.demo.fleet import DRIFT, PROBLEM_SEED
from simulations.demo.sample_stores import DeviceSampleStores

CLASS = "x86-cpu"
DEVICES = ["d-0", "d-1", "d-2"]


def _seed(root: Path, device: str, n: int, *, drift: bool, start: int) -> None:
    x, y = generate_sensor_data(
        n, seed=PROBLEM_SEED, sample_seed=start, drift=DRIFT if drift else None
    )
    store = SampleStore(SampleStoreConfig(path=root / device / "state" / "samples.db"))
    try:
        for i in range(n):
            store.add(f"{start}-{i}", x[i], model_version=0, label=int(y[i]))
    finally:
        store.close()


def _installed(registry: Any, version: int, bundle_id: str) -> None:
    with registry.session() as s:
        devices.record_statuses(
            s,
            [
                Status(
                    device_id=d,
                    online=True,
                    installed=InstalledModel("sensor-mlp", version, bundle_id),
                )
                for d in DEVICES
            ],
            now=time.time(),
        )


def seeded_fleet(root: Path) -> tuple[Registry, KeyStore]:
    """A registry (``root/hub.db``) where every device of ``DEVICES`` said hello and is
    online, a key store (``root/keys``), and 120 samples per device under ``root/fleet``."""
    registry = open_registry(f"sqlite:///{root / 'hub.db'}")
    keys = KeyStore.init(root / "keys")
    with registry.session() as s:
        devices.record_hellos(
            s,
            [Hello(d, CLASS, "0.1", ["onnxruntime:cpu"], 1 << 30, 1 << 30) for d in DEVICES],
            now=time.time(),
        )
        devices.set_online(s, dict.fromkeys(DEVICES, True))
    for i, d in enumerate(DEVICES):
        _seed(root / "fleet", d, 120, drift=False, start=100 + i)
    return registry, keys


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("loop")
    registry, keys = seeded_fleet(root)
    xc, yc = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=1)
    xd, yd = generate_sensor_data(150, seed=PROBLEM_SEED, sample_seed=2, drift=DRIFT)
    delivery = RecordedDelivery()
    service = RolloutService(registry, delivery, keys)
    config = LoopConfig(
        work_dir=root / "loop",
        training_engine="inprocess",
        num_rounds=1,
        local_epochs=3,
        policy=RetrainPolicy(
            min_devices=3, cooldown_s=0, drift_duration_s=5, require_approval=True
        ),
        rollout_stages=({"count": 1}, {"percent": 100.0}),
    )
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=service,
        cohort_data=DeviceSampleStores.under(root / "fleet"),
        validation=(np.concatenate([xc, xd]), np.concatenate([yc, yd])),
        calibration=(xc, yc),
        config=config,
    )
    yield root, registry, keys, pipeline, delivery
    registry.close()


def test_initial_run_is_recorded_and_waits_for_approval(world: Any) -> None:
    root, registry, _keys, pipeline, delivery = world
    out = pipeline.run(CLASS, DEVICES, trigger="manual", reason="initial")
    assert out.state == "awaiting_approval", out.detail
    assert out.version == 1 and out.champion_accuracy is None
    with registry.session() as s:
        run = admin.get_training_run(s, out.run_id)
        assert run.state == "awaiting_approval" and run.result_version == 1
        assert run.config["secagg"] is True and sorted(run.config["clients"]) == DEVICES
        version = catalog.get_model_version(s, "sensor-mlp", 1)
        assert version.training_run_id == out.run_id
        assert version.lineage["cohort"] == DEVICES and version.lineage["data_fingerprint"]
        bundle = catalog.get_bundle(s, out.bundle_id or "")
        assert bundle.kind == "full" and bundle.manifest["lineage"]["training_run_id"] == out.run_id
        assert rollouts.get_rollout(s, out.rollout_id or "").state == "draft"
    assert (root / "bundles" / f"{out.bundle_id}.ffb").is_file()  # beside the keys, not in them

    controller = RetrainController(pipeline, [CLASS])
    assert controller.approve(out.run_id) == out.rollout_id
    with registry.session() as s:
        assert admin.get_training_run(s, out.run_id).state == "rolling_out"
        assert rollouts.get_rollout(s, out.rollout_id or "").state == "canary"
    for _ in range(3):
        pipeline.rollouts.tick()
    assert delivery.deploys and delivery.deploys[0][0] == out.bundle_id
    assert not delivery.rollbacks
    _installed(registry, 1, out.bundle_id or "")


def test_drift_triggers_a_better_candidate_with_deltas(world: Any) -> None:
    root, registry, _keys, pipeline, _delivery = world
    now = time.time()
    for k in range(3):  # drift lasts by the hub's clock: received over the last 10 s
        with registry.session() as s:
            reports.record_drift(
                s,
                [
                    DriftReport(d, f"r-{d}-{k}", "sensor-mlp", 1, 100, {}, 7.5, True, ts=now)
                    for d in DEVICES
                ],
                now=now - 10 + k,
            )
    controller = RetrainController(pipeline, [CLASS])
    decision = controller.assess(CLASS)
    assert decision.retrain and decision.trigger == "drift", decision.reason
    assert sorted(decision.cohort) == DEVICES
    for i, d in enumerate(DEVICES):  # the drifted devices have labelled the new inputs
        _seed(root / "fleet", d, 200, drift=True, start=500 + i)
    out = controller.tick()[0]
    assert out.state == "awaiting_approval", out.detail
    assert out.version == 2
    assert out.candidate_accuracy is not None and out.champion_accuracy is not None
    assert out.candidate_accuracy > out.champion_accuracy
    assert out.delta_bundles and min(out.delta_bundles.values()) < out.bundle_bytes
    with registry.session() as s:
        assert catalog.get_model_version(s, "sensor-mlp", 2).parent_version == 1
        bundles = catalog.list_bundles(s, model_name="sensor-mlp").items
        assert {b.kind for b in bundles} == {"full", "delta"}
        v1 = next(b for b in bundles if b.version == 1)
        assert {b.base_bundle_id for b in bundles if b.kind == "delta"} == {v1.bundle_id}


def test_a_candidate_that_does_not_beat_the_champion_is_refused(world: Any) -> None:
    _root, registry, _keys, pipeline, _delivery = world
    strict = RetrainPipeline(
        registry=registry,
        keys=pipeline.keys,
        rollouts=pipeline.rollouts,
        cohort_data=pipeline.cohort_data,
        validation=pipeline.validation,
        calibration=pipeline.calibration,
        config=LoopConfig(
            work_dir=pipeline.config.work_dir,
            training_engine="inprocess",
            num_rounds=1,
            min_improvement=0.5,  # nothing beats its champion by 50 points
            policy=pipeline.config.policy,
        ),
    )
    out = strict.run(CLASS, DEVICES, trigger="manual", reason="operator")
    assert out.state == "refused" and "does not beat" in out.detail
    with registry.session() as s:
        run = admin.get_training_run(s, out.run_id)
        assert run.state == "refused" and run.result_version is None
        assert run.metrics["candidate_accuracy"] == out.candidate_accuracy
