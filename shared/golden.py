"""The golden batch: a few inputs, the logits and top-1 the hub measured on *this exact*
artifact, and a tolerance; carried inside the signed bundle manifest.

The device runs it on its own runtime before committing an install (CPU kernels, CUDA,
TensorRT engine, LiteRT): an artifact whose numerics differ on the device (e.g. U8S8 int8
kernels that saturate on a CPU without VNNI, or a mis-quantized model) is refused and rolled
back with the measured figures. Pure: arrays in, a :class:`GoldenVerdict` out.

Arrays travel as base64 of little-endian float32, shapes explicit; sizes are bounded so the
manifest still fits a control message (:data:`MAX_GOLDEN_BYTES`).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared._codec import from_plain, to_plain
from shared.errors import MalformedBundleError, MalformedMessageError

__all__ = [
    "GOLDEN_CHECK",
    "GOLDEN_TYPE",
    "MAX_GOLDEN_BYTES",
    "MAX_GOLDEN_SAMPLES",
    "GoldenBatch",
    "GoldenTolerance",
    "GoldenVerdict",
    "compare_golden",
    "make_golden_batch",
]

GOLDEN_TYPE = "golden-batch"
#: ``data["check"]`` of the ``health_failed`` event a golden-batch refusal reports
GOLDEN_CHECK = "golden_batch"
GOLDEN_SCHEMA = 1
MAX_GOLDEN_SAMPLES = 64
MAX_GOLDEN_BYTES = 96 * 1024  # decoded inputs + logits
_F32 = np.dtype("<f4")


def _encode(array: NDArray[Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=_F32).tobytes()).decode("ascii")


def _decode(text: str, shape: tuple[int, ...], what: str) -> NDArray[np.float32]:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedBundleError(f"golden batch {what}: not base64") from exc
    if len(raw) != 4 * math.prod(shape):
        raise MalformedBundleError(f"golden batch {what}: {len(raw)} bytes for shape {shape}")
    values = np.frombuffer(raw, dtype=_F32).reshape(shape).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise MalformedBundleError(f"golden batch {what}: NaN or infinity")
    return values


@dataclass(frozen=True)
class GoldenTolerance:
    """How close the device must come: top-1 agreement and the largest logit error."""

    min_top1_agreement: float  # fraction of golden samples whose top-1 must match
    max_abs_logit_error: float  # largest |device logit - expected logit| allowed
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GoldenVerdict:
    """What the device measured against the golden batch."""

    samples: int
    top1_agreement: float
    max_abs_logit_error: float
    tolerance: GoldenTolerance
    ms: float = 0.0

    @property
    def passed(self) -> bool:
        t = self.tolerance
        return (
            self.top1_agreement >= t.min_top1_agreement
            and self.max_abs_logit_error <= t.max_abs_logit_error
        )

    def describe(self) -> str:
        t = self.tolerance
        return (
            f"golden batch of {self.samples}: top-1 agreement {self.top1_agreement:.3f} "
            f"(min {t.min_top1_agreement:.3f}), max |logit error| "
            f"{self.max_abs_logit_error:.5g} (max {t.max_abs_logit_error:.5g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "top1_agreement": self.top1_agreement,
            # JSON has no infinity: a wrong-shaped or non-finite output reports null
            "max_abs_logit_error": (
                self.max_abs_logit_error if math.isfinite(self.max_abs_logit_error) else None
            ),
            "min_top1_agreement": self.tolerance.min_top1_agreement,
            "max_abs_logit_error_allowed": self.tolerance.max_abs_logit_error,
            "passed": self.passed,
            "ms": round(self.ms, 3),
        }


@dataclass(frozen=True)
class GoldenBatch:
    """Inputs ``(n, *input_shape)``, expected logits ``(n, classes)`` and top-1, tolerance."""

    input_shape: list[int]  # per sample
    num_classes: int
    inputs: str  # base64 float32
    logits: str  # base64 float32
    top1: list[int]
    tolerance: GoldenTolerance
    evaluated_with: str = ""  # e.g. "onnxruntime 1.32.0 CPU kernels (x86-vnni)"
    type: str = GOLDEN_TYPE
    schema_version: int = GOLDEN_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type != GOLDEN_TYPE or self.schema_version != GOLDEN_SCHEMA:
            raise MalformedBundleError(
                f"golden batch: type/schema {self.type!r}/{self.schema_version} not supported"
            )
        n = len(self.top1)
        if not 1 <= n <= MAX_GOLDEN_SAMPLES:
            raise MalformedBundleError(f"golden batch must hold 1..{MAX_GOLDEN_SAMPLES} samples")
        if not self.input_shape or any(d < 1 for d in self.input_shape) or self.num_classes < 1:
            raise MalformedBundleError("golden batch: bad input_shape or num_classes")
        size = 4 * n * (math.prod(self.input_shape) + self.num_classes)
        if size > MAX_GOLDEN_BYTES:
            raise MalformedBundleError(f"golden batch of {size} bytes > {MAX_GOLDEN_BYTES}")
        if any(not 0 <= c < self.num_classes for c in self.top1):
            raise MalformedBundleError("golden batch: top-1 class out of range")
        t = self.tolerance
        if not (0.0 <= t.min_top1_agreement <= 1.0 and 0.0 <= t.max_abs_logit_error < math.inf):
            raise MalformedBundleError("golden batch: tolerance out of range")

    @property
    def samples(self) -> int:
        return len(self.top1)

    def input_array(self) -> NDArray[np.float32]:
        return _decode(self.inputs, (self.samples, *self.input_shape), "inputs")

    def logits_array(self) -> NDArray[np.float32]:
        return _decode(self.logits, (self.samples, self.num_classes), "logits")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenBatch:
        try:
            batch: GoldenBatch = from_plain(cls, dict(data), "golden")
        except MalformedMessageError as exc:
            raise MalformedBundleError(str(exc)) from exc
        return batch


def make_golden_batch(
    inputs: NDArray[np.float32],
    logits: NDArray[np.float32],
    *,
    tolerance: GoldenTolerance,
    evaluated_with: str,
) -> GoldenBatch:
    """Pack arrays measured on the artifact into a :class:`GoldenBatch` (validated)."""
    x = np.asarray(inputs, dtype=np.float32)
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"inputs {x.shape} and logits {z.shape} do not pair up")
    return GoldenBatch(
        input_shape=[int(d) for d in x.shape[1:]],
        num_classes=int(z.shape[1]),
        inputs=_encode(x),
        logits=_encode(z),
        top1=[int(c) for c in np.argmax(z, axis=1)],
        tolerance=tolerance,
        evaluated_with=evaluated_with,
    )


def compare_golden(
    golden: GoldenBatch, measured: NDArray[np.float32], *, ms: float = 0.0
) -> GoldenVerdict:
    """Compare the device's logits for ``golden``'s inputs with the expected ones."""
    expected = golden.logits_array()
    got = np.asarray(measured, dtype=np.float32)
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        # a wrong shape or non-finite output is as far from the expectation as it gets
        return GoldenVerdict(golden.samples, 0.0, math.inf, golden.tolerance, ms)
    agreement = float(np.mean(np.argmax(got, axis=1) == np.asarray(golden.top1)))
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    return GoldenVerdict(golden.samples, agreement, error, golden.tolerance, ms)
