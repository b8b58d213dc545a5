"""Text the installer writes: the agent config (TOML) and the systemd unit (pure functions)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AgentConfigValues", "render_agent_config", "render_unit"]


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _s(value: str | Path) -> str:
    """A TOML basic string. Not ``json.dumps``: JSON escapes astral characters as surrogate
    pairs, which TOML refuses."""
    out = []
    for ch in str(value):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


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
    """``config.toml`` in the format ``edge_agent.config.load_config`` reads."""
    labels = ", ".join(f"{_s(k)} = {_s(val)}" for k, val in sorted(v.labels.items()))
    return "\n".join(
        [
            "# fedfleet edge agent (written by `edge-agent install`).",
            f"device_id = {_s(v.device_id)}",
            f"device_class = {_s(v.device_class)}",
            f"state_dir = {_s(v.state_dir)}",
            f"trust_root = {_s(v.trust_root)}",
            f"labels = {{ {labels} }}" if labels else "labels = {}",
            "",
            "[mqtt]",
            f"url = {_s(v.mqtt_url)}",
            f"topic_prefix = {_s(v.topic_prefix)}",
            f"client_id = {_s(v.client_id)}",
            "",
            *_tls_section(v),
        ]
    )


def _tls_section(v: AgentConfigValues) -> list[str]:
    """``[mqtt.tls]`` for an ``mqtts://`` broker only: TLS settings beside a plain-TCP URL
    would make the agent speak TLS to a broker that does not (#15)."""
    if not v.mqtt_url.lower().startswith(("mqtts://", "ssl://")):
        return [
            "# The hub named a plain-TCP broker: no TLS. With mqtts:// add [mqtt.tls] with",
            f"# ca = {_s(v.ca)}, cert = {_s(v.cert)}, key = {_s(v.key)}",
            "",
        ]
    return [
        "[mqtt.tls]  # mutual TLS: the broker takes our MQTT user name from device.crt",
        f"ca = {_s(v.ca)}",
        f"cert = {_s(v.cert)}",
        f"key = {_s(v.key)}",
        "",
    ]


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
