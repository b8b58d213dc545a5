"""Step 1: torch model -> one self-contained ONNX file with a dynamic batch dimension.

Uses the TorchScript exporter (``dynamo=False``): it writes a single file (the dynamo
exporter writes ``model.onnx.data`` beside it unless told otherwise) and takes ~0.1 s for
our edge models where the dynamo exporter takes seconds. The result is checked with
``onnx.checker`` and must declare a symbolic batch dimension on input and output.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from cloud_hub.errors import CompressionError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxGraphInfo", "check_onnx", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What a checked ONNX graph looks like from the outside."""

    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]  # None = symbolic (the batch)
    op_types: frozenset[str]
    opset: int


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], dst: Path, *, opset: int = 17
) -> OnnxGraphInfo:
    """Export ``model`` (eval mode, fp32) for per-sample ``input_shape`` and check the file."""
    model = model.eval()
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation notice
            torch.onnx.export(
                model,
                (example,),
                str(dst),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: _BATCH_DIM}, OUTPUT_NAME: {0: _BATCH_DIM}},
                opset_version=opset,
                do_constant_folding=True,
            )
    except torch.onnx.OnnxExporterError as exc:
        raise CompressionError(f"ONNX export failed (unsupported operator?): {exc}") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CompressionError(f"ONNX export failed: {exc}") from exc
    return check_onnx(dst)


def check_onnx(path: Path) -> OnnxGraphInfo:
    """Run ``onnx.checker`` (full check) and require one input/output with a dynamic batch."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CompressionError(f"{path.name} fails onnx.checker: {exc}") from exc
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
        raise CompressionError(f"{path.name} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CompressionError(f"{path.name}: expected one input and one output")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(None if d.dim_param or not d.HasField("dim_value") else d.dim_value for d in dims)
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if not shape or shape[0] is not None or not out_dims or not out_dims[0].dim_param:
        raise CompressionError(f"{path.name}: the batch dimension is not dynamic")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxGraphInfo(
        input_name=inputs[0].name,
        output_name=graph.output[0].name,
        input_shape=shape,
        op_types=frozenset(n.op_type for n in graph.node),
        opset=opset,
    )
