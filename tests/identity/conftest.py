"""Fixtures for the identity tests: a real HTTPS hub (uvicorn with the hub CA's server
certificate) and a private Mosquitto requiring client certificates, one of each per module.

Test modules get everything through fixtures (``hub``, ``broker``, ``enroll_device``,
``mqtt_client``); the helpers behind them live in ``tests/identity/identity_support.py``.
"""

from __future__ import annotations

import getpass
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

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
from shared.signing import SigningKey, TrustRoot
from shared.topics import TopicScheme
from tests.identity.identity_support import (
    DeviceCreds,
    MqttProbe,
    enroll_over_https,
    free_port,
    mosquitto_process,
    serving_https,
)

UTC = timezone.utc


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
    with serving_https(app, tls) as server:
        yield Hub(
            service=service,
            clock=clock,
            url=f"https://127.0.0.1:{server.config.port}",
            ca_file=tmp / "ca" / "ca.crt",
            trust_root=trust,
            tmp=tmp,
            server=server,
        )


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
    with mosquitto_process(files.config, log, (port, hub_port)) as proc:
        yield Broker(
            port=port, hub_port=hub_port, files=files, scheme=scheme, log=log, process=proc
        )


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
        return enroll_over_https(
            hub.service, hub.url, tmp_path / "devices", device_id, device_class, token
        )

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
