"""Seeded random stage membership and continuous deployment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.errors import RolloutError
from cloud_hub.rollout.config import RolloutConfig, StageSpec, TargetSelector
from cloud_hub.rollout.planner import (
    TargetableDevice,
    plan_stages,
    select_target,
    stage_for_newcomer,
)
from cloud_hub.rollout.state import RolloutPhase, RolloutState


def _devices(n: int, *, cls: str = "x86-cpu", site: str = "plant-3") -> list[TargetableDevice]:
    return [TargetableDevice(f"dev-{i:04d}", cls, {"site": site}) for i in range(n)]


def _cfg(stages: tuple[StageSpec, ...], seed: int = 1, **target: object) -> RolloutConfig:
    return RolloutConfig(
        bundle_id="b",
        target=TargetSelector("x86-cpu", **target),  # type: ignore[arg-type]
        stages=stages,
        seed=seed,
    )


WAVES = (StageSpec(count=2), StageSpec(percent=10), StageSpec(percent=50), StageSpec(percent=100))


def test_percent_waves_are_cumulative_and_cover_target() -> None:
    plan = plan_stages(_cfg(WAVES), _devices(100))
    sizes = [len(s) for s in plan.stages]
    assert sizes == [2, 8, 40, 50]
    assert len(plan.devices) == 100


def test_target_filters_class_and_labels() -> None:
    devices = _devices(10) + _devices(5, site="plant-4") + [TargetableDevice("pi", "rpi4", {})]
    cfg = _cfg(WAVES, labels={"site": "plant-3"})
    assert len(select_target(cfg, devices)) == 10
    assert plan_stages(cfg, devices).devices == frozenset(d.device_id for d in devices[:10])


def test_membership_is_seeded_and_not_registration_order() -> None:
    devices = _devices(200)
    a = plan_stages(_cfg(WAVES, seed=7), devices)
    assert a == plan_stages(_cfg(WAVES, seed=7), list(reversed(devices)))
    b = plan_stages(_cfg(WAVES, seed=8), devices)
    assert a.stages[0] != b.stages[0] or a.stages[1] != b.stages[1]
    # the canary is not simply the first-registered devices
    firsts = {d.device_id for d in devices[: len(a.stages[1]) + 2]}
    assert set(a.stages[0]) | set(a.stages[1]) != firsts


def test_canary_draw_is_roughly_uniform() -> None:
    devices = _devices(20)
    hits = dict.fromkeys((d.device_id for d in devices), 0)
    for seed in range(2000):
        for d in plan_stages(_cfg((StageSpec(count=1),), seed=seed), devices).stages[0]:
            hits[d] += 1
    # each device expected 100 times; a fixed-order planner would give one device 2000
    assert max(hits.values()) < 160 and min(hits.values()) > 50


def test_named_stages_claim_their_devices() -> None:
    devices = _devices(10)
    cfg = _cfg(
        (
            StageSpec(device_ids=("dev-0003", "dev-0007", "not-in-target")),
            StageSpec(labels={"site": "plant-3"}),
        )
    )
    plan = plan_stages(cfg, devices)
    assert plan.stages[0] == ("dev-0003", "dev-0007")
    assert len(plan.stages[1]) == 8 and "dev-0003" not in plan.stages[1]


def test_partial_last_stage_leaves_devices_out() -> None:
    plan = plan_stages(_cfg((StageSpec(count=1), StageSpec(percent=50))), _devices(10))
    assert [len(s) for s in plan.stages] == [1, 4]


def test_empty_target_gives_empty_stages() -> None:
    plan = plan_stages(_cfg(WAVES), [])
    assert all(len(s) == 0 for s in plan.stages)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    canary=st.integers(min_value=1, max_value=10),
    percents=st.lists(st.floats(min_value=0.5, max_value=100), min_size=0, max_size=5),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_plan_partitions_target(n: int, canary: int, percents: list[float], seed: int) -> None:
    stages = (StageSpec(count=canary), *(StageSpec(percent=p) for p in sorted(percents)))
    plan = plan_stages(_cfg(stages, seed=seed), _devices(n))
    flat = [d for s in plan.stages for d in s]
    assert len(flat) == len(set(flat))  # no device in two stages
    assert len(plan.stages[0]) == min(canary, n)
    if percents and max(percents) == 100:
        assert len(flat) == n
    for d in flat:
        assert plan.stage_of(d) is not None


def test_newcomers_join_next_or_last_stage() -> None:
    cfg = _cfg(WAVES)
    assert stage_for_newcomer(cfg, RolloutPhase(RolloutState.CANARY, 0), "new", {}) == 1
    assert stage_for_newcomer(cfg, RolloutPhase(RolloutState.WAVE, 2), "new", {}) == 3
    assert stage_for_newcomer(cfg, RolloutPhase(RolloutState.WAVE, 3), "new", {}) == 3
    assert stage_for_newcomer(cfg, RolloutPhase(RolloutState.PAUSED, 1), "new", {}) == 2
    assert stage_for_newcomer(cfg, RolloutPhase(RolloutState.DONE, 3), "new", {}) == 3
    named = _cfg((StageSpec(count=1), StageSpec(count=1), StageSpec(labels={"line": "b"})))
    phase = RolloutPhase(RolloutState.CANARY, 0)
    assert stage_for_newcomer(named, phase, "new", {"line": "b"}) == 2
    for state in (RolloutState.DRAFT, RolloutState.ROLLED_BACK, RolloutState.ABORTED):
        with pytest.raises(RolloutError):
            stage_for_newcomer(cfg, RolloutPhase(state, 0), "new", {})
