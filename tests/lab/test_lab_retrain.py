"""#17 scenario (slow): devices on their own hosts enroll, train the first model over Flower's
Deployment Engine (TLS SuperLink on the hub host, SecAgg+, one SuperNode per device on its own
sample store), it is compressed, signed and rolled out in stages; one site drifts, the fleet
retrains over the Deployment Engine and the new version ships as deltas in stages while one
device's link is cut for 20 s and another is capped at 256 kbit/s; accuracy at the drifted
site recovers. At the end every device serves the committed new model, no report is lost,
every round ran under SecAgg+, no device port is reachable from the hub's namespace and no
hub training process opened a device's file (:mod:`simulations.lab.retrain_scenario`).

Several minutes on 2 cores (two Deployment Engine runs and two staged rollouts), so it is not
in the default suite; ``benchmarks/deploy.py`` runs the same scenario for its lab figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.lab.retrain_scenario import RetrainScenarioConfig, run_retrain_scenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.usefixtures("namespaces"),
    pytest.mark.timeout(2400),
]


def test_drift_retrain_over_the_deployment_engine_and_delta_rollout(tmp_path: Path) -> None:
    config = RetrainScenarioConfig(root=tmp_path, devices=6, drifted=3, prefix="flt")
    result = run_retrain_scenario(config)
    first, second = result.runs
    assert first["version"] == 1 and second["version"] == 2
    assert not result.violations(last_version=2), result.violations(last_version=2)
    assert {r["engine"] for r in result.rounds} == {"deployment"}
    assert len(result.rounds) == config.first_rounds + config.rounds
    assert all(r["status"] == "ok" and r["clients"] == config.devices for r in result.rounds)
    # the drifted site: v1 fails on the new inputs, v2 (trained on the devices) recovers
    acc = result.accuracy
    assert acc["after_drift"] < acc["before_drift"] - 0.2, acc
    assert acc["after_retrain"] > acc["after_drift"] + 0.2, acc
    # v2 reached the devices as deltas: each received less than the full bundle
    assert len(result.device_bytes) == config.devices, result.device_bytes
    assert all(0 < b < second["bundle_bytes"] for b in result.device_bytes.values()), (
        result.device_bytes,
        second["bundle_bytes"],
    )
    figures = result.figures()
    assert figures["lab_reports_lost"] == 0 and figures["lab_rounds_without_secagg"] == 0
