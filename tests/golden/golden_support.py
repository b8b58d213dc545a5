"""Artifacts for the golden-batch tests: a real fp32 ONNX model, its correct int8 artifact
(the pipeline's quantizer and x86 recipe), and a deliberately mis-quantized one (calibrated
on inputs 50x too small, so real inputs clip), each with the golden batch the hub's
compression code selects from logits measured on an artifact."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.compress.calibration import LabelledSet
from cloud_hub.compress.evaluate import onnx_predictor
from cloud_hub.compress.golden import select_golden_batch
from cloud_hub.compress.quantize import quantize_int8
from cloud_hub.compress.recipes import recipe_for_targets
from shared.golden import GoldenBatch
from tests.onnx_models import linear_onnx

FEATURES, CLASSES = 8, 3
TARGETS = ("x86-avx2", "x86-vnni")


@dataclass(frozen=True)
class GoldenArtifacts:
    good_int8: bytes
    misquantized_int8: bytes
    good_golden: GoldenBatch  # measured on good_int8: it must pass on any device
    x: NDArray[np.float32]


def _quantize(fp32: Path, calib_x: NDArray[np.float32], out: Path, work: Path) -> bytes:
    quantize_int8(
        fp32,
        out,
        op_types=frozenset({"MatMul", "Add"}),
        mode="static",
        input_name="input",
        calib=LabelledSet.of(calib_x, np.zeros(len(calib_x), np.int64), role="calibration"),
        work_dir=work,
        recipe=recipe_for_targets(TARGETS),
    )
    return out.read_bytes()


def build_artifacts() -> GoldenArtifacts:
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    bias = rng.normal(size=CLASSES).astype(np.float32)
    x = rng.normal(size=(256, FEATURES)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        fp32.write_bytes(linear_onnx(weights, bias))
        good = _quantize(fp32, x, work / "good.onnx", work)
        bad = _quantize(fp32, x / 50.0, work / "bad.onnx", work)
        logits = onnx_predictor(work / "good.onnx")(x)
    golden = select_golden_batch(x, logits, evaluated_with="test hub: onnxruntime CPU")
    return GoldenArtifacts(good, bad, golden, x)


def logits_of(model: bytes, x: NDArray[np.float32]) -> NDArray[np.float32]:
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(model)
        return onnx_predictor(path)(x)
