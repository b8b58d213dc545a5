"""R16: a device the operator deletes is dropped by the broker within seconds, with no restart
and no file copied to the broker host; no device can reach the broker's control topic.

Against the real pieces: ``cloud-hub broker-config`` writes the broker setup (with the
dynamic security plugin on the device listener), Mosquitto runs with exactly that config,
the hub API deletes the device (``DELETE /api/v1/devices/{id}``), and the device is an
MQTT v5 client holding its enrolled certificate.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import EnrollmentConfig, EnrollmentRequest, open_enrollment
from cloud_hub.enrollment.broker_admin import BrokerAccessControl
from cloud_hub.enrollment.dynsec import (
    ADMIN_ROLE,
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
    REVOKED_ROLE,
    BrokerAdminError,
    broker_admin_user,
    render_dynsec_config,
)
from cloud_hub.enrollment.hubdir import broker_access_control
from cloud_hub.enrollment.service import EnrollmentService
from cloud_hub.registry import open_registry
from edge_agent.service.identity import build_csr, generate_device_key
from tests.identity.identity_support import MqttProbe
from tests.security._support_api import RunningApi, auth, running_api
from tests.security._support_identity import BrokerSetup, broker_config, running_broker

pytestmark = pytest.mark.integration

GRANTED_QOS1 = 1
NOT_AUTHORIZED = 0x87
DROP_WITHIN_S = 10.0  # generous on a loaded 2-core machine; measured ~0.1 s


@dataclass
class Device:
    device_id: str
    key: Path
    cert: Path
    ca: Path


@dataclass
class World:
    setup: BrokerSetup
    api: RunningApi
    enrollment: EnrollmentService
    tmp: Path

    def enroll(self, device_id: str, *, rebind: bool = False) -> Device:
        secret, _ = self.enrollment.issue_token(
            device_class="x86-cpu", device_id=device_id if rebind else None
        )
        key_pem = generate_device_key()
        result = self.enrollment.enroll(
            EnrollmentRequest(
                token=secret, csr_pem=build_csr(key_pem, device_id), device_id=device_id
            )
        )
        stem = self.tmp / "devices" / f"{device_id}-{uuid.uuid4().hex[:6]}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        device = Device(device_id, stem.with_suffix(".key"), stem.with_suffix(".crt"),
                        stem.parent / "ca.crt")  # fmt: skip
        device.key.write_bytes(key_pem)
        device.cert.write_bytes(result.certificate_pem)
        device.ca.write_bytes(result.ca_certificate_pem)
        return device

    def online(self, device: Device) -> MqttProbe:
        probe = MqttProbe(self.setup.port, client_id=device.device_id, ca=device.ca,
                          cert=device.cert, key=device.key)  # fmt: skip
        reason, _ = probe.connect(timeout=DROP_WITHIN_S)
        assert not reason.is_failure, reason
        return probe

    def topic(self, device_id: str, channel: str) -> str:
        return f"{self.setup.scheme.root}/devices/{device_id}/{channel}"

    def delete(self, device_id: str) -> httpx.Response:
        return httpx.delete(
            f"{self.api.url}/api/v1/devices/{device_id}",
            headers=auth(self.api.tokens["admin"]),
            timeout=30,
        )


@contextmanager
def fleet_world(tmp: Path) -> Iterator[World]:
    """Broker from ``broker-config``, the hub API with enrollment told the device listener."""
    data = tmp / "hub-data"
    setup = broker_config(data)
    with ExitStack() as stack:
        stack.enter_context(running_broker(setup))
        registry = open_registry(f"sqlite:///{data / 'hub.db'}")  # where the CLI looks
        stack.callback(registry.close)
        enrollment = open_enrollment(
            data,
            registry=registry,
            config=EnrollmentConfig(
                mqtt_url=f"mqtts://127.0.0.1:{setup.port}", topic_prefix=setup.prefix
            ),
        )
        assert isinstance(enrollment.broker, BrokerAccessControl)  # the admin identity exists
        stack.callback(enrollment.broker.close)
        api = stack.enter_context(running_api(tmp, registry=registry, enrollment=enrollment))
        yield World(setup=setup, api=api, enrollment=enrollment, tmp=tmp)


def _closed(probe: MqttProbe) -> None:
    with suppress(Exception):  # already dropped by the broker
        probe.close()


def test_a_deleted_device_is_dropped_and_gets_no_rights_on_reconnect(tmp_path: Path) -> None:
    with fleet_world(tmp_path) as world:
        cam1, cam2 = world.enroll("cam-1"), world.enroll("cam-2")
        victim, bystander = world.online(cam1), world.online(cam2)
        assert victim.subscribe(world.topic("cam-1", "cmd"))[0].value == GRANTED_QOS1
        assert bystander.subscribe(world.topic("cam-2", "cmd"))[0].value == GRANTED_QOS1

        started = time.monotonic()
        assert world.delete("cam-1").status_code == 204
        assert victim.wait_for(lambda: victim.disconnects, DROP_WITHIN_S), "still connected"
        dropped_after = time.monotonic() - started
        _closed(victim)

        # its certificate still passes the handshake until the broker reloads the CRL, but
        # a reconnect can neither subscribe nor publish anything
        again = world.online(cam1)
        assert again.subscribe(world.topic("cam-1", "cmd"))[0].value == NOT_AUTHORIZED
        assert again.subscribe("#")[0].value == NOT_AUTHORIZED
        assert again.publish(world.topic("cam-1", "status"), b"{}").value == NOT_AUTHORIZED
        assert time.monotonic() - started < 2 * DROP_WITHIN_S
        _closed(again)

        # the other device kept its connection and its rights
        assert not bystander.disconnects
        assert not bystander.publish(world.topic("cam-2", "status"), b"{}").is_failure
        bystander.close()
        assert dropped_after < DROP_WITHIN_S


def test_no_device_reaches_the_control_topic(tmp_path: Path) -> None:
    with fleet_world(tmp_path) as world:
        cam1, cam2 = world.enroll("cam-1"), world.enroll("cam-2")
        attacker = world.online(cam1)
        # it may ask for the answers, but is never sent one (delivery is checked too)
        attacker.subscribe(RESPONSE_TOPIC)
        attacker.subscribe("$CONTROL/#")
        for command in ({"command": "deleteClient", "username": broker_admin_user("fedfleet-hub")},
                        {"command": "createClient", "username": "cam-1",
                         "roles": [{"rolename": ADMIN_ROLE}]},
                        {"command": "listClients"}):  # fmt: skip
            payload = json.dumps({"commands": [command]}).encode()
            assert attacker.publish(CONTROL_TOPIC, payload).value == NOT_AUTHORIZED
        victim = world.online(cam2)
        assert world.delete("cam-2").status_code == 204  # the admin's answers flow now
        assert victim.wait_for(lambda: victim.disconnects, DROP_WITHIN_S)
        _closed(victim)
        time.sleep(0.5)
        assert attacker.messages == []
        # nothing the attacker sent took effect: it still has exactly a device's rights
        assert attacker.subscribe(world.topic("cam-1", "cmd"))[0].value == GRANTED_QOS1
        assert attacker.subscribe(world.topic("cam-2", "cmd"))[0].value == GRANTED_QOS1  # SUB
        assert attacker.publish(world.topic("cam-2", "status"), b"{}").value == NOT_AUTHORIZED
        attacker.close()
    log = world.setup.log_text()
    assert "| createClient | username=cam-1" not in log and "listClients" not in log


def test_a_deletion_survives_a_broker_restart_and_a_new_broker_setup(tmp_path: Path) -> None:
    with fleet_world(tmp_path) as world:
        cam1 = world.enroll("cam-1")
        assert world.delete("cam-1").status_code == 204
    # the plugin saved the deletion beside the broker's config: a restart keeps it
    saved = json.loads((world.setup.out / "dynamic-security.json").read_text())
    assert {"username": "cam-1"}.items() <= next(
        c for c in saved["clients"] if c["username"] == "cam-1"
    ).items()
    with running_broker(world.setup):
        again = MqttProbe(world.setup.port, client_id="cam-1", ca=cam1.ca, cert=cam1.cert,
                          key=cam1.key)  # fmt: skip
        again.connect(timeout=DROP_WITHIN_S)
        assert again.subscribe(world.topic("cam-1", "cmd"))[0].value == NOT_AUTHORIZED
        _closed(again)
    # a new broker setup carries it too
    fresh = broker_config(world.setup.data_dir)
    text = (fresh.out / "dynamic-security.json").read_text()
    assert '"username": "cam-1"' in text and REVOKED_ROLE in text


def test_reenrolling_a_deleted_device_readmits_it(tmp_path: Path) -> None:
    with fleet_world(tmp_path) as world:
        world.enroll("cam-9")
        assert world.delete("cam-9").status_code == 204
        cam9 = world.enroll("cam-9", rebind=True)  # a token bound to the id, a new key
        access = world.enrollment.broker
        assert isinstance(access, BrokerAccessControl)
        deadline = time.monotonic() + DROP_WITHIN_S
        while access.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert access.pending() == {}, "the broker did not confirm the readmission"
        probe = world.online(cam9)
        assert probe.subscribe(world.topic("cam-9", "cmd"))[0].value == GRANTED_QOS1
        assert not probe.publish(world.topic("cam-9", "status"), b"{}").is_failure
        probe.close()


def test_dynsec_config_gives_the_admin_only_the_control_topic() -> None:
    config = json.loads(render_dynsec_config("hub:broker-admin", revoked=["b", "a", "a"]))
    # the plugin never decides for clients it does not know, so devices fall to the ACL file
    assert not any(config["defaultACLAccess"][k] for k in ("publishClientSend", "subscribe"))
    assert [c["username"] for c in config["clients"]] == ["hub:broker-admin", "a", "b"]
    roles = {r["rolename"]: r["acls"] for r in config["roles"]}
    allowed = {(a["acltype"], a["topic"]) for a in roles[ADMIN_ROLE] if a["allow"]}
    assert {topic for _, topic in allowed} == {"$CONTROL/dynamic-security/#"}
    assert all(not a["allow"] for a in roles[REVOKED_ROLE])
    with pytest.raises(Exception, match="invalid id"):
        render_dynsec_config("hub:broker-admin", revoked=["x/y"])
    with pytest.raises(Exception, match="invalid id"):
        broker_admin_user("hub:broker-admin")  # no device id can be an admin name


class _FlakyAdmin:
    """Refuses ``failures`` times, then applies (records what it applied)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.applied: list[tuple[str, bool]] = []
        self.settings = type("S", (), {"timeout_s": 1.0})()

    def settle(self, wishes: dict[str, bool]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise BrokerAdminError("broker down")
        self.applied.extend(wishes.items())


def test_a_deletion_the_broker_missed_is_retried_until_confirmed() -> None:
    admin = _FlakyAdmin(failures=3)
    sleeps: list[float] = []

    def sleep(stop: threading.Event, s: float) -> bool:
        sleeps.append(s)
        return stop.is_set()

    access = BrokerAccessControl(admin, retry_s=(0.01, 0.02), sleep=sleep)  # type: ignore[arg-type]
    try:
        assert access.revoke("cam-1", wait_s=DROP_WITHIN_S)
        assert admin.applied == [("cam-1", True)] and sleeps == [0.01, 0.02, 0.02]
        assert access.pending() == {}
        access.sync(["cam-2", "cam-3"])
        assert access.readmit("cam-2", wait_s=DROP_WITHIN_S)  # the newest wish wins
        deadline = time.monotonic() + DROP_WITHIN_S
        while access.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("cam-2", False) in admin.applied and ("cam-3", True) in admin.applied
    finally:
        access.close()


class _RecordingAdmin:
    """Applies every batch at once and records each one."""

    def __init__(self) -> None:
        self.batches: list[dict[str, bool]] = []
        self.settings = type("S", (), {"timeout_s": 1.0})()

    def settle(self, wishes: dict[str, bool]) -> None:
        self.batches.append(dict(wishes))


def test_a_sync_reaches_the_broker_as_one_batch() -> None:
    # the worker starts with the first wish: it must not see the sync's wishes one by one
    # (a race that sent 2 admin sessions for 5 deletions about one start in seven)
    names = [f"cam-{i}" for i in range(5)]
    for _ in range(50):
        admin = _RecordingAdmin()
        access = BrokerAccessControl(admin, retry_s=(0.01,))  # type: ignore[arg-type]
        try:
            access.sync(names)
            deadline = time.monotonic() + DROP_WITHIN_S
            while access.pending() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert admin.batches == [dict.fromkeys(names, True)]
        finally:
            access.close()


def test_enroll_revoke_drops_the_device_at_the_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fleet_world(tmp_path) as world:
        victim = world.online(world.enroll("cam-1"))
        url = f"mqtts://127.0.0.1:{world.setup.port}"
        data = str(world.setup.data_dir)
        argv = ["enroll-revoke", "cam-1", "--data-dir", data, "--device-mqtt-url", url]
        assert hub_main(argv) == 0
        assert f"the broker at {url} dropped cam-1" in capsys.readouterr().out
        assert victim.wait_for(lambda: victim.disconnects, DROP_WITHIN_S), "still connected"
        _closed(victim)


def test_a_broker_without_the_plugin_refuses_the_admin_at_once(tmp_path: Path) -> None:
    data = tmp_path / "hub-data"
    broker_config(data)  # issues the admin identity
    setup = broker_config(data, "--no-dynsec")
    assert "plugin" not in (setup.out / "mosquitto.conf").read_text()
    with running_broker(setup):
        access = broker_access_control(data, f"mqtts://127.0.0.1:{setup.port}")
        assert access is not None
        started = time.monotonic()
        with pytest.raises(BrokerAdminError, match="refused the admin's command"):
            access.admin.revoke("cam-1")
        assert time.monotonic() - started < access.admin.settings.timeout_s  # no waiting out


def test_deletions_the_broker_missed_are_sent_in_one_batch_at_start(tmp_path: Path) -> None:
    with fleet_world(tmp_path) as world:
        names = [f"cam-{i}" for i in range(5)]
        probes = [world.online(world.enroll(n)) for n in names]
        for name in names:  # deleted while the hub could not reach the broker
            world.enrollment.repository.revoke(name, now=datetime.now(timezone.utc))
        sessions = world.setup.log_text().count("as fedfleet-hub:broker-admin")
        world.enrollment.sync_broker()  # what opening the hub's enrollment does
        for probe in probes:
            assert probe.wait_for(lambda p=probe: p.disconnects, DROP_WITHIN_S)
            _closed(probe)
        assert world.setup.log_text().count("as fedfleet-hub:broker-admin") == sessions + 1
