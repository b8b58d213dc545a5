"""Converter subprocess: torch state_dict -> .tflite (fp32, optionally static int8).

Runs *inside the litert-torch environment* (``tflite_env``), started by path with the source
tree on ``PYTHONPATH``; it imports only ``shared.models`` from fedfleet (torch + numpy), never
``cloud_hub`` (whose onnx/onnxruntime are not in that environment).

int8 uses ai-edge-quantizer's static recipe (int8 weights per channel, int8 activations from
calibration) with float inputs/outputs kept, so the agent feeds float32 as with ONNX.
Errors: exit status 3 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> None:
    import litert_torch
    import numpy as np
    import torch

    from shared.models import build_model, get_spec

    spec = get_spec(args.model)
    model = build_model(args.model)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    example = (torch.zeros((1, *spec.input_shape), dtype=torch.float32),)
    litert_torch.convert(model, example).export(str(args.fp32_out))
    if args.precision == "fp32":
        Path(args.out).write_bytes(Path(args.fp32_out).read_bytes())
        return
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_path=str(args.fp32_out)).get_signature_list()
    signature = next(iter(signatures))
    input_name = signatures[signature]["inputs"][0]
    calib = np.load(args.calib).astype(np.float32)
    if calib.shape[0] == 0:
        raise ValueError("the calibration set is empty")
    keep_float_io = [
        {"regex": ".*", "operation": "INPUT", "algorithm_key": "no_quantize"},
        {"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"},
    ]
    q = quantizer.Quantizer(str(args.fp32_out))
    q.load_quantization_recipe(recipe.static_wi8_ai8() + keep_float_io)
    data = {signature: [{input_name: sample[None]} for sample in calib]}
    result = q.quantize(q.calibrate(data), enable_progress_report=False)
    result.export_model(str(args.out), overwrite=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--precision", choices=("fp32", "int8"), required=True)
    parser.add_argument("--calib", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fp32-out", required=True)
    args = parser.parse_args()
    try:
        _convert(args)
    except Exception as exc:  # the process boundary: one line for the parent
        print(f"tflite conversion failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
