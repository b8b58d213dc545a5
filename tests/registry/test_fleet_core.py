"""The pure ingest core: classification, batch folding, and flood fairness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_hub.ingest import (
    Admission,
    FairQueue,
    Inbound,
    IngestBatch,
    RecentKeys,
    Rejected,
    classify,
    write_batch,
)
from cloud_hub.registry import devices, open_registry, reports
from shared.messages import Event, Hello, InstalledModel, Message, Status, Telemetry
from shared.topics import TopicScheme

SCHEME = TopicScheme("core-test")
T0 = 1_800_000_000.0


def topic(device: str, channel: str) -> str:
    return SCHEME.device(device, channel)


def inbound(msg: object, at: float = T0) -> Inbound:
    device = msg.device_id  # type: ignore[attr-defined]
    channel = {
        Hello: "hello",
        Status: "status",
        Telemetry: "telemetry",
        Event: "events",
    }[type(msg)]
    return Inbound(device, channel, msg, at)  # type: ignore[arg-type]


def test_classify_accepts_and_rejects_with_reasons() -> None:
    ev = Event(device_id="d1", event_id="e1", kind="installed")
    ok = classify(SCHEME, topic("d1", "events"), ev.encode(), received_at=T0, max_bytes=4096)
    assert isinstance(ok, Inbound) and ok.message == ev

    def kind(t: str, payload: bytes) -> str:
        result = classify(SCHEME, t, payload, received_at=T0, max_bytes=4096)
        assert isinstance(result, Rejected), result
        assert result.reason
        return result.kind

    assert kind(topic("d1", "events"), b"{not json") == "malformed"
    future = json.loads(ev.encode())
    future["v"] = "9.0"
    assert kind(topic("d1", "events"), json.dumps(future).encode()) == "unsupported_version"
    assert kind(topic("d2", "events"), ev.encode()) == "device_mismatch"  # spoofing
    assert kind(topic("d1", "status"), ev.encode()) == "malformed"  # wrong type for channel
    assert kind("elsewhere/v1/devices/d1/events", ev.encode()) == "bad_topic"
    assert kind(topic("d1", "cmd"), ev.encode()) == "bad_topic"
    assert kind(topic("d1", "events"), b"x" * 5000) == "too_large"
    assert classify(SCHEME, topic("d1", "status"), b"", received_at=T0, max_bytes=10) is None


def test_batch_folds_duplicates_and_keeps_newest() -> None:
    batch = IngestBatch()
    for m in [
        Status(device_id="d1", online=True, ota_state="a", ts=T0 + 5),
        Status(device_id="d1", online=True, ota_state="stale", ts=T0 + 1),
        Status(device_id="d1", online=False, ts=T0 + 2),  # last will: arrives last
        Event(device_id="d1", event_id="e1", kind="x", ts=T0),
        Event(device_id="d1", event_id="e1", kind="x", ts=T0),
        Telemetry(device_id="d1", seq=1, metrics={"p95_ms": 10.0, "cpu": 5}, ts=T0 + 1),
        Telemetry(device_id="d1", seq=2, metrics={"p95_ms": 30.0}, ts=T0 + 2),
        Telemetry(device_id="d1", seq=3, metrics={"p95_ms": 20.0}, ts=T0 + 3),
    ]:
        batch.apply(inbound(m))
    assert len(batch) == 8
    assert batch.statuses["d1"].ota_state == "a"
    assert batch.online == {"d1": False}
    assert list(batch.events) == ["e1"]
    aggs = {a.metric: a for a in batch.aggregates()}
    p95 = aggs["p95_ms"]
    assert (p95.count, p95.sum, p95.max, p95.last) == (3, 60.0, 30.0, 20.0)
    assert aggs["cpu"].count == 1


def test_batch_skips_bad_metric_values() -> None:
    batch = IngestBatch(max_metrics=2)
    m = Telemetry(device_id="d1", seq=1, metrics={"a": 1.0, "b": 2.0, "c": 3.0}, ts=T0)
    batch.apply(inbound(m))
    assert batch.skipped_values == 1 and len(batch.aggregates()) == 2


def test_written_batch_is_idempotent(tmp_path: Path) -> None:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    hello = Hello(
        device_id="d1",
        device_class="rpi4",
        agent_version="1",
        runtimes=["onnx-cpu"],
        free_disk_bytes=1,
        free_mem_bytes=1,
        installed=InstalledModel("m", 1, "b1"),
        ts=T0,
    )
    msgs = [hello, Event(device_id="d1", event_id="e1", kind="installed", ts=T0)]
    for _ in range(2):  # the same messages again, e.g. replayed from an agent outbox
        batch = IngestBatch()
        for m in msgs:
            batch.apply(inbound(m, T0 + 1))
        with reg.session() as s:
            write_batch(s, batch, now=T0 + 1)
    with reg.session() as s:
        d = devices.get_device(s, "d1")
        assert (d.device_class, d.installed_version, d.online) == ("rpi4", 1, True)
        assert reports.list_events(s).total == 1
    reg.close()


def test_flooding_device_cannot_starve_others() -> None:
    q: FairQueue[str] = FairQueue(capacity=50, rate_per_s=1e9, burst=1e9, max_devices=100)
    now = T0
    for i in range(10_000):  # one device floods, events included
        q.offer("spammer", f"s{i}", droppable=i % 2 == 0, now=now)
    for d in range(20):
        for j in range(3):
            assert q.offer(f"dev{d}", f"dev{d}-{j}", droppable=False, now=now) is Admission.ACCEPTED
    assert q.queued("spammer") == 50  # bounded: its excess was dropped, not the others'
    drained = [item for _, item in q.drain(21 * 3)]
    others = [x for x in drained if x.startswith("dev")]
    assert len(others) == 60  # every other device's messages in the first 63 drained
    assert sum(1 for x in drained if x.startswith("s")) == 3  # one per round
    for d in range(20):  # per-device FIFO order kept
        mine = [x for x in others if x.startswith(f"dev{d}-")]
        assert mine == [f"dev{d}-{j}" for j in range(3)]


def test_overflow_evicts_telemetry_before_must_keep_messages() -> None:
    q: FairQueue[str] = FairQueue(capacity=3, rate_per_s=1e9, burst=1e9, max_devices=10)
    assert q.offer("d", "t1", droppable=True, now=T0) is Admission.ACCEPTED
    q.offer("d", "e1", droppable=False, now=T0)
    q.offer("d", "e2", droppable=False, now=T0)
    assert q.offer("d", "e3", droppable=False, now=T0) is Admission.EVICTED_OLDEST
    assert q.offer("d", "e4", droppable=False, now=T0) is Admission.OVERFLOW
    assert [x for _, x in q.drain(10)] == ["e1", "e2", "e3"]


def test_token_bucket_limits_telemetry_rate_per_device() -> None:
    q: FairQueue[int] = FairQueue(capacity=1000, rate_per_s=10, burst=5, max_devices=10)
    results = [q.offer("d", i, droppable=True, now=T0) for i in range(20)]
    assert results.count(Admission.ACCEPTED) == 5
    assert results.count(Admission.RATE_LIMITED) == 15
    assert q.offer("d", 99, droppable=True, now=T0 + 1.0) is Admission.ACCEPTED  # refilled
    assert q.offer("other", 1, droppable=True, now=T0) is Admission.ACCEPTED  # own bucket
    assert q.offer("d", 100, droppable=False, now=T0 + 1.0) is Admission.ACCEPTED


def test_recent_keys_window() -> None:
    seen = RecentKeys(per_device=2, max_devices=1)
    assert not seen.seen_before("d", 1)
    assert seen.seen_before("d", 1)
    seen.seen_before("d", 2)
    seen.seen_before("d", 3)
    assert not seen.seen_before("d", 1)  # fell out of the window
    seen.seen_before("e", 1)  # evicts device d entirely (max_devices=1)
    assert not seen.seen_before("d", 3)


@pytest.mark.parametrize("bad", [{"capacity": 0}, {"rate": 0.0}])
def test_ingest_config_is_validated(bad: dict[str, float]) -> None:
    from cloud_hub.errors import HubConfigError
    from cloud_hub.ingest import IngestConfig

    with pytest.raises(HubConfigError):
        if "capacity" in bad:
            IngestConfig(per_device_queue=int(bad["capacity"]))
        else:
            IngestConfig(telemetry_rate_per_s=bad["rate"])


def test_values_the_registry_cannot_store_are_rejected_at_intake() -> None:
    def kind(channel: str, msg: Message) -> str | None:
        payload = msg.encode()
        result = classify(SCHEME, topic("d1", channel), payload, received_at=T0, max_bytes=1 << 20)
        return result.kind if isinstance(result, Rejected) else None

    assert kind("events", Event(device_id="d1", event_id="e" * 129, kind="x")) == "out_of_range"
    assert kind("events", Event(device_id="d1", event_id="e", kind="x\x00")) == "out_of_range"
    hello = Hello(
        device_id="d1",
        device_class="c",
        agent_version="1",
        runtimes=[],
        free_disk_bytes=2**64,
        free_mem_bytes=1,
    )
    assert kind("hello", hello) == "out_of_range"
    tele = Telemetry(device_id="d1", seq=1, metrics={}, model_version=2**40)
    assert kind("telemetry", tele) == "out_of_range"
    assert kind("events", Event(device_id="d1", event_id="e" * 128, kind="x")) is None


def test_telemetry_flood_is_shed_before_decoding(tmp_path: Path) -> None:
    from cloud_hub.ingest import FleetIngest, IngestConfig, IngestConnection

    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    ingest = FleetIngest(
        reg,
        scheme=SCHEME,
        mqtt_settings=IngestConnection(),
        config=IngestConfig(telemetry_rate_per_s=1, telemetry_burst=5),
        clock=lambda: T0,  # no refill: exactly the burst gets through
    )
    results = [
        ingest.submit(
            topic("spammer", "telemetry"),
            Telemetry(device_id="spammer", seq=i, metrics={"cpu": 1.0}, ts=T0).encode(),
        )
        for i in range(50)
    ]
    assert results.count(Admission.ACCEPTED) == 5
    # over its rate, even garbage is shed before anyone parses it
    assert ingest.submit(topic("spammer", "telemetry"), b"{garbage") is Admission.RATE_LIMITED
    quiet = Telemetry(device_id="quiet", seq=1, metrics={"cpu": 1.0}, ts=T0).encode()
    assert ingest.submit(topic("quiet", "telemetry"), quiet) is Admission.ACCEPTED
    stats = ingest.stats()
    assert stats.dropped == {"rate_limited": 46} and stats.rejected == {}
    reg.close()
