"""Choose the golden batch for an artifact from the hub's own evaluation of it (pure).

The expected logits are the artifact's as the hub measured them (the target's kernels where
the hub runs them, exact Q/DQ numerics otherwise). The tolerance allows a few output
quantization steps (``logit_tolerance`` of the batch's logit range: kernels may round an
intermediate value differently) -- far below what int16 saturation or a mis-quantized
weight does. Samples are taken, in data order, among those whose top-1 margin exceeds twice
that tolerance, so a device within tolerance cannot flip a top-1: agreement must be total.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import CompressionError
from shared.golden import MAX_GOLDEN_BYTES, GoldenBatch, GoldenTolerance, make_golden_batch

__all__ = ["GoldenConfig", "select_golden_batch"]


@dataclass(frozen=True)
class GoldenConfig:
    """How many samples (bounded by :data:`MAX_GOLDEN_BYTES`) and how much logit error."""

    max_samples: int = 16
    logit_tolerance: float = 0.03  # fraction of the golden batch's logit range
    min_abs_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not 1 <= self.max_samples <= 64 or not 0 < self.logit_tolerance < 1:
            raise CompressionError(
                "golden max_samples must be in [1, 64], logit_tolerance in (0, 1)"
            )


def _margins(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    top2 = np.sort(logits.astype(np.float64), axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def select_golden_batch(
    x: NDArray[np.float32],
    logits: NDArray[np.float32],
    *,
    evaluated_with: str,
    config: GoldenConfig | None = None,
) -> GoldenBatch:
    """The golden batch for an artifact whose logits on ``x`` are ``logits``."""
    config = config or GoldenConfig()
    sample_bytes = 4 * (int(np.prod(x.shape[1:])) + int(logits.shape[1]))
    n = max(1, min(config.max_samples, len(x), MAX_GOLDEN_BYTES // sample_bytes))
    spread = float(logits.max() - logits.min())
    tol = max(config.logit_tolerance * spread, config.min_abs_tolerance)
    margins = _margins(logits)
    clear = np.flatnonzero(margins > 2 * tol)
    chosen = clear[:n] if len(clear) >= n else np.argsort(-margins, kind="stable")[:n]
    chosen = np.sort(chosen)
    robust = float(np.mean(margins[chosen] > 2 * tol))
    return make_golden_batch(
        x[chosen],
        logits[chosen],
        tolerance=GoldenTolerance(min_top1_agreement=robust, max_abs_logit_error=tol),
        evaluated_with=evaluated_with,
    )
