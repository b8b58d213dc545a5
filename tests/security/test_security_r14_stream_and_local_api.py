"""R14: the dashboard's live stream and the device's local API.

Attacks, against a real uvicorn serving the hub (dashboard mounted) and a real agent
inference stack with its local HTTP API:

- an API token in the stream URL (where proxies and history keep it) no longer opens the
  stream; a ticket opens it once; a revoked token loses the stream it already has;
- a DNS-rebinding page (Host: its own name) or a cross-site page (Origin) cannot post
  feedback labels into the device's training data;
- ``1e999`` / ``NaN`` in JSON and an ``X-Shape`` that overflows are 422, never 500.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.dashboard.tickets import StreamTickets
from cloud_hub.registry import admin
from edge_agent.runtime import ModelArtifacts, RuntimeProfile
from edge_agent.samples import SampleStoreConfig
from edge_agent.serving import HttpApiConfig, ObserverConfig
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
from tests.onnx_models import tiny_onnx_model
from tests.security._support_api import (
    RunningApi,
    auth,
    recording_logs,
    request,
    running_api,
)

pytestmark = pytest.mark.integration

RECHECK_S = 0.5


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    with running_api(tmp_path, stream_recheck_s=RECHECK_S) as running:
        yield running


def _ticket(api: RunningApi, token: str) -> str:
    answer = request(api.port, "POST", "/api/v1/stream-tickets", headers=auth(token))
    assert answer.status == 200, answer.body
    return str(answer.json()["ticket"])


def _open_stream(api: RunningApi, query: str) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=20)
    sock.sendall(f"GET /ui/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, int(head.split()[1]), rest


def _read_until(sock: socket.socket, marker: bytes, already: bytes, timeout: float) -> bytes:
    data, deadline = already, time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_api_token_in_the_url_does_not_open_the_stream(api: RunningApi) -> None:
    sock, status, _ = _open_stream(api, f"access_token={api.tokens['admin']}")
    sock.close()
    assert status in (401, 422)
    sock, status, _ = _open_stream(api, f"ticket={api.tokens['admin']}")
    sock.close()
    assert status == 401


def test_a_ticket_opens_one_stream_once(api: RunningApi) -> None:
    ticket = _ticket(api, api.tokens["viewer"])
    sock, status, rest = _open_stream(api, f"ticket={ticket}")
    with sock:
        assert status == 200
        assert b"event: change" in _read_until(sock, b"event: change", rest, 10)
    with recording_logs("cloud_hub.dashboard") as logs:
        again, status, _ = _open_stream(api, f"ticket={ticket}")  # replayed from a log
        again.close()
    assert status == 401
    assert any("ticket" in m for m in logs.messages())


def test_tickets_expire_and_are_single_use() -> None:
    tickets = StreamTickets(ttl_s=30)
    t = tickets.issue("tok1", now=1000.0)
    assert tickets.redeem(t.secret, now=1029.0) == "tok1"
    assert tickets.redeem(t.secret, now=1029.0) is None
    late = tickets.issue("tok1", now=1000.0)
    assert tickets.redeem(late.secret, now=1030.0) is None
    bounded = StreamTickets(ttl_s=30, max_outstanding=2)
    first = bounded.issue("a", now=0.0)
    bounded.issue("b", now=0.0)
    bounded.issue("c", now=0.0)  # a flood of tickets evicts the oldest, memory stays bounded
    assert bounded.redeem(first.secret, now=1.0) is None


def test_revoking_the_token_closes_its_open_stream(api: RunningApi) -> None:
    with api.registry.session() as s:
        record, token = admin.create_token(s, name="leaked", role="viewer", now=time.time())
    other = _ticket(api, api.tokens["viewer"])
    sock, status, rest = _open_stream(api, f"ticket={_ticket(api, token)}")
    keeper, keeper_status, keeper_rest = _open_stream(api, f"ticket={other}")
    with sock, keeper, recording_logs("cloud_hub.dashboard") as logs:
        assert status == 200 and keeper_status == 200
        rest = _read_until(sock, b"event: change", rest, 10)
        revoke = request(
            api.port,
            "DELETE",
            f"/api/v1/tokens/{record.token_id}",
            headers=auth(api.tokens["admin"]),
        )
        assert revoke.status in (200, 204), revoke.body
        data = _read_until(sock, b"event: revoked", rest, 10 + 4 * RECHECK_S)
        assert b"event: revoked" in data
        # the server ends the response (chunked: the terminating chunk) and closes
        assert b"0\r\n\r\n" in _read_until(sock, b"0\r\n\r\n", data, 5)
        assert any("revoked" in m and record.token_id in m for m in logs.messages())
        # the other token's stream is untouched: still receiving keep-alives
        keeper_data = _read_until(keeper, b"keep-alive", keeper_rest, 10)
        assert b"keep-alive" in keeper_data and b"revoked" not in keeper_data
    # and the revoked token cannot get a new ticket
    answer = request(api.port, "POST", "/api/v1/stream-tickets", headers=auth(token))
    assert answer.status == 401


# -- the device's local API --------------------------------------------------------------


@pytest.fixture
def device_api(tmp_path: Path) -> Iterator[InferenceStack]:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_onnx_model(features=4, classes=3))
    stack = InferenceStack(
        InferenceStackConfig(
            api=HttpApiConfig(port=0, allowed_hosts=("edge-7.plant.local",)),
            observers=ObserverConfig(sample_rate=0.0, audit_sample_rate=0.0, seed=1),
            samples=SampleStoreConfig(path=tmp_path / "samples.db"),
        )
    )
    stack.install(
        ModelArtifacts(version=1, onnx=model),
        profile=RuntimeProfile(preferred=("onnxruntime:cpu",)),
    )
    stack.start()
    yield stack
    stack.stop()


def _post(
    stack: InferenceStack, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.api.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_host=True)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _predict_ids(stack: InferenceStack, n: int) -> list[str]:
    x = np.random.default_rng(3).normal(size=(n, 4)).astype(np.float32)
    status, body = _post(
        stack, "/predict", json.dumps({"inputs": x.tolist()}).encode(), {"Host": "127.0.0.1"}
    )
    assert status == 200, body
    return [p["id"] for p in body["predictions"]]


def _stored_labels(stack: InferenceStack) -> list[int]:
    assert stack.store is not None
    return sorted(int(y) for y in stack.store.load_training_arrays()[1])


def test_rebinding_and_cross_site_pages_cannot_label_training_data(
    device_api: InferenceStack,
) -> None:
    ids = _predict_ids(device_api, 3)
    attacks = [
        {"Host": "attacker.example"},  # DNS rebinding: the page's own name
        {"Host": "attacker.example:8787"},
        {"Host": f"127.0.0.1:{device_api.api.port}", "Origin": "http://attacker.example"},
        {"Host": "127.0.0.1", "Origin": "null"},  # a sandboxed frame
        {},  # no Host at all (HTTP/1.1 requires one)
    ]
    with recording_logs("edge_agent.serving") as logs:
        for headers in attacks:
            body = json.dumps({"id": ids[0], "label": 2}).encode()
            status, answer = _post(
                device_api, "/feedback", body, {**headers, "Content-Type": "text/plain"}
            )
            assert (status, answer["error"]["type"]) == (403, "HostNotAllowed"), headers
    assert sum("refused POST /feedback" in m for m in logs.messages()) == len(attacks)
    assert _stored_labels(device_api) == []  # nothing reached the training data
    # the device's own names still work: loopback, with a port, and a configured name
    for i, host in enumerate(("127.0.0.1", "localhost:8787", "EDGE-7.plant.local")):
        body = json.dumps({"id": ids[i], "label": i}).encode()
        status, answer = _post(device_api, "/feedback", body, {"Host": host})
        assert status == 200 and answer["accepted"] == 1, (host, answer)
    assert _stored_labels(device_api) == [0, 1, 2]


def test_non_finite_numbers_and_overflowing_shapes_are_422(device_api: InferenceStack) -> None:
    ids = _predict_ids(device_api, 1)
    local = {"Host": "127.0.0.1"}
    for payload in (
        b'{"id": "%s", "label": 1e999}' % ids[0].encode(),
        b'{"inputs": [[1e999, 0, 0, 0]]}',
        b'{"inputs": [[NaN, 0, 0, 0]]}',
        b'{"inputs": [[-Infinity, 0, 0, 0]]}',
    ):
        path = "/feedback" if b"label" in payload else "/predict"
        status, answer = _post(device_api, path, payload, local)
        assert (status, answer["error"]["type"]) == (422, "InvalidNumber"), payload
    raw = {**local, "Content-Type": "application/octet-stream", "X-Dtype": "float32"}
    for shape in (
        "1,99999999999999999999",  # over int64: numpy's product raised (500)
        "1,4611686018427387905,4",  # the int64 product wraps to 4 and "fits" 16 bytes (500)
        "99999999999999999999,4",
        "1," * 40 + "4",  # absurd rank
        "1,4_0",  # int() would take it
    ):
        status, answer = _post(device_api, "/predict", b"\0" * 16, {**raw, "X-Shape": shape})
        assert status == 422, (shape, answer)
    # the label was not taken, and the server still answers
    assert _stored_labels(device_api) == []
    status, answer = _post(
        device_api, "/feedback", json.dumps({"id": ids[0], "label": 1}).encode(), local
    )
    assert status == 200 and answer["accepted"] == 1
