"""Step 3: int8 quantization with onnxruntime, the mode chosen per layer type, the data
types and ``reduce_range`` per target (``recipes.py``).

Measured on this project's CPUs (onnxruntime 1.32): static int8 QDQ with per-channel
weights makes a small CNN 3.6x smaller and 1.2-1.4x faster than ORT fp32, while *dynamic*
int8 on convolutions is 6-8x *slower* than fp32. So the plan is per operator type:

* ``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` -> static QDQ (needs calibration data);
* ``LSTM``/``GRU``/``Attention`` (activation ranges depend on the sequence) -> dynamic int8,
  where onnxruntime supports it (``LSTM``, ``Attention``);
* without calibration data (``quantization = "dynamic"``) only ``MatMul``/``LSTM``/
  ``Attention``/``Gather`` are quantized dynamically; convolutions stay fp32 rather than
  getting slower, and ``Gemm`` is first rewritten to ``MatMul + Add`` (onnxruntime's
  dynamic quantizer has no ``Gemm``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cloud_hub.compress.calibration import ArrayCalibrationReader, LabelledSet
from cloud_hub.compress.recipes import Int8Recipe
from cloud_hub.errors import CompressionError

__all__ = [
    "DYNAMIC_OPS",
    "STATIC_OPS",
    "QuantizationPlan",
    "gemm_to_matmul",
    "plan_quantization",
    "quantize_int8",
]

log = logging.getLogger(__name__)

STATIC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SEQUENCE_OPS = frozenset({"LSTM", "Attention"})  # dynamic even when calibration exists
DYNAMIC_OPS = frozenset({"MatMul", "LSTM", "Attention", "Gather"})


@dataclass(frozen=True)
class QuantizationPlan:
    """Which operator types get static QDQ and which dynamic int8; the rest stay float."""

    static_ops: frozenset[str]
    dynamic_ops: frozenset[str]
    float_ops: frozenset[str]  # weight-bearing ops left in fp32 (see the module docstring)

    @property
    def is_empty(self) -> bool:
        return not self.static_ops and not self.dynamic_ops

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "static_qdq": sorted(self.static_ops),
            "dynamic": sorted(self.dynamic_ops),
            "float": sorted(self.float_ops),
        }


def plan_quantization(op_types: frozenset[str], mode: str) -> QuantizationPlan:
    """Pure: choose static/dynamic per operator type present in the graph."""
    weighted = op_types & (STATIC_OPS | DYNAMIC_OPS | SEQUENCE_OPS)
    if mode in ("auto", "static"):
        static = op_types & STATIC_OPS
        dynamic = op_types & SEQUENCE_OPS if mode == "auto" else frozenset()
    elif mode == "dynamic":
        static = frozenset()
        # Gemm is rewritten to MatMul before dynamic quantization; Conv stays fp32 (slower).
        dynamic = (op_types | ({"MatMul"} if "Gemm" in op_types else set())) & DYNAMIC_OPS
    else:
        raise CompressionError(f"unknown quantization mode {mode!r}")
    covered = static | dynamic | ({"Gemm"} if "MatMul" in dynamic else set())
    return QuantizationPlan(
        static_ops=frozenset(static),
        dynamic_ops=frozenset(dynamic),
        float_ops=frozenset(weighted - covered),
    )


def gemm_to_matmul(src: Path, dst: Path) -> Path:
    """Rewrite ``Gemm(A, B, C)`` (alpha = beta = 1, no transA) to ``MatMul`` + ``Add``."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if (
            node.op_type != "Gemm"
            or attrs.get("transA", 0)
            or not plain
            or node.input[1] not in inits
        ):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_t"
            model.graph.initializer.append(numpy_helper.from_array(transposed, weight))
        product = f"{node.output[0]}_matmul"
        has_bias = len(node.input) > 2 and node.input[2]
        nodes.append(
            helper.make_node(
                "MatMul",
                [node.input[0], weight],
                [product if has_bias else node.output[0]],
                name=f"{node.name}_matmul",
            )
        )
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add"
                )
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


_QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


def _static(
    src: Path,
    dst: Path,
    ops: frozenset[str],
    calib: LabelledSet,
    input_name: str,
    recipe: Int8Recipe,
) -> None:
    reader = ArrayCalibrationReader(input_name, calib.x)
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=recipe.op_types(ops),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=_QUANT_TYPES[recipe.activation_type],
        weight_type=_QUANT_TYPES[recipe.weight_type],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": recipe.symmetric_activations,
            "WeightSymmetric": recipe.symmetric_weights,
        },
    )


def _dynamic(src: Path, dst: Path, ops: frozenset[str], recipe: Int8Recipe) -> None:
    # dynamic int8 quantizes activations to uint8 at run time: the U8S8 kernels again
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=sorted(ops),
        weight_type=_QUANT_TYPES[recipe.weight_type],
        reduce_range=recipe.reduce_range,
        per_channel=False,
    )


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    op_types: frozenset[str],
    mode: str,
    input_name: str,
    calib: LabelledSet | None,
    work_dir: Path,
    recipe: Int8Recipe,
) -> QuantizationPlan:
    """Quantize ``src`` to ``dst`` following ``plan_quantization`` with the target's
    ``recipe`` (``recipes.py``); returns the plan used."""
    plan = plan_quantization(op_types, mode)
    if plan.is_empty:
        raise CompressionError(
            f"int8 ({mode}) has nothing to quantize in a graph of {sorted(op_types)}"
        )
    if plan.static_ops and (calib is None or len(calib) == 0):
        raise CompressionError("static int8 needs a non-empty calibration set")
    try:
        # Shape inference so the quantizer knows every tensor's type (graph already optimized).
        current = work_dir / "quant.pre.onnx"
        quant_pre_process(str(src), str(current), skip_optimization=True)
        if plan.static_ops:
            assert calib is not None
            static_out = work_dir / "static.onnx" if plan.dynamic_ops else dst
            _static(current, static_out, plan.static_ops, calib, input_name, recipe)
            current = static_out
        if plan.dynamic_ops:
            if "MatMul" in plan.dynamic_ops and "Gemm" in op_types:
                current = gemm_to_matmul(current, work_dir / "matmul.onnx")
            _dynamic(current, dst, plan.dynamic_ops, recipe)
    except CompressionError:
        raise
    except Exception as exc:  # the quantizer raises bare Exceptions/ValueErrors
        raise CompressionError(f"int8 quantization failed: {exc}") from exc
    log.info("int8 plan: %s, recipe %s", plan.to_dict(), recipe.name)
    return plan
