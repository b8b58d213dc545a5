"""Health check of a freshly installed slot before it becomes active.

A :data:`HealthCheck` is any callable taking the installed slot and raising
``InstallError`` if the model is not fit to serve. The default, :func:`default_health_check`,
is :class:`OnnxSmokeCheck` (load an ONNX model with onnxruntime on CPU, one inference on
zeros) followed by the golden-batch check (``edge_agent.runtime.golden``: the manifest's
golden batch on the runtime serving will use, refused outside its tolerance); the agent can
be given its own backend-aware check instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.errors import InstallError
from edge_agent.ota.slots import InstalledSlot

__all__ = [
    "HealthCheck",
    "OnnxSmokeCheck",
    "declared_input_shape",
    "default_health_check",
    "run_health_check",
]

log = logging.getLogger(__name__)

HealthCheck = Callable[[InstalledSlot], None]

_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def declared_input_shape(slot: InstalledSlot) -> tuple[int, ...] | None:
    """``input_shape`` from the bundle's ``preprocess.json`` (role ``preprocess``), if any."""
    path = slot.artifact_path("preprocess")
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallError(f"preprocess config unreadable: {exc}") from exc
    shape = data.get("input_shape") if isinstance(data, dict) else None
    if shape is None:
        return None
    if not (
        isinstance(shape, list)
        and 0 < len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 16 for d in shape)
    ):
        raise InstallError(f"preprocess input_shape {shape!r} is not a list of positive ints")
    return tuple(shape)


class OnnxSmokeCheck:
    """Load the model with onnxruntime (CPU) and run it once on zeros.

    Dynamic dimensions become 1 unless ``preprocess.json`` declares ``input_shape`` (per
    sample, without the batch dimension). A model artifact that is not ONNX (by name or
    media type) cannot be loaded here: it passes only if its file is intact, and the log
    says that no smoke inference ran.
    """

    def __call__(self, slot: InstalledSlot) -> None:
        model = slot.model_path
        if model is None or not model.is_file():
            raise InstallError("installed slot has no model file")
        media = next(
            (str(a.get("media_type", "")) for a in slot.meta.artifacts if a.get("role") == "model"),
            "",
        )
        if not (model.suffix == ".onnx" or "onnx" in media):
            log.warning("no loader for %s here: file present, smoke inference skipped", model.name)
            return
        declared = declared_input_shape(slot)
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(model), sess_options=options, providers=["CPUExecutionProvider"]
            )
            feeds = {}
            for inp in session.get_inputs():
                dtype = _ORT_DTYPES.get(inp.type)
                if dtype is None:
                    raise InstallError(f"input {inp.name!r} has unsupported type {inp.type}")
                feeds[inp.name] = np.zeros(_shape(inp.shape, declared), dtype=dtype)
            outputs = session.run(None, feeds)
        except InstallError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InstallError(f"model failed to load or run: {type(exc).__name__}: {exc}") from exc
        for out in outputs:
            arr = np.asarray(out)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise InstallError("smoke inference produced non-finite outputs")


def default_health_check() -> HealthCheck:
    """The smoke inference, then the golden batch on the serving runtime."""
    from edge_agent.runtime.golden import GoldenBatchCheck

    smoke, golden = OnnxSmokeCheck(), GoldenBatchCheck()

    def check(slot: InstalledSlot) -> None:
        smoke(slot)
        golden(slot)

    return check


def _shape(onnx_shape: list[Any], declared: tuple[int, ...] | None) -> tuple[int, ...]:
    if declared is not None and len(declared) + 1 == len(onnx_shape):
        return (1, *declared)
    if declared is not None and len(declared) == len(onnx_shape):
        return declared
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in onnx_shape)


def run_health_check(check: HealthCheck, slot: InstalledSlot, *, timeout_s: float) -> None:
    """Run ``check`` in a daemon thread; ``InstallError`` if it fails or overruns, so a hung
    model load cannot wedge the agent (the thread is abandoned, it only reads the slot)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            check(slot)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target, name="ota-health", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise InstallError(f"health check timed out after {timeout_s:.0f}s")
    if errors:
        exc = errors[0]
        if isinstance(exc, InstallError):
            raise exc
        raise InstallError(f"{type(exc).__name__}: {exc}") from exc
