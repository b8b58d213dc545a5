"""Fixtures for the identity tests: a real HTTPS hub (uvicorn with the hub CA's server
certificate) and a private Mosquitto requiring client certificates, one of each per module.

With ``--import-mode=importlib`` test modules cannot import helpers by name, so everything
they need comes through fixtures (``hub``, ``broker``, ``enroll_device``, ``mqtt_client``).
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.enrollment import (
    DEFAULT_HUB_USER,
    CertificateAuthority,
    EnrollmentConfig,
    EnrollmentService,
    SqlEnrollmentRepository,
    enrollment_router,
    hub_client_ca,
    server_tls_files,
    write_broker_files,
)
from cloud_hub.enrollment.broker import BrokerFiles
from edge_agent.service import hub_client
from edge_agent.service.identity import build_csr, generate_device_key
from shared.signing import SigningKey, TrustRoot
from shared.topics import TopicScheme

UTC = timezone.utc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Clock:
    """A clock the tests move forward (token expiry)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Hub:
    """An enrollment service served over HTTPS by uvicorn in a thread."""

    service: EnrollmentService
    clock: Clock
    url: str
    ca_file: Path
    trust_root: TrustRoot
    tmp: Path
    server: Any = field(repr=False, default=None)


@contextmanager
def running_hub(tmp: Path, *, mqtt_url: str, prefix: str) -> Iterator[Hub]:
    ca = CertificateAuthority.load_or_create(tmp / "ca")
    from sqlalchemy import create_engine

    clock = Clock()
    trust = TrustRoot(root_keys={(k := SigningKey.generate()).keyid: k.public_hex})
    service = EnrollmentService(
        ca=ca,
        repository=SqlEnrollmentRepository(create_engine(f"sqlite:///{tmp / 'enroll.sqlite'}")),
        config=EnrollmentConfig(mqtt_url=mqtt_url, topic_prefix=prefix),
        trust_root=lambda: trust,
        clock=clock,
    )
    tls = server_tls_files(tmp, ["127.0.0.1", "localhost"])  # what `enroll-init` writes
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
        yield Hub(
            service=service,
            clock=clock,
            url=f"https://127.0.0.1:{port}",
            ca_file=tmp / "ca" / "ca.crt",
            trust_root=trust,
            tmp=tmp,
            server=server,
        )
    finally:
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)


@dataclass
class Broker:
    port: int  # the device listener
    hub_port: int  # the hub listener (hub client CA only)
    files: BrokerFiles
    scheme: TopicScheme
    log: Path
    process: subprocess.Popen[bytes]

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP (re-reads config, ACL and CRL) and wait until the broker logged it."""
        before = self.log.read_text(errors="replace").count("Reloading config")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count("Reloading config") == before:
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not reload")
            time.sleep(0.02)


@contextmanager
def running_mosquitto(
    ca: CertificateAuthority, tmp: Path, *, prefix: str, hub_user: str = DEFAULT_HUB_USER
) -> Iterator[Broker]:
    """A private Mosquitto on free loopback ports (device and hub listeners): mTLS required,
    the rendered ACLs enforced. The hub client CA lives in ``tmp/hub-ca``."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port, hub_port = free_port(), free_port()
    scheme = TopicScheme(prefix)
    user = getpass.getuser()
    files = write_broker_files(
        ca,
        tmp / "broker",
        hub_ca=hub_client_ca(tmp),
        hub_user=hub_user,
        scheme=scheme,
        port=port,
        hub_port=hub_port,
        bind="127.0.0.1",
        broker_user=user if user == "root" else None,
        crl_pem=ca.build_crl([]),
    )
    log = tmp / "broker" / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "-c", str(files.config)], stdout=out, stderr=out)
    try:
        wait_port(port)
        wait_port(hub_port)
        yield Broker(
            port=port, hub_port=hub_port, files=files, scheme=scheme, log=log, process=proc
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MqttProbe:
    """A paho 2.x MQTT v5 client that records what happens (connect, acks, messages)."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str,
        ca: Path,
        cert: Path | None,
        key: Path | None,
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
        self.connected = threading.Event()
        self.connack: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.disconnected = threading.Event()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = rc
        self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.disconnected.set()
        self.connected.set()  # wake connect(): the broker closed the connection

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

    def connect(self, timeout: float = 5.0) -> None:
        """Connect and wait for the CONNACK; raises what the TLS handshake raises."""
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError("no CONNACK")
        if self.connack is None:
            raise ConnectionRefusedError("the broker closed the connection before CONNACK")

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
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


@dataclass
class DeviceCreds:
    device_id: str
    key: Path
    cert: Path
    ca: Path


def enroll_over_https(
    hub: Hub,
    directory: Path,
    device_id: str,
    device_class: str = "x86-cpu",
    token: str | None = None,
) -> DeviceCreds:
    """A real enrollment over HTTPS, as the agent does it; writes key and certificate."""
    secret = token or hub.service.issue_token(device_class=device_class)[0]
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    ca_pem = hub_client.fetch_pinned_ca(endpoint, hub.service.ca.fingerprint)
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


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"idt-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hub_and_broker(
    tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[tuple[Hub, Broker]]:
    tmp = tmp_path_factory.mktemp("hub")
    # The broker needs the CA first, the hub needs the broker port: create the CA, then both.
    ca = CertificateAuthority.load_or_create(tmp / "ca")
    with (
        running_mosquitto(ca, tmp, prefix=prefix) as broker,
        running_hub(tmp, mqtt_url=f"mqtts://127.0.0.1:{broker.port}", prefix=prefix) as hub,
    ):
        yield hub, broker


@pytest.fixture(scope="module")
def hub(hub_and_broker: tuple[Hub, Broker]) -> Hub:
    return hub_and_broker[0]


@pytest.fixture(scope="module")
def broker(hub_and_broker: tuple[Hub, Broker]) -> Broker:
    return hub_and_broker[1]


@pytest.fixture
def enroll_device(hub: Hub, tmp_path: Path) -> Any:
    """``enroll_device(device_id, device_class="x86-cpu") -> DeviceCreds`` over HTTPS."""

    def _enroll(
        device_id: str, device_class: str = "x86-cpu", token: str | None = None
    ) -> DeviceCreds:
        return enroll_over_https(hub, tmp_path / "devices", device_id, device_class, token)

    return _enroll


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[Any]:
    """``mqtt_client(client_id, ca, cert, key, port=None) -> MqttProbe`` (closed after the
    test); ``port`` defaults to the device listener."""
    made: list[MqttProbe] = []

    def _make(
        client_id: str, *, ca: Path, cert: Path | None, key: Path | None, port: int | None = None
    ) -> MqttProbe:
        probe = MqttProbe(port or broker.port, client_id=client_id, ca=ca, cert=cert, key=key)
        made.append(probe)
        return probe

    yield _make
    for probe in made:
        probe.close()
