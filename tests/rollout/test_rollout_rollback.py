"""Rollbacks always land (#15) and orders are bound (R5): the engine on a real registry with a
recording delivery and the real key store; devices are simulated by writing what the ingest
would write. The end-to-end version with real agents is ``test_rollout_rollback_agents.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from cloud_hub.errors import RolloutError
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry
from cloud_hub.rollout.config import RolloutConfig, StageSpec, TargetSelector
from cloud_hub.rollout.engine import RolloutService
from shared.messages import EventKind, InstalledModel

from .conftest import FleetSim

pytestmark = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)

MODEL, CLASS = "sensor-mlp", "x86-cpu"
SHA = {v: f"{v:x}" * 64 for v in (1, 2, 3)}  # the model artifact's sha256 per version
DELTA_V2 = "d" * 64  # v2 as a delta bundle built for one device: not in the catalog


def _register(reg: Registry, now: float) -> None:
    FleetSim.register_bundles(reg, now, (1, 2, 3), model_sha256=SHA)


def _runs(
    reg: Registry,
    ids: Iterable[str],
    bundle_id: str,
    version: int,
    ts: float,
    *,
    model_name: str = MODEL,
) -> None:
    """Devices say (hello + status) that they run ``bundle_id`` (``version``)."""
    ids = list(ids)  # read twice
    model = InstalledModel(model_name=model_name, version=version, bundle_id=bundle_id)
    FleetSim.hello(reg, ids, ts=ts, installed=model)
    FleetSim.status(reg, ids, ts=ts, installed=model)


def _config(bundle: str = "b-v3", **kw: Any) -> RolloutConfig:
    return RolloutConfig(
        bundle_id=bundle,
        target=TargetSelector(CLASS, {"site": "plant-3"}),
        stages=(StageSpec(percent=100),),
        gate_window_s=600.0,
        offline_timeout_s=kw.pop("offline_timeout_s", 60.0),
        seed=1,
        **kw,
    )


@pytest.fixture
def world(sim, registry: Registry, clock, keystore: KeyStore, delivery):  # type: ignore[no-untyped-def]
    """Four devices on v2 — two got it as a delta (another bundle id) — and v3 installed on
    all of them by a rollout now in its canary."""
    _register(registry, clock.now)
    _runs(registry, ["dev-a", "dev-b"], "b-v2", 2, clock.now)
    _runs(registry, ["dev-c", "dev-d"], DELTA_V2, 2, clock.now)
    service = RolloutService(registry, delivery, keystore, clock=clock)
    rid = service.start(service.create(_config()).rollout_id).rollout_id
    service.tick()
    assert sorted(delivery.deployed_to()) == ["dev-a", "dev-b", "dev-c", "dev-d"]
    clock.advance(1)
    sim.event(
        registry, ["dev-a", "dev-b", "dev-c", "dev-d"], "committed", f"{rid}.dx", ts=clock.now
    )
    _runs(registry, ["dev-a", "dev-b", "dev-c", "dev-d"], "b-v3", 3, clock.now)
    clock.advance(1)
    service.tick()
    assert service.status(rid).targets == {"succeeded": 4}
    return service, rid


def _orders(delivery: Any) -> dict[str, dict[str, Any]]:
    """device -> the signed part of the last order it was sent."""
    out = {}
    for order, ids, _dep in delivery.rollbacks:
        for d in ids:
            out[d] = order["signed"]
    return out


def test_each_device_goes_back_to_what_it_ran_by_bundle_and_content(  # type: ignore[no-untyped-def]
    world, registry, clock, delivery, sim
) -> None:
    service, rid = world
    service.rollback(rid, reason="bad metrics")
    service.tick()
    orders = _orders(delivery)
    assert {d: o["to_bundle_id"] for d, o in orders.items()} == {
        "dev-a": "b-v2",
        "dev-b": "b-v2",
        "dev-c": DELTA_V2,  # what it ran, not the newest older bundle of the catalog
        "dev-d": DELTA_V2,
    }
    for d, o in orders.items():
        assert o["to_version"] == 2 and o["to_sha256"] == SHA[2]
        assert o["from_bundle_id"] == "b-v3" and d in o["device_ids"]  # R5: bound
    assert len(delivery.rollbacks) == 2  # one signed order per (to, from) group
    assert sorted(o["device_ids"][0] for o in orders.values())[0] == "dev-a"
    clock.advance(1)
    _runs(registry, ["dev-a", "dev-b"], "b-v2", 2, clock.now)
    _runs(registry, ["dev-c", "dev-d"], DELTA_V2, 2, clock.now)
    clock.advance(1)
    service.tick()
    final = service.status(rid)
    assert final.state == "rolled_back" and final.targets == {"rolled_back": 4}


def test_refused_rollback_ends_failed_with_reasons_holds_devices_until_resolved(  # type: ignore[no-untyped-def]
    world, registry, clock, delivery, sim
) -> None:
    service, rid = world
    service.rollback(rid)
    service.tick()
    dep = delivery.rollbacks[0][2]
    clock.advance(1)
    _runs(registry, ["dev-a", "dev-b"], "b-v2", 2, clock.now)
    _runs(registry, ["dev-c"], DELTA_V2, 2, clock.now)
    why = "previous slot holds nothing, not version 2"
    with registry.session() as s:
        from cloud_hub.registry import reports
        from shared.messages import Event

        reports.record_events(
            s,
            [
                Event(
                    device_id="dev-d",
                    event_id="e1",
                    kind=EventKind.FAILED,
                    deployment_id=dep,
                    detail=why,
                )
            ],
            now=clock.now,
        )
    clock.advance(1)
    service.tick()
    st = service.status(rid)
    assert st.state == "rollback_failed", st
    assert st.targets == {"rolled_back": 3, "rollback_failed": 1}
    assert "dev-d: failed: " + why in st.reason and "1 device(s) not rolled back" in st.reason
    with registry.session() as s:
        from cloud_hub.registry import rollouts

        [target] = rollouts.list_targets(s, rid, states=["rollback_failed"])
    assert target.device_id == "dev-d" and why in target.detail
    # dev-d is held: another rollout on the same devices may be drafted (it warns) but not
    # started, with the reason
    draft = service.create(_config("b-v3"))
    assert any("dev-d" in w and "start is refused" in w for w in draft.warnings), draft
    with pytest.raises(
        RolloutError, match=r"held by unfinished rollouts: dev-d \(.*rollback_failed\)"
    ):
        service.start(draft.rollout_id)
    with pytest.raises(RolloutError, match="cannot abort in state rollback_failed"):
        service.abort(rid)
    resolved = service.resolve(rid, reason="dev-d re-flashed by hand")
    assert resolved.state == "resolved" and resolved.reason == "dev-d re-flashed by hand"
    service.create(_config("b-v3"))  # released


def test_retry_after_a_failed_rollback_reaches_the_device(  # type: ignore[no-untyped-def]
    world, registry, clock, delivery
) -> None:
    service, rid = world
    service.rollback(rid)
    service.tick()
    clock.advance(61)  # nobody answers within the offline timeout
    service.tick()
    st = service.status(rid)
    assert st.state == "rollback_failed" and st.targets == {"rollback_failed": 4}
    assert "not back after" in st.reason
    sent = len(delivery.rollbacks)
    service.rollback(rid, reason="try again")
    service.tick()
    assert len(delivery.rollbacks) == sent + 2 and service.status(rid).state == "rolling_back"
    clock.advance(1)
    _runs(registry, ["dev-a", "dev-b"], "b-v2", 2, clock.now)
    _runs(registry, ["dev-c", "dev-d"], DELTA_V2, 2, clock.now)
    clock.advance(1)
    service.tick()
    assert service.status(rid).state == "rolled_back"


def test_abort_stops_a_rollback_and_releases_the_devices(  # type: ignore[no-untyped-def]
    world, registry, clock, delivery
) -> None:
    service, rid = world
    service.rollback(rid)
    draft = service.create(_config("b-v3"))
    with pytest.raises(RolloutError, match="held by unfinished rollouts"):
        service.start(draft.rollout_id)
    st = service.abort(rid, reason="stop it")
    assert st.state == "aborted" and st.targets == {"rollback_failed": 4}
    service.tick()
    assert delivery.rollbacks == []  # nothing is sent after the abort
    assert service.start(draft.rollout_id).state == "canary"


def test_start_refuses_devices_held_by_a_rollout_in_progress(  # type: ignore[no-untyped-def]
    world, registry, clock
) -> None:
    service, rid = world
    _runs(registry, ["dev-e"], "b-v2", 2, clock.now)
    # a draft may be prepared meanwhile, but it cannot start on the held devices
    draft = service.create(_config("b-v3"))
    with pytest.raises(RolloutError, match="held by unfinished rollouts"):
        service.start(draft.rollout_id)
    service.pause(rid)  # paused still holds
    with pytest.raises(RolloutError, match=r"dev-a \(" + rid):
        service.start(draft.rollout_id)


def test_devices_on_another_model_get_a_bound_switch_order_with_the_offer(  # type: ignore[no-untyped-def]
    sim, registry, clock, keystore, delivery
) -> None:
    """R5: a device running another model takes the bundle only with a signed order; the
    engine sends one, bound to that device and to the bundle it runs; the others need none."""
    _register(registry, clock.now)
    _runs(registry, ["dev-a"], "b-v2", 2, clock.now)
    _runs(registry, ["dev-x"], "b-legacy", 7, clock.now, model_name="legacy-model")
    service = RolloutService(registry, delivery, keystore, clock=clock)
    service.start(service.create(_config()).rollout_id)
    service.tick()
    assert sorted(delivery.deployed_to()) == ["dev-a", "dev-x"]
    orders = delivery.orders_sent()
    assert list(orders) == ["dev-x"]
    signed = orders["dev-x"]["signed"]
    assert signed["model_name"] == MODEL and signed["to_bundle_id"] == "b-v3"
    assert signed["to_version"] == 3 and signed["to_sha256"] == SHA[3]
    assert signed["device_ids"] == ["dev-x"] and signed["from_bundle_id"] == "b-legacy"


def test_the_history_keeps_every_move_with_who_and_why(  # type: ignore[no-untyped-def]
    world, registry, clock, delivery
) -> None:
    """The rollout keeps only its latest reason; its history keeps each move: the operator's
    typed abort reason is still there after the rollback that followed replaced it."""
    service, rid = world
    service.abort(rid, reason="metrics look wrong", by="alice")
    service.rollback(rid, reason="roll them back", by="bob")
    service.tick()
    clock.advance(61)  # nobody answers within the offline timeout
    service.tick()
    assert service.status(rid).state == "rollback_failed"
    moves = [(m.by, m.from_phase, m.to_phase, m.reason) for m in service.history(rid)]
    assert moves[0] == ("hub", "draft", "canary", "")  # started by the fixture, in process
    assert moves[1:3] == [
        ("alice", "canary", "aborted", "metrics look wrong"),
        ("bob", "aborted", "rolling_back", "roll them back"),
    ]
    engine, before, after, why = moves[3]
    assert (engine, before, after) == ("rollout-engine", "rolling_back", "rollback_failed")
    assert "4 device(s) not rolled back" in why and "not back after" in why
    assert len(moves) == 4
    assert "metrics look wrong" not in service.status(rid).reason  # why history is needed
