"""What this device can run: ORT providers, GPU model, TensorRT, torch, TFLite.

Detection never imports torch (heavy, and absent from ``fedfleet[agent]``): its CUDA support
is probed only when a torch candidate is actually tried.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from shared.device_facts import probe_nvidia_gpu, tensorrt_version

__all__ = ["DeviceCapabilities", "detect_capabilities", "gpu_name_from_nvml"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceCapabilities:
    """A snapshot of the runtimes and accelerators present (built by hand in tests)."""

    ort_providers: tuple[str, ...] = ()
    gpu_name: str | None = None
    tensorrt_version: str | None = None
    torch_installed: bool = False
    tflite_module: str | None = None  # "ai_edge_litert" | "tflite_runtime" | None
    notes: tuple[str, ...] = ()  # why a probe failed (reported, never fatal)


def gpu_name_from_nvml() -> tuple[str | None, str | None]:
    """The first GPU's name via NVML, or ``(None, reason)`` (``shared.device_facts`` probes)."""
    gpu = probe_nvidia_gpu()
    return (gpu.name, None) if gpu.name else (None, gpu.error or "nvml: no GPU")


def detect_capabilities() -> DeviceCapabilities:
    """Probe the device once (cheap: no model is loaded, torch is not imported)."""
    notes: list[str] = []
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except Exception as exc:
        providers = ()
        notes.append(f"onnxruntime: {type(exc).__name__}: {exc}")
    gpu, why = gpu_name_from_nvml()
    if why:
        notes.append(why)
    tflite = next(
        (m for m in ("ai_edge_litert", "tflite_runtime") if importlib.util.find_spec(m)), None
    )
    return DeviceCapabilities(
        ort_providers=providers,
        gpu_name=gpu,
        tensorrt_version=tensorrt_version() or None,
        torch_installed=importlib.util.find_spec("torch") is not None,
        tflite_module=tflite,
        notes=tuple(notes),
    )
