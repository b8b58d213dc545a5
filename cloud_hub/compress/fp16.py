"""Step 3 (GPU profiles): fp32 -> fp16 weights and compute, fp32 inputs/outputs kept.

fp16 halves the size and speeds up GPUs (TensorRT/CUDA); on a CPU it brings no speedup
(onnxruntime inserts casts), which is why only GPU profiles use it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxconverter_common import float16

from cloud_hub.errors import CompressionError

__all__ = ["convert_fp16"]


def convert_fp16(src: Path, dst: Path) -> Path:
    """Write the fp16 version of ``src``; inputs and outputs stay float32 for the agent."""
    try:
        model = onnx.load(str(src))
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(converted)
        onnx.save(converted, str(dst))
    except Exception as exc:  # onnxconverter-common raises untyped errors
        raise CompressionError(f"fp16 conversion of {src.name} failed: {exc}") from exc
    return dst
