"""Authentication (401), roles (403) and the audit log of mutating calls."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cloud_hub.registry import Registry, admin, devices

T0 = 1_800_000_000.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer ffh_nope_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_unauthenticated_calls_are_refused_with_401(
    client: TestClient, headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/rollouts"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/devices/d1"),
    ]:
        r = client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (method, path, r.text)
        body = r.json()
        assert body["error"] == "unauthorized" and body["message"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_roles_are_enforced_with_403(client: TestClient, tokens: dict[str, str]) -> None:
    viewer, operator, admin_token = tokens["viewer"], tokens["operator"], tokens["admin"]
    assert client.get("/api/v1/devices", headers=bearer(viewer)).status_code == 200
    body = {"name": "ci", "role": "viewer"}
    r = client.post("/api/v1/tokens", headers=bearer(viewer), json=body)
    assert r.status_code == 403 and "admin" in r.json()["message"]
    assert client.post("/api/v1/tokens", headers=bearer(operator), json=body).status_code == 403
    labels = {"labels": {"site": "x"}}
    assert (
        client.patch("/api/v1/devices/d1", headers=bearer(viewer), json=labels).status_code == 403
    )
    assert client.get("/api/v1/audit", headers=bearer(operator)).status_code == 403
    created = client.post("/api/v1/tokens", headers=bearer(admin_token), json=body)
    assert created.status_code == 201
    new = created.json()
    assert client.get("/api/v1/whoami", headers=bearer(new["token"])).json()["role"] == "viewer"
    revoked = client.delete(
        f"/api/v1/tokens/{new['record']['token_id']}", headers=bearer(admin_token)
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/api/v1/whoami", headers=bearer(new["token"])).status_code == 401


def test_every_mutating_call_is_audited(
    client: TestClient, tokens: dict[str, str], registry: Registry
) -> None:
    with registry.session() as s:
        devices.register_device(s, "d1", device_class="rpi4", now=T0)
    op = bearer(tokens["operator"])
    assert (
        client.patch("/api/v1/devices/d1", headers=op, json={"labels": {"site": "p3"}}).status_code
        == 200
    )
    assert client.get("/api/v1/devices", headers=op).status_code == 200  # reads are not audited
    assert client.delete("/api/v1/devices/d1", headers=op).status_code == 403
    assert client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 401
    with registry.session() as s:
        entries = admin.list_audit(s).items
    seen = [(e.actor, e.role, e.action, e.resource, e.status) for e in reversed(entries)]
    assert seen == [
        ("operator-bot", "operator", "PATCH", "/api/v1/devices/d1", 200),
        ("operator-bot", "operator", "DELETE", "/api/v1/devices/d1", 403),
        ("anonymous", "", "POST", "/api/v1/tokens", 401),
    ]
    assert all(e.ts == T0 for e in entries)
    r = client.get("/api/v1/audit", headers=bearer(tokens["admin"]))
    assert r.status_code == 200 and r.json()["total"] == 3


def test_errors_are_json_with_a_message(client: TestClient, tokens: dict[str, str]) -> None:
    v = bearer(tokens["viewer"])
    r = client.get("/api/v1/devices/nope", headers=v)
    assert r.status_code == 404 and r.json() == {
        "error": "not_found",
        "message": "device 'nope' not found",
        "status": 404,
    }
    r = client.get("/api/v1/devices?limit=0", headers=v)
    assert r.status_code == 422 and r.json()["message"].startswith("query.limit")
    r = client.get("/api/v1/devices/bad%00id", headers=v)
    assert r.status_code == 422
    assert client.get("/api/v1/nowhere", headers=v).json()["error"] == "not_found"
    r = client.put("/api/v1/devices", headers=v)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_oversized_bodies_are_refused_and_audited(
    client: TestClient, tokens: dict[str, str], registry: Registry
) -> None:
    big = (
        b'{"run_id": "r", "model_name": "m", "config": {"x": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
    )
    r = client.post(
        "/api/v1/training-runs",
        content=big,
        headers={**bearer(tokens["operator"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    with registry.session() as s:
        (entry,) = admin.list_audit(s).items
    assert (entry.action, entry.resource, entry.status) == ("POST", "/api/v1/training-runs", 413)
