"""The device process as shipped: ``edge-agent run --serve`` (the CLI entry point, not a
re-wiring of its parts) on the real Mosquitto, fed by the hub's own ``FleetPublisher``.

One process: installs a signed bundle (model + drift reference), serves ``/predict`` on the
model it committed, reports drift over MQTT when the inputs move away from the reference, and
hot-swaps to the next bundles while clients keep calling ``/predict`` — no request fails,
each client's answers go v1, v2, v3 and never back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper, numpy_helper

from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
from cloud_hub.delivery import FleetPublisher, PublisherConfig
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.bundle import artifact_info
from shared.drift_reference import ReferenceStats
from shared.messages import DriftReport, new_id
from shared.topics import TopicScheme
from simulations.harness.agents import agent_config_toml
from tests.agent_ota.agent_ota_helpers import BundleSender
from tests.onnx_models import checked_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
DEVICE = "serve-dev"
WINDOW = 50  # inputs per drift window
BATCH = 64  # inputs per request under load (the server's largest batch)
CLIENTS = 4
HIDDEN, DEPTH = 512, 8  # about 130 MFLOP per request


def _until(check: Callable[[], Any], timeout: float, diag: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, diag()
        time.sleep(0.1)
    return value


def _slow_model(seed: int) -> bytes:
    """4 features -> 3 classes through ``HIDDEN``-wide layers applied ``DEPTH`` times: a few
    milliseconds per request, so requests are in flight whenever the model is swapped."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, HIDDEN)).astype(np.float32), "W_in"),
        numpy_helper.from_array(
            (rng.normal(size=(HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32), "W_h"
        ),
        numpy_helper.from_array(rng.normal(size=(HIDDEN, 3)).astype(np.float32), "W_out"),
    ]
    nodes = [helper.make_node("MatMul", ["input", "W_in"], ["h0"])]
    for i in range(DEPTH):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W_h"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{DEPTH}", "W_out"], ["logits"]))
    return checked_model(nodes, inits, "slow")


def _bundle(keys: KeyStore, version: int, seed: int, reference: ReferenceStats) -> bytes:
    model = _slow_model(seed)
    ref = reference.to_json()
    artifacts = [
        (artifact_info("model.onnx", model, "model", "application/onnx"), model),
        (artifact_info("reference.json", ref, "reference_stats", "application/json"), ref),
    ]
    spec = BundleSpec(model_name="sensor-mlp", device_class="x86-cpu", version=version)
    return build_signed_bundle(keys, default_store(keys), spec, artifacts).data


def _post(url: str, inputs: np.ndarray) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps({"inputs": inputs.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass
class Device:
    proc: subprocess.Popen[bytes]
    log: Path
    hub: BundleSender
    api_url: str = ""

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def predict(self, inputs: np.ndarray) -> dict[str, Any]:
        return _post(f"{self.api_url}/predict", inputs)


@dataclass
class Load:
    """Clients calling ``/predict`` in a loop; each client's answers (model versions, in
    order) and every failure recorded."""

    device: Device
    clients: int = CLIENTS
    versions: list[list[int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.versions = [[] for _ in range(self.clients)]
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def answers(self) -> int:
        return sum(len(v) for v in self.versions)

    def answered(self, count: int) -> bool:
        return self.answers() >= count

    def all_answer(self, version: int) -> bool:
        """Every client's latest answer came from ``version``."""
        return {v[-1] for v in self.versions if v} == {version}

    def _run(self, index: int) -> None:
        x = np.random.default_rng(index).normal(size=(BATCH, 4)).astype(np.float32)
        while not self.stop.is_set():
            try:
                self.versions[index].append(int(self.device.predict(x)["model_version"]))
            except (OSError, KeyError, ValueError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys")


@pytest.fixture
def device(tmp_path: Path, keys: KeyStore) -> Iterator[Device]:
    prefix = f"serve-{new_id()[:10]}"
    trust = tmp_path / "trust_root.json"
    trust.write_text(json.dumps(keys.trust_root().to_dict()))
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config_toml(
            device_id=DEVICE,
            device_class="x86-cpu",
            state_dir=tmp_path / "state",
            trust_root=trust,
            mqtt_url="mqtt://127.0.0.1:1883",
            prefix=prefix,
            tables={"timeouts": {"chunk_retry_s": 0.5}, "limits": {"fsync_chunks": False}},
        )
    )
    log = tmp_path / "device.log"
    argv = [sys.executable, "-m", "edge_agent.cli", "run", "--serve", "--config", str(config)]
    argv += ["--api-port", "0", "--drift-window", str(WINDOW), "--report-interval", "0.5"]
    argv += ["--exit-with-parent"]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dev = Device(proc, log, BundleSender(TopicScheme(prefix), answer_requests=False))
    try:

        def announced() -> str:
            assert proc.poll() is None, dev.logs()
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and "api_url" in line:
                    return str(json.loads(line)["api_url"])
            return ""

        dev.api_url = _until(announced, 60, dev.logs)
        yield dev
    finally:
        dev.hub.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_installs_predicts_reports_drift_and_hot_swaps_under_load(
    device: Device, keys: KeyStore
) -> None:
    rng = np.random.default_rng(0)
    reference = ReferenceStats.from_samples(rng.normal(size=(2000, 4)))
    v1, v2, v3 = (_bundle(keys, v, seed=v, reference=reference) for v in (1, 2, 3))
    cfg = PublisherConfig(
        broker=BrokerEndpoint(port=1883), prefix=device.hub.topics.prefix, chunk_size=64 * 1024
    )
    with FleetPublisher(cfg) as pub:
        assert not pub.wait_for_devices([DEVICE], timeout=60), device.logs()
        assert pub.deploy(v1, [DEVICE]).wait(timeout=60).all_committed, device.logs()

        # serves the committed model
        x = rng.normal(size=(WINDOW, 4)).astype(np.float32)
        answer = _until(lambda: _answer(device, x), 30, device.logs)
        assert answer["model_version"] == 1 and len(answer["predictions"]) == WINDOW

        # drift: a window far from the reference is reported over MQTT as drifted
        device.predict((x + 6.0).astype(np.float32))
        drifted = _until(
            lambda: [r for r in device.hub.of(DEVICE, DriftReport) if r.drifted], 30, device.logs
        )
        assert drifted[0].model_version == 1 and drifted[0].window_size == WINDOW

        # hot swaps under load: v1 -> v2 -> v3 while clients keep calling /predict
        with Load(device) as load:

            def diag() -> str:
                return f"failures {load.failures[:3]}\n{device.logs()}"

            _until(lambda: load.answers() >= 20, 30, diag)
            for version, bundle in ((2, v2), (3, v3)):
                assert pub.deploy(bundle, [DEVICE]).wait(timeout=60).all_committed, diag()
                _until(partial(load.all_answer, version), 30, diag)
                _until(partial(load.answered, load.answers() + 20), 30, diag)
    assert load.failures == [], load.failures[:5]
    for answers in load.versions:  # each client: v1, then v2, then v3, never back
        assert answers == sorted(answers) and answers[0] == 1 and answers[-1] == 3, answers


def _answer(device: Device, x: np.ndarray) -> dict[str, Any] | None:
    try:
        return device.predict(x)
    except urllib.error.HTTPError:
        return None  # no model committed yet
