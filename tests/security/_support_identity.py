"""A hub data directory set up with the real CLI, its HTTPS enrollment served by uvicorn, and
the Mosquitto that ``cloud-hub broker-config`` configured, on free loopback ports.

Used by the R2/R3 tests: everything is the product's own (CLI, ``open_enrollment``,
``write_broker_files`` output, the agent's enrollment client); nothing is mocked.
"""

from __future__ import annotations

import getpass
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import EnrollmentService, enrollment_router, open_enrollment
from cloud_hub.enrollment.hubdir import server_tls_files
from shared.topics import TopicScheme
from tests.identity.identity_support import (
    DeviceCreds,
    enroll_over_https,
    free_port,
    mosquitto_process,
    serving_https,
)

__all__ = [
    "BrokerSetup",
    "DeviceCreds",
    "broker_config",
    "enroll",
    "running_broker",
    "serving_enrollment",
]


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
    with mosquitto_process(
        setup.out / "mosquitto.conf", setup.log, (setup.port, setup.hub_port)
    ) as proc:
        yield proc


@dataclass
class EnrollmentServer:
    service: EnrollmentService
    url: str


@contextmanager
def serving_enrollment(data_dir: Path) -> Iterator[EnrollmentServer]:
    """The hub's enrollment API over HTTPS, from ``data_dir`` as ``cloud-hub serve`` has it."""
    service = open_enrollment(data_dir)
    app = FastAPI()
    app.include_router(enrollment_router(service))
    tls = server_tls_files(data_dir, ["127.0.0.1", "localhost"])
    with serving_https(app, tls) as server:
        yield EnrollmentServer(service=service, url=f"https://127.0.0.1:{server.config.port}")


def enroll(
    hub: EnrollmentServer, directory: Path, device_id: str, *, token: str | None = None
) -> DeviceCreds:
    """A real enrollment over HTTPS, as ``edge-agent install`` does it."""
    return enroll_over_https(hub.service, hub.url, directory, device_id, token=token)
