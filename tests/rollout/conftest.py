"""Fixtures of the rollout tests: a real registry (SQLite and PostgreSQL), a real key store,
a clock the test moves, and a delivery that records what the engine published."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, open_registry, reports
from cloud_hub.registry.records import TelemetryAggregate
from cloud_hub.registry.tables import Base
from shared.messages import Event, Hello, InstalledModel, Status, new_id

MODEL = "sensor-mlp"
CLASS = "x86-cpu"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def rollout_pg_url() -> Iterator[str]:
    name = f"fedfleet_rollout_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    else:
        reg = open_registry(request.getfixturevalue("rollout_pg_url"))
        with reg.engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.init(tmp_path_factory.mktemp("keys") / "keys")


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingDelivery:
    """Implements ``RolloutDelivery``; remembers every call (device side is simulated by the
    test writing reports into the registry)."""

    deploys: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)
    rollbacks: list[tuple[dict[str, Any], tuple[str, ...], str]] = field(default_factory=list)
    fail: bool = False

    def deploy(self, bundle_id: str, device_ids: Sequence[str], *, deployment_id: str) -> None:
        from cloud_hub.errors import DeliveryError

        if self.fail:
            raise DeliveryError("broker down")
        self.deploys.append((bundle_id, tuple(device_ids), deployment_id))

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        self.rollbacks.append((dict(order), tuple(device_ids), deployment_id))

    def deployed_to(self) -> list[str]:
        return [d for _b, ids, _dep in self.deploys for d in ids]

    def rolled_back_to(self) -> list[str]:
        return [d for _o, ids, _dep in self.rollbacks for d in ids]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


class FleetSim:
    """Writes device reports into the registry the way the MQTT ingest does (unit tests
    only; the integration tests use real agents and the real ingest)."""

    MODEL = MODEL
    CLASS = CLASS

    @staticmethod
    def register_bundles(reg: Registry, now: float, versions: Iterable[int] = (1, 2)) -> None:
        with reg.session() as s:
            for v in versions:
                catalog.register_bundle(
                    s,
                    bundle_id=f"b-v{v}",
                    model_name=MODEL,
                    version=v,
                    device_class=CLASS,
                    size=100,
                    now=now,
                )

    @staticmethod
    def installed(version: int) -> InstalledModel:
        return InstalledModel(model_name=MODEL, version=version, bundle_id=f"b-v{version}")

    @staticmethod
    def hello(
        reg: Registry,
        ids: Iterable[str],
        *,
        ts: float,
        version: int = 1,
        labels: Mapping[str, str] | None = None,
        device_class: str = CLASS,
    ) -> None:
        ids = list(ids)
        with reg.session() as s:
            devices.record_hellos(
                s,
                [
                    Hello(
                        device_id=d,
                        device_class=device_class,
                        agent_version="t",
                        runtimes=["onnx"],
                        free_disk_bytes=1,
                        free_mem_bytes=1,
                        installed=FleetSim.installed(version),
                        labels=dict(labels or {"site": "plant-3"}),
                        ts=ts,
                    )
                    for d in ids
                ],
                now=ts,
            )
            devices.set_online(s, dict.fromkeys(ids, True))

    @staticmethod
    def offline(reg: Registry, ids: Iterable[str]) -> None:
        with reg.session() as s:
            devices.set_online(s, dict.fromkeys(ids, False))

    @staticmethod
    def status(reg: Registry, ids: Iterable[str], *, version: int, ts: float) -> None:
        with reg.session() as s:
            devices.record_statuses(
                s,
                [
                    Status(device_id=d, online=True, installed=FleetSim.installed(version), ts=ts)
                    for d in ids
                ],
                now=ts,
            )

    @staticmethod
    def event(
        reg: Registry, ids: Iterable[str], kind: str, deployment_id: str, *, ts: float
    ) -> None:
        with reg.session() as s:
            reports.record_events(
                s,
                [
                    Event(
                        device_id=d,
                        event_id=new_id(),
                        kind=kind,
                        deployment_id=deployment_id,
                        ts=ts,
                    )
                    for d in ids
                ],
                now=ts,
            )

    @staticmethod
    def telemetry(
        reg: Registry, ids: Iterable[str], *, version: int, ts: float, **metrics: float
    ) -> None:
        with reg.session() as s:
            reports.merge_telemetry(
                s,
                [
                    TelemetryAggregate(
                        device_id=d,
                        minute=int(ts // 60),
                        model_version=version,
                        metric=m,
                        count=1,
                        sum=v,
                        max=v,
                        last=v,
                        last_ts=ts,
                    )
                    for d in ids
                    for m, v in metrics.items()
                ],
            )


@pytest.fixture
def sim() -> type[FleetSim]:
    return FleetSim


# ---- integration: a real hub process, real agents, real Mosquitto ---------------------------

MQTT_URL = "mqtt://127.0.0.1:1883"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_onnx_model(features: int = 4, classes: int = 3) -> bytes:
    """A real, loadable ONNX model (MatMul + Add), built without torch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(features, classes)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_model_bundle(keys: KeyStore, *, version: int, loadable: bool = True) -> str:
    """Build and store a signed bundle (``KEYDIR/bundles/ID.ffb``); returns its id.
    ``loadable=False`` ships bytes that are not an ONNX model: the device health check fails."""
    import os

    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from shared.bundle import artifact_info

    model = tiny_onnx_model() if loadable else os.urandom(2048)
    built = build_signed_bundle(
        keys,
        default_store(keys),
        BundleSpec(model_name=MODEL, device_class=CLASS, version=version),
        [(artifact_info("model.onnx", model, "model", "application/onnx"), model)],
    )
    return str(built.bundle_id)


class HubProcess:
    """``cloud-hub serve`` as a child process (API + ingest + rollout engine) that a test can
    SIGKILL and start again on the same data directory."""

    def __init__(self, root: Path, prefix: str, keys: KeyStore) -> None:
        import time as _time

        self.root = root
        self.prefix = prefix
        self.keys = keys
        self.port = free_port()
        self.db_url = f"sqlite:///{root / 'hub.db'}"
        self.log_path = root / "hub.log"
        self.config_path = root / "hub.toml"
        self.proc: Any = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    f'data_dir = "{root}"',
                    f'db_url = "{self.db_url}"',
                    f'mqtt_url = "{MQTT_URL}"',
                    f'topic_prefix = "{prefix}"',
                    f"api_port = {self.port}",
                    f'keys_dir = "{keys.directory}"',
                    f'ingest_client_id = "hub-{prefix}"',
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        from cloud_hub.registry import admin

        reg = open_registry(self.db_url)
        with reg.session() as s:
            _rec, self.token = admin.create_token(
                s, name="rollout-test", role="operator", now=_time.time()
            )
        reg.close()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        import os
        import subprocess
        import sys
        import time as _time
        import urllib.request

        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hub exited:\n{self.logs()}"
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=2):
                    return
            except OSError:
                _time.sleep(0.3)
        raise AssertionError(f"hub did not come up:\n{self.logs()}")

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def logs(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def api(self) -> Any:
        from cloud_hub.commands.rollout import ApiClient

        return ApiClient(self.api_url, self.token)

    def registry(self) -> Registry:
        return open_registry(self.db_url, migrate=False)
