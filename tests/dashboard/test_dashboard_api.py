"""The dashboard's server side: page and assets served from the package, summary, stream auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from cloud_hub.dashboard import mount
from cloud_hub.dashboard.summary import change_marker, fleet_summary
from cloud_hub.registry import Registry, admin, devices, open_registry, reports
from shared.messages import Hello, InstalledModel, Status

T0 = 1_800_000_000.0


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    yield reg
    reg.close()


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    context = ApiContext(registry=registry, clock=lambda: T0)
    app = create_app(context)
    mount(app, context)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def viewer(registry: Registry) -> str:
    with registry.session() as s:
        _, token = admin.create_token(s, name="v", role="viewer", now=T0)
    return token


def _add_devices(registry: Registry) -> None:
    hellos = [
        Hello(
            device_id=f"dev-{i}",
            device_class="jetson-orin" if i % 2 else "x86-cpu",
            agent_version="0.1.0",
            runtimes=["onnxruntime-cuda", "onnxruntime-cpu"] if i % 2 else ["onnxruntime-cpu"],
            free_disk_bytes=1,
            free_mem_bytes=1,
            installed=InstalledModel("sensor-mlp", 1 + (i % 3), f"b{i}"),
            ts=T0,
        )
        for i in range(6)
    ]
    with registry.session() as s:
        devices.record_hellos(s, hellos, now=T0)
        devices.record_statuses(
            s,
            [
                Status(
                    device_id="dev-1",
                    online=True,
                    provider="CPUExecutionProvider",
                    runtime="onnxruntime",
                    ts=T0 + 1,
                )
            ],
            now=T0 + 1,
        )


def test_page_and_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200 and "fedfleet" in page.text and "/ui/static/app.js" in page.text
    scripts = ("app.js", "charts.js", "fleet.js", "device.js", "rollouts.js", "models.js")
    for name in scripts:
        assert f"/ui/static/{name}" in page.text, name
    for asset in (*scripts, "app.css", "uplot.iife.min.js", "uplot.min.css"):
        r = client.get(f"/ui/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 500, asset
    assert "cdn" not in page.text.lower() and "https://" not in page.text


def test_summary_needs_a_token_and_counts_by_class_and_version(
    client: TestClient, registry: Registry, viewer: str
) -> None:
    assert client.get("/api/v1/fleet/summary").status_code == 401
    _add_devices(registry)
    body = client.get("/api/v1/fleet/summary", headers={"Authorization": f"Bearer {viewer}"}).json()
    assert body["total"] == 6
    assert body["by_class"] == {"jetson-orin": 3, "x86-cpu": 3}
    assert sum(body["by_version"].values()) == 6 and "sensor-mlp v2" in body["by_version"]
    assert body["cpu_fallback"] == 1  # dev-1 has a CUDA runtime but reports the CPU provider


def test_stream_refuses_bad_tickets(client: TestClient, viewer: str) -> None:
    # the stream opens with a single-use ticket, never the API token (R14)
    r = client.get("/ui/stream", params={"ticket": "not-a-real-ticket"})
    assert r.status_code == 401 and "ticket" in r.json()["message"]
    assert client.get("/ui/stream", params={"access_token": viewer}).status_code in (401, 422)
    assert client.get("/ui/stream").status_code in (401, 422)
    assert client.post("/api/v1/stream-tickets").status_code == 401


def test_change_marker_moves_when_the_fleet_changes(registry: Registry) -> None:
    with registry.session() as s:
        before = change_marker(s)
        assert fleet_summary(s).total == 0
    _add_devices(registry)
    with registry.session() as s:
        assert change_marker(s) != before
        assert fleet_summary(s).total == 6


def test_health_verdict_never_says_healthy_beside_a_problem() -> None:
    from cloud_hub.dashboard.overview import HealthVerdict, health_verdict

    def verdict(**change: Any) -> HealthVerdict:
        facts: dict[str, Any] = {
            "connected": True,
            "online": True,
            "healthy": True,
            "ota_state": "idle",
            "drifted": False,
            "rollout_target_state": None,
            **change,
        }
        return health_verdict(**facts)

    assert verdict().state == "healthy"
    cases: dict[str, dict[str, Any]] = {
        "never_connected": {"connected": False},
        "offline": {"online": False},
        "failed": {"ota_state": "failed"},
        "unhealthy": {"healthy": False},
        "drifting": {"drifted": True},
        "updating": {"ota_state": "downloading"},
    }
    for expected, change in cases.items():
        got = verdict(**change)
        assert got.state == expected and got.reason, (expected, got)
    # a failed rollout target outranks the device's own "healthy"
    held = verdict(rollout_target_state="rollback_failed")
    assert held.state == "failed" and "rollback_failed" in held.reason
    # a device that never connected is not "healthy" whatever its defaults say
    assert verdict(connected=False, drifted=None).state == "never_connected"


def test_overview_gives_drift_of_the_running_version_only(
    client: TestClient, registry: Registry, viewer: str
) -> None:
    from shared.messages import DriftReport, FeatureDrift

    _add_devices(registry)  # dev-0 runs sensor-mlp v1
    with registry.session() as s:
        old = DriftReport(
            "dev-0", "r-old", "sensor-mlp", 9, 100, {"f": FeatureDrift(1.0, 1.0)}, 1.0, True, ts=T0
        )
        now = DriftReport(
            "dev-0", "r-now", "sensor-mlp", 1, 100, {"f": FeatureDrift(0.1, 0.1)}, 0.1, False, ts=T0
        )
        reports.record_drift(s, [now, old], now=T0)
    assert client.get("/api/v1/fleet/overview", params={"device_id": "dev-0"}).status_code == 401
    auth = {"Authorization": f"Bearer {viewer}"}
    body = client.get(
        "/api/v1/fleet/overview",
        params=[("device_id", "dev-0"), ("device_id", "nope")],
        headers=auth,
    ).json()
    assert [o["device_id"] for o in body] == ["dev-0"]
    assert body[0]["drift"]["model_version"] == 1 and body[0]["drift"]["drifted"] is False
    too_many = [("device_id", f"d{i}") for i in range(201)]
    assert client.get("/api/v1/fleet/overview", params=too_many, headers=auth).status_code in (
        400,
        422,
    )
