"""Windowed drift detection of live inputs against a bundle's reference statistics.

``DriftDetector.observe(x, confidences)`` buffers the drift features of each prediction; every
``window_size`` samples it compares the window with the reference (PSI and KS per feature)
and returns a ``DriftWindowReport``. A Page-Hinkley test on the top-class confidence runs per sample
and its alarms are attached to the window in which they fired. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from edge_agent.drift.page_hinkley import PageHinkley, PageHinkleyConfig
from edge_agent.drift.statistics import ks_critical_value, ks_statistic, psi, psi_noise_floor
from edge_agent.errors import AgentConfigError, InferenceInputError
from shared import messages
from shared.drift_reference import ReferenceStats, feature_matrix

__all__ = ["ConfidenceDrift", "DriftConfig", "DriftDetector", "DriftWindowReport", "FeatureDrift"]


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift detector; defaults give < 1% false alarms per window."""

    window_size: int = 500
    psi_threshold: float = 0.25  # conventional "major shift"; raised for small windows
    ks_alpha: float = 0.001  # family-wise per window (Bonferroni over features)
    confidence: PageHinkleyConfig = field(default_factory=PageHinkleyConfig)

    def __post_init__(self) -> None:
        if not 50 <= self.window_size <= 1_000_000:
            raise AgentConfigError("drift window_size must be in [50, 1e6]")
        if not 0.0 < self.psi_threshold <= 10.0:
            raise AgentConfigError("drift psi_threshold must be in (0, 10]")
        if not 0.0 < self.ks_alpha < 0.5:
            raise AgentConfigError("drift ks_alpha must be in (0, 0.5)")


@dataclass(frozen=True)
class FeatureDrift:
    """Scores of one feature over one window."""

    name: str
    psi: float
    ks: float
    ks_critical: float
    drifted: bool
    psi_critical: float = 0.25


@dataclass(frozen=True)
class ConfidenceDrift:
    """The confidence detector's state at the end of a window."""

    mean: float
    page_hinkley: float
    alarm: bool


@dataclass(frozen=True)
class DriftWindowReport:
    """The outcome of one window."""

    window_index: int
    n_samples: int
    drifted: bool
    features: tuple[FeatureDrift, ...]
    confidence: ConfidenceDrift | None
    model_version: int | None = None

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    @property
    def max_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)

    def to_message(self, *, device_id: str, model_name: str) -> messages.DriftReport:
        """The wire message the agent publishes on its ``drift`` topic."""
        return messages.DriftReport(
            device_id=device_id,
            report_id=messages.new_id(),
            model_name=model_name,
            model_version=self.model_version or 0,
            window_size=self.n_samples,
            features={
                f.name: messages.FeatureDrift(
                    psi=f.psi,
                    ks=f.ks,
                    extra={
                        "psi_critical": f.psi_critical,
                        "ks_critical": f.ks_critical,
                        "drifted": f.drifted,
                    },
                )
                for f in self.features
            },
            drift_score=self.max_psi,
            drifted=self.drifted,
            confidence_drift=self.confidence is not None and self.confidence.alarm,
            extra={"window_index": self.window_index, **self._confidence_extra()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_index": self.window_index,
            "n_samples": self.n_samples,
            "drifted": self.drifted,
            "model_version": self.model_version,
            "max_psi": self.max_psi,
            "drifted_features": list(self.drifted_features),
            "features": {
                f.name: {
                    "psi": f.psi,
                    "ks": f.ks,
                    "psi_critical": f.psi_critical,
                    "ks_critical": f.ks_critical,
                }
                for f in self.features
            },
            "confidence": None
            if self.confidence is None
            else {
                "mean": self.confidence.mean,
                "page_hinkley": self.confidence.page_hinkley,
                "alarm": self.confidence.alarm,
            },
        }

    def _confidence_extra(self) -> dict[str, float]:
        if self.confidence is None:
            return {}
        return {
            "confidence_mean": self.confidence.mean,
            "page_hinkley": self.confidence.page_hinkley,
        }


class DriftDetector:
    """Compares fixed-size windows of live inputs with the reference (one caller at a time)."""

    def __init__(
        self,
        reference: ReferenceStats,
        config: DriftConfig | None = None,
        *,
        model_version: int | None = None,
    ) -> None:
        self.reference = reference
        self.config = config or DriftConfig()
        self.model_version = model_version
        d = len(reference.features)
        self._buf = np.empty((self.config.window_size, d), dtype=np.float64)
        self._fill = 0
        self._conf_sum = 0.0
        self._conf_n = 0
        self._alarm = False
        self._window_index = 0
        per_feature_alpha = self.config.ks_alpha / d
        sketch = min(len(f.quantiles) for f in reference.features)
        self._ks_crit = ks_critical_value(
            self.config.window_size, reference.n_samples, per_feature_alpha, sketch
        )
        # per feature: max(configured threshold, what noise alone reaches at ks_alpha / d)
        self._psi_crit = [
            max(
                self.config.psi_threshold,
                psi_noise_floor(
                    self.config.window_size,
                    reference.n_samples,
                    len(f.bin_fractions),
                    per_feature_alpha,
                ),
            )
            for f in reference.features
        ]
        base = reference.confidence
        self._ph = PageHinkley(
            self.config.confidence,
            baseline_mean=None if base is None else base.mean,
            baseline_std=None if base is None else base.std,
        )

    def observe(
        self, x: ArrayLike, confidences: ArrayLike | None = None
    ) -> list[DriftWindowReport]:
        """Add a batch ``(n, *input_shape)``; returns the reports of windows it completed."""
        arr = np.asarray(x)
        if tuple(arr.shape[1:]) != self.reference.input_shape:
            raise InferenceInputError(
                f"drift input shape {arr.shape[1:]} != reference {self.reference.input_shape}"
            )
        feats = feature_matrix(arr)
        conf = None if confidences is None else np.asarray(confidences, np.float64).ravel()
        reports: list[DriftWindowReport] = []
        start = 0
        while start < feats.shape[0]:
            take = min(self.config.window_size - self._fill, feats.shape[0] - start)
            self._buf[self._fill : self._fill + take] = feats[start : start + take]
            if conf is not None:
                part = conf[start : start + take]
                self._conf_sum += float(part.sum())
                self._conf_n += part.size
                self._alarm = self._ph.update(part) or self._alarm
            self._fill += take
            start += take
            if self._fill == self.config.window_size:
                reports.append(self._close_window())
        return reports

    def _close_window(self) -> DriftWindowReport:
        window = self._buf[: self._fill]
        features = []
        for i, ref in enumerate(self.reference.features):
            col = window[:, i]
            p = psi(ref, col)
            k = ks_statistic(ref, col)
            drifted = p > self._psi_crit[i] or k > self._ks_crit
            features.append(FeatureDrift(ref.name, p, k, self._ks_crit, drifted, self._psi_crit[i]))
        confidence = None
        if self._conf_n:
            confidence = ConfidenceDrift(
                mean=self._conf_sum / self._conf_n,
                page_hinkley=self._ph.statistic,
                alarm=self._alarm,
            )
        report = DriftWindowReport(
            window_index=self._window_index,
            n_samples=self._fill,
            drifted=any(f.drifted for f in features) or self._alarm,
            features=tuple(features),
            confidence=confidence,
            model_version=self.model_version,
        )
        self._window_index += 1
        self._fill = 0
        self._conf_sum = 0.0
        self._conf_n = 0
        self._alarm = False
        return report
