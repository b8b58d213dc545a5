"""Stage gates: promote, wait or fail, from what the stage's devices report (pure).

:func:`evaluate_gate` takes one :class:`DeviceReport` per stage device (install outcome,
online state, the new version's inference error rate, p95 latency, drift score and labelled
feedback) and the previous version's :class:`Baseline`, and returns a :class:`GateResult`
with every metric against its threshold and one readable reason.

Order of decisions:

1. a pending device offline for longer than the offline timeout (or silent that long since
   the stage started) counts as failed; before that it is only waited for (it is retried
   when it returns);
2. the abort rule (more than ``failure_percent`` failed after ``min_finished`` finished)
   fails the gate at once, without waiting for the window; so does an install success
   ratio that cannot be met any more even if every pending device succeeded;
3. otherwise the gate waits until every device finished and the window (which starts when
   the last device finished installing) has passed;
4. then each metric is checked; any breach fails the gate, else it passes.

A metric without data (no telemetry, too little feedback, no baseline) is reported as
``passed=None`` and does not fail the gate.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud_hub.rollout.config import AbortRule, GateThresholds

__all__ = [
    "Baseline",
    "DeviceReport",
    "GateResult",
    "GateVerdict",
    "InstallOutcome",
    "MetricCheck",
    "evaluate_gate",
]


class InstallOutcome(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class GateVerdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class DeviceReport:
    """What one stage device reported for the new version since it was deployed to."""

    device_id: str
    install: InstallOutcome = InstallOutcome.PENDING
    finished_at: float | None = None
    online: bool = True
    offline_since: float | None = None
    requests: int = 0
    error_rate: float | None = None
    p95_ms: float | None = None
    drift_score: float | None = None
    feedback_correct: int = 0
    feedback_total: int = 0
    golden_refused: bool = False  # the device's golden-batch check refused the install


@dataclass(frozen=True)
class Baseline:
    """The previous version's figures the new one is compared with."""

    p95_ms: float | None = None
    feedback_correct: int = 0
    feedback_total: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None


@dataclass(frozen=True)
class MetricCheck:
    """One metric against its threshold; ``passed`` is ``None`` when it could not be judged."""

    name: str
    value: float | None
    threshold: float | None
    op: str  # ">=" or "<="
    passed: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "op": self.op,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GateResult:
    verdict: GateVerdict
    reason: str
    checks: tuple[MetricCheck, ...] = ()
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    pending: int = 0
    golden_batch_refusals: int = 0  # failed installs the device's golden batch refused

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "pending": self.pending,
            "golden_batch_refusals": self.golden_batch_refusals,
        }


def _timed_out(r: DeviceReport, *, now: float, stage_started: float, timeout: float) -> bool:
    if r.install is not InstallOutcome.PENDING:
        return False
    since = r.offline_since if (not r.online and r.offline_since is not None) else stage_started
    return now - max(since, stage_started) >= timeout


def _check(
    name: str, value: float | None, threshold: float | None, op: str, detail: str = ""
) -> MetricCheck:
    if threshold is None:
        return MetricCheck(name, value, None, op, None, "disabled")
    if value is None:
        return MetricCheck(name, None, threshold, op, None, detail or "no data")
    ok = value >= threshold if op == ">=" else value <= threshold
    return MetricCheck(name, value, threshold, op, ok, detail)


def _metric_checks(
    reports: Sequence[DeviceReport], succeeded: int, baseline: Baseline, g: GateThresholds
) -> list[MetricCheck]:
    total = len(reports)
    ok = [r for r in reports if r.install is InstallOutcome.SUCCEEDED]
    checks = [_check("install_success", succeeded / total, g.min_install_success, ">=")]

    rated = [r for r in ok if r.error_rate is not None]
    error_rate: float | None = None
    if rated:
        weight = sum(r.requests for r in rated)
        if weight > 0:
            error_rate = sum((r.error_rate or 0.0) * r.requests for r in rated) / weight
        else:
            error_rate = statistics.fmean(r.error_rate or 0.0 for r in rated)
    checks.append(_check("error_rate", error_rate, g.max_error_rate, "<="))

    p95s = [r.p95_ms for r in ok if r.p95_ms is not None]
    ratio: float | None = None
    detail = ""
    if p95s and baseline.p95_ms and baseline.p95_ms > 0:
        ratio = statistics.median(p95s) / baseline.p95_ms
        detail = f"median p95 {statistics.median(p95s):.1f} ms vs {baseline.p95_ms:.1f} ms"
    elif p95s:
        detail = "no baseline p95"
    checks.append(_check("p95_ratio", ratio, g.max_p95_ratio, "<=", detail))

    drifts = [r.drift_score for r in ok if r.drift_score is not None]
    checks.append(
        _check("drift_score", statistics.fmean(drifts) if drifts else None, g.max_drift_score, "<=")
    )

    correct = sum(r.feedback_correct for r in ok)
    labelled = sum(r.feedback_total for r in ok)
    drop: float | None = None
    base_acc = baseline.accuracy
    if labelled < g.min_feedback:
        detail = f"{labelled} labelled samples < {g.min_feedback}"
    elif base_acc is None or baseline.feedback_total < g.min_feedback:
        detail = "no baseline accuracy"
    else:
        drop = base_acc - correct / labelled
        detail = f"accuracy {correct / labelled:.3f} vs previous {base_acc:.3f}"
    checks.append(_check("accuracy_drop", drop, g.max_accuracy_drop, "<=", detail))
    return checks


def evaluate_gate(
    reports: Sequence[DeviceReport],
    baseline: Baseline,
    *,
    thresholds: GateThresholds,
    abort: AbortRule,
    stage_started: float,
    now: float,
    window_s: float,
    offline_timeout_s: float,
) -> GateResult:
    """Judge one stage. Pure: the same inputs always give the same result."""
    if not reports:
        return GateResult(GateVerdict.PASS, "stage has no devices")
    succeeded = sum(r.install is InstallOutcome.SUCCEEDED for r in reports)
    failed = sum(r.install is InstallOutcome.FAILED for r in reports)
    timed_out = sum(
        _timed_out(r, now=now, stage_started=stage_started, timeout=offline_timeout_s)
        for r in reports
    )
    pending = len(reports) - succeeded - failed - timed_out
    golden = sum(r.golden_refused and r.install is InstallOutcome.FAILED for r in reports)

    def result(
        verdict: GateVerdict, reason: str, checks: tuple[MetricCheck, ...] = ()
    ) -> GateResult:
        if golden and verdict is GateVerdict.FAIL:
            reason += f" ({golden} refused by the device's golden-batch check)"
        return GateResult(verdict, reason, checks, succeeded, failed, timed_out, pending, golden)

    finished = succeeded + failed + timed_out
    if finished and abort.tripped(finished, failed + timed_out):
        pct = 100.0 * (failed + timed_out) / finished
        return result(
            GateVerdict.FAIL,
            f"abort rule: {failed + timed_out} of {finished} finished devices failed "
            f"({pct:.0f}% > {abort.failure_percent:g}%)",
        )
    need = thresholds.min_install_success
    if need is not None and (succeeded + pending) / len(reports) < need:
        # even if every pending device succeeded the ratio stays too low: no need to wait
        best = (succeeded + pending) / len(reports)
        check = _check("install_success", succeeded / len(reports), need, ">=")
        return result(
            GateVerdict.FAIL,
            f"gate failed: install_success {best:.4g} at best violates >= {need:g} "
            f"({failed} failed, {timed_out} timed out)",
            (check,),
        )
    if pending:
        return result(
            GateVerdict.WAIT,
            f"waiting for {pending} device(s) to finish",
        )
    last_finish = max(
        (r.finished_at for r in reports if r.finished_at is not None), default=stage_started
    )
    window_end = max(last_finish, stage_started) + window_s
    checks = tuple(_metric_checks(reports, succeeded, baseline, thresholds))
    if now < window_end:
        return result(
            GateVerdict.WAIT,
            f"gate window open for {window_end - now:.0f} s more",
            checks,
        )
    breaches = [c for c in checks if c.passed is False]
    if breaches:
        reason = "; ".join(
            f"{c.name} {c.value:.4g} violates {c.op} {c.threshold:g}"
            + (f" ({c.detail})" if c.detail else "")
            for c in breaches
            if c.value is not None and c.threshold is not None
        )
        return result(
            GateVerdict.FAIL,
            f"gate failed: {reason}",
            checks,
        )
    return result(
        GateVerdict.PASS,
        "all gate checks passed",
        checks,
    )
