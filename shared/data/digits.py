"""scikit-learn's bundled 8x8 digits, shaped for the digits CNN."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def load_digits_dataset() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Return ``(x, y)`` with ``x`` of shape (N, 1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits  # hub/training dependency only

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return x, y
