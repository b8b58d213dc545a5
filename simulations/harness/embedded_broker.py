"""The demo's embedded MQTT broker on a free loopback port.

Mosquitto when it is installed (MQTT v5); otherwise amqtt, a pure-Python broker, which
cannot share an environment with Flower (its typer pins clash), so it runs as its own
process from its own small virtual environment, created on first use. amqtt speaks MQTT
3.1.1 only: ``EmbeddedBroker.mqtt_version`` tells clients which protocol to use.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.net import free_port
from simulations.harness.mosquitto import LocalMosquitto, spawn_listening, stop_process

__all__ = ["AmqttBroker", "EmbeddedBroker", "start_embedded_broker"]

AMQTT_VERSION = "0.12.1"


class AmqttBroker:
    """amqtt in its own venv, bound to 127.0.0.1 only (it binds 0.0.0.0 unless told)."""

    mqtt_version = "3.1.1"

    def __init__(self, *, venv: Path, port: int | None = None) -> None:
        self.venv = venv
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="fedfleet-amqtt-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def ensure_env(self) -> Path:
        exe = self.venv / "bin" / "amqtt"
        if not exe.exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
            subprocess.run(
                [str(self.venv / "bin" / "pip"), "install", "-q", f"amqtt=={AMQTT_VERSION}"],
                check=True,
            )
        return exe

    def start(self, timeout: float = 20.0) -> None:
        exe = self.ensure_env()
        conf = self._dir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        self._proc = spawn_listening(
            [str(exe), "-c", str(conf)],
            port=self.port,
            log_path=self._dir / "amqtt.log",
            name="amqtt",
            timeout=timeout,
        )

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


class EmbeddedBroker:
    """Whichever broker could be started, with its URL and MQTT protocol version."""

    def __init__(self, impl: LocalMosquitto | AmqttBroker, kind: str, mqtt_version: str) -> None:
        self.impl = impl
        self.kind = kind
        self.mqtt_version = mqtt_version

    @property
    def url(self) -> str:
        return self.impl.url

    def stop(self) -> None:
        self.impl.stop()
        if isinstance(self.impl, LocalMosquitto):  # its config/log folder goes too
            shutil.rmtree(self.impl.conf.parent, ignore_errors=True)


def start_embedded_broker(*, amqtt_venv: Path, prefer: str = "auto") -> EmbeddedBroker:
    """Start Mosquitto when installed (or ``prefer='amqtt'`` forces amqtt)."""
    has_mosquitto = bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists()
    if prefer != "amqtt" and has_mosquitto:
        m = LocalMosquitto()
        m.start()
        return EmbeddedBroker(m, "mosquitto", "5")
    a = AmqttBroker(venv=amqtt_venv)
    a.start()
    return EmbeddedBroker(a, "amqtt", "3.1.1")
