"""Evaluation: run fp32 torch and every artifact on the same eval set; size and CPU latency.

Predictors are plain functions ``x (n, *shape) float32 -> logits (n, classes)``; the ONNX one
is a stock ``onnxruntime.InferenceSession`` on the CPU provider, which is what an x86/ARM
agent runs, so the hub's numbers are the device's numbers (see the parity test).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from cloud_hub.errors import CompressionError

__all__ = [
    "ArtifactMetrics",
    "LatencyConfig",
    "Predictor",
    "accuracy",
    "measure_latency_ms",
    "onnx_predictor",
    "predict",
    "tflite_predictor",
    "top1_agreement",
    "torch_predictor",
]

Predictor = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured (median of ``repeats`` timed calls after ``warmup``)."""

    threads: int = 1
    warmup: int = 3
    repeats: int = 20
    batch_sizes: tuple[int, ...] = (1, 32)

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 256 or not 0 <= self.warmup <= 1000:
            raise CompressionError("latency threads must be in [1, 256], warmup in [0, 1000]")
        if not 1 <= self.repeats <= 10_000 or not self.batch_sizes:
            raise CompressionError("latency repeats must be in [1, 10000] with >= 1 batch size")


def onnx_predictor(
    path: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    exact_qdq: bool = False,
) -> Predictor:
    """A predictor over an ONNX file (CPU provider unless told otherwise).

    ``exact_qdq``: run with graph optimizations off, so a Q/DQ graph is computed as written
    (DequantizeLinear -> float op -> QuantizeLinear) instead of by the fused int8 kernels of
    this CPU: the integer result every exact kernel (VNNI, NEON, TensorRT) computes, without
    the int16 saturation of U8S8 kernels on x86 CPUs without VNNI.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if exact_qdq:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime's own exception types are not importable
        raise CompressionError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    input_name = session.get_inputs()[0].name

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(session.run(None, {input_name: x})[0], dtype=np.float32)

    return run


def tflite_predictor(path: Path, *, threads: int = 1) -> Predictor:
    """A predictor over a ``.tflite`` file using LiteRT (``ai-edge-litert``).

    The converted model has a fixed batch of 1, as on the device, so a batch is run sample by
    sample; int8 inputs/outputs (if any) are (de)quantized with the tensor's parameters.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise CompressionError(
            "evaluating a .tflite artifact needs ai-edge-litert (pip install fedfleet[tflite])"
        ) from exc
    try:
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise CompressionError(f"LiteRT cannot load {path.name}: {exc}") from exc
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        rows = []
        for sample in x:
            value: NDArray[Any] = sample[None]
            if inp["dtype"] != np.float32:
                scale, zero = inp["quantization"]
                value = np.round(value / scale + zero).astype(inp["dtype"])
            interp.set_tensor(inp["index"], value)
            interp.invoke()
            result = interp.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                result = (result.astype(np.float32) - zero) * scale
            rows.append(np.asarray(result, dtype=np.float32).reshape(1, -1))
        return np.concatenate(rows, axis=0)

    return run


def torch_predictor(model: Any) -> Predictor:
    """A predictor over an fp32 torch module in eval mode (the reference)."""
    import torch

    model.eval()

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            return np.asarray(model(torch.from_numpy(x)).numpy(), dtype=np.float32)

    return run


def predict(fn: Predictor, x: NDArray[np.float32], *, batch_size: int = 256) -> NDArray[np.float32]:
    """Logits for all of ``x``, in batches."""
    return np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(logits: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    return float(np.mean(np.argmax(logits, axis=1) == y))


def top1_agreement(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Fraction of samples where two models pick the same class."""
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def measure_latency_ms(
    fn: Predictor, sample_shape: tuple[int, ...], batch: int, config: LatencyConfig
) -> float:
    """Median wall time of one call on a batch of ``batch`` random samples, in ms."""
    x = np.random.default_rng(0).random((batch, *sample_shape), dtype=np.float32)
    for _ in range(config.warmup):
        fn(x)
    times = []
    for _ in range(config.repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


@dataclass(frozen=True)
class ArtifactMetrics:
    """fp32 vs compressed figures for one artifact (goes into ``metrics.json``)."""

    eval_samples: int
    accuracy_fp32: float  # torch fp32 on the eval set, fraction
    accuracy: float  # the artifact on the same eval set
    top1_agreement: float  # fraction of eval samples where artifact and fp32 agree
    size_bytes_fp32: int  # the fp32 export in the same format
    size_bytes: int
    latency_ms: dict[str, float]  # "b1", "b32": the artifact on the hub CPU
    latency_ms_fp32_torch: dict[str, float]  # same batches, torch eager fp32
    latency_threads: int

    @property
    def accuracy_drop_pts(self) -> float:
        return (self.accuracy_fp32 - self.accuracy) * 100.0

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.size_bytes_fp32

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy_drop_pts"] = round(self.accuracy_drop_pts, 4)
        data["size_ratio"] = round(self.size_ratio, 4)
        return data
