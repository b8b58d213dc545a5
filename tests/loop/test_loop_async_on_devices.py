"""An asynchronous class trained on the devices (the Deployment Engine, the loop's default):
the eligibility gate judges the cohort before any order is signed, only the fit devices are
ordered, the run is submitted with the asynchronous FAB and its ``[async]`` table, and the
candidate goes through the same gates, bundle and rollout as a synchronous one.

The devices' side is a stand-in for :class:`cloud_hub.loop.device_training.DeploymentTraining`
here (what it is handed is the claim); the real SuperLink and agent processes run in
``test_loop_async_deployment_engine.py`` (slow)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from cloud_hub.fl.model_store import ModelStore
from cloud_hub.keys import KeyStore
from cloud_hub.loop.device_training import FAB_ASYNC_DIR, _toml
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.registry import Registry, admin, async_orders, catalog, devices, rollouts
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import RolloutService
from shared.data.sensors import generate_sensor_data
from shared.fl.training import LocalTrainingLimits, get_weights, train_model
from shared.messages import Hello
from shared.messages import TelemetryMetric as M
from shared.models import build_model
from simulations.demo.fleet import PROBLEM_SEED
from tests.loop.test_loop_async_eligibility import FIT, report_fit, report_telemetry
from tests.loop.test_loop_async_mode import _config
from tests.loop.test_loop_pipeline import CLASS, DEVICES, seeded_fleet


class DevicesStandIn:
    """What ``DeploymentTraining.train`` is handed; trains one model on the hub's behalf and
    stores it as the asynchronous ServerApp would, with a summary of the same shape."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def train(
        self,
        run_id: str,
        device_ids: Sequence[str],
        fl_config: Any,
        validation: tuple[Any, Any],
        model_store_root: Path,
        *,
        max_samples: int | None = None,
        initial_state: Mapping[str, Any] | None = None,
        buffered: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.calls.append(
            {"devices": list(device_ids), "fl_config": fl_config, "buffered": buffered}
        )
        model = build_model(fl_config.model_name, seed=0)
        x, y = generate_sensor_data(360, seed=PROBLEM_SEED, sample_seed=5)
        train_model(model, x, y, LocalTrainingLimits(max_local_epochs=5))
        ModelStore(model_store_root).save_candidate(
            run_id=run_id,
            model_name=fl_config.model_name,
            weights=get_weights(model),
            lineage={"mode": "async", "run_id": run_id, "engine": "deployment"},
            metrics={"accuracy": 0.9, "loss": 0.3},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        folded = [
            {"device": n, "order_id": f"o-{n}", "base_version": 0, "staleness": 0}
            for n in (1, 2, 3)
        ]
        return {
            "status": "ok",
            "run_id": run_id,
            "mode": "async",
            "versions": [{"version": 1, "accuracy": 0.9, "loss": 0.3}],
            "buffers": [{"buffer": 1, "new_version": 1, "secure": True, "folded": folded}],
        }


def _pipeline(tmp_path: Path, registry: Registry, keys: KeyStore) -> RetrainPipeline:
    xc, yc = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=1)
    return RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=RolloutService(registry, RecordedDelivery(), keys),
        validation=(xc, yc),
        calibration=(xc, yc),
        config=_config(tmp_path, training_engine="deployment", async_buffers=2),
        deployment=DevicesStandIn(),  # type: ignore[arg-type]
    )


def _add_online(registry: Registry, names: list[str]) -> None:
    with registry.session() as s:
        hellos = [Hello(d, CLASS, "0.1", ["onnxruntime:cpu"], 1 << 30, 1 << 30) for d in names]
        devices.record_hellos(s, hellos, now=time.time())
        devices.set_online(s, dict.fromkeys(names, True))


def test_only_fit_devices_are_ordered_with_the_async_fab(tmp_path: Path) -> None:
    registry, keys = seeded_fleet(tmp_path)
    _add_online(registry, ["p-hot", "p-quiet"])
    report_fit(registry, DEVICES)
    report_telemetry(registry, "p-hot", {**FIT, M.TEMPERATURE_C: 91.0})
    pipeline = _pipeline(tmp_path, registry, keys)
    stand_in = pipeline.deployment
    assert isinstance(stand_in, DevicesStandIn)
    try:
        out = pipeline.run(CLASS, [*DEVICES, "p-hot", "p-quiet"], trigger="manual", reason="a")
        assert out.state == "rolling_out", out.detail
        [call] = stand_in.calls
        assert call["devices"] == DEVICES  # the hot and the silent device got no order
        assert call["fl_config"].num_clients == 3
        assert call["buffered"] == {
            "devices": 3,
            "buffer_size": 3,
            "buffers": 2,
            "server_lr": 1.0,
            "max_staleness": 5,
            "seed": 0,
        }
        with registry.session() as s:
            run = admin.get_training_run(s, out.run_id)
            assert run.config["mode"] == "async" and run.config["clients"] == DEVICES
            assert run.metrics["eligibility"][0]["summary"] == (
                "2 devices not eligible: 1 no recent telemetry, 1 too hot"
            )
            assert run.metrics["buffers"][0]["secure"]
            lineage = catalog.get_model_version(s, "sensor-mlp", 1).lineage["federated"]
            assert lineage["mode"] == "async" and lineage["engine"] == "deployment"
            assert rollouts.get_rollout(s, out.rollout_id or "").state == "canary"
    finally:
        registry.close()


def test_no_order_is_signed_when_too_few_devices_are_fit(tmp_path: Path) -> None:
    registry, keys = seeded_fleet(tmp_path)
    report_fit(registry, DEVICES[:2])  # the third sent no telemetry
    pipeline = _pipeline(tmp_path, registry, keys)
    stand_in = pipeline.deployment
    assert isinstance(stand_in, DevicesStandIn)
    try:
        out = pipeline.run(CLASS, DEVICES, trigger="manual", reason="a")
        assert out.state == "failed" and stand_in.calls == []
        assert "only 2 of 3 devices may take an asynchronous order" in out.detail, out.detail
        with registry.session() as s:
            run = admin.get_training_run(s, out.run_id)
            assert run.metrics["eligibility"][0]["eligible"] == 2
    finally:
        registry.close()


def test_the_async_table_is_what_the_async_server_app_reads(tmp_path: Path) -> None:
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig
    from cloud_hub.fl.superlink import fab_sha256

    config = FederatedRunConfig(num_clients=3, min_fit_clients=3, secagg=SecAggConfig())
    table = {"devices": 3, "buffer_size": 3, "buffers": 2, "server_lr": 0.5, "max_staleness": 4}
    parsed = tomllib.loads(_toml(config, {**table, "seed": 0}))
    assert parsed["async"] == {**table, "seed": 0}
    assert parsed["training"]["num_clients"] == 3
    assert "async" not in tomllib.loads(_toml(config))
    assert fab_sha256(FAB_ASYNC_DIR) != fab_sha256()  # orders name the FAB that runs


def test_a_device_ordered_over_the_deployment_engine_needs_new_samples_for_the_next_run(
    tmp_path: Path,
) -> None:
    registry, keys = seeded_fleet(tmp_path)
    report_fit(registry, DEVICES)
    pipeline = _pipeline(tmp_path, registry, keys)
    try:
        first = pipeline.run(CLASS, DEVICES, trigger="manual", reason="first")
        assert first.state == "rolling_out", first.detail
        with registry.session() as s:
            ledger = async_orders.last_trained_orders(s, DEVICES)
        assert sorted(ledger) == DEVICES
        assert all(o.run_id == first.run_id and o.labelled_samples for o in ledger.values())
        again = pipeline.run(CLASS, DEVICES, trigger="manual", reason="no new labels")
        assert again.state == "failed"
        assert "3 too few new samples" in (again.detail or ""), again.detail
    finally:
        registry.close()
