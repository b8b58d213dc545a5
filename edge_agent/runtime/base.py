"""The one interface every inference backend implements, and the report of what was chosen."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import AgentConfigError

__all__ = [
    "BackendAttempt",
    "InferenceBackend",
    "ModelArtifacts",
    "RuntimeReport",
]


@dataclass(frozen=True)
class ModelArtifacts:
    """The files of one installed model a backend may load.

    Bundles ship ONNX; a ``.tflite`` file and a torch ``state_dict`` (with the
    ``shared.models`` name that defines its architecture) are optional extras.
    """

    version: int
    onnx: Path | None = None
    tflite: Path | None = None
    state_dict: Path | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.onnx is None and self.tflite is None and self.state_dict is None:
            raise AgentConfigError("model artifacts need at least one model file")
        if self.state_dict is not None and self.model_name is None:
            raise AgentConfigError("a state_dict artifact needs the model_name that defines it")

    @classmethod
    def from_model_file(
        cls,
        path: Path,
        *,
        version: int,
        state_dict: Path | None = None,
        model_name: str | None = None,
    ) -> ModelArtifacts:
        """One model file; ``.tflite`` is a TFLite model, anything else ONNX."""
        tflite = path.suffix.lower() == ".tflite"
        return cls(
            version=version,
            onnx=None if tflite else path,
            tflite=path if tflite else None,
            state_dict=state_dict,
            model_name=model_name,
        )

    @classmethod
    def from_directory(
        cls, directory: Path, *, version: int, model_name: str | None = None
    ) -> ModelArtifacts:
        """Find ``*.onnx``, ``*.tflite`` and ``*.pt`` files in an installed slot."""

        def one(pattern: str) -> Path | None:
            found = sorted(directory.glob(pattern))
            return found[0] if found else None

        state_dict = one("*.pt") if model_name is not None else None
        return cls(
            version=version,
            onnx=one("*.onnx"),
            tflite=one("*.tflite"),
            state_dict=state_dict,
            model_name=model_name,
        )


@dataclass(frozen=True)
class BackendAttempt:
    """One candidate the selector considered, and why it was or was not used."""

    candidate: str
    outcome: str  # "selected" | "unavailable" | "failed"
    reason: str = ""


@dataclass(frozen=True)
class RuntimeReport:
    """What runs the model: reported in status and telemetry, fallbacks as warnings."""

    backend: str  # onnxruntime | torch | tflite
    provider: str  # e.g. CUDAExecutionProvider, CPUExecutionProvider, cuda, cpu
    device: str  # GPU model name, or "cpu"
    is_gpu: bool
    model_version: int
    attempts: tuple[BackendAttempt, ...] = ()
    warnings: tuple[str, ...] = ()
    load_seconds: float = 0.0
    engine_cache_key: str | None = None
    engine_cache_hit: bool | None = None
    engine_build_seconds: float | None = None

    @property
    def candidate(self) -> str:
        return f"{self.backend}:{self.provider}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "provider": self.provider,
            "device": self.device,
            "is_gpu": self.is_gpu,
            "model_version": self.model_version,
            "attempts": [
                {"candidate": a.candidate, "outcome": a.outcome, "reason": a.reason}
                for a in self.attempts
            ],
            "warnings": list(self.warnings),
            "load_seconds": self.load_seconds,
            "engine_cache_key": self.engine_cache_key,
            "engine_cache_hit": self.engine_cache_hit,
            "engine_build_seconds": self.engine_build_seconds,
        }


class InferenceBackend(ABC):
    """A loaded model that maps a batch of inputs to a batch of raw outputs (logits).

    ``run`` must be safe to call from several threads at once; ``close`` is called once no
    request uses the backend any more (after a hot swap).
    """

    backend: str
    provider: str
    is_gpu: bool = False
    #: per-sample input shape (no batch dimension) and dtype the model expects
    input_shape: tuple[int, ...]
    input_dtype: np.dtype[Any]

    @abstractmethod
    def run(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Infer a batch ``(n, *input_shape)``; returns ``(n, outputs)``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""

    # diagnostics the selector copies into the RuntimeReport
    engine_cache_key: str | None = None
    engine_cache_hit: bool | None = None
    engine_build_seconds: float | None = None
