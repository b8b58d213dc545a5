"""Eligibility applied where asynchronous orders are handed out: the registry's telemetry
decides who trains, the run records why the others did not, and the orders land in the
registry's ledger."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from cloud_hub.keys import KeyStore
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.registry import Registry, TelemetryAggregate, admin, devices, reports
from cloud_hub.registry import async_orders as orders_repo
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import RolloutService
from shared.data.sensors import generate_sensor_data
from shared.messages import Hello
from shared.messages import TelemetryMetric as M
from simulations.demo.fleet import PROBLEM_SEED
from simulations.demo.sample_stores import DeviceSampleStores
from tests.loop.test_loop_async_mode import _config
from tests.loop.test_loop_pipeline import CLASS, DEVICES, _seed, seeded_fleet

FIT = {M.TEMPERATURE_C: 55.0, M.POWER_W: 6.0, M.LABELLED_SAMPLES: 120.0}


def report_telemetry(
    registry: Registry, device: str, metrics: Mapping[str, float], *, ago_s: float = 30.0
) -> None:
    """One telemetry reading of ``metrics`` from ``device``, ``ago_s`` seconds ago."""
    ts = time.time() - ago_s
    rows = [
        TelemetryAggregate(device, int(ts // 60), 0, metric, 1, value, value, value, ts)
        for metric, value in metrics.items()
    ]
    with registry.session() as s:
        reports.merge_telemetry(s, rows)


def report_fit(registry: Registry, names: list[str]) -> None:
    for name in names:
        report_telemetry(registry, name, FIT)


def _pipeline(tmp_path: Path, registry: Registry, keys: KeyStore) -> RetrainPipeline:
    xc, yc = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=1)
    return RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=RolloutService(registry, RecordedDelivery(), keys),
        cohort_data=DeviceSampleStores.under(tmp_path / "fleet"),
        validation=(xc, yc),
        calibration=(xc, yc),
        config=_config(tmp_path),
    )


def _add_peers(tmp_path: Path, registry: Registry, names: list[str]) -> None:
    with registry.session() as s:
        hellos = [Hello(d, CLASS, "0.1", ["onnxruntime:cpu"], 1 << 30, 1 << 30) for d in names]
        devices.record_hellos(s, hellos, now=time.time())
        devices.set_online(s, dict.fromkeys(names, True))
    for i, d in enumerate(names):
        _seed(tmp_path / "fleet", d, 120, drift=False, start=200 + i)


def test_only_eligible_devices_get_orders_and_the_run_says_why(tmp_path: Path) -> None:
    registry, keys = seeded_fleet(tmp_path)
    _add_peers(tmp_path, registry, ["p-hot", "p-busy", "p-quiet"])
    report_fit(registry, DEVICES)
    report_telemetry(registry, "p-hot", {**FIT, M.TEMPERATURE_C: 91.0})
    report_telemetry(registry, "p-busy", {**FIT, M.REQUEST_COUNT: 0.0}, ago_s=100)
    report_telemetry(registry, "p-busy", {**FIT, M.REQUEST_COUNT: 600.0}, ago_s=40)  # 10/s
    # p-quiet sent no telemetry at all
    pipeline = _pipeline(tmp_path, registry, keys)
    try:
        cohort = [*DEVICES, "p-hot", "p-busy", "p-quiet"]
        out = pipeline.run(CLASS, cohort, trigger="manual", reason="async")
        assert out.state == "rolling_out", out.detail
        with registry.session() as s:
            run = admin.get_training_run(s, out.run_id)
            orders = orders_repo.list_orders(s, out.run_id)
        first = run.metrics["eligibility"][0]
        assert (
            first["summary"]
            == "3 devices not eligible: 1 no recent telemetry, 1 serving, 1 too hot"
        )
        assert first["devices"] == {
            "p-busy": ["serving"],
            "p-hot": ["too hot"],
            "p-quiet": ["no recent telemetry", "too few new samples"],
        }
        for buffer in run.metrics["buffers"]:
            assert sorted(f["device"] for f in buffer["folded"]) == DEVICES
        assert {o.device_id for o in orders} == set(DEVICES)  # the ledger is in the registry
        assert {o.state for o in orders} == {"folded"} and len(orders) == 6
        assert all(o.labelled_samples == 120.0 for o in orders)

        # the next run: no new labelled samples since the devices' last contribution
        again = pipeline.run(CLASS, cohort, trigger="manual", reason="async again")
        assert again.state == "failed"
        assert "6 devices not eligible" in (again.detail or "")
        assert "3 too few new samples" in (again.detail or ""), again.detail
    finally:
        registry.close()
