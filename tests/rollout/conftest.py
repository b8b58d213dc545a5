"""Fixtures of the rollout tests: a real registry (SQLite and PostgreSQL, tests/conftest.py), a real key store,
a clock the test moves, and a delivery that records what the engine published."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pytest

from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, reports
from cloud_hub.registry.records import TelemetryAggregate
from cloud_hub.rollout.delivery import RecordedDelivery
from shared.messages import Event, Hello, InstalledModel, Status, new_id

MODEL = "sensor-mlp"
CLASS = "x86-cpu"
# ``registry`` (SQLite and PostgreSQL) comes from tests/conftest.py.


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def delivery() -> RecordedDelivery:
    """Records every call; the device side is simulated by the test writing reports into
    the registry."""
    return RecordedDelivery()


class FleetSim:
    """Writes device reports into the registry the way the MQTT ingest does (unit tests
    only; the integration tests use real agents and the real ingest)."""

    MODEL = MODEL
    CLASS = CLASS

    @staticmethod
    def register_bundles(
        reg: Registry,
        now: float,
        versions: Iterable[int] = (1, 2),
        *,
        model_sha256: Mapping[int, str] | None = None,
    ) -> None:
        """Index ``b-v{version}``; with ``model_sha256``, each one's manifest lists its model
        artifact with that hash."""
        with reg.session() as s:
            for v in versions:
                sha = (model_sha256 or {}).get(v)
                model = {"name": "m.onnx", "role": "model", "sha256": sha}
                catalog.register_bundle(
                    s,
                    bundle_id=f"b-v{v}",
                    model_name=MODEL,
                    version=v,
                    device_class=CLASS,
                    size=100,
                    manifest={"artifacts": [model]} if sha else None,
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
        installed: InstalledModel | None = None,
    ) -> None:
        """Devices say hello, running ``installed`` (default: ``b-v{version}``)."""
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
                        installed=installed or FleetSim.installed(version),
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
    def status(
        reg: Registry,
        ids: Iterable[str],
        *,
        version: int = 1,
        ts: float,
        installed: InstalledModel | None = None,
    ) -> None:
        """Devices report running ``installed`` (default: ``b-v{version}``)."""
        model = installed or FleetSim.installed(version)
        with reg.session() as s:
            devices.record_statuses(
                s, [Status(device_id=d, online=True, installed=model, ts=ts) for d in ids], now=ts
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

    @staticmethod
    def drift(reg: Registry, ids: Iterable[str], *, version: int, ts: float, score: float) -> None:
        from shared.messages import DriftReport, FeatureDrift

        with reg.session() as s:
            reports.record_drift(
                s,
                [
                    DriftReport(
                        device_id=d,
                        report_id=new_id(),
                        model_name=MODEL,
                        model_version=version,
                        window_size=500,
                        features={"x": FeatureDrift(psi=score, ks=score)},
                        drift_score=score,
                        drifted=score > 0.25,
                        ts=ts,
                    )
                    for d in ids
                ],
                now=ts,
            )


@pytest.fixture
def sim() -> type[FleetSim]:
    return FleetSim
