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
