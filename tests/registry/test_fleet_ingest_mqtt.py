"""The ingest against a real Mosquitto (127.0.0.1:1883) with a unique topic prefix."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import OperationalError

from cloud_hub.ingest import FleetIngest, IngestConfig, IngestConnection
from cloud_hub.registry import Registry, devices, open_registry, reports
from shared.messages import (
    DriftReport,
    Event,
    FeatureDrift,
    Hello,
    InstalledModel,
    Message,
    Status,
    Telemetry,
)
from shared.topics import TopicScheme

pytestmark = pytest.mark.integration


class Publisher:
    def __init__(self, scheme: TopicScheme) -> None:
        self.scheme = scheme
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def send(self, msg: Message, channel: str, *, payload: bytes | None = None) -> None:
        device = msg.device_id  # type: ignore[attr-defined]
        data = payload if payload is not None else msg.encode()
        self.infos.append(self.client.publish(self.scheme.device(device, channel), data, qos=1))

    def flush(self) -> None:
        for info in self.infos:
            info.wait_for_publish(10)
        self.infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Registry, FleetIngest, Publisher]]:
    scheme = TopicScheme(f"ingest-test-{uuid.uuid4().hex[:8]}")
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    ingest = FleetIngest(
        registry,
        scheme=scheme,
        mqtt_settings=IngestConnection(
            client_id=f"ingest-{uuid.uuid4().hex[:8]}", session_expiry_s=0
        ),
        config=IngestConfig(
            per_device_queue=100,
            telemetry_rate_per_s=1000,
            telemetry_burst=1000,
            flush_interval_s=0.05,
        ),
    )
    ingest.start()
    pub = Publisher(scheme)
    yield registry, ingest, pub
    pub.close()
    ingest.stop()
    registry.close()


def wait_for(cond: object, timeout: float = 15.0, ingest: FleetIngest | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in time: {ingest.stats() if ingest else ''}")


def test_ingest_is_idempotent_under_duplicates(
    setup: tuple[Registry, FleetIngest, Publisher],
) -> None:
    registry, ingest, pub = setup
    t0 = time.time()
    hello = Hello(
        device_id="dev-1",
        device_class="rpi4",
        agent_version="0.1",
        runtimes=["onnx-cpu"],
        free_disk_bytes=10,
        free_mem_bytes=10,
        labels={"site": "plant-3"},
        ts=t0,
    )
    status = Status(
        device_id="dev-1", online=True, installed=InstalledModel("m", 2, "b2"), ts=t0 + 1
    )
    events = [
        Event(device_id="dev-1", event_id=f"ev-{i}", kind="installed", deployment_id="dep", ts=t0)
        for i in range(5)
    ]
    drift = DriftReport(
        device_id="dev-1",
        report_id="rep-1",
        model_name="m",
        model_version=2,
        window_size=50,
        features={"x": FeatureDrift(psi=0.3, ks=0.2)},
        drift_score=0.3,
        drifted=True,
        ts=t0,
    )
    tele = [
        Telemetry(
            device_id="dev-1", seq=i, metrics={"p95_ms": float(i)}, model_version=2, ts=t0 + i / 100
        )
        for i in range(10)
    ]
    for _ in range(3):  # everything three times, as redeliveries and outbox replays do
        pub.send(hello, "hello")
        pub.send(status, "status")
        for e in events:
            pub.send(e, "events")
        pub.send(drift, "drift")
        for t in tele:
            pub.send(t, "telemetry")
    stale = Status(
        device_id="dev-1", online=True, installed=InstalledModel("m", 1, "b1"), ts=t0 - 5
    )
    pub.send(stale, "status")  # older than what is stored: ignored
    pub.send(events[0], "events", payload=b'{"type": "event", "v": "7.0"}')
    pub.send(events[0], "events", payload=b"\xff\xfe garbage")
    pub.flush()
    wait_for(lambda: ingest.stats().received >= 3 * 18 + 3 and ingest.wait_idle(5))

    stats = ingest.stats()
    assert stats.rejected == {"unsupported_version": 1, "malformed": 1}
    assert stats.duplicates == 20  # telemetry redeliveries dropped before aggregation
    assert stats.events_new == 5 and stats.drift_new == 1
    with registry.session() as s:
        d = devices.get_device(s, "dev-1")
        assert (d.device_class, d.labels, d.online) == ("rpi4", {"site": "plant-3"}, True)
        assert (d.installed_version, d.installed_bundle_id) == (2, "b2")
        assert reports.list_events(s, device_id="dev-1").total == 5
        assert reports.list_drift(s, device_id="dev-1").total == 1
        series = reports.telemetry_series(s, "dev-1", metric="p95_ms")
        assert sum(a.count for a in series) == 10
        assert sum(a.sum for a in series) == pytest.approx(45.0)


def test_flooding_device_does_not_starve_others(
    setup: tuple[Registry, FleetIngest, Publisher],
) -> None:
    registry, ingest, pub = setup
    t0 = time.time()
    for i in range(3000):  # one device floods events as fast as the broker takes them
        pub.send(Event(device_id="spammer", event_id=f"s-{i}", kind="noise", ts=t0), "events")
    for d in range(20):
        for j in range(3):
            pub.send(
                Event(device_id=f"dev-{d}", event_id=f"e-{d}-{j}", kind="installed", ts=t0),
                "events",
            )
    pub.flush()
    wait_for(
        lambda: ingest.stats().received >= 3060 and ingest.wait_idle(5), timeout=30, ingest=ingest
    )
    with registry.session() as s:
        for d in range(20):  # every well-behaved device got all of its events in
            assert reports.list_events(s, device_id=f"dev-{d}").total == 3
        spam = reports.list_events(s, device_id="spammer").total
    stats = ingest.stats()
    assert spam + stats.dropped.get("overflow", 0) == 3000


def test_messages_sent_while_the_hub_is_down_arrive_after_restart(tmp_path: Path) -> None:
    scheme = TopicScheme(f"ingest-restart-{uuid.uuid4().hex[:8]}")
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    settings = IngestConnection(client_id=f"ingest-{uuid.uuid4().hex[:8]}", session_expiry_s=30)
    config = IngestConfig(flush_interval_s=0.05)
    first = FleetIngest(registry, scheme=scheme, mqtt_settings=settings, config=config)
    first.start()  # establishes the persistent session and its subscriptions
    first.stop()
    pub = Publisher(scheme)
    t0 = time.time()
    for i in range(50):  # the hub is down: the broker keeps these for its session
        pub.send(
            Event(device_id=f"dev-{i % 5}", event_id=f"down-{i}", kind="installed", ts=t0), "events"
        )
    pub.flush()
    pub.close()
    second = FleetIngest(registry, scheme=scheme, mqtt_settings=settings, config=config)
    second.start()
    try:
        wait_for(lambda: second.stats().events_new >= 50, ingest=second)
        with registry.session() as s:
            assert reports.list_events(s).total == 50
    finally:
        second.stop()
        registry.close()


class FlakyRegistry(Registry):
    """The real registry, except that the first ``failures`` transactions fail to open (as
    while a database restarts)."""

    failures = 2

    def session(self):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise OperationalError("BEGIN", {}, Exception("database restarting"))
        return super().session()


def test_batches_survive_database_outages(tmp_path: Path) -> None:
    real = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    flaky = FlakyRegistry(url=real.url, engine=real.engine, _factory=real._factory)
    scheme = TopicScheme(f"ingest-flaky-{uuid.uuid4().hex[:8]}")
    ingest = FleetIngest(
        flaky,
        scheme=scheme,
        mqtt_settings=IngestConnection(
            client_id=f"ingest-{uuid.uuid4().hex[:8]}", session_expiry_s=0
        ),
        config=IngestConfig(flush_interval_s=0.05, retry_backoff_s=0.1),
    )
    ingest.start()
    pub = Publisher(scheme)
    try:
        for i in range(20):
            pub.send(Event(device_id="d", event_id=f"x-{i}", kind="installed"), "events")
        pub.flush()
        wait_for(lambda: ingest.stats().events_new == 20, ingest=ingest)
        assert ingest.stats().write_errors == 2
    finally:
        pub.close()
        ingest.stop()
        real.close()


def test_an_unstorable_message_does_not_poison_its_batch(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With intake's length check switched off, PostgreSQL itself refuses an over-long event
    id: only that message is dropped, the rest of its batch is stored."""
    import cloud_hub.ingest.intake as intake

    monkeypatch.setattr(intake, "storage_problem", lambda message: None)
    registry = open_registry(pg_url)
    with registry.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE events")
    scheme = TopicScheme(f"ingest-poison-{uuid.uuid4().hex[:8]}")
    ingest = FleetIngest(
        registry,
        scheme=scheme,
        mqtt_settings=IngestConnection(
            client_id=f"ingest-{uuid.uuid4().hex[:8]}", session_expiry_s=0
        ),
        config=IngestConfig(flush_interval_s=0.3),
    )
    ingest.start()
    try:
        for i in range(5):
            ingest.submit(
                scheme.device("d", "events"),
                Event(device_id="d", event_id=f"ok-{i}", kind="x").encode(),
            )
        ingest.submit(
            scheme.device("d", "events"),
            Event(device_id="d", event_id="x" * 300, kind="x").encode(),
        )
        wait_for(
            lambda: ingest.stats().rejected.get("unstorable") == 1 and ingest.wait_idle(1),
            ingest=ingest,
        )
        with registry.session() as s:
            assert reports.list_events(s).total == 5
    finally:
        ingest.stop()
        registry.close()
