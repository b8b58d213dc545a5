"""``edge-agent status`` without a client certificate: the probe connects once to the real
broker through the agent's endpoint type (credentials and TLS as the agent's link sets them)
and says whether the broker answered, with the broker's or the socket's words."""

from __future__ import annotations

from edge_agent.config import MqttSettings
from edge_agent.service.status import probe_broker
from shared.net import free_port


def test_the_probe_reaches_the_local_broker_with_either_protocol() -> None:
    for protocol in ("5", "3.1.1"):
        result = probe_broker(MqttSettings(port=1883, protocol=protocol), "dev-probe", 5.0)
        assert result["connected"] is True, result
        assert result["broker"] == "mqtt://127.0.0.1:1883"


def test_a_broker_that_is_not_there_is_reported_with_the_socket_error() -> None:
    result = probe_broker(MqttSettings(port=free_port()), "dev-probe", 2.0)
    assert result["connected"] is False
    assert "ConnectionRefusedError" in result["detail"], result
