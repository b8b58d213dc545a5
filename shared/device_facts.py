"""What a machine is, for int8 numerics: CPU model, ISA flags, GPU, TensorRT; and its target.

The same facts describe an edge device (sent in ``Hello``, stored by the registry, shown on
the dashboard) and the hub that builds and evaluates artifacts (written into the build
report). :func:`target_of` maps facts to the compression *target* whose int8 kernels the
machine runs -- the vocabulary build profiles, manifests and rollouts share:

``x86-avx2``
    x86-64 without VNNI (AVX2, or AVX-512 without VNNI). onnxruntime's U8S8 kernels use
    ``VPMADDUBSW``, which adds two u8*s8 products into a *saturating* int16.
``x86-vnni``
    x86-64 with AVX512-VNNI or AVX-VNNI: ``VPDPBUSD`` accumulates in int32, no saturation.
``arm64-neon``
    ARM64 with NEON (``asimd``), optionally the dot-product extension (``asimddp``).
``tensorrt``
    an NVIDIA GPU with TensorRT (Jetson): explicit Q/DQ int8 or fp16 engines.

Parsing is pure (``parse_cpuinfo`` takes the text); :func:`detect_device_facts` is the thin
I/O shell that reads ``/proc/cpuinfo`` and probes NVML/TensorRT, never failing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared._codec import from_plain, to_plain

__all__ = [
    "ISA_FLAGS",
    "TARGETS",
    "DeviceFacts",
    "GpuProbe",
    "detect_device_facts",
    "parse_cpuinfo",
    "probe_nvidia_gpu",
    "target_of",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

TARGETS = ("x86-avx2", "x86-vnni", "arm64-neon", "tensorrt")
# Flags reported (a device sends only these, not its whole cpuinfo line).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "neon", "dotprod")
_X86_FLAG_NAMES = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
}
_ARM_FLAG_NAMES = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod"}
MAX_TEXT = 128


@dataclass(frozen=True)
class DeviceFacts:
    """A machine's CPU/GPU facts (all optional: a probe that fails leaves its field empty)."""

    arch: str = ""  # x86_64 | aarch64 | ...
    cpu_model: str = ""
    isa_flags: list[str] = field(default_factory=list)  # a subset of ISA_FLAGS, sorted
    gpu_model: str = ""
    compute_capability: str = ""  # e.g. "8.7" (Jetson Orin)
    tensorrt_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.isa_flags or "avx_vnni" in self.isa_flags

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceFacts:
        facts: DeviceFacts = from_plain(cls, dict(data), "device_facts")
        return facts

    def cpu_target(self) -> str | None:
        """The CPU int8 target (``x86-avx2``/``x86-vnni``/``arm64-neon``), if known."""
        arch = self.arch.lower()
        if arch in ("x86_64", "amd64", "x86-64"):
            return "x86-vnni" if self.has_vnni else "x86-avx2"
        if arch in ("aarch64", "arm64"):
            return "arm64-neon"
        return None

    def targets(self) -> tuple[str, ...]:
        """Every target this machine can run (its GPU's first, then its CPU's)."""
        out: list[str] = []
        if self.gpu_model and self.tensorrt_version:
            out.append("tensorrt")
        cpu = self.cpu_target()
        if cpu is not None:
            out.append(cpu)
        return tuple(out)


def target_of(facts: DeviceFacts) -> str | None:
    """The target whose kernels this machine runs first (GPU over CPU), or ``None``."""
    found = facts.targets()
    return found[0] if found else None


def parse_cpuinfo(text: str, *, machine: str = "") -> DeviceFacts:
    """Pure: CPU model and the ISA flags of ``ISA_FLAGS`` from ``/proc/cpuinfo`` text."""
    first: dict[str, str] = {}
    raw_flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        first.setdefault(key, value.strip())
        if key in ("flags", "features"):
            raw_flags.update(value.split())
    # x86 has "model : 143" (a number) before "model name"; a Raspberry Pi names its board
    # in "Model"; other ARM boards only in "Hardware"
    named = [first.get("model name"), first.get("model"), first.get("hardware")]
    model = next((m for m in named if m and not m.isdigit()), "")[:MAX_TEXT]
    names = {**_X86_FLAG_NAMES, **_ARM_FLAG_NAMES}
    flags = sorted({names[f] for f in raw_flags if f in names})
    arch = machine or ("aarch64" if "neon" in flags else "x86_64" if "avx2" in flags else "")
    return DeviceFacts(arch=arch, cpu_model=model, isa_flags=flags)


def tensorrt_version() -> str:
    """The installed TensorRT Python distribution's version, or ``""``."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


@dataclass(frozen=True)
class GpuProbe:
    """The first NVIDIA GPU as NVML sees it; ``error`` says why there is none."""

    name: str = ""
    compute_capability: str = ""
    error: str = ""


def probe_nvidia_gpu() -> GpuProbe:
    """The first NVIDIA GPU's name and compute capability via NVML (never raises)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        finally:
            pynvml.nvmlShutdown()
        text = name.decode() if isinstance(name, bytes) else str(name)
        return GpuProbe(text[:MAX_TEXT], f"{major}.{minor}")
    except Exception as exc:  # no driver / no GPU / no pynvml: no GPU facts, never fatal
        return GpuProbe(error=f"nvml: {type(exc).__name__}: {exc}")


def detect_device_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> DeviceFacts:
    """This machine's facts (reads ``cpuinfo`` and probes NVML; never raises)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("cannot read %s: %s", cpuinfo, exc.strerror)
        text = ""
    facts = parse_cpuinfo(text, machine=platform.machine())
    if not facts.cpu_model:
        facts = DeviceFacts(
            arch=facts.arch, cpu_model=platform.processor()[:MAX_TEXT], isa_flags=facts.isa_flags
        )
    gpu = probe_nvidia_gpu()
    return DeviceFacts(
        arch=facts.arch,
        cpu_model=facts.cpu_model,
        isa_flags=facts.isa_flags,
        gpu_model=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=tensorrt_version() if gpu.name else "",
    )
