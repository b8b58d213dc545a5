"""Scenario files, the seeded population plan and the invariant checks (pure, fast)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from simulations.fleet.invariants import (
    DeviceOutcome,
    FaultCounts,
    RolloutOutcome,
    check_drift,
    check_faults,
    check_models,
    check_reports,
    check_rollouts,
)
from simulations.fleet.population import plan_population
from simulations.fleet.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = sorted(
    (Path(__file__).parents[2] / "simulations" / "fleet" / "scenarios").glob("*.toml")
)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_bundled_scenarios_load(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.total_agents >= 100  # the bundled ones are full size; tests scale down
    assert scenario.rollouts


def _raw(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "scenario": {"name": "t", "agents": 10, "sites": ["a", "b"]},
        "faults": {"kill_in_process": 2},
        "drift": {"site": "b"},
        "rollouts": [{"version": 2, "faults": True}],
    }
    for key, value in changes.items():
        table, _, field = key.partition("__")
        raw[table] = value if not field else {**raw[table], field: value}  # type: ignore[dict-item]
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scenario__agents": 0}, "scenario.agents"),
        ({"faults__kill_in_process": 11}, "kill_in_process exceeds"),
        ({"drift__site": "nowhere"}, "not a site"),
        ({"faults__flaky_fraction": 1.5}, "flaky_fraction"),
        ({"faults__surprise": 1}, "unknown keys"),
        ({"rollouts": [{"version": 3}, {"version": 2}]}, "must increase"),
        ({"rollouts": [{"version": 2, "expect": "maybe"}]}, "expect"),
        ({"rollouts": [{"version": 2, "classes": ["toaster"]}]}, "unknown classes"),
        ({"bogus": {}}, "unknown tables"),
        ({"training": {"enabled": True, "clients": 1}}, "training.clients"),
        (
            {"training": {"enabled": True}, "rollouts": [{"version": 2, "healthy": False}]},
            "needs a healthy rollout",
        ),
    ],
)
def test_bad_scenarios_are_refused_with_the_field_named(
    changes: dict[str, object], message: str
) -> None:
    parse_scenario(_raw())  # the base is valid
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(_raw(**changes))


def test_population_is_seeded_and_follows_the_scenario() -> None:
    raw = _raw(
        scenario__agents=40,
        scenario__subprocess_agents=2,
        scenario__device_classes={"x86-cpu": 3, "rpi4": 1},
        faults__kill_subprocess=1,
        faults__flaky_fraction=0.25,
        rollouts=[{"version": 2, "faults": True, "classes": ["rpi4"]}],
    )
    scenario = parse_scenario(raw)
    members = plan_population(scenario)
    assert members == plan_population(scenario)  # deterministic
    assert len(members) == 42
    assert Counter(m.device_class for m in members) == {"x86-cpu": 31, "rpi4": 11}
    assert sum(m.link == "flaky" for m in members) == 10
    assert sum(m.link == "process" for m in members) == 2
    killed = [m for m in members if m.kill]
    assert all(m.device_class == "rpi4" for m in killed)  # only the faulty rollout's class
    assert sum(m.link != "process" for m in killed) == 2
    assert all((m.drift_shift > 0) == (m.site == "b") for m in members)
    assert len({m.device_id for m in members}) == 42


def _device(**kw: object) -> DeviceOutcome:
    base: dict[str, object] = {
        "device_id": "d1",
        "device_class": "x86-cpu",
        "site": "a",
        "link": "direct",
        "expected_version": 2,
        "active_version": 2,
        "smoke_ok": True,
        "smoke_detail": "ok",
        "reports_emitted": 5,
        "reports_missing": (),
        "outbox_left": 0,
        "drift_windows": 10,
        "drifted_windows": 0,
    }
    base.update(kw)
    return DeviceOutcome(**base)  # type: ignore[arg-type]


def test_model_and_report_checks_catch_what_they_should() -> None:
    assert check_models([_device()]).ok
    assert not check_models([_device(active_version=1)]).ok
    assert not check_models([_device(smoke_ok=False, smoke_detail="no active slot")]).ok
    assert check_reports([_device()]).ok
    assert not check_reports([_device(reports_missing=("e1",))]).ok
    assert not check_reports([_device(outbox_left=3)]).ok


def _rollout(**kw: object) -> RolloutOutcome:
    base: dict[str, object] = {
        "device_class": "x86-cpu",
        "version": 3,
        "rollout_id": "r-1",
        "expected": "rolled_back",
        "state": "rolled_back",
        "reason": "canary: gate failed",
        "duration_s": 1.0,
        "stage_states": ("failed", "pending"),
        "stage_devices": (("d1",), ("d1", "d2")),
        "received": frozenset({"d1"}),
    }
    base.update(kw)
    return RolloutOutcome(**base)  # type: ignore[arg-type]


def test_rollout_check_requires_a_halt_at_the_canary() -> None:
    assert check_rollouts([_rollout()]).ok
    leaked = check_rollouts([_rollout(received=frozenset({"d1", "d2"}))])
    assert not leaked.ok and "outside the canary" in leaked.detail
    assert not check_rollouts([_rollout(stage_states=("failed", "active"))]).ok
    assert not check_rollouts([_rollout(state="done")]).ok
    done = _rollout(expected="done", state="done", stage_states=("passed", "passed"))
    assert check_rollouts([done]).ok
    assert not check_rollouts([done], planned=2).ok


def test_drift_and_fault_checks() -> None:
    quiet = _device(device_id="q", site="a", drift_windows=50, drifted_windows=1)
    loud = _device(device_id="l", site="b", drift_windows=40, drifted_windows=40)
    check = check_drift([quiet, loud], "b")
    assert check is not None and check.ok
    mute = _device(device_id="m", site="b", drift_windows=40, drifted_windows=0)
    failed = check_drift([quiet, loud, mute], "b")
    assert failed is not None and not failed.ok
    assert check_drift([quiet], None) is None
    assert check_faults(FaultCounts(2, 2, 1, 1, 3, 5)).ok
    assert not check_faults(FaultCounts(2, 1, 1, 1, 3, 5)).ok
    assert not check_faults(FaultCounts(0, 0, 1, 0, 0, 0)).ok
    assert not check_faults(FaultCounts(0, 0, 0, 0, 3, 0)).ok


def test_cli_refuses_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    from cloud_hub.cli import main

    assert main(["fleet-sim", "no-such-scenario"]) == 2
    assert "no scenario 'no-such-scenario'" in capsys.readouterr().err
