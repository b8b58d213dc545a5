"""Availability traces for a virtual fleet: who is online when, and how fast each device is.

Pure and seeded: each device alternates online and offline sessions with exponential
lengths whose means give the requested online fraction (``mean_online_s`` online, then
``mean_online_s * (1 - f) / f`` offline on average), starts online with probability ``f``,
and has a compute speed drawn log-normally around 1 (``speed_sigma``). Times are seconds
on a virtual clock.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AvailabilityTrace", "TraceSpec"]

_MAX_DEVICES = 100_000


@dataclass(frozen=True)
class TraceSpec:
    """How the fleet behaves (all times in virtual seconds)."""

    devices: int = 100
    online_fraction: float = 0.3
    mean_online_s: float = 1_800.0
    speed_sigma: float = 0.5
    horizon_s: float = 7 * 24 * 3_600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= _MAX_DEVICES:
            raise ValueError(f"devices must be in [1, {_MAX_DEVICES}], got {self.devices}")
        if not 0 < self.online_fraction <= 1:
            raise ValueError(f"online_fraction must be in (0, 1], got {self.online_fraction}")
        if not (self.mean_online_s > 0 and self.horizon_s > 0 and self.speed_sigma >= 0):
            raise ValueError("mean_online_s and horizon_s must be > 0, speed_sigma >= 0")


class AvailabilityTrace:
    """Online sessions ``[start, end)`` per device, and per-device compute speeds."""

    def __init__(self, spec: TraceSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        f = spec.online_fraction
        mean_off = spec.mean_online_s * (1 - f) / f
        self.speeds = np.exp(rng.normal(0.0, spec.speed_sigma, spec.devices))
        self._starts: list[list[float]] = []
        self._ends: list[list[float]] = []
        for _ in range(spec.devices):
            starts, ends = [], []
            t = 0.0 if rng.random() < f else float(rng.exponential(mean_off)) if mean_off else 0.0
            while t < spec.horizon_s:
                end = t + float(rng.exponential(spec.mean_online_s))
                starts.append(t)
                ends.append(end)
                t = end + (float(rng.exponential(mean_off)) if mean_off > 0 else 0.0)
            self._starts.append(starts)
            self._ends.append(ends)

    def online(self, device: int, t: float) -> bool:
        i = bisect.bisect_right(self._starts[device], t) - 1
        return i >= 0 and t < self._ends[device][i]

    def online_through(self, device: int, start: float, end: float) -> bool:
        """Online for the whole of ``[start, end]`` (one session)."""
        i = bisect.bisect_right(self._starts[device], start) - 1
        return i >= 0 and end < self._ends[device][i]

    def next_online(self, device: int, t: float) -> float:
        """``t`` if online at ``t``, else the start of the next session (inf if none)."""
        if self.online(device, t):
            return t
        i = bisect.bisect_right(self._starts[device], t)
        return self._starts[device][i] if i < len(self._starts[device]) else math.inf

    def measured_online_fraction(self) -> float:
        horizon = self.spec.horizon_s
        total = sum(
            min(e, horizon) - s
            for starts, ends in zip(self._starts, self._ends, strict=True)
            for s, e in zip(starts, ends, strict=True)
        )
        return total / (horizon * self.spec.devices)
