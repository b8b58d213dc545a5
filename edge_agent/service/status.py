"""``edge-agent status``: identity, broker connection, installed model, runtime and health.

:func:`collect_status` gathers (I/O); :func:`render_status` formats (pure). Every probe that
fails is reported in the result, never raised: a status command must work on a broken install.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, MqttSettings, load_config
from edge_agent.errors import AgentError
from edge_agent.service.identity import certificate_info
from edge_agent.service.layout import SERVICE_NAME, InstallLayout
from shared.broker_endpoint import BrokerEndpoint

__all__ = ["AgentStatus", "collect_status", "probe_broker", "render_status"]

UTC = timezone.utc


@dataclass(frozen=True)
class AgentStatus:
    installed: bool
    identity: dict[str, Any] = field(default_factory=dict)
    connection: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    service: str | None = None  # systemd ActiveState, None without systemd
    problems: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.installed and not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = list(self.problems)
        out["healthy"] = self.healthy
        return out


def probe_broker(mqtt: MqttSettings, client_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Check that the broker is reachable with the configured credentials.

    With a client certificate the probe stops after the TLS handshake: a broker that sets
    the client id from the certificate (R3) would otherwise hand the probe the running
    agent's id and session, disconnecting the agent and, with a clean start, discarding the
    commands queued for it. Without one it connects once under a distinct client id."""
    endpoint = mqtt.endpoint
    if endpoint.mutual_tls:
        return _probe_tls_handshake(endpoint, timeout_s)
    return _probe_mqtt_connect(endpoint, f"{client_id}-status", timeout_s)


def _probe_tls_handshake(endpoint: BrokerEndpoint, timeout_s: float) -> dict[str, Any]:
    result: dict[str, Any] = {"broker": endpoint.url, "connected": False}
    try:
        ctx = ssl.create_default_context(cafile=endpoint.ca_file)
        ctx.load_cert_chain(str(endpoint.cert_file), str(endpoint.key_file))
        with (
            socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=endpoint.host) as tls,
        ):
            # TLS 1.3: a refused client certificate arrives as an alert after the handshake;
            # an accepted one gets silence (the broker waits for our CONNECT).
            tls.settimeout(min(1.0, timeout_s))
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False
        result["connected"] = not closed
        result["detail"] = (
            "the broker closed the connection after the TLS handshake"
            if closed
            else "TLS handshake with the client certificate accepted"
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        result["detail"] = f"{type(exc).__name__}: {exc}"
    return result


def _probe_mqtt_connect(
    endpoint: BrokerEndpoint, client_id: str, timeout_s: float
) -> dict[str, Any]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = endpoint.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    done = threading.Event()
    result: dict[str, Any] = {"broker": endpoint.url, "connected": False}

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        result["connected"] = not rc.is_failure
        result["detail"] = str(rc)
        done.set()

    client.on_connect = on_connect
    try:
        endpoint.configure_client(client)  # TLS files and credentials, as the agent's link
        client.connect(endpoint.host, endpoint.port, keepalive=10)
        client.loop_start()
        if not done.wait(timeout_s):
            result["detail"] = f"no answer within {timeout_s:g} s"
    except Exception as exc:  # TLS / socket errors: the broker refused us or is down
        result["detail"] = f"{type(exc).__name__}: {exc}"
    finally:
        client.disconnect()
        client.loop_stop()
    return result


def _service_state() -> str | None:
    if shutil.which("systemctl") is None:
        return None
    try:
        out = subprocess.run(
            ["systemctl", "is-active", f"{SERVICE_NAME}.service"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _installed_with_systemd(config_dir: Path) -> bool:
    """Whether ``install`` enabled a unit (``install.json``); ``--no-systemd`` installs and
    hand-written configs are not expected to run as a service."""
    try:
        return bool(json.loads((config_dir / "install.json").read_text("utf-8")).get("systemd"))
    except (OSError, ValueError, AttributeError):
        return False


def _model(config: AgentConfig) -> dict[str, Any]:
    from edge_agent.ota.persist import StateStore
    from edge_agent.ota.slots import SlotStore
    from edge_agent.ota.trusted import TrustedStore

    slots = SlotStore(config.state_dir)
    active = slots.active()
    state = StateStore(config.state_dir).load()
    out: dict[str, Any] = {"active_slot": slots.active_name()}
    if active is not None:
        out.update(
            model=active.meta.model_name,
            version=active.meta.version,
            bundle_id=active.meta.bundle_id,
        )
    # the last deployment stays on record once it ended (committed, rolled back, failed)
    deployment = state.deployment
    out["deployment_in_progress"] = deployment is not None and not deployment.terminal
    if deployment is not None:
        out["last_deployment"] = f"{deployment.deployment_id} {deployment.phase.value}"
    try:  # R10: the floor is kept in the trusted-state record, not in ota_state.json
        record = TrustedStore(config.state_dir).record
    except OSError:
        record = None
    out["keyring_version"] = record.keyring_version if record else None
    # the last verified freshness document: past this, the device reports itself stale
    out["freshness_expires"] = (
        record.freshness.get("signed", {}).get("expires") if record and record.freshness else None
    )
    return out


def _runtime() -> dict[str, Any]:
    from edge_agent.runtime.capabilities import detect_capabilities

    caps = detect_capabilities()
    return {
        "onnxruntime_providers": list(caps.ort_providers),
        "gpu": caps.gpu_name,
        "tensorrt": caps.tensorrt_version,
        "torch": caps.torch_installed,
        "tflite": caps.tflite_module,
    }


def collect_status(
    layout: InstallLayout,
    *,
    config_path: Path | None = None,
    connect: bool = True,
    timeout_s: float = 5.0,
    now: datetime | None = None,
) -> AgentStatus:
    """Everything ``edge-agent status`` shows."""
    now = now or datetime.now(UTC)
    path = config_path or layout.config_path
    problems: list[str] = []
    if not path.exists():
        return AgentStatus(installed=False, problems=(f"no agent config at {path}",))
    try:
        config = load_config(path)
    except AgentError as exc:
        return AgentStatus(installed=True, problems=(f"config: {exc}",))
    identity: dict[str, Any] = {
        "device_id": config.device_id,
        "device_class": config.device_class,
        "labels": dict(config.labels),
    }
    enrollment = path.parent / "identity.json"
    if enrollment.exists():
        try:
            record = json.loads(enrollment.read_text("utf-8"))
            identity.update(hub=record.get("hub"), ca_fingerprint=record.get("ca_fingerprint"))
        except ValueError:
            problems.append(f"{enrollment} is not JSON")
    tls = config.mqtt.tls
    if tls is not None and tls.cert is not None:
        try:
            info = certificate_info(tls.cert.read_bytes())
            identity.update(
                certificate_cn=info.subject,
                certificate_issuer=info.issuer,
                certificate_not_after=info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if not info.valid_at(now):
                problems.append("the device certificate is expired or not yet valid")
            if info.subject != config.device_id:
                problems.append(f"certificate CN {info.subject!r} is not the device id")
        except (OSError, AgentError) as exc:
            problems.append(f"device certificate: {exc}")
    try:
        config.load_trust_root()
    except AgentError as exc:
        problems.append(f"trust root: {exc}")
    connection: dict[str, Any] = {"checked": False}
    if connect:
        connection = {"checked": True, **probe_broker(config.mqtt, config.client_id, timeout_s)}
        if not connection["connected"]:
            problems.append(f"broker: {connection.get('detail')}")
    try:
        model = _model(config)
    except Exception as exc:  # a corrupt slot must not hide the rest of the status
        model = {}
        problems.append(f"model slots: {type(exc).__name__}: {exc}")
    service = _service_state() if _installed_with_systemd(path.parent) else None
    if service is not None and service != "active":
        problems.append(f"service {SERVICE_NAME} is {service}")
    return AgentStatus(
        installed=True,
        identity=identity,
        connection=connection,
        model=model,
        runtime=_runtime(),
        service=service,
        problems=tuple(problems),
    )


def render_status(status: AgentStatus) -> str:
    """Human-readable text of a status."""
    if not status.installed:
        return "not installed: " + "; ".join(status.problems)
    lines = ["identity"]
    lines += [f"  {k:22} {v}" for k, v in status.identity.items()]
    lines.append("connection")
    lines += [f"  {k:22} {v}" for k, v in status.connection.items()]
    lines.append("model")
    if status.model.get("model"):
        lines += [f"  {k:22} {v}" for k, v in status.model.items()]
    else:
        lines.append("  none installed yet")
    lines.append("runtime")
    lines += [f"  {k:22} {v}" for k, v in status.runtime.items()]
    lines.append(f"service                  {status.service or 'n/a (no systemd)'}")
    lines.append("health                   " + ("ok" if status.healthy else "PROBLEMS"))
    lines += [f"  - {p}" for p in status.problems]
    return "\n".join(lines)
