"""A hub data directory set up with the real CLI, its HTTPS enrollment served by uvicorn, and
the Mosquitto that ``cloud-hub broker-config`` configured, on free loopback ports.

Used by the R2/R3 tests: everything is the product's own (CLI, ``open_enrollment``,
``write_broker_files`` output, the agent's enrollment client); nothing is mocked.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import EnrollmentService, enrollment_router, open_enrollment
from cloud_hub.enrollment.hubdir import server_tls_files
from edge_agent.service import hub_client
from edge_agent.service.identity import build_csr, generate_device_key
from shared.topics import TopicScheme

__all__ = [
    "BrokerSetup",
    "DeviceCreds",
    "Probe",
    "broker_config",
    "enroll",
    "free_port",
    "running_broker",
    "serving_enrollment",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class BrokerSetup:
    """What ``cloud-hub broker-config`` wrote, and where the broker listens."""

    data_dir: Path
    out: Path
    port: int
    hub_port: int
    prefix: str

    @property
    def scheme(self) -> TopicScheme:
        return TopicScheme(self.prefix)

    @property
    def log(self) -> Path:
        return self.out / "mosquitto.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def broker_config(data_dir: Path, *extra: str, prefix: str | None = None) -> BrokerSetup:
    """Run the real ``cloud-hub broker-config`` (loopback, free ports); asserts it succeeded."""
    setup = BrokerSetup(
        data_dir=data_dir,
        out=data_dir / "broker",
        port=free_port(),
        hub_port=free_port(),
        prefix=prefix or f"sec-{uuid.uuid4().hex[:8]}",
    )
    user = getpass.getuser()
    argv = [
        "broker-config",
        "--out",
        str(setup.out),
        "--data-dir",
        str(data_dir),
        "--port",
        str(setup.port),
        "--hub-port",
        str(setup.hub_port),
        "--bind",
        "127.0.0.1",
        "--prefix",
        setup.prefix,
        "--hostname",
        "127.0.0.1",
        *(["--broker-user", user] if user == "root" else []),
        *extra,
    ]
    assert hub_main(argv) == 0
    return setup


@contextmanager
def running_broker(setup: BrokerSetup) -> Iterator[subprocess.Popen[bytes]]:
    """Mosquitto with exactly the generated ``mosquitto.conf``."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is required for the broker security tests")
    with setup.log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "-c", str(setup.out / "mosquitto.conf")], stdout=out, stderr=out
        )
    try:
        _wait_port(setup.port)
        _wait_port(setup.hub_port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class EnrollmentServer:
    service: EnrollmentService
    url: str


@contextmanager
def serving_enrollment(data_dir: Path) -> Iterator[EnrollmentServer]:
    """The hub's enrollment API over HTTPS, from ``data_dir`` as ``cloud-hub serve`` has it."""
    service = open_enrollment(data_dir)
    tls = server_tls_files(data_dir, ["127.0.0.1", "localhost"])
    app = FastAPI()
    app.include_router(enrollment_router(service))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ssl_keyfile=str(tls.keyfile),
            ssl_certfile=str(tls.certfile),
            log_level="warning",
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield EnrollmentServer(service=service, url=f"https://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class DeviceCreds:
    device_id: str
    key: Path
    cert: Path
    ca: Path


def enroll(
    hub: EnrollmentServer, directory: Path, device_id: str, *, token: str | None = None
) -> DeviceCreds:
    """A real enrollment over HTTPS, as ``edge-agent install`` does it."""
    secret = token or hub.service.issue_token(device_class="x86-cpu")[0]
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    ca_pem = hub_client.fetch_pinned_ca(endpoint, hub.service.ca.fingerprint)
    key_pem = generate_device_key()
    answer = hub_client.enroll(
        endpoint,
        ca_pem=ca_pem,
        token=secret,
        csr_pem=build_csr(key_pem, device_id),
        device_class="x86-cpu",
        device_id=device_id,
        labels={},
    )
    directory.mkdir(parents=True, exist_ok=True)
    creds = DeviceCreds(
        device_id=answer.device_id,
        key=directory / f"{device_id}.key",
        cert=directory / f"{device_id}.crt",
        ca=directory / "ca.crt",
    )
    creds.key.write_bytes(key_pem)
    creds.cert.write_bytes(answer.certificate_pem)
    creds.ca.write_bytes(answer.ca_certificate_pem)
    return creds


class Probe:
    """A paho MQTT v5 client with a certificate that records connects, drops and messages."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str,
        ca: Path,
        cert: Path,
        key: Path,
        persistent: bool = False,
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.port = port
        self.persistent = persistent
        self.connacks: list[Any] = []
        self.disconnects: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

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

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def connect(self, timeout: float = 10.0) -> Any:
        """Connect; returns ``(reason, session_present)`` of the CONNACK."""
        props = Properties(PacketTypes.CONNECT)
        if self.persistent:
            props.SessionExpiryInterval = 3600
        before = len(self.connacks)
        self.client.connect(
            "127.0.0.1",
            self.port,
            keepalive=10,
            clean_start=not self.persistent,
            properties=props,
        )
        self.client.loop_start()
        assert self.wait_for(lambda: len(self.connacks) > before, timeout), "no CONNACK"
        return self.connacks[-1]

    def subscribe(self, topic: str) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        assert self.wait_for(lambda: mid in self.subacks), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.client.publish(topic, payload, qos=1)
        assert self.wait_for(lambda: info.mid in self.pubacks), "no PUBACK"
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
