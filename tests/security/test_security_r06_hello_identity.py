"""R6: a device cannot rewrite its own class and labels, nor its drift duration.

The attack, end to end over the real parts: a device enrolled over the hub's HTTP endpoint
(uvicorn) as ``x86-cpu`` at ``site=plant-1`` connects to Mosquitto (generated mTLS config
and ACL) with its certificate and says hello as ``jetson-orin`` at ``site=plant-9``,
``canary=yes`` — to join another class's canaries and training cohorts. The hub's real
``FleetIngest`` stores the hello. Enrollment stays authoritative, the mismatch is a device
event visible in the API, and the device's other facts are still taken. A drift report
stamped an hour in the past does not make an hour of drift: the hub times it by receipt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.loop.health import class_health
from cloud_hub.loop.policy import RetrainPolicy, decide_retraining
from cloud_hub.registry import devices, reports
from cloud_hub.registry.hello_identity import IDENTITY_MISMATCH
from shared.messages import DriftReport, Event, Hello, InstalledModel, Status
from tests.security._support_api import auth, recording_logs, request
from tests.security._support_enrolled import (
    ENROLLED,
    device_connection,
    enroll_over_http,
    enrolled_hub,
    wait_until,
)

pytestmark = pytest.mark.integration


def _hello(device_id: str, **kw: Any) -> Hello:
    base: dict[str, Any] = dict(
        device_id=device_id,
        device_class="jetson-orin",
        agent_version="9.9.9",
        runtimes=["onnxruntime:cpu"],
        free_disk_bytes=1 << 30,
        free_mem_bytes=1 << 29,
        installed=InstalledModel("sensor-mlp", 1, "b" * 64),
        labels={"site": "plant-9", "canary": "yes"},
        ts=time.time(),
    )
    base.update(kw)
    return Hello(**base)


def test_hello_cannot_rewrite_enrolled_class_or_labels(tmp_path: Path) -> None:
    with enrolled_hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = enroll_over_http(
            api, tmp_path, "dev-a", device_class="x86-cpu", labels={"camera": "usb"}
        )
        with (
            device_connection(broker, "dev-a", cert, key) as device,
            recording_logs("cloud_hub.ingest") as logs,
        ):
            for _ in range(2):  # a reconnecting device repeats its claim
                rc = device.publish(
                    broker.scheme.device("dev-a", "hello"), _hello("dev-a").encode()
                )
                assert not rc.is_failure, rc
            forged = Event(
                device_id="dev-a",
                event_id="hub:identity:0000",
                kind="committed",
                ts=time.time(),
            )
            device.publish(broker.scheme.device("dev-a", "events"), forged.encode())
            wait_until(lambda: ingest.stats().written >= 2 and ingest.stats().rejected)
        assert ingest.stats().rejected == {"reserved_id": 1}
        assert any("reserved_id" in m and "hub" in m for m in logs.messages())

        with registry.session() as s:
            record = devices.get_device(s, "dev-a")
            jetsons = devices.select_device_ids(s, device_class="jetson-orin")
            canaries = devices.select_device_ids(
                s, device_class="x86-cpu", labels={"canary": "yes"}
            )
        assert record.device_class == "x86-cpu"
        assert record.labels == {**ENROLLED, "camera": "usb"}
        assert jetsons == [] and canaries == []
        # what the device may report about itself is still taken
        assert record.agent_version == "9.9.9" and record.installed_version == 1

        # the flag is a device event in the API: once per distinct claim, with the reason
        answer = request(
            api.port, "GET", "/api/v1/devices/dev-a", headers=auth(api.tokens["viewer"])
        )
        assert answer.status == 200, answer.body
        flags = [e for e in answer.json()["recent_events"] if e["kind"] == IDENTITY_MISMATCH]
        assert len(flags) == 1, answer.json()["recent_events"]
        flag = flags[0]
        assert "'jetson-orin'" in flag["detail"] and "enrollment is authoritative" in flag["detail"]
        assert flag["data"]["claimed_labels"] == {"site": "plant-9", "canary": "yes"}
        assert flag["data"]["enrolled_class"] == "x86-cpu"
        assert not any(e["event_id"] == "hub:identity:0000" for e in answer.json()["recent_events"])


def test_drift_duration_is_timed_by_the_hub(tmp_path: Path) -> None:
    with enrolled_hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = enroll_over_http(
            api, tmp_path, "dev-d", device_class="x86-cpu", labels={"camera": "usb"}
        )
        started = time.time()
        hour_ago = started - 3600
        with device_connection(broker, "dev-d", cert, key) as device:
            topic = broker.scheme.device
            device.publish(
                topic("dev-d", "hello"), _hello("dev-d", device_class="x86-cpu", labels={}).encode()
            )
            status = Status("dev-d", True, installed=InstalledModel("sensor-mlp", 1, "b" * 64))
            device.publish(topic("dev-d", "status"), status.encode())
            # one drifted report that claims it was measured an hour ago
            report = DriftReport("dev-d", "r-1", "sensor-mlp", 1, 100, {}, 9.0, True, ts=hour_ago)
            device.publish(topic("dev-d", "drift"), report.encode())
            wait_until(lambda: ingest.stats().written >= 3)
        with registry.session() as s:
            stored = reports.list_drift(s, device_id="dev-d").items
            health = class_health(
                s, device_class="x86-cpu", model_name="sensor-mlp", policy=RetrainPolicy()
            )
        assert [r.ts for r in stored] == [hour_ago]  # the device's claim is kept, as its claim
        assert health.drifted_since["dev-d"] >= started  # the duration runs from receipt
        policy = RetrainPolicy(drift_duration_s=600, drift_fraction=1.0, min_devices=2)
        decision = decide_retraining(policy, health, now=time.time())
        assert not decision.retrain and "dev-d" not in decision.cohort


def test_only_a_device_never_enrolled_takes_its_class_from_its_first_hello() -> None:
    from cloud_hub.registry.hello_identity import StoredIdentity, accept_hello_identity

    first = accept_hello_identity(StoredIdentity(None, {}), _hello("dev-n"), now=5.0)
    assert (first.device_class, first.mismatch) == ("jetson-orin", None)
    assert first.labels == first.new_labels == {"site": "plant-9", "canary": "yes"}
    # from then on it is fixed like an enrolled one; agreeing hellos raise nothing
    fixed = StoredIdentity("jetson-orin", first.labels)
    again = accept_hello_identity(fixed, _hello("dev-n", labels={"site": "plant-9"}), now=6.0)
    assert again.mismatch is None and again.new_labels == {}
    moved = accept_hello_identity(fixed, _hello("dev-n", device_class="x86-cpu"), now=7.0)
    assert moved.device_class == "jetson-orin" and moved.mismatch is not None
    assert moved.mismatch.ts == 7.0  # stamped with the hub's receive time
