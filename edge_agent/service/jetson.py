"""JetPack/L4T detection, the matching CUDA wheels, and a GPU backend probe.

NVIDIA's aarch64 CUDA builds of onnxruntime-gpu and torch are not on PyPI: they come from
the Jetson AI Lab package index (JetPack 6) or NVIDIA's redistributables and the Jetson Zoo
(JetPack 5). ``install`` tells the operator which ones fit the device, then checks that a GPU
backend really loads (an Add on the GPU) before it reports success: a CPU wheel installed by
mistake would otherwise run everything on the CPU without a word.

Parsing (``parse_nv_tegra_release``, ``jetpack_for_l4t``, ``wheels_for``) is pure and tested
with sample release strings; ``detect_jetson`` and ``probe_gpu_backend`` are the I/O shell.
"""

from __future__ import annotations

import base64
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GpuProbe",
    "JetsonInfo",
    "WheelAdvice",
    "detect_jetson",
    "jetpack_for_l4t",
    "parse_nv_tegra_release",
    "probe_gpu_backend",
    "wheels_for",
]

# L4T release -> JetPack release (NVIDIA's JetPack archive).
_L4T_TO_JETPACK = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}

_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class JetsonInfo:
    l4t: str  # e.g. "35.4.1"
    jetpack: str | None  # e.g. "5.1.2"; None for an L4T release not in the table
    source: str  # "jtop" | "/etc/nv_tegra_release"

    @property
    def jetpack_major(self) -> int | None:
        if self.jetpack is not None:
            return int(self.jetpack.split(".")[0])
        major = int(self.l4t.split(".")[0])
        return {32: 4, 35: 5, 36: 6}.get(major)


def parse_nv_tegra_release(text: str) -> str | None:
    """``# R35 (release), REVISION: 4.1, ...`` → ``"35.4.1"`` (None if not that format)."""
    m = _RELEASE_RE.search(text)
    if not m:
        return None
    return f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3))}"


def jetpack_for_l4t(l4t: str) -> str | None:
    return _L4T_TO_JETPACK.get(l4t)


@dataclass(frozen=True)
class WheelAdvice:
    """Which CUDA builds match a JetPack major release."""

    jetpack_major: int
    python: str
    cuda: str
    onnxruntime_gpu: str
    torch: str
    index_url: str | None
    notes: str


_WHEELS = {
    5: WheelAdvice(
        jetpack_major=5,
        python="3.8 (cp38)",
        cuda="11.4",
        onnxruntime_gpu="onnxruntime-gpu 1.16-1.18, cp38 aarch64 wheels from the Jetson Zoo "
        "(https://elinux.org/Jetson_Zoo#ONNX_Runtime)",
        torch="torch 2.1.0a0+41361538.nv23.06 from "
        "https://developer.download.nvidia.com/compute/redist/jp/v512/pytorch/",
        index_url=None,
        notes="JetPack 5 ships Python 3.8: run the agent in a Python 3.8+ venv created with "
        "--system-site-packages so it sees TensorRT.",
    ),
    6: WheelAdvice(
        jetpack_major=6,
        python="3.10 (cp310)",
        cuda="12.2 (JetPack 6.0) / 12.6 (JetPack 6.1, 6.2)",
        onnxruntime_gpu="onnxruntime-gpu from the Jetson AI Lab index (jp6/cu126 for 6.1+, "
        "jp6/cu122 for 6.0)",
        torch="torch from the same index (or NVIDIA's "
        "https://developer.download.nvidia.com/compute/redist/jp/v60/pytorch/ for 6.0)",
        index_url="https://pypi.jetson-ai-lab.io/jp6/cu126",
        notes="pip install --extra-index-url <index> onnxruntime-gpu torch; never the PyPI "
        "onnxruntime (CPU only on aarch64).",
    ),
}


def wheels_for(info: JetsonInfo) -> WheelAdvice | None:
    """The wheel advice for this JetPack (None for JetPack 4 or unknown releases)."""
    major = info.jetpack_major
    return None if major is None else _WHEELS.get(major)


def detect_jetson(release_file: Path = Path("/etc/nv_tegra_release")) -> JetsonInfo | None:
    """JetPack/L4T via jetson-stats, else the release file; None when this is no Jetson."""
    try:
        with warnings.catch_warnings():  # jetson-stats warns about `distro` internals
            warnings.simplefilter("ignore", DeprecationWarning)
            from jtop import jtop  # jetson-stats (the `jetson` extra)

            with jtop() as jet:
                hw = dict(jet.board.get("hardware", {}))
        l4t = str(hw.get("L4T", "")).strip()
        if l4t:
            return JetsonInfo(
                l4t=l4t, jetpack=str(hw.get("Jetpack") or "") or jetpack_for_l4t(l4t), source="jtop"
            )
    except Exception:  # not installed, or its service is not running (JtopException)
        pass
    try:
        text = release_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    parsed = parse_nv_tegra_release(text)
    if parsed is None:
        return None
    return JetsonInfo(l4t=parsed, jetpack=jetpack_for_l4t(parsed), source=str(release_file))


# A one-node ONNX model (y = x + x, float32[1,4], opset 13): enough to make ORT place a kernel
# on the GPU, small enough to embed (the agent does not depend on the onnx package).
_PROBE_MODEL = base64.b64decode(
    "CAgSCGZlZGZsZWV0OkEKDgoBeAoBeBIBeSIDQWRkEgVwcm9iZVoTCgF4Eg4KDAgBEggKAggBCgIIBGITCgF5Eg4K"
    "DAgBEggKAggBCgIIBEIECgAQDQ=="
)


@dataclass(frozen=True)
class GpuProbe:
    """Whether a GPU inference backend really loaded, and which."""

    ok: bool
    backend: str | None  # "onnxruntime:CUDAExecutionProvider" | "torch:cuda" | None
    detail: str


def probe_gpu_backend() -> GpuProbe:
    """Run a tiny computation on the GPU via onnxruntime (CUDA EP), else torch CUDA."""
    reasons: list[str] = []
    try:
        import numpy as np
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reasons.append(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                f"(providers: {', '.join(ort.get_available_providers())})"
            )
        else:
            sess = ort.InferenceSession(_PROBE_MODEL, providers=["CUDAExecutionProvider"])
            out = sess.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
            used = sess.get_providers()
            if used and used[0] == "CUDAExecutionProvider" and float(out.sum()) == 8.0:
                return GpuProbe(True, "onnxruntime:CUDAExecutionProvider", f"ORT {ort.__version__}")
            reasons.append(f"onnxruntime fell back to {used}")
    except Exception as exc:  # any failure to load is the answer, not a crash
        reasons.append(f"onnxruntime: {type(exc).__name__}: {exc}")
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.ones(4, device="cuda")
            if float((t + t).sum().item()) == 8.0:
                return GpuProbe(True, "torch:cuda", f"torch {torch.__version__}")
        reasons.append(f"torch {torch.__version__}: CUDA not available")
    except Exception as exc:
        reasons.append(f"torch: {type(exc).__name__}: {exc}")
    return GpuProbe(False, None, "; ".join(reasons))
