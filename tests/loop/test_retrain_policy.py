from __future__ import annotations

import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.loop.policy import ClassHealth, RetrainPolicy, decide_retraining

DEVICES = [f"d{i}" for i in range(10)]


def health(**kw) -> ClassHealth:
    return ClassHealth(device_class="x86-cpu", online_devices=DEVICES, **kw)


def test_no_trigger() -> None:
    d = decide_retraining(RetrainPolicy(), health(), now=1000.0)
    assert not d.retrain and d.reason == "no trigger"


def test_sustained_drift_on_enough_devices_triggers_with_drifted_cohort() -> None:
    policy = RetrainPolicy(drift_fraction=0.3, drift_duration_s=60)
    drifted = {"d1": 900.0, "d2": 900.0, "d3": 930.0, "d4": 990.0}
    d = decide_retraining(policy, health(drifted_since=drifted), now=1000.0)
    assert d.retrain and d.trigger == "drift"
    assert d.cohort == ("d1", "d2", "d3")  # d4 has not drifted long enough


def test_brief_drift_does_not_trigger() -> None:
    drifted = {f"d{i}": 990.0 for i in range(8)}
    d = decide_retraining(
        RetrainPolicy(drift_duration_s=60), health(drifted_since=drifted), now=1000.0
    )
    assert not d.retrain


def test_offline_devices_do_not_count() -> None:
    drifted = {"x1": 0.0, "x2": 0.0, "x3": 0.0, "d1": 0.0}
    d = decide_retraining(
        RetrainPolicy(drift_fraction=0.3), health(drifted_since=drifted), now=1000.0
    )
    assert not d.retrain


def test_cooldown_and_budget_prevent_storms() -> None:
    drifted = {f"d{i}": 0.0 for i in range(10)}
    policy = RetrainPolicy(cooldown_s=600, max_runs_per_day=2)
    assert not decide_retraining(
        policy, health(drifted_since=drifted, previous_runs=[800.0]), now=1000.0
    ).retrain
    d = decide_retraining(
        policy, health(drifted_since=drifted, previous_runs=[100.0, 200.0]), now=10_000.0
    )
    assert not d.retrain and d.reason.startswith("budget")
    assert decide_retraining(
        policy, health(drifted_since=drifted, previous_runs=[100.0]), now=10_000.0
    ).retrain


def test_accuracy_drop_triggers_with_whole_class() -> None:
    d = decide_retraining(
        RetrainPolicy(), health(feedback_accuracy=0.80, champion_accuracy=0.95), now=1.0
    )
    assert d.retrain and d.trigger == "accuracy" and len(d.cohort) == 10


def test_schedule_and_manual() -> None:
    policy = RetrainPolicy(schedule_interval_s=3600, cooldown_s=0)
    assert decide_retraining(policy, health(previous_runs=[0.0]), now=4000.0).trigger == "schedule"
    assert (
        decide_retraining(RetrainPolicy(), health(manual_request=True), now=1.0).trigger == "manual"
    )


def test_cohort_too_small_for_secure_aggregation() -> None:
    d = decide_retraining(
        RetrainPolicy(drift_fraction=0.1, min_devices=3),
        health(drifted_since={"d1": 0.0}),
        now=1000.0,
    )
    assert not d.retrain and "cohort" in d.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drift_fraction": 0},
        {"drift_fraction": 1.5},
        {"drift_threshold": 0},
        {"cooldown_s": -1},
        {"max_runs_per_day": 0},
        {"min_devices": 1},
        {"accuracy_drop": 2},
    ],
)
def test_bad_policy_is_refused(kwargs) -> None:
    with pytest.raises(HubConfigError):
        RetrainPolicy(**kwargs)
