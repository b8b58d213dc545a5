"""Registry contract: the same tests on SQLite and PostgreSQL (see conftest)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cloud_hub.registry import (
    ConflictError,
    NotFoundError,
    Registry,
    RegistryInputError,
    StageSpec,
    TelemetryAggregate,
    admin,
    catalog,
    devices,
    open_registry,
    reports,
    rollouts,
)
from shared.messages import DriftReport, Event, FeatureDrift, Hello, InstalledModel, Status

T0 = 1_800_000_000.0


def hello(device_id: str, ts: float, **kw: object) -> Hello:
    base: dict[str, object] = dict(
        device_id=device_id,
        device_class="rpi4",
        agent_version="0.1.0",
        runtimes=["onnx-cpu"],
        free_disk_bytes=8 * 1024**3,  # > 2**31: needs BIGINT on PostgreSQL
        free_mem_bytes=1024**3,
        ts=ts,
    )
    base.update(kw)
    return Hello(**base)  # type: ignore[arg-type]


def status(device_id: str, ts: float, version: int = 1, **kw: object) -> Status:
    installed = InstalledModel("sensor-mlp", version, f"b{version}")
    return Status(device_id=device_id, online=True, installed=installed, ts=ts, **kw)  # type: ignore[arg-type]


def test_migrations_are_idempotent_and_at_head(registry: Registry) -> None:
    again = open_registry(registry.url)  # a second open finds the schema current
    with again.engine.connect() as conn:
        head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        names = set(sa.inspect(conn).get_table_names())
    again.close()
    from alembic.script import ScriptDirectory

    from cloud_hub.registry.database import alembic_config

    assert head == ScriptDirectory.from_config(alembic_config(registry.url)).get_current_head()
    assert head != "0001"  # 0002: rollout targets remember what each device ran before
    assert {"devices", "bundles", "rollouts", "rollout_targets", "events", "audit_log"} <= names


def test_hello_creates_device_and_is_last_writer_wins(registry: Registry) -> None:
    with registry.session() as s:
        assert devices.record_hellos(s, [hello("d1", T0 + 10, labels={"site": "p3"})], now=T0) == 1
    with registry.session() as s:  # an older hello arriving late changes nothing
        stale = hello("d1", T0 + 5, agent_version="0.0.1", labels={"site": "old"})
        assert devices.record_hellos(s, [stale], now=T0) == 0
        d = devices.get_device(s, "d1")
    assert d.device_class == "rpi4"
    assert d.agent_version == "0.1.0"
    assert d.labels == {"site": "p3"}
    assert d.free_disk_bytes == 8 * 1024**3
    assert d.last_seen == T0  # the hub's clock, not the device's
    with registry.session() as s:
        assert [c.name for c in catalog.list_device_classes(s)] == ["rpi4"]
        with pytest.raises(NotFoundError):
            devices.get_device(s, "nope")


def test_status_last_writer_wins_and_online_follows_arrival(registry: Registry) -> None:
    with registry.session() as s:
        devices.record_statuses(s, [status("d1", T0 + 10, version=2, ota_state="idle")], now=T0)
        devices.set_online(s, {"d1": True})
    with registry.session() as s:
        devices.record_statuses(s, [status("d1", T0 + 1, version=1, ota_state="x")], now=T0)
        d = devices.get_device(s, "d1")
    assert (d.installed_version, d.installed_bundle_id, d.ota_state) == (2, "b2", "idle")
    assert d.online is True
    with registry.session() as s:
        devices.record_statuses(
            s, [status("d1", T0 + 20, version=3, healthy=False, runtime="onnx")], now=T0
        )
        devices.set_online(s, {"d1": False})
        d = devices.get_device(s, "d1")
    assert (d.installed_version, d.healthy, d.runtime, d.online) == (3, False, "onnx", False)
    assert d.device_class is None  # never said hello: a stub until it does


def _fleet(registry: Registry, n: int = 30) -> None:
    hellos = [
        hello(
            f"dev-{i:03d}",
            T0 + i,
            device_class="rpi4" if i % 3 else "jetson",
            labels={"site": f"plant-{i % 2}", "tier": "a" if i < 10 else "b"},
        )
        for i in range(n)
    ]
    with registry.session() as s:
        devices.record_hellos(s, hellos, now=T0)
        devices.record_statuses(
            s, [status(f"dev-{i:03d}", T0 + 100 + i, version=1 + i % 2) for i in range(n)], now=T0
        )
        devices.set_online(s, {f"dev-{i:03d}": i % 4 != 0 for i in range(n)})
        devices.touch_devices(s, {f"dev-{i:03d}": T0 + 200 + i for i in range(n)}, now=T0)


def test_device_listing_filters_paginates_and_sorts(registry: Registry) -> None:
    _fleet(registry)
    with registry.session() as s:
        page = devices.list_devices(s, devices.DeviceQuery(limit=7, offset=7))
        assert page.total == 30 and next(d.device_id for d in page.items) == "dev-007"
        assert len(page.items) == 7
        jet = devices.list_devices(s, devices.DeviceQuery(device_class="jetson", limit=100))
        assert jet.total == 10 and all(d.device_class == "jetson" for d in jet.items)
        q = devices.DeviceQuery(labels={"site": "plant-1", "tier": "a"}, limit=100)
        assert [d.device_id for d in devices.list_devices(s, q).items] == [
            "dev-001",
            "dev-003",
            "dev-005",
            "dev-007",
            "dev-009",
        ]
        off = devices.list_devices(s, devices.DeviceQuery(online=False, limit=100))
        assert off.total == 8
        v2 = devices.list_devices(s, devices.DeviceQuery(installed_version=2, limit=100))
        assert v2.total == 15
        assert devices.list_devices(s, devices.DeviceQuery(search="DEV-02")).total == 10
        assert devices.list_devices(s, devices.DeviceQuery(search="%")).total == 0
        newest = devices.list_devices(s, devices.DeviceQuery(sort="last_seen", descending=True))
        assert newest.items[0].device_id == "dev-029"
        assert devices.count_devices(s) == (30, 22)
        ids = devices.select_device_ids(s, device_class="rpi4", labels={"site": "plant-0"})
        assert ids == [f"dev-{i:03d}" for i in range(30) if i % 3 and i % 2 == 0]
    for bad in (dict(limit=0), dict(limit=5000), dict(offset=-1), dict(sort="secret")):
        with pytest.raises(RegistryInputError):
            devices.DeviceQuery(**bad)  # type: ignore[arg-type]


def test_labels_register_delete_and_silent_offline(registry: Registry) -> None:
    with registry.session() as s:
        devices.register_device(s, "pre-1", device_class="rpi4", labels={"site": "a"}, now=T0)
        d = devices.set_labels(s, "pre-1", {"zone": "z"})
        assert d.labels == {"site": "a", "zone": "z"}
        d = devices.set_labels(s, "pre-1", {"site": "b"}, replace=True)
        assert d.labels == {"site": "b"}
        assert devices.select_device_ids(s, device_class="rpi4", labels={"zone": "z"}) == []
        devices.set_online(s, {"pre-1": True})
        assert devices.mark_silent_offline(s, silent_since=T0 + 1) == 1
        assert devices.get_device(s, "pre-1").online is False
        devices.delete_device(s, "pre-1", now=T0)
        with pytest.raises(NotFoundError):
            devices.delete_device(s, "pre-1", now=T0)


def _event(eid: str, device: str = "d1", kind: str = "installed", ts: float = T0) -> Event:
    return Event(device_id=device, event_id=eid, kind=kind, deployment_id="dep-1", ts=ts)


def test_events_are_idempotent_by_id(registry: Registry) -> None:
    with registry.session() as s:
        assert reports.record_events(s, [_event("e1"), _event("e1"), _event("e2")], now=T0) == 2
    with registry.session() as s:
        assert reports.record_events(s, [_event("e2"), _event("e3", kind="failed")], now=T0) == 1
        page = reports.list_events(s, deployment_id="dep-1")
        assert page.total == 3
        assert reports.list_events(s, kinds=["failed"]).items[0].event_id == "e3"


def test_drift_reports_are_idempotent_by_id(registry: Registry) -> None:
    def rep(rid: str, score: float) -> DriftReport:
        return DriftReport(
            device_id="d1",
            report_id=rid,
            model_name="m",
            model_version=2,
            window_size=100,
            features={"x0": FeatureDrift(psi=score, ks=0.1)},
            drift_score=score,
            drifted=score > 0.2,
            ts=T0,
        )

    with registry.session() as s:
        assert (
            reports.record_drift(s, [rep("r1", 0.1), rep("r2", 0.5), rep("r1", 0.1)], now=T0) == 2
        )
    with registry.session() as s:
        assert reports.record_drift(s, [rep("r2", 0.5)], now=T0) == 0
        drifted = reports.list_drift(s, drifted=True)
        assert [r.report_id for r in drifted.items] == ["r2"]
        assert drifted.items[0].features["x0"]["psi"] == 0.5


def _agg(
    minute: int, count: int, total: float, peak: float, last: float, ts: float
) -> TelemetryAggregate:
    return TelemetryAggregate("d1", minute, 2, "p95_ms", count, total, peak, last, ts)


def test_telemetry_aggregates_merge(registry: Registry) -> None:
    m = int(T0 // 60)
    with registry.session() as s:
        reports.merge_telemetry(s, [_agg(m, 2, 20.0, 12.0, 8.0, T0 + 5)])
    with registry.session() as s:  # same minute: add, max, and an older "last" loses
        reports.merge_telemetry(
            s, [_agg(m, 1, 30.0, 30.0, 30.0, T0 + 1), _agg(m + 1, 1, 5.0, 5.0, 5.0, T0 + 61)]
        )
    with registry.session() as s:
        series = reports.telemetry_series(s, "d1", metric="p95_ms")
        summary = reports.telemetry_summary(s, ["d1", "d2"], "p95_ms", since=T0 - 60)
        assert reports.telemetry_summary(s, ["d1"], "p95_ms", since=T0, model_version=9) == {}
    assert [(a.count, a.sum, a.max, a.last) for a in series] == [
        (3, 50.0, 30.0, 8.0),
        (1, 5.0, 5.0, 5.0),
    ]
    assert set(summary) == {"d1"}
    assert summary["d1"].count == 4 and summary["d1"].mean == pytest.approx(55.0 / 4)
    assert summary["d1"].max == 30.0 and summary["d1"].last == 5.0


def test_catalog_models_versions_bundles(registry: Registry) -> None:
    with registry.session() as s:
        b = catalog.register_bundle(
            s,
            bundle_id="b-1",
            model_name="sensor-mlp",
            version=3,
            device_class="rpi4",
            size=3 * 1024**3,
            manifest={"model_name": "sensor-mlp"},
            now=T0,
        )
        again = catalog.register_bundle(
            s,
            bundle_id="b-1",
            model_name="sensor-mlp",
            version=3,
            device_class="rpi4",
            size=3 * 1024**3,
            now=T0 + 1,
        )
        assert again == b
        with pytest.raises(ConflictError):
            catalog.register_bundle(
                s,
                bundle_id="b-1",
                model_name="sensor-mlp",
                version=4,
                device_class="rpi4",
                size=1,
                now=T0,
            )
        catalog.add_model_version(
            s, "sensor-mlp", 4, parent_version=3, metrics={"acc": 0.9}, now=T0
        )
        assert [v.version for v in catalog.list_model_versions(s, "sensor-mlp")] == [3, 4]
        assert catalog.get_model_version(s, "sensor-mlp", 4).parent_version == 3
        assert [m.name for m in catalog.list_models(s)] == ["sensor-mlp"]
        assert catalog.list_bundles(s, device_class="rpi4").total == 1
        assert catalog.list_bundles(s, device_class="jetson").total == 0
        with pytest.raises(NotFoundError):
            catalog.get_bundle(s, "b-2")
        with pytest.raises(RegistryInputError):
            catalog.add_model_version(s, "sensor-mlp", 0, now=T0)


def test_rollout_stages_targets_and_revisions(registry: Registry) -> None:
    stages = [
        StageSpec("canary", device_ids=["d1"]),
        StageSpec("w1", percent=50),
        StageSpec("all", percent=100),
    ]
    with registry.session() as s:
        r = rollouts.create_rollout(
            s,
            rollout_id="r1",
            bundle_id="b-2",
            previous_bundle_id="b-1",
            device_class="rpi4",
            target_labels={"site": "p3"},
            stages=stages,
            config={"window_s": 60},
            now=T0,
        )
        assert (r.state, r.revision, len(r.stages)) == ("draft", 0, 3)
        assert r.stages[0].device_ids == ["d1"] and r.stages[1].percent == 50
        with pytest.raises(ConflictError):
            rollouts.create_rollout(
                s, rollout_id="r1", bundle_id="b", device_class="c", stages=stages, now=T0
            )
        with pytest.raises(RegistryInputError):
            rollouts.create_rollout(
                s, rollout_id="r2", bundle_id="b", device_class="c", stages=[StageSpec("x")], now=T0
            )
    with registry.session() as s:
        r = rollouts.update_rollout(
            s, "r1", state="canary", started_at=T0 + 1, expected_revision=0, now=T0 + 1
        )
        assert (r.state, r.revision, r.started_at) == ("canary", 1, T0 + 1)
        with pytest.raises(ConflictError):
            rollouts.update_rollout(s, "r1", state="waves", expected_revision=0, now=T0 + 2)
        with pytest.raises(NotFoundError):
            rollouts.update_rollout(s, "zz", state="x", now=T0)
        with pytest.raises(RegistryInputError):
            rollouts.update_rollout(s, "r1", bundle_id="evil", now=T0)
        assert rollouts.add_targets(s, "r1", {"d1": 0, "d2": 1, "d3": 1}, now=T0) == 3
        assert rollouts.add_targets(s, "r1", {"d1": 2, "d4": 2}, now=T0) == 1
        t = rollouts.update_target(s, "r1", "d2", state="installed", attempts=1, now=T0 + 3)
        assert (t.state, t.attempts, t.stage_index) == ("installed", 1, 1)
        assert [t.device_id for t in rollouts.list_targets(s, "r1", stage_index=1)] == ["d2", "d3"]
        assert rollouts.count_targets_by_state(s, "r1") == {"pending": 3, "installed": 1}
        assert rollouts.count_targets_by_state(s, "r1", stage_index=1) == {
            "pending": 1,
            "installed": 1,
        }
        st = rollouts.update_stage(
            s, "r1", 0, state="passed", gate_results=[{"gate": "install", "ok": True}]
        )
        assert st.gate_results == [{"gate": "install", "ok": True}]
        assert rollouts.get_rollout(s, "r1").stages[0].state == "passed"
        assert [t.rollout_id for t in rollouts.targets_of_device(s, "d1")] == ["r1"]
        assert rollouts.count_rollouts_by_state(s) == {"canary": 1}
        assert rollouts.list_rollouts(s, states=["canary"]).total == 1
        assert rollouts.list_rollouts(s, states=["done"]).total == 0


def test_tokens_audit_and_training_runs(registry: Registry) -> None:
    with registry.session() as s:
        rec, secret = admin.create_token(s, name="ops", role="operator", now=T0)
        with pytest.raises(RegistryInputError):
            admin.create_token(s, name="x", role="root", now=T0)
    with registry.session() as s:
        found = admin.authenticate_token(s, secret, now=T0 + 100)
        assert found is not None and found.role == "operator" and found.token_id == rec.token_id
        assert (
            admin.authenticate_token(s, secret[:-1] + ("A" if secret[-1] != "A" else "B"), now=T0)
            is None
        )
        assert admin.authenticate_token(s, "garbage", now=T0) is None
        admin.revoke_token(s, rec.token_id, now=T0 + 200)
        assert admin.authenticate_token(s, secret, now=T0 + 300) is None
        assert admin.role_allows("admin", "operator") and not admin.role_allows(
            "viewer", "operator"
        )
        admin.record_audit(
            s, actor="ops", role="operator", action="POST", resource="/rollouts", status=201, now=T0
        )
        admin.record_audit(
            s,
            actor="adm",
            role="admin",
            action="DELETE",
            resource="/devices/x",
            status=204,
            now=T0 + 1,
        )
        assert [a.actor for a in admin.list_audit(s).items] == ["adm", "ops"]
        assert admin.list_audit(s, actor="ops").total == 1
        run = admin.create_training_run(s, run_id="run-1", model_name="sensor-mlp", now=T0)
        assert run.state == "pending"
        run = admin.update_training_run(s, "run-1", state="done", result_version=5, now=T0 + 9)
        assert (run.state, run.result_version, run.updated_at) == ("done", 5, T0 + 9)
        assert admin.list_training_runs(s, model_name="sensor-mlp").total == 1
        with pytest.raises(ConflictError):
            admin.create_training_run(s, run_id="run-1", model_name="m", now=T0)


def test_failed_transaction_rolls_back(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.session() as s:
        devices.register_device(s, "ghost", device_class="rpi4", now=T0)
        raise RuntimeError("boom")
    with registry.session() as s:
        assert devices.find_device(s, "ghost") is None


def test_migrations_match_the_models(registry: Registry) -> None:
    """The shipped migrations create exactly the schema the models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cloud_hub.registry.tables import Base

    with registry.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
