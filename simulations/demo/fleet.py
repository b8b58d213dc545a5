"""The demo's local fleet: device processes with their own non-IID data, and the client that
streams inputs to their local prediction APIs.

Every device is ``edge-agent run --serve`` (agent + inference stack), started by the harness's
:class:`~simulations.harness.agents.LocalAgentFleet` in its own process group, so that stopping
the fleet also ends anything a device started. A device's
sample store is seeded with a labelled history drawn from its own class mix (a Dirichlet
skew per device: non-IID); devices labelled ``site=plant-3`` later see drifted inputs.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubError
from shared.data.sensors import SensorDriftSpec, generate_sensor_data
from shared.net import free_port
from simulations.harness.agents import LocalAgentFleet

__all__ = ["DRIFT", "PROBLEM_SEED", "DemoFleet", "DeviceHandle"]

PROBLEM_SEED = 7
DRIFT = SensorDriftSpec(shift=5.0, scale=1.0, features=tuple(range(8)))


@dataclass
class DeviceHandle:
    device_id: str
    drifted: bool
    api_port: int
    state_dir: Path
    class_weights: tuple[float, ...]
    sample_seq: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def draw(self, n: int, *, drift: bool) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """``n`` fresh inputs from this device's distribution (drifted when asked)."""
        self.sample_seq += 1
        seed = abs(hash((self.device_id, self.sample_seq))) % (2**31)
        return generate_sensor_data(
            n,
            seed=PROBLEM_SEED,
            sample_seed=seed,
            class_weights=self.class_weights,
            drift=DRIFT if drift else None,
        )


def _post(url: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def _get(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


@dataclass
class DemoFleet:
    """N device processes on this machine; ``drifted`` of them at ``site=plant-3``."""

    root: Path
    trust_root: dict[str, Any]
    mqtt_url: str
    prefix: str
    n: int
    drifted: int
    device_class: str = "x86-cpu"
    history: int = 300  # labelled samples each device holds before the demo starts
    drift_window: int = 200  # inputs per drift report
    seed: int = 0
    mqtt_protocol: str = "5"  # "3.1.1" with amqtt
    # the hub CA the devices pin for the SuperLink's TLS (R4); None: the loopback demo's
    # plain-text SuperLink, which the devices then allow (--allow-insecure-training)
    training_ca: Path | None = None
    devices: list[DeviceHandle] = field(default_factory=list)
    agents: LocalAgentFleet = field(init=False)
    # one thread per device: a streaming step costs the slowest device's answer, not the sum
    _requests: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 64 or not 0 <= self.drifted <= self.n:
            raise HubError("the demo fleet has 1..64 devices, 0..n of them drifted")
        ports = [free_port() for _ in range(self.n)]
        self.agents = LocalAgentFleet(
            root=self.root,
            trust_root=self.trust_root,
            mqtt_url=self.mqtt_url,
            prefix=self.prefix,
            n=self.n,
            device_class=self.device_class,
            id_width=2,
            tables={
                "timeouts": {"chunk_retry_s": 0.5, "health_s": 30.0},
                "limits": {"fsync_chunks": False},
                "mqtt": {"protocol": self.mqtt_protocol},
                **self._training_table(),
            },
            tables_for=lambda i: {"labels": {"site": self._site(i)}},
            top={"status_interval_s": 5.0},
            run_args_for=lambda i: self._serve_args(ports[i]),
            env={"OMP_NUM_THREADS": "1"},
            process_groups=True,  # stop() ends whatever a device started too
        )
        rng = np.random.default_rng(self.seed)
        for i, agent in enumerate(self.agents.agents):
            weights = tuple(float(w) for w in rng.dirichlet([0.7] * 3) + 0.05)
            drifted = self._site(i) == "plant-3"
            handle = DeviceHandle(agent.device_id, drifted, ports[i], agent.state_dir, weights)
            self._seed_history(handle)
            self.devices.append(handle)

    def _site(self, i: int) -> str:
        return "plant-3" if i >= self.n - self.drifted else f"plant-{1 + i % 2}"

    def _serve_args(self, api_port: int) -> list[str]:
        return [
            "--serve",
            "--api-port",
            str(api_port),
            "--drift-window",
            str(self.drift_window),
            "--report-interval",
            "1",
            *(["--allow-insecure-training"] if self.training_ca is None else []),
            "--exit-with-parent",
        ]

    def _training_table(self) -> dict[str, dict[str, Any]]:
        if self.training_ca is None:
            return {}
        return {"training": {"superlink_ca": str(self.training_ca)}}

    def _seed_history(self, device: DeviceHandle) -> None:
        from edge_agent.samples.store import SampleStore, SampleStoreConfig

        device.state_dir.mkdir(parents=True, exist_ok=True)
        x, y = device.draw(self.history, drift=False)
        store = SampleStore(SampleStoreConfig(path=device.state_dir / "samples.db"))
        try:
            now = time.time() - 3600.0  # history: older than anything the demo adds
            for i in range(len(y)):
                store.add(f"h-{i}", x[i], model_version=0, label=int(y[i]), now=now + i * 0.001)
        finally:
            store.close()

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]

    def start(self) -> None:
        self.agents.start()

    def stop(self) -> None:
        if self._requests is not None:
            self._requests.shutdown(wait=True, cancel_futures=True)
            self._requests = None
        self.agents.stop(grace_s=8.0)

    def logs(self, device_id: str, tail: int = 3000) -> str:
        return self.agents.logs(device_id, tail)

    # -- the prediction stream ----------------------------------------------------------------
    def serving_version(self, device: DeviceHandle) -> int | None:
        try:
            health = _get(f"{device.api_url}/health")
        except OSError:
            return None
        v = (health.get("stats") or {}).get("model_version")
        return int(v) if isinstance(v, int) else None

    def predict_and_label(self, device: DeviceHandle, n: int, *, drift: bool) -> tuple[float, int]:
        """Send ``n`` inputs to the device's ``/predict``, label them via ``/feedback``;
        returns (accuracy, model version that answered)."""
        x, y = device.draw(n, drift=drift)
        out = _post(f"{device.api_url}/predict", {"inputs": x.tolist()})
        preds = out["predictions"]
        labels = np.asarray([p["label"] for p in preds])
        items = [{"id": p["id"], "label": int(t)} for p, t in zip(preds, y, strict=True)]
        _post(f"{device.api_url}/feedback", {"items": items})
        return float((labels == y).mean()), int(out["model_version"])

    def predict_and_label_all(self, n: int, *, drift: bool) -> list[tuple[float, int]]:
        """:meth:`predict_and_label` on every device at once (drifted inputs on the drifted
        devices when ``drift``); results in :attr:`devices` order."""
        if self._requests is None:
            self._requests = ThreadPoolExecutor(self.n, thread_name_prefix="demo-stream")
        return list(
            self._requests.map(
                lambda d: self.predict_and_label(d, n, drift=drift and d.drifted), self.devices
            )
        )

    @staticmethod
    def new_prefix() -> str:
        return f"demo-{uuid.uuid4().hex[:8]}"
