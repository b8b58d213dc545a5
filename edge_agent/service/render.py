"""Text the installer writes: the agent config (TOML) and the systemd unit (pure functions)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import render_config
from shared.toml_text import toml_string

__all__ = ["AgentConfigValues", "render_agent_config", "render_unit"]


@dataclass(frozen=True)
class AgentConfigValues:
    """What enrollment decides; everything else keeps ``edge_agent.config`` defaults."""

    device_id: str
    device_class: str
    state_dir: Path
    trust_root: Path
    mqtt_url: str
    topic_prefix: str
    client_id: str
    ca: Path
    cert: Path
    key: Path
    labels: Mapping[str, str] = field(default_factory=dict)


def render_agent_config(v: AgentConfigValues) -> str:
    """``config.toml``, written by the agent's config model (:func:`render_config`)."""
    mqtt: dict[str, Any] = {
        "url": v.mqtt_url,
        "topic_prefix": v.topic_prefix,
        "client_id": v.client_id,
    }
    if _is_tls(v.mqtt_url):  # mutual TLS: the broker takes our MQTT user name from device.crt
        mqtt["tls"] = {"ca": str(v.ca), "cert": str(v.cert), "key": str(v.key)}
    document = {
        "device_id": v.device_id,
        "device_class": v.device_class,
        "state_dir": str(v.state_dir),
        "trust_root": str(v.trust_root),
        "labels": dict(sorted(v.labels.items())),
        "mqtt": mqtt,
    }
    text = render_config(
        document, header=["fedfleet edge agent (written by `edge-agent install`)."]
    )
    if not _is_tls(v.mqtt_url):
        # TLS settings beside a plain-TCP URL would make the agent speak TLS to a broker
        # that does not (#15): the files are named in a comment only
        text += (
            "\n# The hub named a plain-TCP broker: no TLS. With mqtts:// add [mqtt.tls] with\n"
            f"# ca = {toml_string(v.ca)}, cert = {toml_string(v.cert)}, key = {toml_string(v.key)}\n"
        )
    return text


def _is_tls(mqtt_url: str) -> bool:
    return mqtt_url.lower().startswith(("mqtts://", "ssl://"))


def render_unit(
    *,
    exec_start: Sequence[str],
    state_dir: Path,
    config_dir: Path,
    description: str = "fedfleet edge agent",
) -> str:
    """The systemd service unit: restart forever, modest hardening, state dir writable."""
    command = " ".join(shlex.quote(part) for part in exec_start)
    return "\n".join(
        [
            "[Unit]",
            f"Description={description}",
            "Wants=network-online.target",
            "After=network-online.target",
            "StartLimitIntervalSec=0",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={command}",
            f"WorkingDirectory={state_dir}",
            "Restart=always",
            "RestartSec=5",
            "Environment=PYTHONUNBUFFERED=1",
            "NoNewPrivileges=true",
            "ProtectSystem=full",
            "PrivateTmp=true",
            f"ReadWritePaths={state_dir}",
            f"ReadOnlyPaths={config_dir}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
