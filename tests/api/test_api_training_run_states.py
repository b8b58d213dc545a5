"""Runs reported through the API move through the training-run table only."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_reported_runs_follow_the_table(client: TestClient, tokens: dict[str, str]) -> None:
    op = {"Authorization": f"Bearer {tokens['operator']}"}
    url = "/api/v1/training-runs"
    assert client.post(url, json={"run_id": "ext-1", "model_name": "m"}, headers=op).is_success
    assert client.patch(f"{url}/ext-1", json={"state": "running"}, headers=op).is_success
    done = client.patch(f"{url}/ext-1", json={"state": "done"}, headers=op)
    assert done.json()["state"] == "done" and done.json()["finished_at"] is not None
    again = client.patch(f"{url}/ext-1", json={"state": "running"}, headers=op)
    assert again.status_code == 409 and "not allowed" in again.json()["message"]
    back = client.patch(f"{url}/ext-1", json={"state": "pending"}, headers=op)
    assert back.status_code == 409
    assert client.get(f"{url}/ext-1", headers=op).json()["state"] == "done"
