"""Both sides hand credentials and TLS files to their paho client through the one endpoint
type (``BrokerEndpoint.configure_client``): a missing or garbage TLS file is a clear error of
each side's own kind, raised before any connection is attempted."""

from __future__ import annotations

import re
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker_client import ConnectionHooks, create_client
from cloud_hub.errors import DeliveryError
from edge_agent.config import MqttSettings, TlsSettings
from edge_agent.errors import TransportError
from edge_agent.transport.mqtt import MqttLink
from edge_agent.transport.outbox import Outbox
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError


def _endpoint(ca: Path) -> BrokerEndpoint:
    return BrokerEndpoint.from_url(f"mqtts://alice:s3cret@127.0.0.1:8883?ca={ca}")


def test_credentials_reach_the_client() -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="t")
    BrokerEndpoint.from_url("mqtt://alice:s3cret@127.0.0.1:1883").configure_client(client)
    assert client.username == "alice" and client.password == "s3cret"


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_a_bad_ca_file_is_refused_by_the_endpoint(tmp_path: Path, content: bytes | None) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="t")
    with pytest.raises(ConfigError, match=re.escape("MQTT TLS files for mqtts://127.0.0.1:8883")):
        _endpoint(ca).configure_client(client)


def test_the_hub_factory_reports_it_as_a_delivery_error(tmp_path: Path) -> None:
    hooks = ConnectionHooks(
        connected=lambda _c: None,
        refused=lambda _r: None,
        dropped=lambda _r: None,
        subscribed=lambda _r: None,
        message=lambda _m: None,
    )
    with pytest.raises(DeliveryError, match="MQTT TLS files"):
        create_client(_endpoint(tmp_path / "missing.pem"), client_id="hub:test", hooks=hooks)


def test_the_agent_transport_reports_it_as_a_transport_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"not a certificate")
    settings = MqttSettings(host="127.0.0.1", port=8883, tls=TlsSettings(ca=tmp_path / "ca.pem"))
    with pytest.raises(TransportError, match="TLS setup failed"):
        MqttLink(
            settings=settings,
            client_id="dev-1",
            outbox=Outbox(tmp_path / "outbox.db", durable=False),
            on_message=lambda _m: None,
        )
