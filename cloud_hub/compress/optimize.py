"""Step 2: onnxruntime graph optimization (constant folding, Conv+BN fusion, dead nodes).

Only the *basic* level is written to disk: its rewrites are standard ONNX and portable to
every execution provider; the extended/layout levels emit CPU-specific contrib ops that the
quantizer and a GPU device would not understand. Each device's runtime applies its own
provider-specific optimizations when it loads the artifact.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from cloud_hub.errors import CompressionError

__all__ = ["optimize_onnx"]


def optimize_onnx(src: Path, dst: Path) -> Path:
    """Write the basic-level optimized graph of ``src`` to ``dst``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise CompressionError(f"onnxruntime cannot optimize {src.name}: {exc}") from exc
    if not dst.is_file():
        raise CompressionError(f"onnxruntime wrote no optimized model for {src.name}")
    return dst
