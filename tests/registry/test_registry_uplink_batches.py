"""The ingest's batch writers on many devices at once, on SQLite and PostgreSQL (see conftest):
each row of a batch is judged on its own (newest wins, never backwards), and on PostgreSQL a
batch is a fixed number of statements, none of them run once per row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from cloud_hub.ingest import Inbound, IngestBatch, write_batch
from cloud_hub.registry import Registry, devices, reports
from cloud_hub.registry.tables import Device
from shared.messages import DriftReport, Event, FeatureDrift, InstalledModel, Status, Telemetry

T0 = 1_800_000_000.0
N = 300  # devices per batch: many rows per statement


def _status(device: str, ts: float, version: int, **kw: object) -> Status:
    installed = InstalledModel("m", version, f"b{version}")
    return Status(device_id=device, online=True, installed=installed, ts=ts, **kw)  # type: ignore[arg-type]


def _stored(registry: Registry) -> dict[str, tuple[object, ...]]:
    with registry.session() as s:
        rows = s.execute(
            sa.select(
                Device.device_id,
                Device.last_seen,
                Device.first_seen,
                Device.installed_version,
                Device.ota_state,
                Device.status_ts,
                Device.online,
                Device.labels,
                Device.healthy,
            )
        )
        return {r[0]: tuple(r[1:]) for r in rows}


def test_many_devices_each_row_judged_on_its_own(registry: Registry) -> None:
    ids = [f"dev-{i:04d}" for i in range(N)]
    even = ids[::2]
    with registry.session() as s:  # half the fleet known, with a status at T0 + 10
        devices.touch_devices(s, {d: T0 + 10 for d in even}, now=T0)
        devices.record_statuses(s, [_status(d, T0 + 10, 1, ota_state="idle") for d in even], now=T0)
    with registry.session() as s:  # the whole fleet: older for the known, new for the rest
        devices.touch_devices(s, {d: T0 + 5 for d in ids}, now=T0)
        devices.record_statuses(
            s, [_status(d, T0 + 5, 2, ota_state="installing") for d in ids], now=T0 + 1
        )
        devices.set_online(s, {d: i % 3 != 0 for i, d in enumerate(ids)})
    stored = _stored(registry)
    assert len(stored) == N
    for i, d in enumerate(ids):
        last_seen, first_seen, version, ota, status_ts, online, labels, healthy = stored[d]
        if i % 2 == 0:  # known: last_seen never moves back, the older status loses
            assert (last_seen, first_seen) == (T0 + 10, T0 + 10)
            assert (version, ota, status_ts) == (1, "idle", T0 + 10)
        else:  # new stubs: created by the batch, the status applied whole
            assert (last_seen, first_seen) == (T0 + 5, T0 + 5)
            assert (version, ota, status_ts) == (2, "installing", T0 + 5)
        assert online is (i % 3 != 0)
        assert labels == {} and healthy is True


def test_new_status_without_installed_model_and_with_nulls(registry: Registry) -> None:
    with registry.session() as s:
        devices.record_statuses(
            s,
            [
                Status(device_id="a", online=True, ts=T0, healthy=False, deployment_id=None),
                _status("b", T0, 3, deployment_id="dep-9", runtime="onnx", provider="CPU"),
            ],
            now=T0,
        )
    with registry.session() as s:
        a, b = devices.get_device(s, "a"), devices.get_device(s, "b")
    assert a.installed_version is None and a.healthy is False and a.deployment_id is None
    assert (b.installed_version, b.deployment_id, b.runtime, b.provider) == (
        3,
        "dep-9",
        "onnx",
        "CPU",
    )


def test_new_events_and_drift_counted_exactly_with_json_intact(registry: Registry) -> None:
    def event(i: int) -> Event:
        return Event(
            device_id=f"d{i % 7}",
            event_id=f"e{i}",
            kind="k",
            data={"i": i, "nested": {"ok": [1, 2]}},
            detail="x" * (i % 5),
            ts=T0 + i,
        )

    def drift(i: int) -> DriftReport:
        return DriftReport(
            device_id="d1",
            report_id=f"r{i}",
            model_name="m",
            model_version=1,
            window_size=2**40,
            features={"f": FeatureDrift(psi=0.1 * i, ks=0.2)},
            drift_score=0.1 * i,
            drifted=i % 2 == 0,
            ts=T0,
        )

    with registry.session() as s:
        assert reports.record_events(s, [event(i) for i in range(0, N, 2)], now=T0) == N // 2
        assert reports.record_drift(s, [drift(i) for i in range(0, 10, 2)], now=T0) == 5
    with registry.session() as s:  # half of them known already: only the others are new
        assert reports.record_events(s, [event(i) for i in range(N)], now=T0) == N - N // 2
        assert reports.record_drift(s, [drift(i) for i in range(10)], now=T0) == 5
        stored = {e.event_id: e for e in reports.list_events(s, limit=N).items}
        drifts = reports.list_drift(s, limit=20).items
    assert len(stored) == N
    assert stored["e7"].data == {"i": 7, "nested": {"ok": [1, 2]}} and stored["e7"].detail == "xx"
    assert {r.report_id: r.features["f"]["psi"] for r in drifts}["r3"] == 0.1 * 3
    assert {r.window_size for r in drifts} == {2**40}


@contextmanager
def _statements(registry: Registry) -> Iterator[list[tuple[str, bool]]]:
    seen: list[tuple[str, bool]] = []

    def record(_c: object, _cur: object, sql: str, _p: object, _ctx: object, many: bool) -> None:
        seen.append((sql.split(None, 1)[0].upper(), many))

    sa.event.listen(registry.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(registry.engine, "before_cursor_execute", record)


def test_a_batch_is_a_few_statements_on_postgresql(registry: Registry) -> None:
    batch = IngestBatch()
    for i in range(N):
        d = f"dev-{i:04d}"
        for k in range(3):
            tele = Telemetry(device_id=d, seq=k, metrics={"cpu": 1.0, "mem": 2.0}, ts=T0 + k)
            batch.apply(Inbound(d, "telemetry", tele, T0 + k))
        batch.apply(Inbound(d, "events", Event(device_id=d, event_id=f"{d}-e", kind="k"), T0))
        batch.apply(Inbound(d, "status", _status(d, T0, 1), T0))
    with _statements(registry) as seen, registry.session() as s:
        counts = write_batch(s, batch, now=T0)
    assert (counts.events_new, counts.statuses, counts.telemetry_rows) == (N, N, 2 * N)
    with registry.session() as s:
        series = reports.telemetry_series(s, "dev-0007", metric="cpu")
    assert [(a.count, a.sum, a.last) for a in series] == [(3, 3.0, 1.0)]
    if registry.dialect != "postgresql":
        return  # SQLite runs executemany in process: no round trip per row to save
    writes = [(verb, many) for verb, many in seen if verb in ("INSERT", "UPDATE", "DELETE")]
    assert not [w for w in writes if w[1]], f"a statement per row: {writes}"
    assert len(writes) <= 6, writes  # stubs+last_seen, online, statuses, events, telemetry
