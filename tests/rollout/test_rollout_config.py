"""RolloutConfig validation and its JSON round trip."""

from __future__ import annotations

import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.rollout.config import (
    AbortRule,
    GateThresholds,
    RolloutConfig,
    StageSpec,
    TargetSelector,
    parse_labels,
)


def _cfg(**kw: object) -> RolloutConfig:
    base: dict[str, object] = {
        "bundle_id": "b-1",
        "target": TargetSelector("x86-cpu", {"site": "plant-3"}),
    }
    base.update(kw)
    return RolloutConfig(**base)  # type: ignore[arg-type]


def test_round_trip() -> None:
    cfg = _cfg(
        stages=(StageSpec(count=2), StageSpec(labels={"line": "a"}), StageSpec(percent=100)),
        gates=GateThresholds(max_error_rate=0.1, max_p95_ratio=None),
        abort=AbortRule(failure_percent=30, min_finished=5),
        gate_window_s=2.0,
        offline_timeout_s=5.0,
        seed=42,
        name="r",
    )
    assert RolloutConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"stages": ()},
        {"stages": (StageSpec(percent=50), StageSpec(percent=10))},
        {"gate_window_s": -1.0},
        {"offline_timeout_s": float("nan")},
        {"bundle_id": "bad/id"},
        {"seed": "x"},
        {"stages": tuple(StageSpec(count=1) for _ in range(21))},
    ],
)
def test_invalid_configs_raise(bad: dict[str, object]) -> None:
    with pytest.raises(HubConfigError):
        _cfg(**bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: StageSpec(),
        lambda: StageSpec(count=1, percent=5),
        lambda: StageSpec(count=0),
        lambda: StageSpec(percent=0),
        lambda: StageSpec(percent=101),
        lambda: StageSpec(device_ids=("a", "a")),
        lambda: GateThresholds(min_install_success=1.5),
        lambda: GateThresholds(max_p95_ratio=0.5),
        lambda: GateThresholds(min_feedback=0),
        lambda: AbortRule(failure_percent=-1),
        lambda: AbortRule(min_finished=0),
        lambda: TargetSelector("x86 cpu"),
        lambda: TargetSelector("x86-cpu", {"site": "a b"}),
    ],
)
def test_invalid_parts_raise(make: object) -> None:
    with pytest.raises(HubConfigError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"bundle_id": "b"},
        {"bundle_id": "b", "target": {"device_class": "c"}, "stages": "x"},
        {"bundle_id": "b", "target": {"device_class": "c"}, "stages": [{"count": "2"}]},
        {"bundle_id": "b", "target": {"device_class": "c"}, "gates": {"nope": 1}},
        {"bundle_id": "b", "target": {"device_class": "c"}, "surprise": 1},
        {"bundle_id": "b", "target": {"device_class": 5}},
    ],
)
def test_from_dict_rejects_bad_json(data: object) -> None:
    with pytest.raises(HubConfigError):
        RolloutConfig.from_dict(data)  # type: ignore[arg-type]


def test_parse_labels() -> None:
    assert parse_labels(["site=plant-3", "line=a"]) == {"site": "plant-3", "line": "a"}
    with pytest.raises(HubConfigError):
        parse_labels(["site"])


def test_target_matching() -> None:
    sel = TargetSelector("x86-cpu", {"site": "plant-3"})
    assert sel.matches("x86-cpu", {"site": "plant-3", "x": "y"}, "d1")
    assert not sel.matches("rpi4", {"site": "plant-3"}, "d1")
    assert not sel.matches("x86-cpu", {"site": "plant-4"}, "d1")
    listed = TargetSelector("x86-cpu", device_ids=("d1",))
    assert listed.matches("x86-cpu", {}, "d1") and not listed.matches("x86-cpu", {}, "d2")


def test_abort_rule() -> None:
    rule = AbortRule(failure_percent=20, min_finished=5)
    assert not rule.tripped(4, 4)  # too few finished
    assert not rule.tripped(5, 1)  # 20% is not > 20%
    assert rule.tripped(5, 2)
    assert rule.tripped(10, 3)
