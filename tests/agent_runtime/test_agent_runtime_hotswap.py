"""Hot swap: a newly committed model takes over with no failed or dropped request."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np

from edge_agent.runtime import InferenceBackend, RuntimeProfile, RuntimeReport, select_backend
from edge_agent.runtime.selection import LoadedModel
from edge_agent.serving import HttpApiConfig, LocalApi, ModelServer

CPU = RuntimeProfile(preferred=("onnxruntime:cpu",))


def test_swaps_under_concurrent_http_requests_fail_nothing(sensor_model, sensor_model_v2) -> None:
    x = sensor_model.batch(8, seed=11)
    models = {1: sensor_model, 2: sensor_model_v2}
    expected = {
        v: select_backend(m.artifacts(version=v), CPU).backend.run(x) for v, m in models.items()
    }
    assert not np.allclose(expected[1], expected[2])  # the versions are distinguishable
    server = ModelServer()
    loaded_all = [select_backend(sensor_model.artifacts(version=1), CPU)]
    server.swap(loaded_all[0])
    api = LocalApi(server, HttpApiConfig(port=0))
    api.start()
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[int, int] = {1: 0, 2: 0}
    lock = threading.Lock()
    body = json.dumps({"inputs": x.tolist()}).encode()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/predict", body=body)
                resp = conn.getresponse()
                data = json.loads(resp.read())
                if resp.status != 200:
                    failures.append(f"{resp.status}: {data}")
                    continue
                v = data["model_version"]
                scores = np.array([p["scores"] for p in data["predictions"]])
                logits = expected[v]
                want = np.exp(logits - logits.max(1, keepdims=True))
                want /= want.sum(1, keepdims=True)
                if not np.allclose(scores, want, atol=1e-5):
                    failures.append(f"version {v} answered with another model's outputs")
                with lock:
                    seen[v] += 1
            except Exception as exc:  # a dropped connection is a failure too
                failures.append(repr(exc))
                conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            time.sleep(0.05)
            version = 2 if i % 2 == 0 else 1
            loaded = select_backend(models[version].artifacts(version=version), CPU)
            loaded_all.append(loaded)
            server.swap(loaded)
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        api.stop()
    assert failures == []
    assert seen[1] > 0 and seen[2] > 0
    assert server.stats().swaps == 13
    # every retired backend was closed once idle; the active one is still open
    closed = [not hasattr(lm.backend, "_session") for lm in loaded_all]
    assert closed == [True] * 12 + [False]


class GatedBackend(InferenceBackend):
    """A backend whose ``run`` waits for a gate: holds a request in flight across a swap."""

    backend, provider = "test", "cpu"

    def __init__(self, value: float) -> None:
        self.input_shape, self.input_dtype = (2,), np.dtype(np.float32)
        self.value = value
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed = False

    def run(self, x):
        self.entered.set()
        assert self.gate.wait(10)
        assert not self.closed, "closed while a request was in flight"
        return np.full((x.shape[0], 2), self.value, dtype=np.float32)

    def close(self) -> None:
        self.closed = True


def _loaded(backend: InferenceBackend, version: int) -> LoadedModel:
    report = RuntimeReport(
        backend="test", provider="cpu", device="cpu", is_gpu=False, model_version=version
    )
    return LoadedModel(backend=backend, report=report)


def test_in_flight_request_finishes_on_the_old_model_which_closes_afterwards() -> None:
    old, new = GatedBackend(0.0), GatedBackend(1.0)
    new.gate.set()
    server = ModelServer()
    server.swap(_loaded(old, 1))
    result: list = []
    t = threading.Thread(target=lambda: result.append(server.predict(np.zeros((1, 2)))))
    t.start()
    assert old.entered.wait(5)
    server.swap(_loaded(new, 2))  # must not wait for, fail or close the in-flight request
    assert not old.closed
    assert server.predict(np.zeros((1, 2))).model_version == 2
    old.gate.set()
    t.join(5)
    assert result and result[0].model_version == 1
    assert old.closed and not new.closed
