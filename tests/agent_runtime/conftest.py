"""Fixtures: shared.models models exported to ONNX with their state_dict, once per session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import ModelArtifacts


@dataclass(frozen=True)
class ExportedModel:
    name: str
    onnx: Path
    state_dict: Path
    input_shape: tuple[int, ...]

    def artifacts(self, version: int = 1) -> ModelArtifacts:
        return ModelArtifacts(
            version=version, onnx=self.onnx, state_dict=self.state_dict, model_name=self.name
        )

    def batch(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, *self.input_shape)).astype(np.float32)


def export_model(name: str, directory: Path, *, seed: int = 0) -> ExportedModel:
    import torch

    from shared.models import build_model, get_spec

    spec = get_spec(name)
    model = build_model(name, seed=seed).eval()
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *spec.input_shape),),
            str(onnx_path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    sd_path = directory / f"{name}.pt"
    torch.save(model.state_dict(), sd_path)
    return ExportedModel(name, onnx_path, sd_path, tuple(spec.input_shape))


@pytest.fixture(scope="session")
def sensor_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_model("sensor-mlp", tmp_path_factory.mktemp("sensor"))


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_model("digits-cnn", tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def sensor_model_v2(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_model("sensor-mlp", tmp_path_factory.mktemp("sensor-v2"), seed=1)


def fc_tflite_bytes(w: np.ndarray, b: np.ndarray) -> bytes:
    """A one-op TFLite model ``y = x @ w.T + b`` (float32, resizable batch), built without
    TensorFlow from the flatbuffer schema that LiteRT ships."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    n_out, n_in = w.shape
    buffers = [tfl.BufferT() for _ in range(4)]
    buffers[2].data = list(np.ascontiguousarray(w, np.float32).tobytes())
    buffers[3].data = list(np.ascontiguousarray(b, np.float32).tobytes())

    def tensor(name: str, shape: list[int], buf: int) -> object:
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, tfl.TensorType.FLOAT32, buf
        return t

    graph = tfl.SubGraphT()
    graph.tensors = [
        tensor("input", [1, n_in], 0),
        tensor("weights", [n_out, n_in], 2),
        tensor("bias", [n_out], 3),
        tensor("output", [1, n_out], 0),
    ]
    graph.inputs, graph.outputs = [0], [3]
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = tfl.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = tfl.FullyConnectedOptionsT()
    graph.operators = [op]
    code = tfl.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="session")
def make_fc_tflite():
    """The builder above, as a fixture (test modules must not import conftest by name)."""
    return fc_tflite_bytes
