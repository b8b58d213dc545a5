"""The agent's config file has one writer (``edge_agent.config.render_config``): the installer
and the local harness write through it, what it writes loads back, and a config the agent
would refuse is refused before it is written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import load_config, parse_config, render_config
from edge_agent.errors import AgentConfigError
from edge_agent.service.render import AgentConfigValues, render_agent_config
from simulations.harness.agents import agent_config_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device_id": "cam-017",
        "device_class": "x86-cpu",
        "state_dir": "state",
        "trust_root": "trust_root.json",
        "labels": {"site": 'plant "3"', "row": "é😀"},
        "status_interval_s": 5.0,
        "mqtt": {"url": "mqtts://broker:8883", "topic_prefix": "fleet-a", "tls": {"ca": "ca.pem"}},
        "limits": {"max_resumes": 3, "fsync_chunks": False},
    }
    doc.update(changes)
    return doc


def test_what_the_writer_writes_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(render_config(_document(), header=["a test"]), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.device_id == "cam-017"
    assert cfg.state_dir == tmp_path / "state"  # relative paths stay relative to the file
    assert cfg.labels == {"site": 'plant "3"', "row": "é😀"}
    assert cfg.mqtt.topic_prefix == "fleet-a" and cfg.mqtt.port == 8883
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca == tmp_path / "ca.pem"
    assert cfg.limits.max_resumes == 3 and cfg.limits.fsync_chunks is False
    assert cfg.status_interval_s == 5.0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mqtt": {"url": "mqtt://broker:1883", "tls": {"ca": "ca.pem"}}}, "plain TCP"),
        ({"limits": {"max_resumes": "3"}}, "must be a number"),
        ({"surprise": 1}, "unknown config keys"),
        ({"device_id": "cam/017"}, "device_id"),
        ({"status_interval_s": float("nan")}, "status_interval_s"),
    ],
)
def test_a_config_the_agent_would_refuse_is_never_written(
    changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(AgentConfigError, match=match):
        render_config(_document(**changes))


def test_the_installer_writes_through_the_config_model(tmp_path: Path) -> None:
    values = AgentConfigValues(
        device_id="cam-017",
        device_class="x86-cpu",
        state_dir=tmp_path / "state",
        trust_root=tmp_path / "trust_root.json",
        mqtt_url="mqtts://hub.example:8883",
        topic_prefix="fedfleet",
        client_id="cam-017",
        ca=tmp_path / "ca.crt",
        cert=tmp_path / "device.crt",
        key=tmp_path / "device.key",
        labels={"site": "lab"},
    )
    cfg = parse_config(tomllib.loads(render_agent_config(values)), base_dir=tmp_path)
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.key == tmp_path / "device.key"
    with pytest.raises(AgentConfigError, match="device_id"):
        render_agent_config(
            AgentConfigValues(**{**values.__dict__, "device_id": "cam 017"})  # type: ignore[arg-type]
        )


def test_the_harness_writes_through_the_config_model(tmp_path: Path) -> None:
    text = agent_config_toml(
        device_id="sim-1",
        device_class="x86-cpu",
        state_dir=tmp_path / "state",
        trust_root=tmp_path / "trust_root.json",
        mqtt_url="mqtt://127.0.0.1:1883",
        prefix="t-123",
        tables={"timeouts": {"download_s": 30}},
        top={"status_interval_s": 2},
    )
    cfg = parse_config(tomllib.loads(text), base_dir=tmp_path)
    assert cfg.client_id == "sim-1@t-123" and cfg.timeouts.download_s == 30
    with pytest.raises(AgentConfigError, match="unknown keys"):
        agent_config_toml(
            device_id="sim-1",
            device_class="x86-cpu",
            state_dir=tmp_path / "state",
            trust_root=tmp_path / "trust_root.json",
            mqtt_url="mqtt://127.0.0.1:1883",
            prefix="t-123",
            tables={"timeouts": {"dowload_s": 30}},  # a typo the agent would refuse at start
        )
