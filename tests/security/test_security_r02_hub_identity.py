"""R2: the hub's MQTT identity is configured once, reserved at enrollment whatever its name,
and a device certificate can never get the hub's broker rights.

The attacks run against the real pieces: ``cloud-hub broker-config`` writes the broker
setup, Mosquitto runs with exactly that config, enrollment is served over HTTPS by uvicorn
from the same data directory, devices enroll with the agent's own client.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import EnrollmentRequest, load_hub_identity, open_enrollment
from edge_agent.errors import EnrollmentError
from edge_agent.service.identity import build_csr, generate_device_key
from tests.identity.identity_support import MqttProbe
from tests.security._support_identity import (
    broker_config,
    enroll,
    running_broker,
    serving_enrollment,
)

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
HUB_NAME = "plant-hub"


def test_configured_hub_name_cannot_be_enrolled_as_a_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    setup = broker_config(data, "--hub-user", HUB_NAME)
    assert (setup.out / "acl-hub").read_text().count(f"user {HUB_NAME}") == 1
    identity = load_hub_identity(data)
    assert identity is not None and identity.name == HUB_NAME  # persisted

    with serving_enrollment(data) as hub, caplog.at_level(logging.WARNING):
        secret, _ = hub.service.issue_token(device_class="x86-cpu")
        for name in (HUB_NAME, HUB_NAME.upper()):  # not only the exact spelling
            with pytest.raises(EnrollmentError, match="reserved"):
                enroll(hub, tmp_path / "attacker", name, token=secret)
        assert any("reserved" in r.getMessage() for r in caplog.records)  # logged, with why
        # nothing lost: the token was not consumed, no device was registered
        assert hub.service.repository.list_devices() == []
        legit = enroll(hub, tmp_path / "legit", "cam-1", token=secret)
        assert legit.device_id == "cam-1"

    # a token bound to the hub's name is refused when it is issued
    rc = hub_main(
        ["enroll-token", "--class", "x86-cpu", "--device-id", HUB_NAME, "--data-dir", str(data)]
    )
    assert rc != 0
    assert "reserved" in capsys.readouterr().err


def test_the_hub_identity_is_set_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    setup = broker_config(data, "--hub-user", HUB_NAME)
    acl_before = (setup.out / "acl-hub").read_bytes()
    rc = hub_main(
        ["broker-config", "--out", str(setup.out), "--data-dir", str(data), "--hub-user", "x"]
    )
    assert rc != 0
    assert "configured once" in capsys.readouterr().err
    assert (setup.out / "acl-hub").read_bytes() == acl_before  # nothing rewritten
    assert load_hub_identity(data).name == HUB_NAME  # type: ignore[union-attr]
    # the name a device already holds cannot become the hub's
    other = tmp_path / "other"
    service = open_enrollment(other)
    secret, _ = service.issue_token(device_class="x86-cpu")
    service.enroll(
        EnrollmentRequest(
            token=secret, csr_pem=build_csr(generate_device_key(), "gw-1"), device_id="gw-1"
        )
    )
    rc = hub_main(
        ["broker-config", "--out", str(other / "b"), "--data-dir", str(other), "--hub-user", "gw-1"]
    )
    assert rc != 0
    assert "enrolled under the hub's MQTT identity" in capsys.readouterr().err
    assert load_hub_identity(other) is None and not (other / "b").exists()


def test_a_device_certificate_never_gets_the_hubs_acl(tmp_path: Path) -> None:
    """Even a device certificate carrying the hub's name (say a device enrolled under it
    before the name was configured) has only a device's rights, and the hub listener
    refuses every device certificate."""
    data = tmp_path / "hub"
    setup = broker_config(data, "--hub-user", HUB_NAME)
    service = open_enrollment(data)
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    key = generate_device_key()
    issued = service.ca.sign_device_csr(build_csr(key, HUB_NAME), device_id=HUB_NAME)
    (forged_dir / "hub-named.key").write_bytes(key)
    (forged_dir / "hub-named.crt").write_bytes(issued.pem)
    ca = setup.out / "ca.crt"
    probes: list[MqttProbe] = []

    def probe(port: int, client_id: str, cert: Path, key: Path) -> MqttProbe:
        p = MqttProbe(port, client_id=client_id, ca=ca, cert=cert, key=key)
        probes.append(p)
        return p

    with running_broker(setup), serving_enrollment(data) as hub:
        victim_creds = enroll(hub, tmp_path / "devices", "victim-1")
        victim = probe(setup.port, "victim-1", victim_creds.cert, victim_creds.key)
        real_hub = probe(
            setup.hub_port, f"{HUB_NAME}:test:1", setup.out / "hub.crt", setup.out / "hub.key"
        )
        attacker = probe(
            setup.port, HUB_NAME, forged_dir / "hub-named.crt", forged_dir / "hub-named.key"
        )
        try:
            assert not victim.connect()[0].is_failure
            assert not real_hub.connect()[0].is_failure
            assert not attacker.connect()[0].is_failure  # a valid device certificate ...
            cmd = setup.scheme.device("victim-1", "cmd")
            assert victim.subscribe(cmd)[0].value == 1
            attacker.subscribe(cmd)  # ... that reads nothing of another device's
            attacker.subscribe(f"{setup.scheme.root}/#")
            # ... and cannot forge a command to it
            assert attacker.publish(cmd, b"forged-rollback").value == NOT_AUTHORIZED
            # the hub (hub listener, hub client CA) can
            assert real_hub.publish(cmd, b"real-order").value == 0
            assert victim.wait_for(lambda: (cmd, b"real-order") in victim.messages)
            assert (cmd, b"forged-rollback") not in victim.messages
            assert all(topic != cmd for topic, _ in attacker.messages)
            # the hub listener refuses device certificates during the handshake
            intruder = probe(
                setup.hub_port, "x", forged_dir / "hub-named.crt", forged_dir / "hub-named.key"
            )
            with pytest.raises((ssl.SSLError, OSError, AssertionError)):
                intruder.connect(timeout=3)
                assert intruder.connacks[-1][0].is_failure  # pragma: no cover - refused above
            assert "certificate verify failed" in setup.log_text()
        finally:
            for p in probes:
                p.close()


def test_a_replaced_hub_certificate_is_refused(tmp_path: Path) -> None:
    """Re-running ``broker-config`` (say hub.key leaked) issues a new hub certificate and
    revokes every earlier one on the hub listener."""
    data = tmp_path / "hub"
    first = broker_config(data)
    leaked = tmp_path / "leaked"
    leaked.mkdir()
    for name in ("hub.crt", "hub.key"):
        (leaked / name).write_bytes((first.out / name).read_bytes())
    setup = broker_config(data)  # the rotation
    assert (setup.out / "hub.crt").read_bytes() != (leaked / "hub.crt").read_bytes()
    ca = setup.out / "ca.crt"
    with running_broker(setup):
        old = MqttProbe(
            setup.hub_port,
            client_id=f"{HUB_NAME}:old:1",
            ca=ca,
            cert=leaked / "hub.crt",
            key=leaked / "hub.key",
        )
        new = MqttProbe(
            setup.hub_port,
            client_id="fedfleet-hub:new:1",
            ca=ca,
            cert=setup.out / "hub.crt",
            key=setup.out / "hub.key",
        )
        try:
            with pytest.raises((ssl.SSLError, OSError)):
                old.connect(timeout=3)
            # refused in the handshake (the old certificate is otherwise valid: same CA,
            # same name, not expired; only the hub CRL stands between it and the broker)
            assert "certificate verify failed" in setup.log_text()
            assert not new.connect()[0].is_failure  # the new one works
            assert not new.publish(setup.scheme.device("any-1", "cmd"), b"order").is_failure
        finally:
            old.close()
            new.close()
