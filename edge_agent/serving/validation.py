"""Validation of prediction inputs: shape, dtype, finiteness and size, before any inference.

Everything invalid raises ``InferenceInputError`` with a message an application developer can
act on. Pure functions over values.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import InferenceInputError

__all__ = ["InputSpec", "parse_binary_inputs", "parse_request_inputs", "validate_batch"]

MAX_DIMS = 16  # dimensions of one request's tensor, batch included
MAX_DIM = 2**31 - 1  # one dimension; a tensor's byte size is checked against the body too
_DIM_RE = re.compile(r"[0-9]{1,10}")
_WIRE_DTYPES = frozenset({"float32", "float16", "float64", "uint8", "int8", "int32", "int64"})


@dataclass(frozen=True)
class InputSpec:
    """What the active model accepts per sample, and the batch limit."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    max_batch: int

    @property
    def sample_size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def validate_batch(x: Any, spec: InputSpec) -> NDArray[Any]:
    """Return ``x`` as a contiguous batch ``(n, *spec.shape)`` of ``spec.dtype``.

    A single sample of exactly ``spec.shape`` becomes a batch of one. Real numbers are cast
    to a float model's dtype; integer models need integer input.
    """
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise InferenceInputError(f"inputs must be real numbers, got dtype {arr.dtype}")
    if spec.dtype.kind in "iu" and arr.dtype.kind == "f":
        raise InferenceInputError(f"model expects {spec.dtype} inputs, got {arr.dtype}")
    if arr.shape == spec.shape:
        arr = arr[np.newaxis]
    if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != spec.shape:
        raise InferenceInputError(
            f"input shape {list(arr.shape)} does not match the model: expected "
            f"[batch, {', '.join(str(d) for d in spec.shape)}]"
        )
    n = arr.shape[0]
    if n == 0:
        raise InferenceInputError("empty batch")
    if n > spec.max_batch:
        raise InferenceInputError(f"batch of {n} exceeds the limit of {spec.max_batch}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InferenceInputError("inputs contain NaN or infinity")
    return np.ascontiguousarray(arr, dtype=spec.dtype)


def parse_request_inputs(body: Mapping[str, Any], spec: InputSpec) -> NDArray[Any]:
    """Decode a JSON request body into a validated batch.

    Two encodings: ``{"inputs": [[...], ...]}`` (nested lists) or, for large tensors,
    ``{"inputs_b64": "...", "shape": [n, ...], "dtype": "float32"}`` (raw little-endian).
    """
    if "inputs" in body:
        try:
            # nested lists of the wrong depth/length are ragged: numpy refuses them
            arr = np.array(body["inputs"], dtype=np.float64 if spec.dtype.kind == "f" else None)
        except (ValueError, TypeError) as exc:
            raise InferenceInputError(
                f"inputs are not a rectangular array of numbers: {exc}"
            ) from exc
        if spec.dtype.kind in "iu" and arr.dtype.kind not in "iu":
            raise InferenceInputError(f"model expects {spec.dtype} inputs")
        return validate_batch(arr, spec)
    if "inputs_b64" in body:
        data = body["inputs_b64"]
        if not isinstance(data, str):
            raise InferenceInputError("'inputs_b64' must be a base64 string")
        shape, dtype = _check_shape_dtype(body.get("shape"), body.get("dtype", "float32"), spec)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InferenceInputError(f"'inputs_b64' is not valid base64: {exc}") from exc
        return _from_raw(raw, shape, dtype, spec)
    raise InferenceInputError("request needs 'inputs' or 'inputs_b64'")


def parse_binary_inputs(
    raw: bytes, shape_header: str | None, dtype_header: str | None, spec: InputSpec
) -> NDArray[Any]:
    """Decode a raw tensor body (``application/octet-stream``, little-endian, C order).

    ``X-Shape: 4,3,96,96`` and ``X-Dtype: float32`` headers describe it. The fast path for
    large tensors: no JSON or base64 work at all.
    """
    if not shape_header:
        raise InferenceInputError("binary requests need an X-Shape header, e.g. '1,3,96,96'")
    dims = [d.strip() for d in shape_header.split(",")]
    if len(dims) > MAX_DIMS or not all(_DIM_RE.fullmatch(d) for d in dims):
        raise InferenceInputError(
            f"bad X-Shape header {shape_header[:80]!r}: up to {MAX_DIMS} comma-separated "
            "non-negative integers"
        )
    shape = [int(d) for d in dims]
    checked_shape, dtype = _check_shape_dtype(shape, dtype_header or "float32", spec)
    return _from_raw(raw, checked_shape, dtype, spec)


def _check_shape_dtype(shape: Any, dtype: Any, spec: InputSpec) -> tuple[list[int], str]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
        )
    ):
        raise InferenceInputError(
            f"'shape' must be a list of at most {MAX_DIMS} integers in [0, {MAX_DIM}]"
        )
    if not isinstance(dtype, str) or dtype not in _WIRE_DTYPES:
        raise InferenceInputError(f"'dtype' must be one of {sorted(_WIRE_DTYPES)}")
    if np.dtype(dtype) != spec.dtype:
        raise InferenceInputError(f"model expects dtype {spec.dtype}, got {dtype}")
    if len(shape) >= 1 and shape[0] > spec.max_batch:
        raise InferenceInputError(f"batch of {shape[0]} exceeds the limit of {spec.max_batch}")
    return shape, dtype


def _from_raw(raw: bytes, shape: list[int], dtype: str, spec: InputSpec) -> NDArray[Any]:
    # R14: exact integer product: numpy's int64 product wraps (or overflows) on huge shapes
    expected = math.prod(shape) * spec.dtype.itemsize
    if len(raw) != expected:
        raise InferenceInputError(f"{len(raw)} bytes do not fill shape {shape} of {dtype}")
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return validate_batch(arr, spec)
