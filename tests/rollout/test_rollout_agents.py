"""Staged rollouts end to end: a real hub process (``cloud-hub serve``: API + ingest + engine,
SQLite registry), real ``edge-agent run`` processes and the real Mosquitto on 127.0.0.1:1883
(unique topic prefix). Driven through the REST API with an operator token.

One fleet serves the whole module, in order: v1 everywhere; v2 (good) promoted through every
wave to done while the hub is SIGKILLed and restarted mid-rollout; then three bad bundles —
v3 fails the device health check (not an ONNX model), v4 has a high inference error rate,
v5 loses accuracy on labelled feedback (for these two the test publishes the devices'
telemetry as real MQTT messages, since inference traffic comes from the runtime stack) —
each halts at the canary, the canary goes back to v2 and no other device receives it.

The 20-agent variant is ``test_rollout_agents_20.py`` (slow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from cloud_hub.delivery.local_fleet import LocalAgentFleet
from cloud_hub.keys import KeyStore
from cloud_hub.registry import devices
from cloud_hub.registry.tables import EventRow
from shared.messages import EventKind, Telemetry, new_id
from shared.topics import TopicScheme

from .conftest import MQTT_URL, HubProcess, build_model_bundle

pytestmark = pytest.mark.integration

AGENT_TABLES = {
    "timeouts": {"chunk_retry_s": 0.5, "health_s": 30},
    "limits": {"fsync_chunks": False},
    "labels": {"site": "plant-3"},
}


def eventually(check: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s\n{diag()}")
        time.sleep(0.25)


@dataclass
class World:
    keys: KeyStore
    hub: HubProcess
    fleet: LocalAgentFleet
    prefix: str
    bundles: dict[int, str]
    telemetry_seq: int = 0

    def diag(self) -> str:
        agents = "\n".join(f"--- {d}\n{self.fleet.logs(d, 800)}" for d in self.fleet.device_ids[:3])
        return f"--- hub\n{self.hub.logs(4000)}\n{agents}"

    def installed(self) -> dict[str, str | None]:
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                page = devices.list_devices(s, devices.DeviceQuery(limit=1000))
                return {d.device_id: d.installed_bundle_id for d in page.items}
        finally:
            reg.close()

    def events(self, prefix: str) -> list[tuple[str, str]]:
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                rows = s.execute(
                    select(EventRow.device_id, EventRow.kind).where(
                        EventRow.deployment_id.startswith(prefix, autoescape=True)
                    )
                )
                return [(d, k) for d, k in rows]
        finally:
            reg.close()

    def all_on(self, version: int) -> bool:
        got = self.installed()
        return all(got.get(d) == self.bundles[version] for d in self.fleet.device_ids)

    def rollout(self, version: int, stages: list[dict[str, Any]], **extra: Any) -> str:
        config = {
            "bundle_id": self.bundles[version],
            "target": {"device_class": "x86-cpu", "labels": {"site": "plant-3"}},
            "stages": stages,
            "gate_window_s": extra.pop("window", 2.0),
            "offline_timeout_s": 60.0,
            "seed": version,
        }
        config.update(extra.pop("config", {}))
        body: dict[str, Any] = {"config": config, **extra}
        api = self.hub.api()
        rid = str(api.request("POST", "/api/v1/rollouts", body)["rollout_id"])
        api.request("POST", f"/api/v1/rollouts/{rid}/start")
        return rid

    def status(self, rid: str) -> dict[str, Any]:
        status: dict[str, Any] = self.hub.api().request("GET", f"/api/v1/rollouts/{rid}")
        return status

    def wait_state(self, rid: str, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        return eventually(  # type: ignore[no-any-return]
            lambda: (st := self.status(rid))["state"] in states and st,
            timeout,
            f"rollout {rid} in {states}",
            lambda: f"{self.status(rid)}\n{self.diag()}",
        )

    def publish_telemetry(self, device_ids: list[str], version: int, **metrics: float) -> None:
        """What a device's runtime would report: real Telemetry messages over MQTT."""
        topics = TopicScheme(self.prefix)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"t-{new_id()[:10]}",
            protocol=mqtt.MQTTv5,
        )
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        try:
            for d in device_ids:
                self.telemetry_seq += 1
                msg = Telemetry(
                    device_id=d,
                    seq=self.telemetry_seq,
                    metrics=dict(metrics),
                    model_version=version,
                )
                client.publish(topics.device(d, "telemetry"), msg.encode(), qos=1).wait_for_publish(
                    5
                )
        finally:
            client.loop_stop()
            client.disconnect()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rollout-agents")
    keys = KeyStore.init(root / "keys")
    # every bundle is built before the hub starts (it indexes its bundle store at start)
    bundles = {
        1: build_model_bundle(keys, version=1),
        2: build_model_bundle(keys, version=2),
        3: build_model_bundle(keys, version=3, loadable=False),
        4: build_model_bundle(keys, version=4),
        5: build_model_bundle(keys, version=5),
    }
    prefix = f"ro-{new_id()[:10]}"
    hub = HubProcess(root / "hub", prefix, keys)
    hub.start()
    fleet = LocalAgentFleet(
        root=root / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=MQTT_URL,
        prefix=prefix,
        n=6,
        tables=AGENT_TABLES,
    )
    fleet.start()
    w = World(keys, hub, fleet, prefix, bundles)
    try:
        eventually(
            lambda: set(w.installed()) >= set(fleet.device_ids),
            60,
            "every agent registered",
            w.diag,
        )
        rid = w.rollout(1, [{"percent": 100}], window=0.5)
        w.wait_state(rid, ("done",), 60)
        eventually(lambda: w.all_on(1), 30, "v1 everywhere", w.diag)
        yield w
    finally:
        fleet.stop()
        hub.stop()


def test_good_bundle_promotes_to_done_across_a_hub_kill(world: World) -> None:
    rid = world.rollout(
        2, [{"count": 1}, {"percent": 50}, {"percent": 100}], window=3.0, previous_bundle_id=None
    )
    status = world.wait_state(rid, ("wave", "done"), 60)
    assert status["stages"][0]["state"] == "passed"
    world.hub.kill()  # mid-rollout: no chance to flush or say goodbye
    world.hub.start()
    final = world.wait_state(rid, ("done",), 90)
    sizes = [len(s["devices"]) for s in final["stages"]]
    assert sizes == [1, 2, 3]
    assert all(s["state"] == "passed" for s in final["stages"])
    eventually(lambda: world.all_on(2), 30, "v2 everywhere", world.diag)
    installs: dict[str, int] = {}
    for device, kind in world.events(f"{rid}.d"):
        if kind == EventKind.INSTALLED:
            installs[device] = installs.get(device, 0) + 1
    assert installs == dict.fromkeys(world.fleet.device_ids, 1)  # nothing lost or repeated
    assert world.hub.starts == 2


def _bad_rollout(
    world: World, version: int, publish: Callable[[list[str]], None] | None
) -> dict[str, Any]:
    if not world.all_on(2):
        pytest.skip("needs the fleet on v2 (run the module in order)")
    # the previous version's baseline on every device
    world.publish_telemetry(
        world.fleet.device_ids,
        2,
        p95_ms=10.0,
        request_count=200.0,
        error_count=0.0,
        feedback_count=100.0,
        feedback_correct=90.0,
    )
    rid = world.rollout(
        version, [{"count": 1}, {"percent": 100}], window=4.0, previous_bundle_id=world.bundles[2]
    )
    if publish is not None:
        canary = eventually(
            lambda: [
                t["device_id"]
                for t in world.hub.api().request("GET", f"/api/v1/rollouts/{rid}/targets")
                if t["stage_index"] == 0 and t["state"] == "succeeded"
            ],
            60,
            "canary installed",
            world.diag,
        )
        publish(canary)
    final = world.wait_state(rid, ("rolled_back",), 90)
    canary_ids = final["stages"][0]["devices"]
    assert len(canary_ids) == 1
    assert final["stages"][0]["state"] == "failed"
    assert final["stages"][1]["state"] == "pending"
    eventually(lambda: world.all_on(2), 30, "canary back on v2", world.diag)
    received = {d for d, _kind in world.events(f"{rid}.d")}
    assert received <= set(canary_ids)  # the rest never received it
    assert final["targets"].get("skipped") == len(world.fleet.device_ids) - 1
    return final


def test_bundle_failing_device_health_check_halts_at_canary(world: World) -> None:
    final = _bad_rollout(world, 3, None)
    assert "install_success" in final["reason"], final["reason"]
    assert final["stages"][0]["gate"]["failed"] == 1


def test_high_error_rate_halts_at_canary_and_rolls_back(world: World) -> None:
    def errors(canary: list[str]) -> None:
        world.publish_telemetry(canary, 4, p95_ms=11.0, request_count=100.0, error_count=40.0)

    final = _bad_rollout(world, 4, errors)
    assert "error_rate" in final["reason"], final["reason"]
    assert final["targets"].get("rolled_back") == 1


def test_accuracy_drop_on_feedback_halts_at_canary_and_rolls_back(world: World) -> None:
    def feedback(canary: list[str]) -> None:
        world.publish_telemetry(canary, 5, p95_ms=10.0, feedback_count=100.0, feedback_correct=40.0)

    final = _bad_rollout(world, 5, feedback)
    assert "accuracy_drop" in final["reason"], final["reason"]
    checks = {c["name"]: c for c in final["stages"][0]["gate"]["checks"]}
    assert checks["accuracy_drop"]["value"] == pytest.approx(0.5)
