"""The engine on a real registry (SQLite and PostgreSQL) with a recording delivery.

Devices are simulated by writing what the ingest would write (hello, status, events,
telemetry) into the registry; the integration tests use real agents instead.
"""

from __future__ import annotations

import pytest

from cloud_hub.errors import DeliveryError, RolloutError
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry
from cloud_hub.rollout.config import (
    AbortRule,
    GateThresholds,
    RolloutConfig,
    StageSpec,
    TargetSelector,
)
from cloud_hub.rollout.engine import RolloutService
from shared.bundle import RollbackOrder
from shared.messages import EventKind

WINDOW = 10.0
# the PostgreSQL backend runs the main paths; these edge cases run on SQLite only
SQLITE_ONLY = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)


def _config(**kw: object) -> RolloutConfig:
    base: dict[str, object] = {
        "bundle_id": "b-v2",
        "target": TargetSelector("x86-cpu", {"site": "plant-3"}),
        "stages": (StageSpec(count=2), StageSpec(percent=50), StageSpec(percent=100)),
        "gates": GateThresholds(min_feedback=10),
        "abort": AbortRule(failure_percent=30, min_finished=3),
        "gate_window_s": WINDOW,
        "offline_timeout_s": 60.0,
        "seed": 3,
    }
    base.update(kw)
    return RolloutConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def fleet(sim, registry: Registry, clock, keystore: KeyStore, delivery):  # type: ignore[no-untyped-def]
    sim.register_bundles(registry, clock.now)
    ids = [f"dev-{i:02d}" for i in range(10)]
    sim.hello(registry, ids, ts=clock.now)
    sim.hello(registry, ["other-site"], ts=clock.now, labels={"site": "plant-4"})
    # the previous version's baseline: healthy, 90 % accurate on feedback
    sim.telemetry(
        registry, ids, version=1, ts=clock.now, p95_ms=10.0, feedback_count=50, feedback_correct=45
    )
    service = RolloutService(registry, delivery, keystore, clock=clock)
    service.sim = sim  # type: ignore[attr-defined]
    return service, ids


def _install(sim, reg, rid, ids, clock, *, error_count=0.0, p95=11.0, correct=45.0, drift=0.1):  # type: ignore[no-untyped-def]
    sim.event(reg, ids, EventKind.COMMITTED, f"{rid}.dtest", ts=clock.now)
    sim.drift(reg, ids, version=2, ts=clock.now, score=drift)
    sim.status(reg, ids, version=2, ts=clock.now)
    sim.telemetry(
        reg,
        ids,
        version=2,
        ts=clock.now,
        p95_ms=p95,
        request_count=100.0,
        error_count=error_count,
        feedback_count=50.0,
        feedback_correct=correct,
    )


def _drive(service, reg, clock, rid, **report):  # type: ignore[no-untyped-def]
    """Tick; devices that were just deployed to install and report; advance past the window."""
    delivery = service.delivery
    seen = 0
    for _ in range(20):
        clock.advance(1)
        service.tick()
        fresh = delivery.deployed_to()[seen:]
        seen = len(delivery.deployed_to())
        if fresh:
            _install(service.sim, reg, rid, fresh, clock, **report)
        clock.advance(WINDOW / 2)
        st = service.status(rid)
        if st.state not in ("canary", "wave"):
            return st
    return service.status(rid)


def test_good_bundle_promotes_through_every_wave(sim, fleet, registry, clock, delivery) -> None:  # type: ignore[no-untyped-def]
    service, ids = fleet
    st = service.create(_config())
    assert st.state == "draft" and st.previous_bundle_id == "b-v1"
    st = service.start(st.rollout_id)
    assert st.phase == "canary"
    assert [len(s.devices) for s in st.stages] == [2, 3, 5]
    final = _drive(service, registry, clock, st.rollout_id)
    assert final.state == "done", final.reason
    deployed = delivery.deployed_to()
    assert sorted(deployed) == ids  # each device exactly once, never the other site
    assert [s.state for s in final.stages] == ["passed", "passed", "passed"]
    assert final.stages[0].gate is not None and final.stages[0].gate["verdict"] == "pass"
    # deployment order follows the drawn stages
    canary = set(final.stages[0].devices)
    assert set(deployed[:2]) == canary
    assert not delivery.rollbacks


@pytest.mark.parametrize(
    ("registry", "report", "metric"),
    [
        ("sqlite", {"error_count": 40.0}, "error_rate"),
        ("postgresql", {"error_count": 40.0}, "error_rate"),
        ("sqlite", {"correct": 20.0}, "accuracy_drop"),
        ("sqlite", {"p95": 40.0}, "p95_ratio"),
        ("sqlite", {"drift": 0.9}, "drift_score"),
    ],
    indirect=["registry"],
)
def test_bad_canary_rolls_back_canary_only(
    sim,  # type: ignore[no-untyped-def]
    fleet,
    registry,
    clock,
    delivery,
    keystore,
    report,
    metric,
) -> None:
    service, _ids = fleet
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    st = _drive(service, registry, clock, rid, **report)
    assert st.state == "rolling_back"
    assert st.reason.startswith("canary: gate failed") and metric in st.reason
    canary = set(st.stages[0].devices)
    assert set(delivery.deployed_to()) == canary  # the rest never received it
    service.tick()
    assert set(delivery.rolled_back_to()) == canary, service.status(rid).targets
    order, _devs, dep = delivery.rollbacks[0]
    assert dep.startswith(f"{rid}.r")
    signed = order["signed"]
    assert RollbackOrder(
        **{k: v for k, v in signed.items() if k in RollbackOrder.__dataclass_fields__}
    )
    assert signed["to_bundle_id"] == "b-v1" and signed["to_version"] == 1
    # devices go back; the rollout completes
    sim.status(registry, canary, version=1, ts=clock.now + 1)
    clock.advance(1)
    service.tick()
    final = service.status(rid)
    assert final.state == "rolled_back"
    assert final.targets.get("rolled_back") == len(canary)
    assert final.targets.get("skipped") == 8
    service.tick()
    assert len(delivery.rolled_back_to()) == len(canary)  # not repeated


def test_health_check_failure_halts_at_canary(sim, fleet, registry, clock, delivery) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    service.tick()
    canary = delivery.deployed_to()
    assert len(canary) == 2
    # the agent refuses the model: health check fails and it rolls itself back
    sim.event(registry, canary, EventKind.HEALTH_FAILED, delivery.deploys[-1][2], ts=clock.now)
    sim.event(registry, canary, EventKind.ROLLED_BACK, delivery.deploys[-1][2], ts=clock.now)
    clock.advance(1)
    service.tick()
    st = service.status(rid)
    assert st.state in ("rolling_back", "rolled_back")
    assert "install_success" in st.reason
    service.tick()
    st = service.status(rid)
    assert st.state == "rolled_back"  # the devices already run v1: nothing to send
    assert delivery.deployed_to() == canary


@SQLITE_ONLY
def test_abort_rule_stops_before_window(sim, registry, clock, keystore, delivery) -> None:  # type: ignore[no-untyped-def]
    sim.register_bundles(registry, clock.now)
    ids = [f"d{i}" for i in range(10)]
    sim.hello(registry, ids, ts=clock.now)
    service = RolloutService(registry, delivery, keystore, clock=clock)
    cfg = _config(
        stages=(StageSpec(count=5), StageSpec(percent=100)),
        abort=AbortRule(failure_percent=20, min_finished=3),
        gate_window_s=1000.0,
    )
    rid = service.start(service.create(cfg).rollout_id).rollout_id
    service.tick()
    canary = delivery.deployed_to()
    sim.event(registry, canary[:2], EventKind.FAILED, delivery.deploys[-1][2], ts=clock.now)
    _install(sim, registry, rid, canary[2:3], clock)
    clock.advance(1)
    service.tick()
    st = service.status(rid)
    assert st.state == "rolling_back" and "abort rule" in st.reason


@SQLITE_ONLY
def test_offline_device_retried_when_back_then_timeout(
    sim, fleet, registry, clock, delivery
) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    cfg = _config(stages=(StageSpec(count=2), StageSpec(percent=100)))
    created = service.create(cfg)
    st = service.start(created.rollout_id)
    rid = st.rollout_id
    a, b = st.stages[0].devices
    sim.offline(registry, [b])
    service.tick()
    assert delivery.deployed_to() == [a]
    _install(sim, registry, rid, [a], clock)
    clock.advance(WINDOW + 1)
    service.tick()
    assert service.status(rid).phase == "canary"  # waits for b
    sim.hello(registry, [b], ts=clock.now)  # b is back
    service.tick()
    assert delivery.deployed_to() == [a, b]
    # b goes away again without an outcome: counted against the gate after the timeout
    sim.offline(registry, [b])
    clock.advance(30)
    service.tick()
    assert service.status(rid).phase == "canary"
    clock.advance(40)
    service.tick()
    st = service.status(rid)
    assert st.state == "rolling_back" and "install_success" in st.reason
    assert st.stages[0].gate is not None and st.stages[0].gate["timed_out"] == 1


@SQLITE_ONLY
def test_newcomer_joins_next_stage(sim, fleet, registry, clock, delivery) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    service.tick()
    sim.hello(registry, ["late-1"], ts=clock.now)
    service.tick()
    st = service.status(rid)
    assert "late-1" not in delivery.deployed_to()
    assert st.stages[1].targets.get("pending", 0) == 4  # 3 drawn + the newcomer
    final = _drive(service, registry, clock, rid)
    assert final.state == "done"
    assert "late-1" in delivery.deployed_to()
    # after done, a new device of the group still receives the bundle
    sim.hello(registry, ["late-2"], ts=clock.now)
    service.tick()
    assert delivery.deployed_to()[-1] == "late-2"


@SQLITE_ONLY
def test_operator_actions_and_illegal_transitions(sim, fleet, registry, clock, delivery) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    rid = service.create(_config()).rollout_id
    with pytest.raises(RolloutError, match="cannot pause in state draft"):
        service.pause(rid)
    service.start(rid)
    assert service.pause(rid).phase == "paused (canary)"
    service.tick()
    assert delivery.deploys == []  # nothing goes out while paused
    with pytest.raises(RolloutError, match="cannot start"):
        service.start(rid)
    assert service.resume(rid).phase == "canary"
    service.tick()
    assert len(delivery.deployed_to()) == 2
    st = service.abort(rid, reason="stop")
    assert st.state == "aborted" and st.reason == "stop" and st.targets.get("skipped") == 8
    st = service.rollback(rid)
    assert st.state == "rolling_back"
    service.tick()
    assert sorted(delivery.rolled_back_to()) == sorted(st.stages[0].devices)
    with pytest.raises(RolloutError, match="not found"):
        service.status("r-missing")


@SQLITE_ONLY
def test_create_validates_bundle(sim, fleet, registry) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    with pytest.raises(RolloutError, match="not registered"):
        service.create(_config(bundle_id="b-nope"))
    with pytest.raises(RolloutError, match="device class"):
        service.create(_config(target=TargetSelector("rpi4")))
    with pytest.raises(RolloutError, match="older version"):
        service.create(_config(), previous_bundle_id="b-v2")
    with pytest.raises(RolloutError, match="matches no"):
        service.start(
            service.create(_config(target=TargetSelector("x86-cpu", {"site": "x"}))).rollout_id
        )


def test_restart_resumes_open_intents(sim, fleet, registry, clock, delivery, keystore) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    # the hub "dies" between writing the intent and publishing
    delivery.refusal = DeliveryError("broker down")
    service.tick()
    st = service.status(rid)
    assert st.targets.get("deploying") == 2 and delivery.deploys == []
    delivery.refusal = None
    restarted = RolloutService(registry, delivery, keystore, clock=clock)
    restarted.sim = sim  # type: ignore[attr-defined]
    restarted.tick()
    assert sorted(delivery.deployed_to()) == sorted(st.stages[0].devices)
    restarted.tick()
    assert len(delivery.deployed_to()) == 2  # confirmed: not repeated
    final = _drive(restarted, registry, clock, rid)
    assert final.state == "done"
    assert sorted(delivery.deployed_to()) == sorted(set(delivery.deployed_to()))


@SQLITE_ONLY
def test_superseded_offer_is_not_a_failure(sim, fleet, registry, clock, delivery) -> None:  # type: ignore[no-untyped-def]
    """A device that drops an older offer for a re-offer (``failed: superseded``) and then
    commits counts as a success."""
    service, _ = fleet
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    delivery.refusal = DeliveryError("broker down")
    service.tick()  # intent recorded, publish failed: re-offered next tick with a new id
    delivery.refusal = None
    service.tick()
    first = service.status(rid).stages[0].devices
    sim.event(registry, first, EventKind.FAILED, f"{rid}.dold", ts=clock.now)
    clock.advance(1)
    service.tick()
    assert service.status(rid).targets.get("failed") is None
    _install(sim, registry, rid, first, clock)
    clock.advance(1)
    service.tick()
    assert service.status(rid).stages[0].targets == {"succeeded": 2}


@SQLITE_ONLY
def test_seed_drawn_and_recorded_when_not_given(sim, fleet, registry) -> None:  # type: ignore[no-untyped-def]
    service, _ = fleet
    a = service.create(_config(seed=None))
    b = service.create(_config(seed=None))
    assert isinstance(a.config["seed"], int) and a.config["seed"] != b.config["seed"]
    started = service.start(a.rollout_id)
    again = RolloutConfig.from_dict(started.config)
    from cloud_hub.rollout.planner import TargetableDevice, plan_stages

    infos = [TargetableDevice(f"dev-{i:02d}", "x86-cpu", {"site": "plant-3"}) for i in range(10)]
    replay = plan_stages(again, infos)  # the recorded seed reproduces the recorded draw
    assert [list(s) for s in replay.stages] == [list(s.devices) for s in started.stages]
