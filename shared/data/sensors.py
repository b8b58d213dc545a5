"""A seeded generator of multivariate sensor data with labels and controllable drift.

Classes model machine health (0 = healthy, 1 = wearing, 2 = failing). Each class has its own
mean vector over correlated features; drift shifts and scales selected features, which is
what a sensor ageing or a new site looks like to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

NUM_FEATURES = 12
NUM_CLASSES = 3


@dataclass(frozen=True)
class SensorDriftSpec:
    """Covariate shift applied to the generated features."""

    shift: float = 0.0  # added to the drifted features, in units of their std
    scale: float = 1.0  # multiplies the drifted features' spread
    features: tuple[int, ...] = field(default=(0, 1, 2, 3))


def _class_means(rng: np.random.Generator) -> NDArray[np.float64]:
    return rng.normal(0.0, 1.5, size=(NUM_CLASSES, NUM_FEATURES))


def generate_sensor_data(
    n: int,
    *,
    seed: int = 0,
    drift: SensorDriftSpec | None = None,
    class_weights: tuple[float, ...] | None = None,
    sample_seed: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Generate ``n`` labelled samples.

    ``seed`` fixes the problem (class means, correlation); ``sample_seed`` (default: ``seed``)
    draws the samples, so two partitions of the same problem use the same ``seed`` and
    different ``sample_seed``.
    """
    problem = np.random.default_rng(seed)
    means = _class_means(problem)
    mixing = np.eye(NUM_FEATURES) + 0.3 * problem.normal(size=(NUM_FEATURES, NUM_FEATURES))
    rng = np.random.default_rng(seed if sample_seed is None else sample_seed)
    probs = (
        np.full(NUM_CLASSES, 1.0 / NUM_CLASSES)
        if class_weights is None
        else np.asarray(class_weights, dtype=np.float64)
    )
    probs = probs / probs.sum()
    y = rng.choice(NUM_CLASSES, size=n, p=probs)
    noise = rng.normal(size=(n, NUM_FEATURES)) @ mixing.T
    x = means[y] + noise
    if drift is not None:
        idx = list(drift.features)
        x[:, idx] = x[:, idx] * drift.scale + drift.shift
    return x.astype(np.float32), y.astype(np.int64)
