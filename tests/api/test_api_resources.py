"""Resources end to end over HTTP: the device listing at fleet scale, bundles, rollouts
through the real engine, reports and metrics."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from cloud_hub.bundles import default_store
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, reports, rollouts
from cloud_hub.registry.records import TelemetryAggregate
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import RolloutService
from shared.bundle import BundleManifest, artifact_info, build_bundle
from shared.messages import DriftReport, Event, FeatureDrift, Hello, InstalledModel, Status

T0 = 1_800_000_000.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _hello(i: int) -> Hello:
    return Hello(
        device_id=f"dev-{i:05d}",
        device_class=("rpi4", "jetson-orin", "x86-cpu")[i % 3],
        agent_version="0.1.0",
        runtimes=["onnx-cpu"],
        free_disk_bytes=1,
        free_mem_bytes=1,
        labels={"site": f"plant-{i % 7}", "line": "a" if i % 2 else "b"},
        ts=T0,
    )


def test_device_listing_at_fleet_scale(
    client: TestClient, tokens: dict[str, str], registry: Registry
) -> None:
    with registry.session() as s:
        devices.record_hellos(s, [_hello(i) for i in range(5000)], now=T0)
        devices.record_statuses(
            s,
            [
                Status(
                    device_id=f"dev-{i:05d}",
                    online=True,
                    installed=InstalledModel("m", 1 + i % 2, "b"),
                    ts=T0,
                )
                for i in range(5000)
            ],
            now=T0,
        )
        devices.set_online(s, {f"dev-{i:05d}": i % 5 != 0 for i in range(5000)})
    v = bearer(tokens["viewer"])
    started = time.perf_counter()
    page = client.get("/api/v1/devices?limit=100&offset=200", headers=v).json()
    filtered = client.get(
        "/api/v1/devices",
        params=[
            ("device_class", "rpi4"),
            ("label", "site=plant-3"),
            ("label", "line=a"),
            ("online", "true"),
            ("version", "2"),
        ],
        headers=v,
    ).json()
    search = client.get("/api/v1/devices?q=dev-0499&sort=last_seen&order=desc", headers=v).json()
    elapsed = time.perf_counter() - started
    assert page["total"] == 5000 and len(page["items"]) == 100
    assert page["items"][0]["device_id"] == "dev-00200"
    expected = [
        i
        for i in range(5000)
        if i % 3 == 0 and i % 7 == 3 and i % 2 == 1 and i % 5 != 0 and i % 2 == 1
    ]
    assert filtered["total"] == len(expected) > 0
    assert {d["device_id"] for d in filtered["items"]} == {f"dev-{i:05d}" for i in expected[:50]}
    assert search["total"] == 10
    assert elapsed < 5.0, f"three listings over 5,000 devices took {elapsed:.2f}s"


def test_device_detail_and_reports(
    client: TestClient, tokens: dict[str, str], registry: Registry
) -> None:
    with registry.session() as s:
        devices.record_hellos(s, [_hello(1)], now=T0)
        reports.record_events(
            s,
            [
                Event(
                    device_id="dev-00001",
                    event_id="e1",
                    kind="installed",
                    deployment_id="r1",
                    ts=T0,
                )
            ],
            now=T0,
        )
        reports.record_drift(
            s,
            [
                DriftReport(
                    device_id="dev-00001",
                    report_id="r1",
                    model_name="m",
                    model_version=1,
                    window_size=10,
                    features={"x": FeatureDrift(0.4, 0.3)},
                    drift_score=0.4,
                    drifted=True,
                    ts=T0,
                )
            ],
            now=T0,
        )
        reports.merge_telemetry(
            s,
            [TelemetryAggregate("dev-00001", int(T0 // 60), 1, "p95_ms", 2, 30.0, 20.0, 10.0, T0)],
        )
    v = bearer(tokens["viewer"])
    detail = client.get("/api/v1/devices/dev-00001", headers=v).json()
    assert detail["device"]["labels"] == {"site": "plant-1", "line": "a"}
    assert [e["event_id"] for e in detail["recent_events"]] == ["e1"]
    assert detail["recent_drift"][0]["drifted"] is True
    series = client.get("/api/v1/devices/dev-00001/telemetry?metric=p95_ms", headers=v).json()
    assert series == [
        {
            "device_id": "dev-00001",
            "minute": int(T0 // 60),
            "model_version": 1,
            "metric": "p95_ms",
            "count": 2,
            "sum": 30.0,
            "max": 20.0,
            "last": 10.0,
            "last_ts": T0,
        }
    ]
    assert client.get("/api/v1/events?deployment_id=r1", headers=v).json()["total"] == 1
    assert client.get("/api/v1/drift?drifted=true", headers=v).json()["total"] == 1
    assert client.get("/api/v1/devices/dev-99999/telemetry", headers=v).status_code == 404
    assert client.get("/api/v1/device-classes", headers=v).json()[0]["name"] == "jetson-orin"
    body = {"description": "Raspberry Pi 4", "profile": {"precision": "int8"}}
    op = bearer(tokens["operator"])
    put = client.put("/api/v1/device-classes/rpi4", json=body, headers=op)
    assert put.status_code == 200 and put.json()["profile"] == {"precision": "int8"}


def test_bundle_upload_and_registration(
    client: TestClient, tokens: dict[str, str], context: ApiContext, tmp_path: Path
) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    # the hub verifies uploads against its own keys (R1): these are the hub's keys
    context.bundles = default_store(keys)
    model = b"\x00onnx-bytes" * 100
    manifest = BundleManifest(
        model_name="sensor-mlp",
        version=3,
        device_class="rpi4",
        created="2026-11-24T00:00:00Z",
        expires="2027-11-24T00:00:00Z",
        artifacts=[artifact_info("model.onnx", model, "model")],
        metrics={"accuracy": 0.93},
        lineage={"flower_run": "run-7"},
    )
    data = build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=keys.signing_keys(),
        keyring_envelope=keys.keyring_envelope(),
    )
    op = bearer(tokens["operator"])
    r = client.post(
        "/api/v1/bundles/upload",
        content=data,
        headers={**op, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    bundle = r.json()
    assert (bundle["model_name"], bundle["version"], bundle["device_class"], bundle["size"]) == (
        "sensor-mlp",
        3,
        "rpi4",
        len(data),
    )
    assert Path(bundle["path"]).read_bytes() == data
    again = client.post("/api/v1/bundles/upload", content=data, headers=op)
    assert again.status_code == 201 and again.json()["bundle_id"] == bundle["bundle_id"]
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    bad = client.post("/api/v1/bundles/upload", content=corrupt, headers=op)
    assert bad.status_code == 422 and "sha256" in bad.json()["message"]
    assert client.post("/api/v1/bundles/upload", content=b"junk", headers=op).status_code == 422
    v = bearer(tokens["viewer"])
    versions = client.get("/api/v1/models/sensor-mlp/versions", headers=v).json()
    assert versions[0]["metrics"] == {"accuracy": 0.93} and versions[0]["lineage"] == {
        "flower_run": "run-7"
    }
    assert client.get(f"/api/v1/bundles/{bundle['bundle_id']}", headers=v).status_code == 200
    # registration by id: only a bundle the store holds and that verifies, as it describes itself
    v4 = dataclasses.replace(manifest, version=4)
    data4 = build_bundle(
        v4,
        {"model.onnx": model},
        signing_keys=keys.signing_keys(),
        keyring_envelope=keys.keyring_envelope(),
    )
    stored = context.bundles.add(data4, now=datetime.fromtimestamp(T0, timezone.utc))
    body = {
        "bundle_id": stored.bundle_id,
        "model_name": "sensor-mlp",
        "version": 4,
        "device_class": "rpi4",
        "size": len(data4),
    }
    wrong = client.post("/api/v1/bundles", json={**body, "size": 6}, headers=op)
    assert wrong.status_code == 422 and "signed bundle says" in wrong.json()["message"]
    unknown = client.post("/api/v1/bundles", json={**body, "bundle_id": "b-x"}, headers=op)
    assert unknown.status_code == 422
    assert client.post("/api/v1/bundles", json=body, headers=op).status_code == 201


def test_rollout_actions_without_engine_are_refused_cleanly(
    client: TestClient, tokens: dict[str, str]
) -> None:
    r = client.post("/api/v1/rollouts", json={"config": {}}, headers=bearer(tokens["operator"]))
    assert r.status_code == 409 and "rollout engine" in r.json()["message"]


def test_rollout_lifecycle_through_the_engine(
    registry: Registry, tokens: dict[str, str], tmp_path: Path
) -> None:
    delivery = RecordedDelivery()
    now = [T0]
    engine = RolloutService(
        registry, delivery, KeyStore.init(tmp_path / "keys"), clock=lambda: now[0]
    )
    with registry.session() as s:
        for v in (1, 2):
            catalog.register_bundle(
                s,
                bundle_id=f"b-v{v}",
                model_name="m",
                version=v,
                device_class="rpi4",
                size=1,
                now=T0,
            )
        devices.record_hellos(s, [_hello(i) for i in range(0, 30, 3)], now=T0)
        devices.set_online(s, {f"dev-{i:05d}": True for i in range(0, 30, 3)})
    app = create_app(ApiContext(registry=registry, rollouts=engine, clock=lambda: now[0]))
    op = bearer(tokens["operator"])
    with TestClient(app, raise_server_exceptions=False) as c:
        config = {
            "bundle_id": "b-v2",
            "target": {"device_class": "rpi4"},
            "stages": [{"count": 2}, {"percent": 100}],
        }
        r = c.post("/api/v1/rollouts", json={"config": config, "rollout_id": "r-api"}, headers=op)
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "draft" and r.json()["previous_bundle_id"] == "b-v1"
        bad = c.post("/api/v1/rollouts", json={"config": {**config, "stages": []}}, headers=op)
        assert bad.status_code == 422 and "stages" in bad.json()["message"]
        assert (
            c.post(
                "/api/v1/rollouts", json={"config": config, "rollout_id": "r-api"}, headers=op
            ).status_code
            == 409
        )
        started = c.post("/api/v1/rollouts/r-api/start", headers=op)
        assert started.status_code == 200 and started.json()["state"] == "canary"
        engine.tick()
        assert delivery.deploys and len(delivery.deploys[0].device_ids) == 2
        assert (
            c.post("/api/v1/rollouts/r-api/pause", json={"reason": "lunch"}, headers=op).json()[
                "state"
            ]
            == "paused"
        )
        assert c.post("/api/v1/rollouts/r-api/start", headers=op).status_code == 409
        assert c.post("/api/v1/rollouts/r-api/resume", headers=op).json()["state"] == "canary"
        aborted = c.post("/api/v1/rollouts/r-api/abort", headers=op).json()
        assert aborted["state"] == "aborted"
        assert c.post("/api/v1/rollouts/nope/start", headers=op).status_code == 404
        viewer = bearer(tokens["viewer"])
        assert c.get("/api/v1/rollouts?state=aborted", headers=viewer).json()["total"] == 1
        assert len(c.get("/api/v1/rollouts/r-api/targets", headers=viewer).json()) == 10
        # each move, by the token that made it, with the reason it added
        history = c.get("/api/v1/rollouts/r-api/history", headers=viewer).json()
        assert [(m["by"], m["from"], m["to"], m["reason"]) for m in history] == [
            ("operator-bot", "draft", "canary", ""),
            ("operator-bot", "canary", "paused (canary)", "lunch"),
            ("operator-bot", "paused (canary)", "canary", ""),
            ("operator-bot", "canary", "aborted", "aborted by operator"),
        ]
        assert c.get("/api/v1/rollouts/nope/history", headers=viewer).status_code == 404
        assert c.get("/api/v1/rollouts/r-api/history").status_code == 401
        metrics = c.get("/metrics").text
    assert 'fedfleet_rollouts{state="aborted"} 1.0' in metrics
    assert "fedfleet_devices_online 10.0" in metrics
    with registry.session() as s:
        assert rollouts.get_rollout(s, "r-api").state == "aborted"


def test_training_runs_and_model_versions(client: TestClient, tokens: dict[str, str]) -> None:
    op = bearer(tokens["operator"])
    r = client.post(
        "/api/v1/training-runs",
        json={"run_id": "run-1", "model_name": "m", "config": {"rounds": 3}},
        headers=op,
    )
    assert r.status_code == 201 and r.json()["state"] == "pending"
    r = client.patch(
        "/api/v1/training-runs/run-1",
        json={"state": "done", "result_version": 2, "metrics": {"acc": 0.9}},
        headers=op,
    )
    assert r.json()["finished_at"] is not None and r.json()["result_version"] == 2
    assert (
        client.post(
            "/api/v1/training-runs", json={"run_id": "run-1", "model_name": "m"}, headers=op
        ).status_code
        == 409
    )
    r = client.post(
        "/api/v1/models/m/versions",
        json={"version": 2, "training_run_id": "run-1", "metrics": {"acc": 0.9}},
        headers=op,
    )
    assert r.status_code == 201
    assert client.get("/api/v1/models", headers=op).json()[0]["name"] == "m"


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/openapi.json"])
def test_public_endpoints(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200
