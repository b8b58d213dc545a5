"""R9: request bodies are counted as they arrive and authenticated before anyone parses them.

Attacks against a real uvicorn serving the hub app: a chunked body (no Content-Length)
far over the limit, and bad bodies sent without a valid token. Each is refused before the
body is read, the refusal is logged with its reason, and nothing is written.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.registry import admin, devices
from tests.security._support_api import (
    RunningApi,
    auth,
    read_response,
    recording_logs,
    request,
    running_api,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
UPLOAD_LIMIT = 2 * MIB


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    with running_api(tmp_path, max_upload_bytes=UPLOAD_LIMIT) as running:
        with running.registry.session() as s:
            devices.register_device(
                s, "dev-1", device_class="x86-cpu", labels={"site": "p1"}, now=time.time()
            )
        yield running


def _open_chunked(port: int, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """Send the head of a chunked request; the caller sends the chunks."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    hdrs = {"Host": f"127.0.0.1:{port}", "Transfer-Encoding": "chunked", **headers}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    sock.sendall(head.encode() + b"\r\n")
    return sock


def _send_chunks(sock: socket.socket, total: int, chunk: bytes) -> int:
    """Send up to ``total`` bytes in chunks, never the final empty chunk; returns what went
    out before the server stopped reading (it may close the connection on us)."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_chunked_body_over_the_limit_is_refused_as_it_arrives(api: RunningApi) -> None:
    # 3 MiB of one never-ending JSON string, chunked: no Content-Length to check up front.
    # The final chunk is never sent: a server that buffered the whole body would still be
    # waiting; the gate answers 413 once 1 MiB has arrived.
    with recording_logs("cloud_hub.api") as logs:
        sock = _open_chunked(
            api.port, "PATCH", "/api/v1/devices/dev-1", auth(api.tokens["operator"])
        )
        with sock:
            _send_chunks(sock, 3 * MIB, b'{"labels": {"x": "' + b"a" * (64 * 1024 - 18))
            answer = read_response(sock)
    assert answer.status == 413, answer.body
    assert "over 1048576 bytes" in answer.json()["message"]
    assert any("rest is not read" in m for m in logs.messages())
    with api.registry.session() as s:  # nothing changed, and the refusal is in the audit log
        assert devices.get_device(s, "dev-1").labels == {"site": "p1"}
        entry = admin.list_audit(s, limit=5).items[0]
    assert (entry.status, entry.actor) == (413, "operator-bot")


def test_chunked_upload_over_its_limit_stores_nothing(api: RunningApi) -> None:
    headers = {**auth(api.tokens["operator"]), "Content-Type": "application/octet-stream"}
    sock = _open_chunked(api.port, "POST", "/api/v1/bundles/upload", headers)
    with sock:
        _send_chunks(sock, 4 * UPLOAD_LIMIT, b"\0" * (256 * 1024))
        answer = read_response(sock)
    assert answer.status == 413, answer.body
    assert api.context.bundles is not None
    bundle_dir = api.context.bundles.directory
    assert not (bundle_dir.exists() and any(bundle_dir.iterdir()))


def test_a_body_without_a_valid_token_is_refused_before_it_is_read(api: RunningApi) -> None:
    # Declares 900 KiB (under the limit) and sends none of it: only a server that refuses
    # before reading answers at all.
    for headers in ({}, auth("ffh_0000_not-a-token"), auth(_revoked_token(api))):
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=20)
        with sock:
            hdrs = {"Host": "x", "Content-Length": str(900 * 1024), **headers}
            sock.sendall(
                b"PATCH /api/v1/devices/dev-1 HTTP/1.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
                + b"\r\n"
            )
            answer = read_response(sock, timeout=10)
        assert answer.status == 401, (headers, answer.body)
        assert answer.headers.get("www-authenticate") == "Bearer"


def test_unauthenticated_malformed_body_gets_401_not_422(api: RunningApi) -> None:
    with recording_logs("cloud_hub.api") as logs:
        for body in (b"{not json", b'{"labels": 7}', b'{"labels": {"a": 1e999}}'):
            answer = request(
                api.port,
                "PATCH",
                "/api/v1/devices/dev-1",
                body=body,
                headers={"Content-Type": "application/json"},
            )
            assert answer.status == 401, (body, answer.body)
    assert any("without a valid API token" in m for m in logs.messages())
    # the same bad body with a valid token is the caller's mistake: 422
    answer = request(
        api.port,
        "PATCH",
        "/api/v1/devices/dev-1",
        body=b'{"labels": 7}',
        headers=auth(api.tokens["operator"]),
    )
    assert answer.status == 422
    with api.registry.session() as s:
        assert devices.get_device(s, "dev-1").labels == {"site": "p1"}


def test_authenticated_chunked_body_within_the_limit_still_works(api: RunningApi) -> None:
    body = json.dumps({"labels": {"rack": "r7"}}).encode()
    sock = _open_chunked(api.port, "PATCH", "/api/v1/devices/dev-1", auth(api.tokens["operator"]))
    with sock:
        for part in (body[:10], body[10:]):
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = read_response(sock)
    assert answer.status == 200, answer.body
    assert answer.json()["labels"] == {"site": "p1", "rack": "r7"}
    # a viewer token passes the gate (it is valid) and the route still refuses the role
    viewer = request(
        api.port,
        "PATCH",
        "/api/v1/devices/dev-1",
        body=body,
        headers=auth(api.tokens["viewer"]),
    )
    assert viewer.status == 403


def _revoked_token(api: RunningApi) -> str:
    with api.registry.session() as s:
        record, token = admin.create_token(s, name="gone", role="admin", now=time.time())
        admin.revoke_token(s, record.token_id, now=time.time())
    return token


def test_only_enrollment_itself_takes_a_body_without_an_api_token(api: RunningApi) -> None:
    # /api/v1/enrollment-tokens shares a prefix with the public /api/v1/enroll: still 401,
    # before its (malformed) body is parsed
    body = b'{"device_class": '
    headers = {"Content-Type": "application/json"}
    answer = request(api.port, "POST", "/api/v1/enrollment-tokens", body=body, headers=headers)
    assert answer.status == 401
    # enrollment authenticates with the enrollment token inside the body: it gets to read it
    answer = request(api.port, "POST", "/api/v1/enroll", body=b'{"token": "x"}', headers=headers)
    assert answer.status == 422 and "csr" in answer.json()["message"]
