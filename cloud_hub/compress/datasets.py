"""The hub-held calibration and evaluation sets, per registered model.

Deterministic (seeded) splits of the data in ``shared.data`` — nothing is downloaded:

* ``digits-cnn``: scikit-learn's digits, 80 % calibration / 20 % evaluation;
* ``edge-cnn``: the same digits upscaled 8x8 -> 32x32 (nearest) and repeated over 3 channels;
* ``sensor-mlp``: the seeded sensor generator (problem seed 0), separate sample seeds.

A caller with its own data passes ``LabelledSet``s (or ``.npz`` files to the CLI) instead.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cloud_hub.compress.calibration import LabelledSet
from cloud_hub.errors import CompressionError
from shared.data import generate_sensor_data, load_digits_dataset

__all__ = ["digits_as_edge_images", "hub_datasets"]


def digits_as_edge_images(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """(n, 1, 8, 8) digits -> (n, 3, 32, 32) images for ``edge-cnn``."""
    up = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)
    return np.ascontiguousarray(np.repeat(up, 3, axis=1), dtype=np.float32)


def _split(
    x: NDArray[np.float32], y: NDArray[np.int64], seed: int
) -> tuple[LabelledSet, LabelledSet]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.8)
    calib, held = order[:cut], order[cut:]
    return (
        LabelledSet.of(x[calib], y[calib], role="calibration"),
        LabelledSet.of(x[held], y[held], role="evaluation"),
    )


def hub_datasets(model_name: str, *, seed: int = 0) -> tuple[LabelledSet, LabelledSet]:
    """``(calibration, evaluation)`` for a registered model."""
    if model_name in ("digits-cnn", "edge-cnn"):
        x, y = load_digits_dataset()
        if model_name == "edge-cnn":
            x = digits_as_edge_images(x)
        return _split(x, y, seed)
    if model_name == "sensor-mlp":
        xc, yc = generate_sensor_data(2000, seed=0, sample_seed=1000 + seed)
        xe, ye = generate_sensor_data(1000, seed=0, sample_seed=2000 + seed)
        return (
            LabelledSet.of(xc, yc, role="calibration"),
            LabelledSet.of(xe, ye, role="evaluation"),
        )
    raise CompressionError(f"no hub-held data for model {model_name!r}; pass --calib/--eval")
