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

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.enrollment import EnrollmentConfig, EnrollmentService, SqlEnrollmentRepository
from cloud_hub.enrollment.hubdir import register_in_fleet
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.loop.health import class_health
from cloud_hub.loop.policy import RetrainPolicy, decide_retraining
from cloud_hub.registry import Registry, devices, open_registry, reports
from cloud_hub.registry.hello_identity import IDENTITY_MISMATCH
from edge_agent.service.identity import build_csr, generate_device_key
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import DriftReport, Event, Hello, InstalledModel, Status
from tests.security._support_api import RunningApi, auth, recording_logs, request, running_api
from tests.security._support_freshness import HUB_USER, MqttPeer, TrustBroker, running_broker

pytestmark = pytest.mark.integration

ENROLLED = {"site": "plant-1"}


def _wait(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@contextmanager
def _hub(tmp: Path) -> Iterator[tuple[TrustBroker, Registry, RunningApi, FleetIngest]]:
    """Broker, registry, API (with enrollment on the broker's device CA) and ingest."""
    with running_broker(tmp) as broker:
        registry = open_registry(f"sqlite:///{tmp / 'hub.db'}")
        enrollment = EnrollmentService(
            ca=broker.device_ca,
            repository=SqlEnrollmentRepository(registry.engine),
            config=EnrollmentConfig(topic_prefix=broker.scheme.prefix, hub_user=HUB_USER),
            on_enrolled=register_in_fleet(registry),
        )
        endpoint = BrokerEndpoint.from_url(
            f"mqtts://127.0.0.1:{broker.hub_port}",
            ca_file=str(broker.files.ca_cert),
            cert_file=str(broker.files.hub_cert),
            key_file=str(broker.files.hub_key),
        )
        ingest = FleetIngest(
            registry,
            scheme=broker.scheme,
            mqtt_settings=IngestConnection(
                endpoint=endpoint, client_id=f"{HUB_USER}:ingest:r06-{uuid.uuid4().hex[:6]}"
            ),
        )
        ingest.start()
        try:
            with running_api(tmp, registry=registry, enrollment=enrollment) as api:
                yield broker, registry, api, ingest
        finally:
            ingest.stop()
            registry.close()


def _enroll(api: RunningApi, tmp: Path, device_id: str) -> tuple[Path, Path]:
    """Enroll over HTTP as the agent does; returns (certificate, key) files."""
    secret, _ = api.enrollment.issue_token(device_class="x86-cpu", labels=ENROLLED)
    key_pem = generate_device_key()
    body = {
        "token": secret,
        "csr": build_csr(key_pem, device_id).decode(),
        "device_class": "x86-cpu",
        "device_id": device_id,
        "labels": {"camera": "usb"},
    }
    answer = request(
        api.port,
        "POST",
        "/api/v1/enroll",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body
    cert, key = tmp / f"{device_id}.crt", tmp / f"{device_id}.key"
    cert.write_text(answer.json()["certificate"])
    key.write_bytes(key_pem)
    return cert, key


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
    with _hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = _enroll(api, tmp_path, "dev-a")
        device = MqttPeer(
            broker.port,
            client_id="dev-a",
            ca=broker.files.ca_cert,
            cert=cert,
            key=key,
            scheme=broker.scheme,
        )
        try:
            with recording_logs("cloud_hub.ingest") as logs:
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
                _wait(lambda: ingest.stats().written >= 2 and ingest.stats().rejected)
        finally:
            device.close()
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
    with _hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = _enroll(api, tmp_path, "dev-d")
        device = MqttPeer(
            broker.port,
            client_id="dev-d",
            ca=broker.files.ca_cert,
            cert=cert,
            key=key,
            scheme=broker.scheme,
        )
        started = time.time()
        hour_ago = started - 3600
        try:
            topic = broker.scheme.device
            device.publish(
                topic("dev-d", "hello"), _hello("dev-d", device_class="x86-cpu", labels={}).encode()
            )
            status = Status("dev-d", True, installed=InstalledModel("sensor-mlp", 1, "b" * 64))
            device.publish(topic("dev-d", "status"), status.encode())
            # one drifted report that claims it was measured an hour ago
            report = DriftReport("dev-d", "r-1", "sensor-mlp", 1, 100, {}, 9.0, True, ts=hour_ago)
            device.publish(topic("dev-d", "drift"), report.encode())
            _wait(lambda: ingest.stats().written >= 3)
        finally:
            device.close()
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
