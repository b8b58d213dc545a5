"""#17 scenario (short, default suite): six devices on their own hosts enroll over HTTPS, a
signed bundle is rolled out in stages while one device's link is cut for 20 s and another
is capped at 256 kbit/s; at the end every device serves the committed model and no report
is lost (every outbox drained, one terminal event per device in the hub's registry).

Real namespaces, Mosquitto with broker-config's mTLS config, ``cloud-hub serve --tls``,
``edge-agent install`` + ``run --serve``, the rollout driven through ``cloud-hub rollout``
over HTTPS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from simulations.lab import FleetLab, LabConfig
from simulations.lab.fleet import DEVICE_MQTT_PORT
from simulations.lab.outcome import collect_outcomes
from tests.onnx_models import tiny_onnx_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("namespaces")]

CUT_S = 20.0
CAP_KBIT = 256


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.mark.timeout(420)
def test_staged_rollout_over_a_cut_and_a_capped_link(tmp_path: Path) -> None:
    config = LabConfig(root=tmp_path / "lab", devices=6, prefix="flr", subnet="10.213.9.0/24")
    with FleetLab(config) as lab:
        model = tmp_path / "model.onnx"
        model.write_bytes(tiny_onnx_model())
        bundle = lab.build_bundle(model, name="sensor-mlp", version=1)
        lab.cap("dev-003", CAP_KBIT)
        lab.rollout_cli(
            "create", "--bundle", str(bundle), "--device-class", "x86-cpu",
            "--label", "site=lab", "--canary", "1", "--waves", "50,100", "--window", "5",
            "--offline-timeout", "180", "--id", "lab-rollout", "--start",
        )  # fmt: skip
        lab.cut("dev-002")
        cut_at = time.monotonic()
        # the cut is real: dev-002 cannot reach the broker, the others can
        assert not lab.reachable("dev-002", lab.plan.broker, DEVICE_MQTT_PORT)
        assert lab.reachable("dev-001", lab.plan.broker, DEVICE_MQTT_PORT)
        _wait(lambda: time.monotonic() - cut_at >= CUT_S, CUT_S + 5, "the cut")
        lab.restore("dev-002")
        _wait(lambda: lab.rollout_state("lab-rollout") in ("done", "failed", "aborted"), 240,
              "the rollout to end")  # fmt: skip
        assert lab.rollout_state("lab-rollout") == "done", lab.api_get(
            "/api/v1/rollouts/lab-rollout"
        )
        # reports still in flight reach the hub: wait until every outbox has drained
        _wait(lambda: all(o.outbox_left == 0 for o in collect_outcomes(lab)), 60, "the outboxes")
        outcomes = collect_outcomes(lab)
        capped = lab.run_in(lab.plan.device("dev-003"), ["tc", "qdisc", "show", "dev", "eth0"])
        assert f"rate {CAP_KBIT}Kbit" in capped  # the cap held for the whole rollout
    bad = [o for o in outcomes if not (o.serves_committed and o.active_version == 1)]
    assert not bad, bad
    assert all(o.outbox_left == 0 for o in outcomes)
