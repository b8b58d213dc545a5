"""A ``serve --no-engine`` replica answers rollout commands (registry writes), the engine of
another hub process on the same database carries them out, and ``GET /rollouts/{id}`` — the
bytes each device was sent included — reads the same from both processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from cloud_hub.config import HubConfig
from cloud_hub.hub import Hub, build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, catalog, devices, open_registry
from cloud_hub.rollout.delivery import RecordedDelivery, Shipment
from cloud_hub.rollout.engine import RolloutService
from shared.messages import Hello

T0 = 1_800_000_000.0
DEVICES = [f"dev-{i}" for i in range(4)]


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Hub]:
    server = build_hub(
        HubConfig(
            data_dir=tmp_path / "replica",
            db_url=f"sqlite:///{tmp_path / 'hub.db'}",
            enable_ingest=False,
            offline_after_s=0,
        ),
        rollout_engine=False,
    )
    server.start()
    yield server
    server.stop()


def test_a_replica_without_engine_runs_rollout_commands(replica: Hub, tmp_path: Path) -> None:
    assert replica.engine is None
    engine_registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")  # the other process
    try:
        with engine_registry.session() as s:
            _, token = admin.create_token(s, name="op", role="operator", now=T0)
            for v in (1, 2):
                catalog.register_bundle(
                    s,
                    bundle_id=f"b-v{v}",
                    model_name="m",
                    version=v,
                    device_class="rpi4",
                    size=1000,
                    now=T0,
                )
            hellos = [
                Hello(d, "rpi4", "0.1.0", ["onnxruntime"], 10**9, 10**9, ts=T0) for d in DEVICES
            ]
            devices.record_hellos(s, hellos, now=T0)
            devices.set_online(s, dict.fromkeys(DEVICES, True))
        op = {"Authorization": f"Bearer {token}"}
        config = {
            "bundle_id": "b-v2",
            "target": {"device_class": "rpi4"},
            "stages": [{"percent": 100}],
        }
        with TestClient(replica.app, raise_server_exceptions=False) as c:
            made = c.post(
                "/api/v1/rollouts", json={"config": config, "rollout_id": "r-1"}, headers=op
            )
            assert made.status_code == 201, made.text
            started = c.post("/api/v1/rollouts/r-1/start", headers=op)
            assert started.status_code == 200 and started.json()["state"] == "canary"
            assert "delivery" not in c.get("/api/v1/rollouts/r-1", headers=op).json()

            # sends nothing; reports a delta of 100 bytes per device where the full bundle is
            # 1000 (the engine persists what a delivery reports)
            delivery = RecordedDelivery(
                shipment=lambda call: Shipment(dict.fromkeys(call.device_ids, 100), 1000)
            )
            engine = RolloutService(engine_registry, delivery, KeyStore.init(tmp_path / "keys"))
            engine.tick()
            assert [set(call.device_ids) for call in delivery.deploys] == [set(DEVICES)]

            on_replica = c.get("/api/v1/rollouts/r-1", headers=op).json()
            assert on_replica["delivery"] == {
                "bytes_shipped": 400,
                "bytes_full": 4000,
                "devices": dict.fromkeys(DEVICES, 100),
            }
            assert on_replica["targets"] == {"sent": 4}
            paused = c.post("/api/v1/rollouts/r-1/pause", json={"reason": "lunch"}, headers=op)
            assert paused.json()["state"] == "paused"
        engine_app = create_app(ApiContext(registry=engine_registry, rollouts=engine))
        with TestClient(engine_app) as c:
            on_engine = c.get("/api/v1/rollouts/r-1", headers=op).json()
        assert on_engine["state"] == "paused"
        assert on_engine["delivery"] == on_replica["delivery"]
        assert set(on_engine) == set(on_replica)
    finally:
        engine_registry.close()
