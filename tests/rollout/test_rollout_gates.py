"""Gate evaluation: every metric, the abort rule and the offline timeout."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.rollout.config import AbortRule, GateThresholds
from cloud_hub.rollout.gates import (
    Baseline,
    DeviceReport,
    GateVerdict,
    InstallOutcome,
    evaluate_gate,
)

OK = InstallOutcome.SUCCEEDED
FAIL = InstallOutcome.FAILED
PENDING = InstallOutcome.PENDING
GATES = GateThresholds(
    min_install_success=0.9,
    max_error_rate=0.05,
    max_p95_ratio=1.5,
    max_drift_score=0.3,
    max_accuracy_drop=0.05,
    min_feedback=20,
)
BASE = Baseline(p95_ms=10.0, feedback_correct=90, feedback_total=100)


def _good(i: int, **kw: object) -> DeviceReport:
    base = DeviceReport(
        device_id=f"d{i}",
        install=OK,
        finished_at=100.0,
        requests=100,
        error_rate=0.01,
        p95_ms=11.0,
        drift_score=0.1,
        feedback_correct=9,
        feedback_total=10,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _eval(reports: list[DeviceReport], *, now: float = 200.0, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "thresholds": GATES,
        "abort": AbortRule(failure_percent=50, min_finished=4),
        "stage_started": 90.0,
        "now": now,
        "window_s": 30.0,
        "offline_timeout_s": 60.0,
    }
    args.update(kw)
    baseline = args.pop("baseline", BASE)
    return evaluate_gate(reports, baseline, **args)  # type: ignore[arg-type]


def test_good_stage_passes_with_every_metric_reported() -> None:
    result = _eval([_good(i) for i in range(5)])
    assert result.verdict is GateVerdict.PASS, result.reason
    by_name = {c.name: c for c in result.checks}
    assert set(by_name) == {
        "install_success",
        "error_rate",
        "p95_ratio",
        "drift_score",
        "accuracy_drop",
    }
    assert all(c.passed for c in result.checks)
    assert by_name["p95_ratio"].value == pytest.approx(1.1)
    assert by_name["accuracy_drop"].value == pytest.approx(0.0)
    assert result.to_dict()["verdict"] == "pass"


def test_waits_for_window_after_last_install() -> None:
    reports = [_good(i) for i in range(3)] + [_good(3, finished_at=150.0)]
    assert _eval(reports, now=179.0).verdict is GateVerdict.WAIT
    assert _eval(reports, now=180.0).verdict is GateVerdict.PASS


@pytest.mark.parametrize(
    ("change", "metric"),
    [
        ({"error_rate": 0.2}, "error_rate"),
        ({"p95_ms": 20.0}, "p95_ratio"),
        ({"drift_score": 0.9}, "drift_score"),
        ({"feedback_correct": 5}, "accuracy_drop"),
    ],
)
def test_each_metric_breach_fails(change: dict[str, object], metric: str) -> None:
    result = _eval([_good(i, **change) for i in range(5)])
    assert result.verdict is GateVerdict.FAIL
    assert metric in result.reason
    failing = [c.name for c in result.checks if c.passed is False]
    assert failing == [metric]


def test_install_failures_below_abort_minimum_fail_on_ratio() -> None:
    reports = [_good(0), _good(1, install=FAIL)]
    result = _eval(reports)
    assert result.verdict is GateVerdict.FAIL
    assert "install_success" in result.reason


def test_abort_rule_fails_early_without_waiting() -> None:
    reports = [_good(i, install=FAIL) for i in range(3)] + [_good(3)]
    reports += [DeviceReport(f"p{i}") for i in range(6)]  # still installing
    result = _eval(reports, now=95.0)
    assert result.verdict is GateVerdict.FAIL
    assert result.reason.startswith("abort rule")
    assert (result.failed, result.pending) == (3, 6)
    # below the minimum number finished: only waits
    lenient = replace(GATES, min_install_success=0.5)
    assert _eval(reports[2:], now=95.0, thresholds=lenient).verdict is GateVerdict.WAIT


def test_unreachable_install_ratio_fails_without_waiting() -> None:
    reports = [_good(0, install=FAIL)] + [DeviceReport(f"p{i}") for i in range(5)]
    result = _eval(reports, now=95.0)  # 5/6 at best < 0.9
    assert result.verdict is GateVerdict.FAIL
    assert "install_success" in result.reason and result.pending == 5
    assert _eval([*reports, *(DeviceReport(f"q{i}") for i in range(5))], now=95.0).verdict is (
        GateVerdict.WAIT
    )  # 10/11 could still pass


def test_offline_device_waited_for_then_counted_after_timeout() -> None:
    offline = DeviceReport("off", online=False, offline_since=100.0)
    reports = [_good(i) for i in range(19)] + [offline]
    waiting = _eval(reports, now=159.0)
    assert waiting.verdict is GateVerdict.WAIT and waiting.pending == 1
    after = _eval(reports, now=160.0)
    assert after.timed_out == 1
    assert after.verdict is GateVerdict.PASS  # 19/20 = 0.95 >= 0.9
    two_off = [*reports[:18], offline, replace(offline, device_id="off2")]
    assert _eval(two_off, now=160.0).verdict is GateVerdict.PASS  # 0.9 >= 0.9
    three_off = [*two_off[1:], replace(offline, device_id="off3")]
    assert _eval(three_off, now=160.0).verdict is GateVerdict.FAIL


def test_online_but_silent_device_times_out_from_stage_start() -> None:
    silent = DeviceReport("quiet")
    reports = [_good(i) for i in range(9)] + [silent]
    assert _eval(reports, now=149.0).verdict is GateVerdict.WAIT
    assert _eval(reports, now=150.0).timed_out == 1


def test_missing_data_is_not_judged() -> None:
    bare = [DeviceReport(f"d{i}", install=OK, finished_at=100.0) for i in range(3)]
    result = _eval(bare, baseline=Baseline())
    assert result.verdict is GateVerdict.PASS
    assert [c.passed for c in result.checks] == [True, None, None, None, None]


def test_too_little_feedback_or_no_baseline_skips_accuracy() -> None:
    few = [_good(0, feedback_correct=0, feedback_total=5)]
    check = {c.name: c for c in _eval(few).checks}["accuracy_drop"]
    assert check.passed is None and "labelled samples" in check.detail
    nobase = _eval([_good(i, feedback_correct=0) for i in range(3)], baseline=Baseline(p95_ms=10))
    assert {c.name: c for c in nobase.checks}["accuracy_drop"].passed is None


def test_disabled_threshold_and_empty_stage() -> None:
    result = _eval([_good(0, error_rate=0.9)], thresholds=replace(GATES, max_error_rate=None))
    assert result.verdict is GateVerdict.PASS
    assert _eval([]).verdict is GateVerdict.PASS


def test_error_rate_weighted_by_requests() -> None:
    reports = [_good(0, error_rate=0.5, requests=1), _good(1, error_rate=0.0, requests=99)]
    check = {c.name: c for c in _eval(reports).checks}["error_rate"]
    assert check.value == pytest.approx(0.005)


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from([OK, FAIL, PENDING]), min_size=1, max_size=40),
    pct=st.floats(min_value=0, max_value=100),
    min_finished=st.integers(min_value=1, max_value=20),
)
def test_abort_rule_property(outcomes: list[InstallOutcome], pct: float, min_finished: int) -> None:
    reports = [_good(i, install=o) for i, o in enumerate(outcomes)]
    result = _eval(reports, abort=AbortRule(pct, min_finished), now=95.0)
    finished = sum(o is not PENDING for o in outcomes)
    failed = outcomes.count(FAIL)
    tripped = finished >= min_finished and 100.0 * failed / finished > pct
    assert result.reason.startswith("abort rule") == tripped
    if tripped:
        assert result.verdict is GateVerdict.FAIL
    assert result.succeeded + result.failed + result.timed_out + result.pending == len(outcomes)


def _check_dict(
    name: str,
    value: float | None,
    threshold: float | None,
    op: str,
    passed: bool | None,
    detail: str,
) -> dict[str, object]:
    approx = None if value is None else pytest.approx(value)
    return {
        "name": name,
        "value": approx,
        "threshold": threshold,
        "op": op,
        "passed": passed,
        "detail": detail,
    }


def _passed(checks: list[dict[str, object]], succeeded: int) -> dict[str, object]:
    return {
        "verdict": "pass",
        "reason": "all gate checks passed",
        "checks": checks,
        "succeeded": succeeded,
        "failed": 0,
        "timed_out": 0,
        "pending": 0,
        "golden_batch_refusals": 0,
    }


def test_gate_result_as_the_status_api_shows_it() -> None:
    """The whole result, every field of every check: what operators read in the status."""
    result = _eval([_good(i) for i in range(4)])
    assert result.to_dict() == _passed(
        [
            _check_dict("install_success", 1.0, 0.9, ">=", True, ""),
            _check_dict("error_rate", 0.01, 0.05, "<=", True, ""),
            _check_dict("p95_ratio", 1.1, 1.5, "<=", True, "median p95 11.0 ms vs 10.0 ms"),
            _check_dict("drift_score", 0.1, 0.3, "<=", True, ""),
            _check_dict("accuracy_drop", 0.0, 0.05, "<=", True, "accuracy 0.900 vs previous 0.900"),
        ],
        succeeded=4,
    )


def test_unjudged_checks_say_why() -> None:
    """No baseline p95, a disabled drift threshold, too little feedback; devices that served no
    requests average their error rates unweighted (0.0 counts as 0.0)."""
    reports = [
        _good(0, error_rate=0.0, requests=0, p95_ms=12.0, drift_score=0.2, feedback_correct=2),
        _good(1, error_rate=0.04, requests=0, p95_ms=14.0, feedback_total=0, feedback_correct=0),
    ]
    reports[0] = replace(reports[0], feedback_total=5)
    result = _eval(reports, baseline=Baseline(), thresholds=replace(GATES, max_drift_score=None))
    assert result.to_dict() == _passed(
        [
            _check_dict("install_success", 1.0, 0.9, ">=", True, ""),
            _check_dict("error_rate", 0.02, 0.05, "<=", True, ""),
            _check_dict("p95_ratio", None, 1.5, "<=", None, "no baseline p95"),
            _check_dict("drift_score", 0.15, None, "<=", None, "disabled"),
            _check_dict("accuracy_drop", None, 0.05, "<=", None, "5 labelled samples < 20"),
        ],
        succeeded=2,
    )


def test_values_at_their_threshold_pass() -> None:
    """Error rate weighted by requests (one request), p95 ratio, drift and accuracy drop each
    exactly at the limit, with exactly ``min_feedback`` labelled samples on both sides."""
    reports = [
        _good(0, requests=1, error_rate=0.05, p95_ms=0.75, feedback_correct=18, feedback_total=20),
        _good(1, requests=0, error_rate=0.5, p95_ms=0.75, drift_score=0.3, feedback_total=0),
    ]
    reports[1] = replace(reports[1], feedback_correct=0)
    result = _eval(reports, baseline=Baseline(p95_ms=0.5, feedback_correct=19, feedback_total=20))
    assert result.to_dict() == _passed(
        [
            _check_dict("install_success", 1.0, 0.9, ">=", True, ""),
            _check_dict("error_rate", 0.05, 0.05, "<=", True, ""),
            _check_dict("p95_ratio", 1.5, 1.5, "<=", True, "median p95 0.8 ms vs 0.5 ms"),
            _check_dict("drift_score", 0.2, 0.3, "<=", True, ""),
            _check_dict(
                "accuracy_drop", 0.05, 0.05, "<=", True, "accuracy 0.900 vs previous 0.950"
            ),
        ],
        succeeded=2,
    )


def _result(verdict: str, reason: str, **counts: object) -> dict[str, object]:
    body: dict[str, object] = {"verdict": verdict, "reason": reason, "checks": []}
    body.update(succeeded=0, failed=0, timed_out=0, pending=0, golden_batch_refusals=0)
    body.update(counts)
    return body


def test_abort_rule_counts_timeouts_and_names_golden_batch_refusals() -> None:
    assert _eval([]).to_dict() == _result("pass", "stage has no devices")
    reports = [
        _good(0),
        _good(1),
        _good(2, install=FAIL, golden_refused=True),
        _good(3, install=FAIL),
        # online, with a stale offline mark: its timeout runs from the stage start
        _good(4, install=PENDING, finished_at=None, online=True, offline_since=150.0),
    ]
    assert _eval(reports).to_dict() == _result(
        "fail",
        "abort rule: 3 of 5 finished devices failed (60% > 50%)"
        " (1 refused by the device's golden-batch check)",
        succeeded=2,
        failed=2,
        timed_out=1,
        golden_batch_refusals=1,
    )


def test_unreachable_install_ratio_reports_its_check() -> None:
    reports = [
        _good(0),
        _good(1),
        _good(2, install=FAIL),
        _good(3, install=PENDING, finished_at=None),
    ]
    result = _eval(reports, now=120.0, abort=AbortRule(failure_percent=50, min_finished=100))
    assert result.to_dict() == {
        **_result(
            "fail",
            "gate failed: install_success 0.75 at best violates >= 0.9 (1 failed, 0 timed out)",
            succeeded=2,
            failed=1,
            pending=1,
        ),
        "checks": [_check_dict("install_success", 0.5, 0.9, ">=", False, "")],
    }


def test_window_and_breach_reasons() -> None:
    unfinished = [_good(i, finished_at=None) for i in range(2)]  # window from the stage start
    waiting = _eval(unfinished, now=110.0)
    assert waiting.reason == "gate window open for 10 s more"
    assert len(waiting.checks) == 5  # every check is shown while waiting
    breaching = [_good(i, error_rate=0.2, p95_ms=20.0) for i in range(2)]
    assert _eval(breaching).reason == (
        "gate failed: error_rate 0.2 violates <= 0.05; "
        "p95_ratio 2 violates <= 1.5 (median p95 20.0 ms vs 10.0 ms)"
    )


def test_no_data_and_no_baseline_accuracy_are_named() -> None:
    reports = [
        _good(i, p95_ms=None, drift_score=None, feedback_correct=10, feedback_total=10)
        for i in range(2)
    ]
    few_baseline = Baseline(p95_ms=10.0, feedback_correct=5, feedback_total=10)
    checks = {c.name: c for c in _eval(reports, baseline=few_baseline).checks}
    assert (checks["p95_ratio"].value, checks["p95_ratio"].detail) == (None, "no data")
    assert (checks["drift_score"].value, checks["drift_score"].detail) == (None, "no data")
    assert checks["accuracy_drop"].value is None
    assert checks["accuracy_drop"].detail == "no baseline accuracy"
