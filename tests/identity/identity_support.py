"""Helpers for tests that need the hub's identity pieces for real: an HTTPS enrollment API
served by uvicorn, a Mosquitto started from a generated config, enrollment as the agent
does it, and an MQTT client that records what the broker did.

Used by ``tests/identity/conftest.py`` (fixtures) and ``tests/security`` (R2, R3).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.enrollment import EnrollmentService
from cloud_hub.enrollment.hubdir import HubTlsFiles
from edge_agent.service import hub_client
from edge_agent.service.identity import build_csr, generate_device_key
from shared.net import free_port, wait_port
from simulations.harness.api_thread import ServedApp

__all__ = [
    "DeviceCreds",
    "MqttProbe",
    "enroll_over_https",
    "free_port",
    "mosquitto_process",
    "serving_https",
    "wait_port",
]


@contextmanager
def serving_https(app: FastAPI, tls: HubTlsFiles) -> Iterator[Any]:
    """``app`` over HTTPS on a free loopback port (uvicorn in a thread); yields the server,
    whose ``config.port`` is the port."""
    with ServedApp(app, certfile=tls.certfile, keyfile=tls.keyfile) as served:
        yield served.server


@contextmanager
def mosquitto_process(config: Path, log: Path, ports: tuple[int, ...]) -> Iterator[Any]:
    """Mosquitto with exactly ``config``, output in ``log``, until every port listens."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is required (apt-get install mosquitto)")
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "-c", str(config)], stdout=out, stderr=out)
    try:
        for port in ports:
            wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class DeviceCreds:
    device_id: str
    key: Path
    cert: Path
    ca: Path


def enroll_over_https(
    service: EnrollmentService,
    url: str,
    directory: Path,
    device_id: str,
    device_class: str = "x86-cpu",
    token: str | None = None,
) -> DeviceCreds:
    """A real enrollment over HTTPS, as the agent does it; writes key and certificate."""
    secret = token or service.issue_token(device_class=device_class)[0]
    endpoint = hub_client.HubEndpoint(url, timeout_s=10)
    ca_pem = hub_client.fetch_pinned_ca(endpoint, service.ca.fingerprint)
    key_pem = generate_device_key()
    answer = hub_client.enroll(
        endpoint,
        ca_pem=ca_pem,
        token=secret,
        csr_pem=build_csr(key_pem, device_id),
        device_class=device_class,
        device_id=device_id,
        labels={},
    )
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{device_id}-{uuid.uuid4().hex[:6]}"  # a re-enrolled id gets new files
    creds = DeviceCreds(
        device_id=answer.device_id,
        key=directory / f"{stem}.key",
        cert=directory / f"{stem}.crt",
        ca=directory / "ca.crt",
    )
    creds.key.write_bytes(key_pem)
    creds.cert.write_bytes(answer.certificate_pem)
    creds.ca.write_bytes(answer.ca_certificate_pem)
    return creds


class MqttProbe:
    """A paho 2.x MQTT v5 client over TLS that records what happens: CONNACKs (with
    session-present), disconnects, acks and messages. ``persistent`` asks the broker to keep
    the session (clean start off, one-hour expiry)."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str,
        ca: Path,
        cert: Path | None,
        key: Path | None,
        persistent: bool = False,
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=None if cert is None else str(cert),
            keyfile=None if key is None else str(key),
        )
        self.port = port
        self.persistent = persistent
        self.connacks: list[tuple[Any, bool]] = []  # (reason, session present)
        self.disconnects: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    @property
    def connack(self) -> Any:
        """The reason code of the last CONNACK, ``None`` before any."""
        return self.connacks[-1][0] if self.connacks else None

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any = None) -> None:
        with self._cond:
            self.connacks.append((rc, bool(getattr(flags, "session_present", False))))
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        with self._cond:
            self.disconnects.append(rc)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[Any], _p: Any) -> None:
        with self._cond:
            self.subacks[mid] = rcs
            self._cond.notify_all()

    def connect(self, timeout: float = 5.0) -> tuple[Any, bool]:
        """Connect and wait for the CONNACK; returns ``(reason, session_present)``. Raises what
        the TLS handshake raises, or ``ConnectionRefusedError`` when the broker closed the
        connection before any CONNACK."""
        props = Properties(PacketTypes.CONNECT)
        if self.persistent:
            props.SessionExpiryInterval = 3600
        acks, drops = len(self.connacks), len(self.disconnects)
        self.client.connect(
            "127.0.0.1",
            self.port,
            keepalive=10,
            clean_start=not self.persistent,
            properties=props,
        )
        self.client.loop_start()
        answered = self.wait_for(
            lambda: len(self.connacks) > acks or len(self.disconnects) > drops, timeout
        )
        if not answered:
            raise TimeoutError("no CONNACK")
        if len(self.connacks) == acks:
            raise ConnectionRefusedError("the broker closed the connection before CONNACK")
        return self.connacks[-1]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None, "subscribe was not sent"
        assert self.wait_for(lambda: mid in self.subacks), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        info = self.client.publish(topic, payload, qos=qos)
        assert self.wait_for(lambda: info.mid in self.pubacks), "no PUBACK"
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
