"""GPU inference benchmark: the agent's GPU paths against CPU int8, same model, same batches.

    .venv/bin/python benchmarks/gpu.py            # full
    .venv/bin/python benchmarks/gpu.py --quick    # < 60 s

Model: the MobileNet-v1-sized CNN at 96x96 of ``benchmarks/agent.py`` (ONNX, dynamic batch).
Contenders, each at batch sizes 1, 8 and 32 (median of repeated runs after a warm-up at that
batch size, so that no engine build or kernel selection is timed):

* ``cpu_int8``  - onnxruntime CPU on the static int8 (QDQ, per-channel) model;
* ``ort_trt``   - the agent's ``OnnxRuntimeBackend`` on TensorRT (fp16) with its engine cache:
  ``engine_cold_build_s`` is the first load with an empty cache (engine build included),
  ``engine_warm_load_s`` a second load from that cache (both include one batch-1 run);
* ``ort_cuda``  - the same backend on the CUDA execution provider (fp32);
* ``torch_cuda_fp16`` - eager torch on CUDA in half precision.

Without an NVIDIA GPU (no CUDA in torch, no CUDA provider in onnxruntime, nothing in NVML) it
says so on stderr and prints ``{"gpu_available": false, ...}`` with what it looked for. The
last line is always one JSON object, with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.device_facts import detect_device_facts, probe_nvidia_gpu, tensorrt_version  # noqa: E402

BATCHES = (1, 8, 32)


def gpu_presence() -> dict[str, Any]:
    """What this machine offers: torch CUDA, onnxruntime's GPU providers, NVML."""
    import onnxruntime as ort

    try:
        import torch

        torch_cuda = bool(torch.cuda.is_available())
    except ImportError:
        torch_cuda = False
    providers = ort.get_available_providers()
    probe = probe_nvidia_gpu()
    return {
        "torch_cuda": torch_cuda,
        "ort_providers": providers,
        "nvml_gpu": probe.name or probe.error,
        "tensorrt_version": tensorrt_version(),
        "available": torch_cuda or "CUDAExecutionProvider" in providers,
    }


def _median_ms(fn: Any, repeats: int, *, sync: Any = None) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times), 3)


def _int8_model(fp32: Path, dst: Path, x: np.ndarray) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"input": x[i : i + 1]} for i in range(min(16, len(x)))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    quantize_static(
        str(fp32), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return dst


def _ort_latencies(backend: Any, x: np.ndarray, repeats: int) -> dict[str, float]:
    return {f"b{b}": _median_ms(lambda b=b: backend.run(x[:b]), repeats) for b in BATCHES}


def bench_ort(model: Path, int8: Path, x: np.ndarray, tmp: Path, repeats: int) -> dict[str, Any]:
    from edge_agent.runtime.onnx_backend import OnnxRuntimeBackend

    out: dict[str, Any] = {}
    cpu = OnnxRuntimeBackend(int8, provider="CPUExecutionProvider")
    out["cpu_int8_ms"] = _ort_latencies(cpu, x, repeats)
    cpu.close()
    gpu, cache = probe_nvidia_gpu().name or None, tmp / "trt-cache"

    def load_trt() -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(
            model, provider="TensorrtExecutionProvider", trt_fp16=True, engine_cache_dir=cache,
            gpu_name=gpu, tensorrt_version=tensorrt_version(),
        )  # fmt: skip

    try:
        started = time.perf_counter()
        cold = load_trt()  # empty cache: builds the engine (timed inside by a batch-1 run)
        out["engine_cold_build_s"] = round(time.perf_counter() - started, 3)
        out["ort_trt_fp16_ms"] = _ort_latencies(cold, x, repeats)
        cold.close()
        started = time.perf_counter()
        warm = load_trt()
        warm.run(x[:1])
        out["engine_warm_load_s"] = round(time.perf_counter() - started, 3)
        out["engine_cache_hit"] = bool(warm.engine_cache_hit)
        warm.close()
    except Exception as exc:  # report, do not hide: the CUDA and torch figures still come
        out["tensorrt_error"] = f"{type(exc).__name__}: {exc}"
    try:
        cuda = OnnxRuntimeBackend(model, provider="CUDAExecutionProvider")
        out["ort_cuda_fp32_ms"] = _ort_latencies(cuda, x, repeats)
        cuda.close()
    except Exception as exc:
        out["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return out


def bench_torch_fp16(x: np.ndarray, repeats: int) -> dict[str, float]:
    import torch

    from benchmarks.agent import build_mobilenet96

    torch.manual_seed(0)
    model = build_mobilenet96().eval().half().cuda()
    batch = torch.from_numpy(x).half().cuda()
    with torch.no_grad():
        return {
            f"b{b}": _median_ms(lambda b=b: model(batch[:b]), repeats, sync=torch.cuda.synchronize)
            for b in BATCHES
        }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    facts = detect_device_facts()
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "cpu": {"model": facts.cpu_model, "flags": facts.isa_flags},
    }
    presence = gpu_presence()
    result["gpu_available"] = presence["available"]
    result["looked_for"] = presence
    if not presence["available"]:
        print(
            "no NVIDIA GPU here: torch has no CUDA, onnxruntime offers "
            f"{presence['ort_providers']}, NVML says {presence['nvml_gpu']!r}; "
            "nothing to measure (run this on a machine with a GPU)",
            file=sys.stderr,
        )
        print(json.dumps(result))
        return 0
    from benchmarks.agent import INPUT_SHAPE, export_onnx

    repeats = 20 if args.quick else 200
    x = np.random.default_rng(0).random((max(BATCHES), *INPUT_SHAPE), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="fedfleet-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        export_onnx(tmp / "model.onnx")
        int8 = _int8_model(tmp / "model.onnx", tmp / "model.int8.onnx", x)
        result.update(bench_ort(tmp / "model.onnx", int8, x, tmp, repeats))
    if presence["torch_cuda"]:
        result["torch_cuda_fp16_ms"] = bench_torch_fp16(x, repeats)
    cpu_b32 = result["cpu_int8_ms"]["b32"]
    for key, label in (("ort_trt_fp16_ms", "trt"), ("ort_cuda_fp32_ms", "cuda"),
                       ("torch_cuda_fp16_ms", "torch_fp16")):  # fmt: skip
        if key in result:
            result[f"{label}_speedup_vs_cpu_int8_b32"] = round(cpu_b32 / result[key]["b32"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
