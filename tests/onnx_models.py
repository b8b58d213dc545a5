"""Real, loadable ONNX models built without torch, for fast end-to-end tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(
    weights: NDArray[np.float32],
    bias: NDArray[np.float32] | None = None,
    *,
    input_name: str = "input",
    output_name: str = "logits",
) -> bytes:
    """``input [batch, F] @ weights (+ bias) -> output [batch, C]``, checked by onnx."""
    features, classes = weights.shape
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W")]
    if bias is None:
        nodes = [helper.make_node("MatMul", [input_name, "W"], [output_name])]
    else:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
        nodes = [
            helper.make_node("MatMul", [input_name, "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], [output_name]),
        ]
    return checked_model(
        nodes,
        inits,
        "linear",
        features=features,
        classes=classes,
        input_name=input_name,
        output_name=output_name,
    )


def checked_model(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    name: str,
    *,
    features: int = 4,
    classes: int = 3,
    input_name: str = "input",
    output_name: str = "logits",
) -> bytes:
    """The serialized model of ``nodes``: ``input [batch, features] -> output [batch,
    classes]`` (opset 17, IR 8, what the agents' onnxruntime loads), checked by onnx."""
    graph = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_onnx_model(features: int = 4, classes: int = 3) -> bytes:
    """A small seeded MatMul + Add model."""
    w = np.random.default_rng(0).normal(size=(features, classes)).astype(np.float32)
    return linear_onnx(w, np.zeros(classes, np.float32))
