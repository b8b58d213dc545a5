"""Export a ``shared.models`` model to a single-file ONNX model (for demos and benchmarks).

Uses torch's TorchScript-based exporter (``dynamo=False``): one self-contained file, no
``.onnx.data`` side file, and a few seconds instead of the dynamo exporter's ~15 s on 2 cores.
The weights are the freshly initialised ones: this is a delivery payload, not a trained model
(training lives in ``cloud_hub.fl``).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

__all__ = ["export_onnx", "preprocess_json"]


def export_onnx(model_name: str = "sensor-mlp", *, seed: int = 0, opset: int = 17) -> bytes:
    import torch

    from shared.models import build_model, get_spec

    spec = get_spec(model_name)
    torch.manual_seed(seed)
    model = build_model(model_name).eval()
    example = torch.zeros(1, *spec.input_shape)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        return path.read_bytes()


def preprocess_json(model_name: str = "sensor-mlp") -> bytes:
    """The ``preprocess.json`` artifact agents read the per-sample input shape from."""
    from shared.models import get_spec

    spec = get_spec(model_name)
    return json.dumps({"input_shape": list(spec.input_shape), "model": model_name}).encode()
