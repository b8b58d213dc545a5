"""Hub-held labelled data for calibration and evaluation, and the ORT calibration reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from onnxruntime.quantization import CalibrationDataReader

from cloud_hub.errors import CompressionError

__all__ = ["ArrayCalibrationReader", "LabelledSet"]

MAX_SAMPLES = 1_000_000


@dataclass(frozen=True, eq=False)
class LabelledSet:
    """Inputs ``x`` (n, *input_shape) float32 and integer labels ``y`` (n,)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    role: str = "data"  # "calibration" / "evaluation": used in error messages

    @classmethod
    def of(cls, x: ArrayLike, y: ArrayLike, *, role: str) -> LabelledSet:
        """Validate and convert; raises ``CompressionError`` on empty or inconsistent data."""
        xa = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        ya = np.asarray(y)
        if xa.ndim < 2 or xa.shape[0] == 0:
            raise CompressionError(f"the {role} set is empty (x has shape {xa.shape})")
        if xa.shape[0] > MAX_SAMPLES:
            raise CompressionError(f"the {role} set has more than {MAX_SAMPLES} samples")
        if ya.ndim != 1 or ya.shape[0] != xa.shape[0]:
            raise CompressionError(
                f"the {role} set has {xa.shape[0]} inputs but labels of shape {ya.shape}"
            )
        if not np.issubdtype(ya.dtype, np.integer):
            raise CompressionError(f"the {role} labels must be integers, got {ya.dtype}")
        if not np.all(np.isfinite(xa)):
            raise CompressionError(f"the {role} set contains NaN or infinity")
        return cls(x=xa, y=ya.astype(np.int64), role=role)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def head(self, n: int) -> LabelledSet:
        """The first ``n`` samples (the caller shuffles the hub's set once, upstream)."""
        return LabelledSet(x=self.x[:n], y=self.y[:n], role=self.role)

    def require_shape(self, shape: tuple[int, ...]) -> None:
        if self.sample_shape != tuple(shape):
            raise CompressionError(
                f"the {self.role} set has samples of shape {self.sample_shape}, "
                f"the model expects {tuple(shape)}"
            )


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds calibration batches to ``onnxruntime.quantization.quantize_static``."""

    def __init__(self, input_name: str, x: NDArray[np.float32], *, batch_size: int = 32) -> None:
        if x.shape[0] == 0:
            raise CompressionError("the calibration set is empty")
        self._input_name = input_name
        self._x = x
        self._batch_size = batch_size
        self._batches: Iterator[dict[str, NDArray[np.float32]]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, NDArray[np.float32]]]:
        for start in range(0, self._x.shape[0], self._batch_size):
            yield {self._input_name: self._x[start : start + self._batch_size]}

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()
