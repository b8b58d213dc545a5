"""Pure two-sample drift statistics over one window of live feature values.

PSI (population stability index) over the reference's quantile bins, and the Kolmogorov-Smirnov
statistic against the reference's quantile sketch. Values in, numbers out: no state, no I/O.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from shared.drift_reference import FeatureStats

__all__ = ["ks_critical_value", "ks_statistic", "psi", "psi_noise_floor"]

_FRACTION_FLOOR = 1e-4


def psi(ref: FeatureStats, values: NDArray[np.float64]) -> float:
    """Population stability index of ``values`` against the reference bins.

    ``sum((live - ref) * ln(live / ref))`` over bins; 0 for identical distributions, > 0.25 is
    conventionally a major shift.
    """
    edges = np.asarray(ref.bin_edges)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    live = np.maximum(counts / max(values.size, 1), _FRACTION_FLOOR)
    expected = ref.psi_fractions()
    return float(np.sum((live - expected) * np.log(live / expected)))


def ks_statistic(ref: FeatureStats, values: NDArray[np.float64]) -> float:
    """Largest distance between the live empirical CDF and the reference CDF.

    The reference CDF is the piecewise-linear interpolation of its quantile sketch.
    """
    n = values.size
    if n == 0:
        return 0.0
    quantiles = np.asarray(ref.quantiles)
    probs = np.linspace(0.0, 1.0, quantiles.size)
    live = np.sort(values)
    cdf = np.interp(live, quantiles, probs, left=0.0, right=1.0)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def ks_critical_value(n: int, n_ref: int, alpha: float, sketch_points: int) -> float:
    """Two-sample KS rejection threshold at level ``alpha`` (asymptotic), plus sketch error.

    The quantile sketch approximates the reference CDF to within ``1 / (points - 1)``, added
    so that the approximation cannot turn into false alarms.
    """
    c_alpha = math.sqrt(-0.5 * math.log(alpha / 2.0))
    return c_alpha * math.sqrt((n + n_ref) / (n * n_ref)) + 1.0 / (sketch_points - 1)


def psi_noise_floor(n: int, n_ref: int, bins: int, alpha: float) -> float:
    """The PSI that sampling noise alone exceeds with probability ``alpha``.

    Between two samples of one distribution, PSI is approximately
    ``(1/n + 1/n_ref) * chi2(bins - 1)``; the quantile uses the Wilson-Hilferty
    approximation. Small windows need a higher PSI threshold than the conventional 0.25.
    """
    k = max(bins - 1, 1)
    z = NormalDist().inv_cdf(1.0 - alpha)
    h = 2.0 / (9.0 * k)
    chi2 = k * (1.0 - h + z * math.sqrt(h)) ** 3
    return chi2 * (1.0 / n + 1.0 / n_ref)
