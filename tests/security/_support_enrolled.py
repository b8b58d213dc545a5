"""An enrolled device against the real hub: mTLS Mosquitto, registry, API with enrollment
(uvicorn) and the ingest; enrollment over raw HTTP as the agent does it, and the device's
own MQTT connection with the certificate it got. Used by the R6 and fleet-hygiene tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud_hub.enrollment import EnrollmentConfig, EnrollmentService, SqlEnrollmentRepository
from cloud_hub.enrollment.hubdir import register_in_fleet
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.registry import Registry, open_registry
from edge_agent.service.identity import build_csr, generate_device_key
from shared.broker_endpoint import BrokerEndpoint
from simulations.harness.polling import eventually
from tests.security._support_api import RunningApi, request, running_api
from tests.security._support_freshness import (
    HUB_USER,
    MqttPeer,
    TrustBroker,
    device_mqtt,
    running_broker,
)

__all__ = ["ENROLLED", "device_connection", "enroll_over_http", "enrolled_hub", "wait_until"]

ENROLLED = {"site": "plant-1"}  # the labels the operator enrolls the devices with


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    return eventually(predicate, timeout, "condition", interval=0.05)


@contextmanager
def enrolled_hub(tmp: Path) -> Iterator[tuple[TrustBroker, Registry, RunningApi, FleetIngest]]:
    """mTLS broker, registry, API (uvicorn, enrollment on the broker's device CA), ingest."""
    with running_broker(tmp) as broker:
        registry = open_registry(f"sqlite:///{tmp / 'hub.db'}")
        enrollment = EnrollmentService(
            ca=broker.device_ca,
            repository=SqlEnrollmentRepository(registry.engine),
            config=EnrollmentConfig(topic_prefix=broker.scheme.prefix, hub_user=HUB_USER),
            on_enrolled=register_in_fleet(registry),
        )
        endpoint = BrokerEndpoint.from_url(
            f"mqtts://127.0.0.1:{broker.hub_port}",
            ca_file=str(broker.files.ca_cert),
            cert_file=str(broker.files.hub_cert),
            key_file=str(broker.files.hub_key),
        )
        ingest = FleetIngest(
            registry,
            scheme=broker.scheme,
            mqtt_settings=IngestConnection(
                endpoint=endpoint, client_id=f"{HUB_USER}:ingest:{uuid.uuid4().hex[:8]}"
            ),
        )
        ingest.start()
        try:
            with running_api(tmp, registry=registry, enrollment=enrollment) as api:
                yield broker, registry, api, ingest
        finally:
            ingest.stop()
            registry.close()


def enroll_over_http(
    api: RunningApi, tmp: Path, device_id: str, *, token_names_id: bool = False, **claims: Any
) -> tuple[Path, Path]:
    """Enroll as ``x86-cpu`` with :data:`ENROLLED` labels over HTTP, as the agent does;
    ``claims`` go into the request as well. Returns the (certificate, key) files."""
    secret, _ = api.enrollment.issue_token(
        device_class="x86-cpu", labels=ENROLLED, device_id=device_id if token_names_id else None
    )
    key_pem = generate_device_key()
    body = {
        "token": secret,
        "csr": build_csr(key_pem, device_id).decode(),
        "device_id": device_id,
        **claims,
    }
    answer = request(
        api.port,
        "POST",
        "/api/v1/enroll",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body
    cert, key = tmp / f"{device_id}.crt", tmp / f"{device_id}.key"
    cert.write_text(answer.json()["certificate"])
    key.write_bytes(key_pem)
    return cert, key


@contextmanager
def device_connection(
    broker: TrustBroker, device_id: str, cert: Path, key: Path
) -> Iterator[MqttPeer]:
    """The device's own MQTT connection, with the certificate enrollment gave it."""
    device = device_mqtt(broker, device_id, cert, key)
    try:
        yield device
    finally:
        device.close()
