"""TFLite (LiteRT) backend: selection, batching and parity with onnxruntime on one layer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import ModelArtifacts, RuntimeProfile, select_backend

pytest.importorskip("ai_edge_litert")


def test_tflite_backend_matches_onnxruntime_on_the_same_weights(
    tmp_path: Path, make_fc_tflite
) -> None:
    import torch

    layer = torch.nn.Linear(12, 3).eval()
    onnx_path = tmp_path / "fc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            layer,
            (torch.zeros(1, 12),),
            str(onnx_path),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    tfl_path = tmp_path / "fc.tflite"
    tfl_path.write_bytes(make_fc_tflite(layer.weight.detach().numpy(), layer.bias.detach().numpy()))
    artifacts = ModelArtifacts(version=2, onnx=onnx_path, tflite=tfl_path)
    tfl = select_backend(artifacts, RuntimeProfile(preferred=("tflite:cpu",)))
    assert (tfl.report.backend, tfl.report.provider) == ("tflite", "cpu")
    assert tfl.backend.input_shape == (12,)
    ort_backend = select_backend(artifacts, RuntimeProfile(preferred=("onnxruntime:cpu",))).backend
    for n in (1, 7, 3):  # the interpreter is resized for each batch size
        x = np.random.default_rng(n).normal(size=(n, 12)).astype(np.float32)
        np.testing.assert_allclose(tfl.backend.run(x), ort_backend.run(x), rtol=1e-5, atol=1e-5)


def test_corrupt_tflite_fails_over_with_reason(tmp_path: Path, sensor_model) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3 garbage")
    artifacts = ModelArtifacts(version=1, onnx=sensor_model.onnx, tflite=bad)
    r = select_backend(
        artifacts, RuntimeProfile(preferred=("tflite:cpu", "onnxruntime:cpu"))
    ).report
    assert r.attempts[0].outcome == "failed" and "bad.tflite" in r.attempts[0].reason
    assert r.backend == "onnxruntime"
    assert r.warnings and "tflite:cpu" in r.warnings[0]
