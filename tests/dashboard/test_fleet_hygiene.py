"""Fleet hygiene an operator relies on, each against the real parts.

- A device the operator deleted while it is still online stays deleted: its messages over
  real mTLS Mosquitto are refused by the real ingest (no stub without class or labels), its
  certificate is on the CRL, and enrolling the id again readmits it with its enrolled class.
- ``cloud-hub serve`` (real uvicorn) with an open dashboard stream exits on SIGTERM in
  seconds, not when the stream's hour is up.
- A flood of anonymous mutating calls (real uvicorn) does not write one audit row each:
  they are tallied, with the exact count, while token holders are still audited per call.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cloud_hub.api.audit_tally import AnonymousAuditTally, AuditInsert, AuditUpdate, RefusalKind
from cloud_hub.enrollment import EnrollmentConfig, EnrollmentService, SqlEnrollmentRepository
from cloud_hub.enrollment.hubdir import register_in_fleet
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, admin, devices, open_registry
from edge_agent.service.identity import build_csr, generate_device_key
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Hello, InstalledModel, Status
from tests.security._support_api import RunningApi, auth, recording_logs, request, running_api
from tests.security._support_freshness import HUB_USER, MqttPeer, TrustBroker, running_broker

from ..rollout.rollout_support import HubProcess

pytestmark = pytest.mark.integration

ENROLLED = {"site": "plant-1"}


def _wait(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@contextmanager
def _hub(tmp: Path) -> Iterator[tuple[TrustBroker, Registry, RunningApi, FleetIngest]]:
    """mTLS broker, registry, API (uvicorn, enrollment on the broker's device CA), ingest."""
    with running_broker(tmp) as broker:
        registry = open_registry(f"sqlite:///{tmp / 'hub.db'}")
        enrollment = EnrollmentService(
            ca=broker.device_ca,
            repository=SqlEnrollmentRepository(registry.engine),
            config=EnrollmentConfig(topic_prefix=broker.scheme.prefix, hub_user=HUB_USER),
            on_enrolled=register_in_fleet(registry),
        )
        endpoint = BrokerEndpoint.from_url(
            f"mqtts://127.0.0.1:{broker.hub_port}",
            ca_file=str(broker.files.ca_cert),
            cert_file=str(broker.files.hub_cert),
            key_file=str(broker.files.hub_key),
        )
        ingest = FleetIngest(
            registry,
            scheme=broker.scheme,
            mqtt_settings=IngestConnection(
                endpoint=endpoint, client_id=f"{HUB_USER}:ingest:hyg-{uuid.uuid4().hex[:6]}"
            ),
        )
        ingest.start()
        try:
            with running_api(tmp, registry=registry, enrollment=enrollment) as api:
                yield broker, registry, api, ingest
        finally:
            ingest.stop()
            registry.close()


def _enroll(
    api: RunningApi, tmp: Path, device_id: str, *, again: bool = False
) -> tuple[Path, Path]:
    secret, _ = api.enrollment.issue_token(
        device_class="x86-cpu", labels=ENROLLED, device_id=device_id if again else None
    )
    key_pem = generate_device_key()
    body = {"token": secret, "csr": build_csr(key_pem, device_id).decode(), "device_id": device_id}
    answer = request(
        api.port,
        "POST",
        "/api/v1/enroll",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body
    cert, key = tmp / f"{device_id}.crt", tmp / f"{device_id}.key"
    cert.write_text(answer.json()["certificate"])
    key.write_bytes(key_pem)
    return cert, key


def _say_hello(device: MqttPeer, broker: TrustBroker, device_id: str) -> None:
    hello = Hello(
        device_id=device_id,
        device_class="x86-cpu",
        agent_version="0.1.0",
        runtimes=["onnxruntime:cpu"],
        free_disk_bytes=1 << 30,
        free_mem_bytes=1 << 29,
        installed=InstalledModel("sensor-mlp", 1, "b" * 64),
        labels=ENROLLED,
        ts=time.time(),
    )
    topic = broker.scheme.device
    assert not device.publish(topic(device_id, "hello"), hello.encode()).is_failure
    status = Status(device_id, True, installed=InstalledModel("sensor-mlp", 1, "b" * 64))
    assert not device.publish(topic(device_id, "status"), status.encode()).is_failure


def test_a_deleted_device_still_online_stays_deleted_until_enrolled_again(tmp_path: Path) -> None:
    with _hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = _enroll(api, tmp_path, "dev-gone")
        device = MqttPeer(
            broker.port,
            client_id="dev-gone",
            ca=broker.files.ca_cert,
            cert=cert,
            key=key,
            scheme=broker.scheme,
        )
        try:
            _say_hello(device, broker, "dev-gone")
            _wait(lambda: ingest.stats().written >= 2)
            serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number

            gone = request(
                api.port, "DELETE", "/api/v1/devices/dev-gone", headers=auth(api.tokens["admin"])
            )
            assert gone.status == 204, gone.body
            # the device, still connected, keeps talking (a reconnect says hello again)
            with recording_logs("cloud_hub.ingest") as logs:
                _say_hello(device, broker, "dev-gone")
                _wait(lambda: ingest.stats().rejected.get("removed_device", 0) >= 2)
            assert any("removed device" in m and "dev-gone" in m for m in logs.messages())
        finally:
            device.close()
        with registry.session() as s:
            assert devices.find_device(s, "dev-gone") is None  # no ghost
        listed = request(api.port, "GET", "/api/v1/devices", headers=auth(api.tokens["viewer"]))
        assert listed.json()["total"] == 0
        crl = x509.load_pem_x509_crl(api.enrollment.crl_pem())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None

        # enrolling the id again is how an operator brings it back, with its enrolled identity
        cert2, key2 = _enroll(api, tmp_path, "dev-gone", again=True)
        again = MqttPeer(
            broker.port,
            client_id="dev-gone",
            ca=broker.files.ca_cert,
            cert=cert2,
            key=key2,
            scheme=broker.scheme,
        )
        try:
            _say_hello(again, broker, "dev-gone")
            _wait(lambda: ingest.stats().written >= 4)
        finally:
            again.close()
        with registry.session() as s:
            back = devices.get_device(s, "dev-gone")
        assert (back.device_class, back.labels, back.online) == ("x86-cpu", ENROLLED, True)


def _open_stream(port: int, token: str) -> socket.socket:
    ticket = request(port, "POST", "/api/v1/stream-tickets", headers=auth(token)).json()["ticket"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET /ui/stream?ticket={ticket} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = sock.recv(4096)
    assert b" 200 " in head.split(b"\r\n", 1)[0], head
    return sock


def test_sigterm_with_an_open_dashboard_stream_exits_in_seconds(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    hub = HubProcess(tmp_path / "hub", f"sig-{uuid.uuid4().hex[:8]}", keys)
    hub.start()
    try:
        streams = [_open_stream(hub.port, hub.token) for _ in range(2)]
        time.sleep(1.5)  # the streams are past their first event, waiting for changes
        started = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        hub.proc.wait(timeout=30)
        took = time.monotonic() - started
        tails = b""
        for sock in streams:
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                tails += chunk
            sock.close()
    finally:
        hub.kill()
    assert took < 5.0, f"SIGTERM took {took:.1f} s with open streams:\n{hub.logs()}"
    assert hub.proc.returncode is not None
    assert b"event: closing" in tails  # the page learns why its stream ended


def test_anonymous_refusals_are_tallied_not_written_one_by_one(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        with api.registry.session() as s:
            before = admin.list_audit(s, limit=1000).total
        # a flood: a bad token on a mutating route, and no token at all on another
        for i in range(400):
            bad = {"Authorization": f"Bearer forged-{i}", "Content-Type": "application/json"}
            assert (
                request(api.port, "POST", "/api/v1/rollouts", body=b"{}", headers=bad).status == 401
            )
        for _ in range(100):
            assert request(api.port, "DELETE", "/api/v1/devices/x").status == 401
        time.sleep(1.1)  # past the update interval: the next refusal brings the count up to date
        assert request(api.port, "POST", "/api/v1/rollouts", body=b"{}").status == 401
        time.sleep(1.1)
        assert request(api.port, "DELETE", "/api/v1/devices/x").status == 401
        # a token holder's refused call is still its own row
        viewer = auth(api.tokens["viewer"])
        assert (
            request(api.port, "POST", "/api/v1/rollouts", body=b"{}", headers=viewer).status == 403
        )
        with api.registry.session() as s:
            entries = admin.list_audit(s, limit=1000)
    rows = entries.items
    assert entries.total - before <= 3, [(r.actor, r.resource, r.detail) for r in rows]
    counts = {
        (r.action, r.resource): r.detail.get("anonymous_refusals")
        for r in rows
        if r.actor == "anonymous"
    }
    assert counts == {
        ("POST", "/api/v1/rollouts"): 401,
        ("DELETE", "/api/v1/devices/{device_id}"): 101,
    }
    assert [r.status for r in rows if r.actor == "viewer-bot"] == [403]


def test_tally_bounds_rows_per_window_whatever_the_paths() -> None:
    tally = AnonymousAuditTally(window_s=60, max_kinds=4, update_every_s=1)
    decisions = [
        tally.refused(RefusalKind("POST", f"/scan/{i}", 404), now=100 + i * 0.001)
        for i in range(1000)
    ]
    inserts = [d for d in decisions if isinstance(d, AuditInsert)]
    assert len(inserts) == 5  # 4 kinds, then one "*" for everything else
    assert inserts[-1].kind.resource == "*"
    assert [u.count for u in tally.pending()] == [996]
    # a new window starts new rows; updates come at most once per interval
    assert isinstance(tally.refused(RefusalKind("POST", "/a", 401), now=200), AuditInsert)
    assert tally.refused(RefusalKind("POST", "/a", 401), now=200.5) is None
    update = tally.refused(RefusalKind("POST", "/a", 401), now=201.5)
    assert isinstance(update, AuditUpdate) and update.count == 3
    assert tally.pending() == []
