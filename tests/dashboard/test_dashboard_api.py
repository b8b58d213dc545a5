"""The dashboard's server side: page and assets served from the package, summary, stream auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from cloud_hub.dashboard import mount
from cloud_hub.dashboard.summary import change_marker, fleet_summary
from cloud_hub.registry import Registry, admin, devices, open_registry
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
    for asset in ("app.js", "app.css", "uplot.iife.min.js", "uplot.min.css"):
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
