"""R3: a device certificate cannot take another client's id: not a device's, not the hub
ingest's. It neither kicks them off nor steals their persistent session, and the QoS 1
messages queued for them while they were away are delivered, not lost.

Real pieces: the Mosquitto config that ``cloud-hub broker-config`` writes, devices enrolled
over HTTPS, the hub's real ``FleetIngest`` connected with the hub certificate through the
hub client factory, with its client id derived from the hub identity and instance (#15).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloud_hub.broker_client import HubRole, hub_client_id_for
from cloud_hub.config import HubConfig
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.registry import Registry, open_registry
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Telemetry
from simulations.harness.polling import eventually
from tests.identity.identity_support import MqttProbe
from tests.security._support_identity import (
    BrokerSetup,
    DeviceCreds,
    broker_config,
    enroll,
    running_broker,
    serving_enrollment,
)

pytestmark = pytest.mark.integration


def _hub_endpoint(setup: BrokerSetup) -> BrokerEndpoint:
    return BrokerEndpoint.from_url(
        f"mqtts://127.0.0.1:{setup.hub_port}",
        ca_file=str(setup.out / "ca.crt"),
        cert_file=str(setup.out / "hub.crt"),
        key_file=str(setup.out / "hub.key"),
    )


@contextmanager
def _ingest(registry: Registry, setup: BrokerSetup, client_id: str) -> Iterator[FleetIngest]:
    ingest = FleetIngest(
        registry,
        scheme=setup.scheme,
        mqtt_settings=IngestConnection(endpoint=_hub_endpoint(setup), client_id=client_id),
    )
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()


def _device(
    setup: BrokerSetup, creds: DeviceCreds, client_id: str, *, persistent: bool
) -> MqttProbe:
    return MqttProbe(
        setup.port,
        client_id=client_id,
        ca=creds.ca,
        cert=creds.cert,
        key=creds.key,
        persistent=persistent,
    )


def _telemetry(device_id: str, seq: int) -> bytes:
    return Telemetry(device_id=device_id, seq=seq, metrics={"cpu": float(seq)}).encode()


def test_device_cannot_take_another_clients_id_or_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "hub"
    setup = broker_config(data)
    registry = open_registry(f"sqlite:///{data / 'hub.db'}")
    hub_config = HubConfig(data_dir=data, mqtt=_hub_endpoint(setup))
    ingest_id = hub_client_id_for(hub_config, HubRole.INGEST)
    probes: list[MqttProbe] = []
    with running_broker(setup), serving_enrollment(data) as hub:
        dev_a = enroll(hub, tmp_path / "devices", "dev-a")
        dev_b = enroll(hub, tmp_path / "devices", "dev-b")
        try:
            with caplog.at_level(logging.WARNING), _ingest(registry, setup, ingest_id) as ingest:
                victim = _device(setup, dev_b, "dev-b", persistent=True)
                probes.append(victim)
                assert not victim.connect()[0].is_failure
                cmd_b = setup.scheme.device("dev-b", "cmd")
                victim.subscribe(cmd_b)
                # the attacker connects with the victim's id, then with the hub ingest's
                for stolen_id in ("dev-b", ingest_id):
                    attacker = _device(setup, dev_a, stolen_id, persistent=False)
                    probes.append(attacker)
                    assert not attacker.connect()[0].is_failure
                # the broker named both connections after the certificate, and says so
                eventually(
                    lambda: setup.log_text().count(" as dev-a ") >= 2,
                    15,
                    "the second dev-a connection",
                    interval=0.05,
                )
                time.sleep(1.0)  # a takeover would have dropped the victims by now
                assert victim.disconnects == []
                assert ingest.stats().connected
                assert not any("lost the broker" in r.getMessage() for r in caplog.records)

            # -- persistent sessions: queued QoS 1 messages survive an impostor --------------
            # The hub is away (restart): dev-b's reports queue in the ingest's session ...
            for seq in range(1, 6):
                assert (
                    victim.publish(
                        setup.scheme.device("dev-b", "telemetry"), _telemetry("dev-b", seq)
                    ).value
                    == 0
                )
            # ... and dev-b goes offline while an order is queued for it.
            victim.close()
            hub_probe = MqttProbe(
                setup.hub_port,
                client_id=hub_client_id_for(hub_config, HubRole.ROLLOUT),
                ca=setup.out / "ca.crt",
                cert=setup.out / "hub.crt",
                key=setup.out / "hub.key",
            )
            probes.append(hub_probe)
            hub_probe.connect()
            assert hub_probe.publish(cmd_b, b"rollback-order").value == 0
            # The impostor asks for a clean start under both ids (which would discard them).
            for stolen_id in (ingest_id, "dev-b"):
                impostor = _device(setup, dev_a, stolen_id, persistent=False)
                probes.append(impostor)
                assert not impostor.connect()[0].is_failure
                impostor.close()
            # The hub comes back: every queued report arrives ...
            with _ingest(registry, setup, ingest_id) as ingest:
                eventually(
                    lambda: ingest.stats().received >= 5,
                    15,
                    "5 messages received",
                    lambda: str(ingest.stats()),
                    interval=0.05,
                )
            # ... and dev-b gets its order from its own, untouched session.
            again = _device(setup, dev_b, "dev-b", persistent=True)
            probes.append(again)
            _reason, session_present = again.connect()
            assert session_present
            assert again.wait_for(lambda: (cmd_b, b"rollback-order") in again.messages)
        finally:
            for p in probes:
                p.close()
            registry.close()


def test_status_probe_with_the_device_certificate_leaves_the_agents_session_alone(
    tmp_path: Path,
) -> None:
    """``edge-agent status`` runs beside the agent with the same certificate: since the broker
    names every connection after its certificate, an MQTT connect would take the agent's id
    (and, with a clean start, its queued commands). The probe stops after the handshake."""
    from edge_agent.config import MqttSettings as AgentMqtt
    from edge_agent.config import TlsSettings
    from edge_agent.service.status import probe_broker

    data = tmp_path / "hub"
    setup = broker_config(data)
    with running_broker(setup), serving_enrollment(data) as hub:
        creds = enroll(hub, tmp_path / "devices", "dev-s")
        agent = _device(setup, creds, "dev-s", persistent=True)
        try:
            assert not agent.connect()[0].is_failure
            settings = AgentMqtt(
                host="127.0.0.1",
                port=setup.port,
                tls=TlsSettings(ca=creds.ca, cert=creds.cert, key=creds.key),
            )
            result = probe_broker(settings, "dev-s", timeout_s=5)
            assert result["connected"] is True, result
            time.sleep(1.0)  # a takeover would have dropped the agent by now
            assert agent.disconnects == []
        finally:
            agent.close()
