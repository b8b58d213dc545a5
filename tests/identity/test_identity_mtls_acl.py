"""mTLS and ACL against a real Mosquitto configured by ``write_broker_files``.

Device certificates come from a real HTTPS enrollment; the broker maps each certificate's CN
to the MQTT user name and applies the rendered ACL.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.enrollment import CertificateAuthority

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87


def _broker_logged(broker: Any, text: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in broker.log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def _hub_client(broker: Any, mqtt_client: Any, name: str = "hub") -> Any:
    files = broker.files
    client = mqtt_client(
        name, ca=files.ca_cert, cert=files.hub_cert, key=files.hub_key, port=broker.hub_port
    )
    client.connect()
    assert not client.connack.is_failure
    return client


def _device_client(mqtt_client: Any, creds: Any) -> Any:
    client = mqtt_client(creds.device_id, ca=creds.ca, cert=creds.cert, key=creds.key)
    client.connect()
    assert not client.connack.is_failure, client.connack
    return client


def test_enrolled_device_connects_and_publishes_its_own_topics(
    broker: Any, enroll_device: Any, mqtt_client: Any
) -> None:
    hub = _hub_client(broker, mqtt_client)
    assert hub.subscribe(broker.scheme.all_devices("telemetry"))[0].value == 1
    dev = _device_client(mqtt_client, enroll_device("cam-a1"))
    rc = dev.publish(broker.scheme.device("cam-a1", "telemetry"), b"own", qos=1)
    assert rc.value == 0
    assert hub.wait_for(
        lambda: (broker.scheme.device("cam-a1", "telemetry"), b"own") in hub.messages
    )


def test_client_without_certificate_is_refused(broker: Any, mqtt_client: Any) -> None:
    anonymous = mqtt_client("anon", ca=broker.files.ca_cert, cert=None, key=None)
    # Mosquitto aborts the handshake (require_certificate); depending on timing paho sees
    # the alert during connect or the socket closing before any CONNACK.
    with pytest.raises((ssl.SSLError, OSError, TimeoutError)):
        anonymous.connect(timeout=3)
    assert anonymous.connack is None
    assert _broker_logged(broker, "peer did not return a certificate")


def test_certificate_from_another_ca_is_refused(
    broker: Any, mqtt_client: Any, tmp_path: Any
) -> None:
    rogue_ca = CertificateAuthority.create(common_name="rogue")
    creds = rogue_ca.issue_client("cam-a1")  # even claiming a real device's id
    (tmp_path / "rogue.crt").write_bytes(creds.cert_pem)
    (tmp_path / "rogue.key").write_bytes(creds.key_pem)
    rogue = mqtt_client(
        "rogue", ca=broker.files.ca_cert, cert=tmp_path / "rogue.crt", key=tmp_path / "rogue.key"
    )
    with pytest.raises((ssl.SSLError, OSError, TimeoutError)):
        rogue.connect(timeout=3)
    assert rogue.connack is None
    assert _broker_logged(broker, "certificate verify failed")


def test_device_cannot_publish_under_another_devices_topic(
    broker: Any, enroll_device: Any, mqtt_client: Any
) -> None:
    hub = _hub_client(broker, mqtt_client)
    hub.subscribe(broker.scheme.all_devices("status"))
    a = _device_client(mqtt_client, enroll_device("dev-a"))
    enroll_device("dev-b")
    victim = broker.scheme.device("dev-b", "status")
    # MQTT v5: the broker answers the QoS1 publish with PUBACK 0x87 Not authorized ...
    rc = a.publish(victim, b"forged", qos=1)
    assert isinstance(rc, ReasonCode) and rc.value == NOT_AUTHORIZED
    # ... and QoS0 is dropped silently. Neither reaches the hub.
    a.client.publish(victim, b"forged-qos0", qos=0)
    # A legitimate publish after the forged ones proves delivery order and the wait.
    own = broker.scheme.device("dev-a", "status")
    assert a.publish(own, b"mine", qos=1).value == 0
    assert hub.wait_for(lambda: (own, b"mine") in hub.messages)
    assert all(topic != victim for topic, _ in hub.messages)


def test_device_cannot_read_another_devices_commands(
    broker: Any, enroll_device: Any, mqtt_client: Any
) -> None:
    hub = _hub_client(broker, mqtt_client)
    a = _device_client(mqtt_client, enroll_device("reader-a"))
    b = _device_client(mqtt_client, enroll_device("reader-b"))
    b_cmd = broker.scheme.device("reader-b", "cmd")
    # Mosquitto 2.0 grants the SUBACK and enforces "read" on every delivery (newer brokers
    # may answer 0x87 right away): either way nothing of B's may reach A.
    assert a.subscribe(b_cmd)[0].value in (1, NOT_AUTHORIZED)
    a.subscribe(f"{broker.scheme.root}/devices/+/cmd")  # a wildcard that matches B's topic
    assert b.subscribe(b_cmd)[0].value == 1
    a_cmd = broker.scheme.device("reader-a", "cmd")
    hub.publish(b_cmd, b"for-b", qos=1)
    hub.publish(a_cmd, b"for-a", qos=1)
    assert b.wait_for(lambda: (b_cmd, b"for-b") in b.messages)
    assert a.wait_for(lambda: (a_cmd, b"for-a") in a.messages)
    time.sleep(0.2)  # B's message was routed before A's; give a stray copy time to show up
    assert all(topic != b_cmd for topic, _ in a.messages)


def test_device_reads_bundle_fanout_but_cannot_publish_it(
    broker: Any, enroll_device: Any, mqtt_client: Any
) -> None:
    hub = _hub_client(broker, mqtt_client)
    a = _device_client(mqtt_client, enroll_device("fan-a"))
    topic = broker.scheme.bundle_chunks("bundle-1")
    assert a.subscribe(topic)[0].value == 1
    hub.publish(topic, b"chunk-0", qos=1)
    assert a.wait_for(lambda: (topic, b"chunk-0") in a.messages)
    assert a.publish(topic, b"evil-chunk", qos=1).value == NOT_AUTHORIZED


def test_revoked_certificate_is_refused_after_crl_reload(
    hub: Any, broker: Any, enroll_device: Any, mqtt_client: Any
) -> None:
    a = enroll_device("rev-a")
    b = enroll_device("rev-b")
    _device_client(mqtt_client, a)
    revoked = hub.service.revoke("rev-a")
    assert revoked.revoked_at is not None
    broker.files.crl.write_bytes(hub.service.crl_pem())
    broker.reload()
    again = mqtt_client("rev-a-2", ca=a.ca, cert=a.cert, key=a.key)
    with pytest.raises((ssl.SSLError, OSError, TimeoutError)):
        again.connect(timeout=3)
    assert again.connack is None
    _device_client(mqtt_client, b)  # others are unaffected
    # Re-enrolling the id (token bound to it) gives a working certificate; the old one stays
    # revoked even though the device record now points at the new one.
    secret, _ = hub.service.issue_token(device_class="x86-cpu", device_id="rev-a")
    fresh = enroll_device("rev-a", token=secret)
    broker.files.crl.write_bytes(hub.service.crl_pem())
    broker.reload()
    _device_client(mqtt_client, fresh)
    old = mqtt_client("rev-a-3", ca=a.ca, cert=a.cert, key=a.key)
    with pytest.raises((ssl.SSLError, OSError, TimeoutError)):
        old.connect(timeout=3)
