"""Page-Hinkley test for a drop in the model's prediction confidence (streaming, O(1)/sample).

Values are standardised against a baseline (the bundle's reference confidence, else the mean
and std of the first ``warmup`` values), clipped to ``+-clip`` so that a rare very unsure
prediction cannot trip the alarm alone, then accumulated as
``m_t = Σ (z_i + delta)``; an alarm fires when ``max(m) - m_t > threshold``. Both ``delta``
and ``threshold`` are therefore in units of baseline standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from shared.errors import ConfigError

__all__ = ["PageHinkley", "PageHinkleyConfig"]


@dataclass(frozen=True)
class PageHinkleyConfig:
    """Sensitivity of the confidence detector (defaults: < 1 false alarm per 10^4 windows)."""

    delta: float = 0.1  # tolerated drop per sample, in baseline stds
    threshold: float = 50.0  # alarm level of the cumulative drop, in baseline stds
    warmup: int = 200  # samples used to estimate the baseline when none is shipped
    clip: float = 3.0

    def __post_init__(self) -> None:
        if not (0.0 < self.delta <= 10.0 and 0.0 < self.threshold <= 1e6):
            raise ConfigError("Page-Hinkley delta must be in (0, 10], threshold in (0, 1e6]")
        if not (10 <= self.warmup <= 1_000_000 and 0.5 <= self.clip <= 100.0):
            raise ConfigError("Page-Hinkley warmup must be in [10, 1e6], clip in [0.5, 100]")


class PageHinkley:
    """Detects a sustained decrease of a stream (not thread-safe: one caller at a time)."""

    def __init__(
        self,
        config: PageHinkleyConfig | None = None,
        *,
        baseline_mean: float | None = None,
        baseline_std: float | None = None,
    ) -> None:
        self.config = config or PageHinkleyConfig()
        self._mean = baseline_mean
        self._std = None if baseline_std is None else max(baseline_std, 1e-6)
        self._warm: list[float] = []
        self._cum = 0.0
        self._max = 0.0

    @property
    def statistic(self) -> float:
        """Current cumulative drop ``max(m) - m`` (in baseline stds)."""
        return self._max - self._cum

    def reset(self) -> None:
        """Start accumulating afresh (after an alarm); the baseline is kept."""
        self._cum = 0.0
        self._max = 0.0

    def update(self, values: NDArray[np.float64]) -> bool:
        """Feed values in order; True if an alarm fired (the statistic then restarts)."""
        vals = np.asarray(values, dtype=np.float64).ravel()
        if self._mean is None or self._std is None:
            need = self.config.warmup - len(self._warm)
            self._warm.extend(float(v) for v in vals[:need])
            vals = vals[need:]
            if len(self._warm) < self.config.warmup:
                return False
            self._mean = float(np.mean(self._warm))
            self._std = max(float(np.std(self._warm)), 1e-6)
        if vals.size == 0:
            return False
        z = np.clip((vals - self._mean) / self._std, -self.config.clip, self.config.clip)
        path = self._cum + np.cumsum(z + self.config.delta)
        running_max = np.maximum.accumulate(np.concatenate(([self._max], path)))[1:]
        drop = running_max - path
        hits = np.flatnonzero(drop > self.config.threshold)
        if hits.size:
            # restart right after the first alarm and replay the rest of the batch
            first = int(hits[0])
            self.reset()
            self.update(vals[first + 1 :])
            return True
        self._cum = float(path[-1])
        self._max = float(running_max[-1])
        if not math.isfinite(self._cum):
            self.reset()
        return False
