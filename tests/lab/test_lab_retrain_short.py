"""#17 scenario, short (default suite): three devices on their own hosts enroll over HTTPS, the
first model is trained on them over Flower's Deployment Engine (an operator's ``cloud-hub
retrain``: TLS SuperLink on the hub host, SecAgg+, one SuperNode per device on its own sample
store), compressed, signed and rolled out in stages; one device's site drifts and its drift
detector reports it, and the serving hub's own retraining controller (``cloud-hub serve``
with a ``[retraining]`` table) retrains over the Deployment Engine; the new version ships as
deltas in stages while one device's link is cut for 20 s and another is capped at
256 kbit/s; accuracy at the drifted site recovers. The same invariants as the full scenario
(``test_lab_retrain.py``, slow): every device serves the committed new model, no report is
lost, every round ran under SecAgg+, no hub process opened a device's file.

One SecAgg+ round per run and three devices keep it to a few minutes on 2 cores. It covers
the cut and the cap of ``test_lab_rollout.py`` on a trained model instead of a stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.lab.retrain_scenario import RetrainScenarioConfig, run_retrain_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("namespaces"),
    pytest.mark.timeout(900),
]


def test_the_hubs_controller_retrains_on_drift_and_ships_deltas_over_a_cut(
    tmp_path: Path,
) -> None:
    config = RetrainScenarioConfig(
        root=tmp_path, devices=3, drifted=1, rounds=1, first_rounds=1,
        prefix="fls", subnet="10.213.23.0/24", train_timeout_s=300.0, rollout_timeout_s=240.0,
    )  # fmt: skip
    result = run_retrain_scenario(config)
    first, second = result.runs
    assert first["version"] == 1 and second["version"] == 2
    assert second["trigger"] == "drift"  # the serving hub's controller, not the test
    assert not result.violations(last_version=2), result.violations(last_version=2)
    assert {r["engine"] for r in result.rounds} == {"deployment"}
    assert len(result.rounds) == config.first_rounds + config.rounds
    # the drift cohort is the drifted device and its class peers: SecAgg+ over all three
    assert all(r["status"] == "ok" and r["clients"] == config.devices for r in result.rounds)
    # v2 reached the devices as deltas: each received less than the full bundle
    assert len(result.device_bytes) == config.devices, result.device_bytes
    assert all(0 < b < second["bundle_bytes"] for b in result.device_bytes.values()), (
        result.device_bytes,
        second["bundle_bytes"],
    )
    figures = result.figures()
    assert figures["lab_reports_lost"] == 0 and figures["lab_rounds_without_secagg"] == 0
    # the drifted device: v1 fails on its new inputs (one device's class mix: -0.15 here),
    # v2 recovers to within 5 points of v1 on the clean inputs
    acc = result.accuracy
    assert acc["after_drift"] < acc["before_drift"] - 0.1, acc
    assert acc["after_retrain"] > acc["after_drift"] + 0.1, acc
    assert acc["after_retrain"] > acc["before_drift"] - 0.05, acc
