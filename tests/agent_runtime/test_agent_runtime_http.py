"""The local HTTP API: predictions, clear 4xx errors that never stop the server, feedback."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentConfigError
from edge_agent.runtime import RuntimeProfile
from edge_agent.samples import SampleStoreConfig
from edge_agent.serving import HttpApiConfig, ObserverConfig
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
from shared.drift_reference import ReferenceStats


@pytest.fixture()
def stack(tmp_path: Path, sensor_model):
    config = InferenceStackConfig(
        api=HttpApiConfig(port=0, unix_socket=tmp_path / "agent.sock", max_body_bytes=64 * 1024),
        observers=ObserverConfig(
            sample_rate=0.0, audit_sample_rate=1.0, audit_path=tmp_path / "audit.jsonl", seed=1
        ),
        samples=SampleStoreConfig(path=tmp_path / "samples.db"),
    )
    s = InferenceStack(config)
    ref = ReferenceStats.from_samples(sensor_model.batch(1000))
    s.install(
        sensor_model.artifacts(version=3),
        profile=RuntimeProfile(preferred=("onnxruntime:cpu",)),
        reference=ref,
    )
    s.start()
    yield s
    s.stop()


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def _conn(stack) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", stack.api.port, timeout=10)


def test_predict_batch_then_bad_inputs_get_4xx_and_server_keeps_serving(
    stack, sensor_model
) -> None:
    conn = _conn(stack)  # one keep-alive connection through every error
    x = sensor_model.batch(4)
    status, body = _call(conn, "POST", "/predict", json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200 and body["model_version"] == 3 and len(body["predictions"]) == 4
    p = body["predictions"][0]
    assert set(p) == {"id", "label", "confidence", "scores"} and len(p["scores"]) == 3
    assert abs(sum(p["scores"]) - 1.0) < 1e-4

    bad = [
        (b"{oops", 400, "MalformedRequest"),
        (b'{"inputs": [[1, 2, 3]]}', 422, "InferenceInputError"),  # wrong shape
        (b'{"inputs": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', 422, "InvalidNumber"),
        (json.dumps({"inputs": [["a"] * 12]}).encode(), 422, "InferenceInputError"),  # dtype
        (b'{"inputs": [[' + b"1e400," * 11 + b"1]]}", 422, "InvalidNumber"),  # inf
        (json.dumps({"inputs": x.tolist() * 20}).encode(), 422, "InferenceInputError"),  # batch
        (json.dumps({"inputs": [[1.0] * 12, [1.0] * 11]}).encode(), 422, "InferenceInputError"),
        (
            json.dumps(
                {
                    "inputs_b64": base64.b64encode(x.astype(np.float64).tobytes()).decode(),
                    "shape": [4, 12],
                    "dtype": "float64",
                }
            ).encode(),
            422,
            "InferenceInputError",
        ),  # dtype mismatch
        (b'{"something": 1}', 422, "InferenceInputError"),
    ]
    for payload, want_status, want_type in bad:
        status, body = _call(conn, "POST", "/predict", payload)
        assert (status, body["error"]["type"]) == (want_status, want_type), payload[:60]
        assert body["error"]["message"]
    status, body = _call(conn, "POST", "/nowhere", b"{}")
    assert status == 404
    status, body = _call(conn, "POST", "/predict", json.dumps({"inputs": x[0].tolist()}).encode())
    assert status == 200 and len(body["predictions"]) == 1  # a single sample is a batch of 1

    b64 = {
        "inputs_b64": base64.b64encode(x.tobytes()).decode(),
        "shape": [4, 12],
        "dtype": "float32",
    }
    status, body = _call(conn, "POST", "/predict", json.dumps(b64).encode())
    assert status == 200 and len(body["predictions"]) == 4

    status, health = _call(conn, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["runtime"]["provider"] == "CPUExecutionProvider"
    assert health["stats"]["input_error_count"] == sum(
        1 for b in bad if b[2] == "InferenceInputError"
    )
    assert health["stats"]["inference_count"] == 9 and health["stats"]["p95_ms"] is not None


def test_oversized_body_is_refused_with_413(stack) -> None:
    conn = _conn(stack)
    status, body = _call(conn, "POST", "/predict", b"[" + b"0," * 40_000 + b"0]")
    assert status == 413 and body["error"]["type"] == "RequestTooLarge"
    status, _ = _call(_conn(stack), "GET", "/health")
    assert status == 200


def test_feedback_labels_reach_the_sample_store_and_audit_log(
    stack, sensor_model, tmp_path
) -> None:
    conn = _conn(stack)
    x = sensor_model.batch(3, seed=9)
    _, body = _call(conn, "POST", "/predict", json.dumps({"inputs": x.tolist()}).encode())
    ids = [p["id"] for p in body["predictions"]]
    status, fb = _call(conn, "POST", "/feedback", json.dumps({"id": ids[0], "label": 2}).encode())
    assert status == 200 and fb == {"accepted": 1, "unknown": []}
    items = [{"id": ids[1], "label": 0}, {"id": "no-such-id", "label": 1}]
    status, fb = _call(conn, "POST", "/feedback", json.dumps({"items": items}).encode())
    assert status == 200 and fb == {"accepted": 1, "unknown": ["no-such-id"]}
    status, fb = _call(conn, "POST", "/feedback", json.dumps({"id": "nope", "label": 1}).encode())
    assert status == 404
    status, fb = _call(conn, "POST", "/feedback", json.dumps({"id": ids[2], "label": "x"}).encode())
    assert status == 400
    assert stack.store is not None
    xs, ys = stack.store.load_training_arrays()
    assert sorted(ys.tolist()) == [0, 2]
    got = {int(y): row for row, y in zip(xs, ys, strict=True)}
    np.testing.assert_array_equal(got[2], x[0])
    np.testing.assert_array_equal(got[0], x[1])
    stack.observers.flush()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {a["id"] for a in audit} >= set(ids) and {a["model_version"] for a in audit} == {3}


def test_unix_socket_serves_the_same_api(stack, sensor_model, tmp_path) -> None:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(tmp_path / "agent.sock"))

    conn = UnixConnection("localhost", timeout=10)
    status, body = _call(
        conn, "POST", "/predict", json.dumps({"inputs": sensor_model.batch(2).tolist()}).encode()
    )
    assert status == 200 and len(body["predictions"]) == 2


def test_api_refuses_non_loopback_host() -> None:
    with pytest.raises(AgentConfigError):
        HttpApiConfig(host="0.0.0.0")


def test_raw_tensor_fast_path(stack, sensor_model) -> None:
    conn = _conn(stack)
    x = sensor_model.batch(5)
    headers = {"Content-Type": "application/octet-stream", "X-Shape": "5,12", "X-Dtype": "float32"}
    conn.request("POST", "/predict", body=x.tobytes(), headers=headers)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 200 and len(body["predictions"]) == 5
    # the same answer as the JSON path
    _, as_json = _call(conn, "POST", "/predict", json.dumps({"inputs": x.tolist()}).encode())
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in as_json["predictions"]]
    for bad_headers, data in [
        ({**headers, "X-Shape": "5,13"}, x.tobytes()),  # bytes do not fill the shape
        ({**headers, "X-Shape": "five"}, x.tobytes()),
        ({k: v for k, v in headers.items() if k != "X-Shape"}, x.tobytes()),
        ({**headers, "X-Dtype": "float64"}, x.astype(np.float64).tobytes()),
        ({**headers, "X-Shape": "1,12"}, np.full(12, np.nan, np.float32).tobytes()),
    ]:
        conn.request("POST", "/predict", body=data, headers=bad_headers)
        resp = conn.getresponse()
        err = json.loads(resp.read())
        assert resp.status == 422 and err["error"]["type"] == "InferenceInputError", bad_headers


def test_drift_reports_come_out_of_the_running_stack(tmp_path: Path, sensor_model) -> None:
    from edge_agent.drift import DriftConfig

    stack = InferenceStack(InferenceStackConfig(api=None, drift=DriftConfig(window_size=100)))
    ref = ReferenceStats.from_samples(sensor_model.batch(2000, seed=1))
    stack.install(
        sensor_model.artifacts(version=5),
        profile=RuntimeProfile(preferred=("onnxruntime:cpu",)),
        reference=ref,
    )
    stack.start()
    try:
        for seed in range(10):  # 100 in-distribution samples
            stack.server.predict(sensor_model.batch(10, seed=100 + seed))
        for seed in range(10):  # then 100 shifted ones
            stack.server.predict(sensor_model.batch(10, seed=200 + seed) + 1.5)
        assert stack.observers.flush()
        reports = stack.drain_drift_reports()
        assert [r.drifted for r in reports] == [False, True]
        assert reports[1].model_version == 5 and len(reports[1].drifted_features) >= 6
        snap = stack.telemetry()
        assert snap.metrics["drift_windows"] == 2 and snap.metrics["drift_alarms"] == 1
        assert snap.metrics["inference_count"] == 200
    finally:
        stack.stop()


def test_no_model_yet_answers_503_and_recovers_after_install(sensor_model) -> None:
    stack = InferenceStack(InferenceStackConfig(api=HttpApiConfig(port=0)))
    stack.start()
    try:
        conn = _conn(stack)
        status, body = _call(conn, "GET", "/health")
        assert status == 503 and body["status"] == "no-model"
        status, body = _call(conn, "POST", "/predict", b'{"inputs": [[0]]}')
        assert status == 503 and body["error"]["type"] == "RuntimeBackendError"
        stack.install(
            sensor_model.artifacts(version=1),
            profile=RuntimeProfile(preferred=("onnxruntime:cpu",)),
        )
        x = sensor_model.batch(1).tolist()
        status, body = _call(conn, "POST", "/predict", json.dumps({"inputs": x}).encode())
        assert status == 200 and body["model_version"] == 1
    finally:
        stack.stop()
