"""Choose and load a backend from a profile's preferences and the device's capabilities.

Candidates are tried in the profile's order; each one that is unavailable or fails to load is
recorded with its reason in the ``RuntimeReport``. Landing on anything but the first choice
produces a warning (and a GPU -> CPU fallback always does): telemetry carries it, so a GPU
device that silently runs on CPU cannot happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import AgentConfigError, RuntimeBackendError
from edge_agent.runtime._memory import release_free_memory
from edge_agent.runtime.base import BackendAttempt, InferenceBackend, ModelArtifacts, RuntimeReport
from edge_agent.runtime.capabilities import DeviceCapabilities, detect_capabilities

__all__ = [
    "CANDIDATES",
    "GPU_CANDIDATES",
    "LoadedModel",
    "RuntimeConfig",
    "RuntimeProfile",
    "load_backend",
    "select_backend",
    "smoke_check",
]

log = logging.getLogger(__name__)

CANDIDATES = (
    "onnxruntime:tensorrt",
    "onnxruntime:cuda",
    "onnxruntime:cpu",
    "torch:cuda",
    "torch:cpu",
    "tflite:cpu",
)
GPU_CANDIDATES = frozenset({"onnxruntime:tensorrt", "onnxruntime:cuda", "torch:cuda"})
_ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ALIASES = {
    "TensorrtExecutionProvider": "onnxruntime:tensorrt",
    "CUDAExecutionProvider": "onnxruntime:cuda",
    "CPUExecutionProvider": "onnxruntime:cpu",
    "tensorrt": "onnxruntime:tensorrt",
    "cuda": "onnxruntime:cuda",
    "cpu": "onnxruntime:cpu",
    "tflite": "tflite:cpu",
    "TFLite": "tflite:cpu",
    "LiteRT": "tflite:cpu",
    "litert": "tflite:cpu",
    "torch": "torch:cuda",
}


@dataclass(frozen=True)
class RuntimeProfile:
    """A device class's runtime preferences (from its build profile / bundle)."""

    preferred: tuple[str, ...] = ("onnxruntime:tensorrt", "onnxruntime:cuda", "onnxruntime:cpu")
    trt_fp16: bool = False

    def __post_init__(self) -> None:
        unknown = [c for c in self.preferred if c not in CANDIDATES]
        if unknown or not self.preferred:
            raise AgentConfigError(f"unknown runtime candidates {unknown}; known: {CANDIDATES}")

    @classmethod
    def from_providers(cls, providers: Sequence[str], *, trt_fp16: bool = False) -> RuntimeProfile:
        """Accept candidate ids, ORT provider names or short names (``cuda``, ``tflite``)."""
        preferred: list[str] = []
        for p in providers:
            candidate = _ALIASES.get(p, p)
            if candidate not in preferred:
                preferred.append(candidate)
        return cls(preferred=tuple(preferred), trt_fp16=trt_fp16)

    @classmethod
    def from_build_profile(cls, profile: Mapping[str, Any]) -> RuntimeProfile:
        """From a parsed ``firmware_bundles/<class>.toml``: ``[runtime] providers`` in order;
        TensorRT builds fp16 engines when ``[artifact] precision = "fp16"``."""
        runtime = profile.get("runtime", {})
        providers = runtime.get("providers") if isinstance(runtime, Mapping) else None
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            raise AgentConfigError("build profile needs [runtime] providers = [...]")
        artifact = profile.get("artifact", {})
        fp16 = isinstance(artifact, Mapping) and artifact.get("precision") == "fp16"
        return cls.from_providers(providers, trt_fp16=fp16)


@dataclass(frozen=True)
class RuntimeConfig:
    """Local runtime settings (not from the bundle)."""

    intra_op_threads: int = 0  # 0: onnxruntime's default (one per core)
    engine_cache_dir: Path | None = None  # TensorRT engine cache root
    allow_cpu_fallback: bool = True  # False: refuse to run a GPU profile on CPU

    def __post_init__(self) -> None:
        if not 0 <= self.intra_op_threads <= 256:
            raise AgentConfigError("intra_op_threads must be in [0, 256]")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded backend and the report of how it was chosen."""

    backend: InferenceBackend
    report: RuntimeReport


def _unavailable(
    candidate: str, artifacts: ModelArtifacts, caps: DeviceCapabilities, config: RuntimeConfig
) -> str | None:
    """Why ``candidate`` cannot even be tried here, or None."""
    kind, _, target = candidate.partition(":")
    if kind == "onnxruntime":
        if artifacts.onnx is None:
            return "no ONNX artifact"
        provider = _ORT_PROVIDERS[target]
        if provider not in caps.ort_providers:
            return f"{provider} not available in this onnxruntime build"
        if target == "tensorrt" and config.engine_cache_dir is None:
            return "no TensorRT engine cache directory configured"
        return None
    if kind == "torch":
        if artifacts.state_dict is None:
            return "no state_dict artifact"
        return None if caps.torch_installed else "torch is not installed"
    if artifacts.tflite is None:
        return "no TFLite artifact"
    return None if caps.tflite_module else "neither ai_edge_litert nor tflite_runtime installed"


def load_backend(
    candidate: str,
    artifacts: ModelArtifacts,
    caps: DeviceCapabilities,
    config: RuntimeConfig,
    profile: RuntimeProfile,
) -> InferenceBackend:
    """Load one candidate; raises ``RuntimeBackendError`` on failure."""
    kind, _, target = candidate.partition(":")
    if kind == "onnxruntime":
        from edge_agent.runtime.onnx_backend import OnnxRuntimeBackend

        assert artifacts.onnx is not None
        return OnnxRuntimeBackend(
            artifacts.onnx,
            provider=_ORT_PROVIDERS[target],
            intra_op_threads=config.intra_op_threads,
            engine_cache_dir=config.engine_cache_dir,
            gpu_name=caps.gpu_name,
            tensorrt_version=caps.tensorrt_version,
            trt_fp16=profile.trt_fp16,
        )
    if kind == "torch":
        from edge_agent.runtime.torch_backend import TorchBackend

        assert artifacts.state_dict is not None and artifacts.model_name is not None
        return TorchBackend(artifacts.state_dict, model_name=artifacts.model_name, device=target)
    from edge_agent.runtime.tflite_backend import TFLiteBackend

    assert artifacts.tflite is not None and caps.tflite_module is not None
    threads = config.intra_op_threads or None
    return TFLiteBackend(artifacts.tflite, module=caps.tflite_module, threads=threads)


def _warnings(chosen: str, attempts: Sequence[BackendAttempt]) -> tuple[str, ...]:
    skipped = [a for a in attempts if a.outcome != "selected"]
    if not skipped:
        return ()
    why = "; ".join(f"{a.candidate}: {a.reason}" for a in skipped)
    gpu_skipped = any(a.candidate in GPU_CANDIDATES for a in skipped)
    if gpu_skipped and chosen not in GPU_CANDIDATES:
        return (f"GPU fallback: running on CPU ({chosen}) because {why}",)
    return (f"runtime fallback to {chosen} because {why}",)


def select_backend(
    artifacts: ModelArtifacts,
    profile: RuntimeProfile | None = None,
    *,
    capabilities: DeviceCapabilities | None = None,
    config: RuntimeConfig | None = None,
) -> LoadedModel:
    """Load the first candidate of ``profile`` that works; report every attempt."""
    profile = profile or RuntimeProfile()
    config = config or RuntimeConfig()
    caps = capabilities or detect_capabilities()
    attempts: list[BackendAttempt] = []
    for candidate in profile.preferred:
        reason = _unavailable(candidate, artifacts, caps, config)
        if reason is not None:
            attempts.append(BackendAttempt(candidate, "unavailable", reason))
            continue
        if (
            not config.allow_cpu_fallback
            and candidate not in GPU_CANDIDATES
            and any(a.candidate in GPU_CANDIDATES for a in attempts)
        ):
            attempts.append(BackendAttempt(candidate, "unavailable", "CPU fallback disabled"))
            continue
        started = time.perf_counter()
        try:
            backend = load_backend(candidate, artifacts, caps, config, profile)
        except RuntimeBackendError as exc:
            attempts.append(BackendAttempt(candidate, "failed", str(exc)))
            continue
        release_free_memory()
        attempts.append(BackendAttempt(candidate, "selected"))
        warnings = _warnings(candidate, attempts)
        for w in warnings:
            log.warning("%s", w)
        report = RuntimeReport(
            backend=backend.backend,
            provider=backend.provider,
            device=(caps.gpu_name or "gpu") if backend.is_gpu else "cpu",
            is_gpu=backend.is_gpu,
            model_version=artifacts.version,
            attempts=tuple(attempts),
            warnings=warnings,
            load_seconds=time.perf_counter() - started,
            engine_cache_key=backend.engine_cache_key,
            engine_cache_hit=backend.engine_cache_hit,
            engine_build_seconds=backend.engine_build_seconds,
        )
        return LoadedModel(backend=backend, report=report)
    tried = "; ".join(f"{a.candidate}: {a.reason}" for a in attempts)
    raise RuntimeBackendError(f"no inference backend could load the model ({tried})")


def smoke_check(
    artifacts: ModelArtifacts,
    profile: RuntimeProfile | None = None,
    *,
    capabilities: DeviceCapabilities | None = None,
    config: RuntimeConfig | None = None,
) -> RuntimeReport:
    """Load the model the way serving will and run one zero input (an OTA health check).

    Raises ``RuntimeBackendError`` if nothing loads or the inference fails; the returned
    report says which backend passed (and carries any GPU fallback warning).
    """
    loaded = select_backend(artifacts, profile, capabilities=capabilities, config=config)
    backend = loaded.backend
    try:
        out = backend.run(np.zeros((1, *backend.input_shape), dtype=backend.input_dtype))
    except Exception as exc:  # native runtimes raise their own types
        raise RuntimeBackendError(
            f"smoke inference failed on {loaded.report.candidate}: {exc}"
        ) from exc
    finally:
        backend.close()
    if out.shape[0] != 1 or not np.all(np.isfinite(out)):
        raise RuntimeBackendError(f"smoke inference on {loaded.report.candidate} gave {out.shape}")
    return loaded.report
