"""Which devices may take an asynchronous training order now, and why not (pure; no I/O).

The hub hands a device a ``train.order`` only when it is *eligible*:

============================  =============================================================
rule (checked in this order)  not eligible when
============================  =============================================================
``offline``                   the registry has it offline
``no recent telemetry``       its newest telemetry is older than ``telemetry_max_age_s``
``serving``                   its inference requests per second exceed ``max_serving_rps``
``too hot``                   its hottest sensor (host or GPU) is above ``max_temperature_c``
``over power limit``          its power draw is above ``max_power_w`` (when set)
``too few new samples``       fewer than ``min_new_samples`` labelled samples arrived since
                              its last contribution (or it does not report them)
============================  =============================================================

:func:`assess` judges a fleet, :meth:`EligibilityReport.summary` says it in one line
("3 devices not eligible: 2 too hot, 1 serving"; each device counted under the first rule
it fails), :meth:`EligibilityReport.to_dict` is what runs record and the dashboard shows.
A reading a device does not report (no temperature sensor, no serving counter) is not held
against it; labelled samples are, since without them the hub cannot tell that training
would learn anything new.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from cloud_hub.errors import HubConfigError

__all__ = [
    "RULES",
    "DeviceCondition",
    "EligibilityLimits",
    "EligibilityReport",
    "Ineligible",
    "Verdict",
    "assess",
    "judge",
    "serving_rate",
]


class Ineligible(StrEnum):
    OFFLINE = "offline"
    NO_TELEMETRY = "no recent telemetry"
    SERVING = "serving"
    TOO_HOT = "too hot"
    OVER_POWER = "over power limit"
    FEW_SAMPLES = "too few new samples"


@dataclass(frozen=True)
class EligibilityLimits:
    """Thresholds of the rules (config table ``[loop.async_eligibility]``)."""

    max_temperature_c: float = 80.0
    max_power_w: float | None = None  # None: power is not checked
    max_serving_rps: float = 1.0
    min_new_samples: int = 20
    telemetry_max_age_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.max_temperature_c <= 150:
            raise HubConfigError("max_temperature_c must be in (0, 150]")
        if self.max_power_w is not None and not 0 < self.max_power_w <= 10_000:
            raise HubConfigError("max_power_w must be in (0, 10000] or unset")
        if not 0 <= self.max_serving_rps <= 1e6:
            raise HubConfigError("max_serving_rps must be in [0, 1e6]")
        if not 0 <= self.min_new_samples <= 10_000_000:
            raise HubConfigError("min_new_samples must be in [0, 10000000]")
        if not 10 <= self.telemetry_max_age_s <= 7 * 86_400:
            raise HubConfigError("telemetry_max_age_s must be in [10 s, 7 days]")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> EligibilityLimits:
        """From a config table; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise HubConfigError(f"unknown eligibility settings {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(table))
        except TypeError as exc:
            raise HubConfigError(f"bad eligibility settings: {exc}") from exc


@dataclass(frozen=True)
class DeviceCondition:
    """What the registry knows of one device now (``None``: not reported)."""

    device: str
    online: bool
    telemetry_age_s: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    serving_rps: float | None = None
    labelled_samples: float | None = None
    labelled_at_last_order: float | None = None  # None: it never trained

    @property
    def new_samples(self) -> float | None:
        if self.labelled_samples is None:
            return None
        return max(0.0, self.labelled_samples - (self.labelled_at_last_order or 0.0))


def _above(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value > limit


def _few_samples(c: DeviceCondition, lim: EligibilityLimits) -> bool:
    new = c.new_samples
    return lim.min_new_samples > 0 and (new is None or new < lim.min_new_samples)


#: (reason, fails) in the order they are checked; the first failed rule is the main reason
RULES: tuple[tuple[Ineligible, Callable[[DeviceCondition, EligibilityLimits], bool]], ...] = (
    (Ineligible.OFFLINE, lambda c, lim: not c.online),
    (
        Ineligible.NO_TELEMETRY,
        lambda c, lim: c.telemetry_age_s is None or c.telemetry_age_s > lim.telemetry_max_age_s,
    ),
    (Ineligible.SERVING, lambda c, lim: _above(c.serving_rps, lim.max_serving_rps)),
    (Ineligible.TOO_HOT, lambda c, lim: _above(c.temperature_c, lim.max_temperature_c)),
    (Ineligible.OVER_POWER, lambda c, lim: _above(c.power_w, lim.max_power_w)),
    (Ineligible.FEW_SAMPLES, _few_samples),
)


@dataclass(frozen=True)
class Verdict:
    device: str
    reasons: tuple[Ineligible, ...]  # every failed rule, in rule order; empty: eligible
    labelled_samples: float | None = None

    @property
    def eligible(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> Ineligible | None:
        return self.reasons[0] if self.reasons else None


def judge(condition: DeviceCondition, limits: EligibilityLimits) -> Verdict:
    failed = tuple(reason for reason, fails in RULES if fails(condition, limits))
    return Verdict(condition.device, failed, condition.labelled_samples)


@dataclass(frozen=True)
class EligibilityReport:
    verdicts: tuple[Verdict, ...]

    @property
    def eligible(self) -> list[str]:
        return [v.device for v in self.verdicts if v.eligible]

    def counts(self) -> dict[str, int]:
        """Devices not eligible per main reason, in rule order."""
        out: dict[str, int] = {}
        for reason, _ in RULES:
            n = sum(1 for v in self.verdicts if v.reason is reason)
            if n:
                out[reason.value] = n
        return out

    def summary(self) -> str:
        counts = self.counts()
        total = sum(counts.values())
        if not total:
            return f"all {len(self.verdicts)} devices eligible"
        noun = "device" if total == 1 else "devices"
        parts = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        return f"{total} {noun} not eligible: {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": len(self.verdicts),
            "eligible": len(self.eligible),
            "not_eligible": self.counts(),
            "summary": self.summary(),
            # only the devices left out, so a large fleet's record stays small
            "devices": {v.device: [r.value for r in v.reasons] for v in self.verdicts if v.reasons},
        }


def assess(conditions: Sequence[DeviceCondition], limits: EligibilityLimits) -> EligibilityReport:
    return EligibilityReport(tuple(judge(c, limits) for c in conditions))


def serving_rate(points: Sequence[tuple[float, float]]) -> float | None:
    """Requests per second from ``(ts, request_count)`` readings of a cumulative counter.

    Uses the newest stretch without a counter reset (an agent restart starts again at 0);
    ``None`` with fewer than two readings there.
    """
    ordered = sorted(p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]))
    start = 0
    for i in range(1, len(ordered)):
        if ordered[i][1] < ordered[i - 1][1]:
            start = i
    stretch = ordered[start:]
    if len(stretch) < 2 or stretch[-1][0] <= stretch[0][0]:
        return None
    return (stretch[-1][1] - stretch[0][1]) / (stretch[-1][0] - stretch[0][0])
