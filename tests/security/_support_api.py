"""A real hub API for the R9/R11/R14 attack tests: uvicorn on a loopback port, serving
``create_app`` with the dashboard and the enrollment router mounted as ``cloud-hub serve``
does, over a SQLite registry; and raw-socket HTTP helpers (an attacker does not use a
well-behaved client)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.api import ApiContext, create_app
from cloud_hub.bundles import default_store
from cloud_hub.dashboard import mount_dashboard
from cloud_hub.enrollment.hubdir import open_enrollment
from cloud_hub.enrollment.router import enrollment_router
from cloud_hub.enrollment.service import EnrollmentService
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, admin, open_registry
from simulations.harness.api_thread import ServedApp


@dataclass
class RunningApi:
    url: str
    port: int
    registry: Registry
    context: ApiContext
    enrollment: EnrollmentService
    tokens: dict[str, str] = field(default_factory=dict)
    server: Any = field(default=None, repr=False)


@contextmanager
def running_api(
    tmp: Path,
    *,
    stream_recheck_s: float = 10.0,
    registry: Registry | None = None,
    enrollment: EnrollmentService | None = None,
    **context_kw: Any,
) -> Iterator[RunningApi]:
    """The hub API on a free loopback port, with one token per role in ``tokens``; the
    dashboard's live stream re-checks its token every ``stream_recheck_s``. Without
    ``registry``/``enrollment`` a SQLite registry and ``open_enrollment`` over ``tmp``."""
    owned = registry is None
    registry = registry or open_registry(f"sqlite:///{tmp / 'hub.db'}")
    enrollment = enrollment or open_enrollment(tmp / "hub-data", registry=registry)
    if "bundles" not in context_kw:  # the hub's bundle store, verifying against its own keys
        context_kw["bundles"] = default_store(KeyStore.init(tmp / "keys"))
    context = ApiContext(registry=registry, enrollment=enrollment, **context_kw)
    app = create_app(context)
    app.include_router(enrollment_router(enrollment))
    mount_dashboard(app, context, recheck_s=stream_recheck_s)
    tokens: dict[str, str] = {}
    with registry.session() as s:
        for role in admin.ROLES:
            _, tokens[role] = admin.create_token(s, name=f"{role}-bot", role=role, now=time.time())
    served = ServedApp(app, name="hub-api").start()
    port, server = served.port, served.server
    try:
        yield RunningApi(
            url=f"http://127.0.0.1:{port}",
            port=port,
            registry=registry,
            context=context,
            enrollment=enrollment,
            tokens=tokens,
            server=server,
        )
    finally:
        served.stop()
        if owned:
            registry.close()


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(sock: socket.socket, timeout: float = 20.0) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length framed, as the hub sends errors)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(status, headers, body[:length])


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """One request with a Content-Length body over a fresh connection."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT", "PATCH"):
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        return read_response(sock)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


class LogRecorder(logging.Handler):
    """Collects log records of a logger tree (the refusals must be logged with a reason)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextmanager
def recording_logs(name: str) -> Iterator[LogRecorder]:
    logger = logging.getLogger(name)
    handler = LogRecorder()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
