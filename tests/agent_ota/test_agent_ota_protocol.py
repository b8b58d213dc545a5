"""MQTT 3.1.1 for brokers that speak nothing newer (amqtt in the zero-setup demo)."""

from __future__ import annotations

import pytest

from edge_agent.config import MqttSettings
from edge_agent.errors import AgentConfigError


def test_protocol_is_validated() -> None:
    assert MqttSettings().protocol == "5"
    assert MqttSettings(protocol="3.1.1").protocol == "3.1.1"
    with pytest.raises(AgentConfigError, match="protocol"):
        MqttSettings(protocol="4")


@pytest.mark.slow
@pytest.mark.integration
def test_demo_runs_on_amqtt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The whole loop over the pure-Python amqtt broker (MQTT 3.1.1, its own venv)."""
    from simulations.demo.runner import DemoConfig, run_demo

    result = run_demo(
        DemoConfig(
            out_dir=tmp_path,
            agents=4,
            drifted=3,
            broker="amqtt",
            plots=False,
            training_engine="inprocess",
        )
    )
    assert result.summary["accuracy_recovered_pts"] > 20
