"""The eligibility rules for an asynchronous training order (pure)."""

from __future__ import annotations

import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.eligibility import (
    DeviceCondition,
    EligibilityLimits,
    Ineligible,
    assess,
    judge,
    serving_rate,
)
from cloud_hub.fl.fleet_conditions import condition_of
from cloud_hub.registry.device_conditions import DeviceConditionFacts
from shared.messages import TelemetryMetric as M

LIMITS = EligibilityLimits(
    max_temperature_c=80, max_power_w=10, max_serving_rps=1, min_new_samples=20
)


def fit(device: str = "d", **changes: object) -> DeviceCondition:
    base: dict[str, object] = dict(
        device=device,
        online=True,
        telemetry_age_s=30.0,
        temperature_c=50.0,
        power_w=5.0,
        serving_rps=0.0,
        labelled_samples=100.0,
        labelled_at_last_order=None,
    )
    return DeviceCondition(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reasons"),
    [
        ({}, ()),
        ({"online": False}, (Ineligible.OFFLINE,)),
        ({"telemetry_age_s": None}, (Ineligible.NO_TELEMETRY,)),
        ({"telemetry_age_s": 601.0}, (Ineligible.NO_TELEMETRY,)),
        ({"serving_rps": 1.5}, (Ineligible.SERVING,)),
        ({"serving_rps": 1.0}, ()),  # at the limit is within it
        ({"temperature_c": 80.5}, (Ineligible.TOO_HOT,)),
        ({"power_w": 12.0}, (Ineligible.OVER_POWER,)),
        ({"labelled_samples": 110.0, "labelled_at_last_order": 100.0}, (Ineligible.FEW_SAMPLES,)),
        ({"labelled_samples": 120.0, "labelled_at_last_order": 100.0}, ()),
        ({"labelled_samples": None}, (Ineligible.FEW_SAMPLES,)),  # not reported
        ({"labelled_samples": 50.0, "labelled_at_last_order": 400.0}, (Ineligible.FEW_SAMPLES,)),
        # readings a device does not report are not held against it
        ({"temperature_c": None, "power_w": None, "serving_rps": None}, ()),
        (
            {"online": False, "temperature_c": 95.0, "serving_rps": 3.0},
            (Ineligible.OFFLINE, Ineligible.SERVING, Ineligible.TOO_HOT),
        ),
    ],
)
def test_each_rule(changes: dict[str, object], reasons: tuple[Ineligible, ...]) -> None:
    verdict = judge(fit(**changes), LIMITS)  # type: ignore[arg-type]
    assert verdict.reasons == reasons
    assert verdict.eligible is (not reasons)


def test_power_is_not_checked_without_a_limit() -> None:
    assert judge(fit(power_w=500.0), EligibilityLimits()).eligible


def test_the_report_counts_main_reasons_in_rule_order() -> None:
    report = assess(
        [
            fit("a"),
            fit("b", temperature_c=90.0),
            fit("c", temperature_c=85.0, power_w=30.0),
            fit("d", serving_rps=4.0, temperature_c=99.0),
        ],
        LIMITS,
    )
    assert report.eligible == ["a"]
    assert report.summary() == "3 devices not eligible: 1 serving, 2 too hot"
    data = report.to_dict()
    assert data["checked"] == 4 and data["eligible"] == 1
    assert data["devices"] == {
        "b": ["too hot"],
        "c": ["too hot", "over power limit"],
        "d": ["serving", "too hot"],
    }
    assert assess([fit("x", online=False)], LIMITS).summary() == "1 device not eligible: 1 offline"
    assert assess([fit("a"), fit("b")], LIMITS).summary() == "all 2 devices eligible"


def test_serving_rate_from_a_cumulative_counter() -> None:
    assert serving_rate([(0.0, 0.0), (60.0, 120.0)]) == 2.0
    assert serving_rate([(60.0, 120.0), (0.0, 0.0)]) == 2.0  # order does not matter
    assert serving_rate([(0.0, 5000.0), (60.0, 10.0), (120.0, 70.0)]) == 1.0  # agent restarted
    assert serving_rate([(0.0, 3.0)]) is None
    assert serving_rate([]) is None


def test_limits_come_from_a_config_table_and_bad_ones_are_refused() -> None:
    limits = EligibilityLimits.from_mapping({"max_temperature_c": 70, "min_new_samples": 0})
    assert limits.max_temperature_c == 70 and limits.min_new_samples == 0
    assert judge(fit(labelled_samples=None), limits).eligible  # min 0: samples not needed
    with pytest.raises(HubConfigError, match="max_temp"):
        EligibilityLimits.from_mapping({"max_temp": 70})
    for bad in ({"max_temperature_c": 0}, {"max_power_w": -1}, {"telemetry_max_age_s": 1}):
        with pytest.raises(HubConfigError):
            EligibilityLimits.from_mapping(bad)


def test_a_condition_from_registry_facts() -> None:
    facts = DeviceConditionFacts(
        "d",
        True,
        {
            M.TEMPERATURE_C: ((100.0, 60.0), (160.0, 62.0)),
            M.GPU_TEMPERATURE_C: ((160.0, 71.0),),
            M.REQUEST_COUNT: ((100.0, 0.0), (160.0, 30.0)),
            M.LABELLED_SAMPLES: ((160.0, 140.0),),
        },
    )
    c = condition_of("d", facts, 100.0, now=200.0)
    assert c.telemetry_age_s == 40.0 and c.temperature_c == 71.0  # the hottest sensor
    assert c.serving_rps == 0.5 and c.power_w is None
    assert c.new_samples == 40.0
    assert condition_of("gone", None, None, now=200.0).online is False
