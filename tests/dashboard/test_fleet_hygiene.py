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

import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from cloud_hub.api.audit_tally import AnonymousAuditTally, AuditInsert, AuditUpdate, RefusalKind
from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, devices
from shared.messages import Hello, InstalledModel, Status
from tests.security._support_api import auth, recording_logs, request, running_api
from tests.security._support_enrolled import (
    ENROLLED,
    device_connection,
    enroll_over_http,
    enrolled_hub,
    wait_until,
)
from tests.security._support_freshness import MqttPeer, TrustBroker

from ..rollout.rollout_support import HubProcess

pytestmark = pytest.mark.integration


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
    with enrolled_hub(tmp_path) as (broker, registry, api, ingest):
        cert, key = enroll_over_http(api, tmp_path, "dev-gone")
        with device_connection(broker, "dev-gone", cert, key) as device:
            _say_hello(device, broker, "dev-gone")
            wait_until(lambda: ingest.stats().written >= 2)
            serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number

            gone = request(
                api.port, "DELETE", "/api/v1/devices/dev-gone", headers=auth(api.tokens["admin"])
            )
            assert gone.status == 204, gone.body
            # the device, still connected, keeps talking (a reconnect says hello again)
            with recording_logs("cloud_hub.ingest") as logs:
                _say_hello(device, broker, "dev-gone")
                wait_until(lambda: ingest.stats().rejected.get("removed_device", 0) >= 2)
            assert any("removed device" in m and "dev-gone" in m for m in logs.messages())
        with registry.session() as s:
            assert devices.find_device(s, "dev-gone") is None  # no ghost
        listed = request(api.port, "GET", "/api/v1/devices", headers=auth(api.tokens["viewer"]))
        assert listed.json()["total"] == 0
        crl = x509.load_pem_x509_crl(api.enrollment.crl_pem())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None

        # enrolling the id again is how an operator brings it back, with its enrolled identity
        cert2, key2 = enroll_over_http(api, tmp_path, "dev-gone", token_names_id=True)
        with device_connection(broker, "dev-gone", cert2, key2) as again:
            _say_hello(again, broker, "dev-gone")
            wait_until(lambda: ingest.stats().written >= 4)
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
