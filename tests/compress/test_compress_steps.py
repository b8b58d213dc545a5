"""Each pipeline step on its own, on models trained in the test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from cloud_hub.compress.calibration import ArrayCalibrationReader, LabelledSet
from cloud_hub.compress.evaluate import onnx_predictor, predict, top1_agreement, torch_predictor
from cloud_hub.compress.export import check_onnx, export_onnx
from cloud_hub.compress.fp16 import convert_fp16
from cloud_hub.compress.optimize import optimize_onnx
from cloud_hub.compress.prune import prune_magnitude
from cloud_hub.compress.quantize import gemm_to_matmul, plan_quantization, quantize_int8
from cloud_hub.compress.recipes import recipe_for
from cloud_hub.errors import CompressionError


def _export(trained: Any, tmp_path: Path) -> tuple[Path, Path]:
    from shared.models import get_spec

    raw = tmp_path / "fp32.onnx"
    export_onnx(trained.model, get_spec(trained.name).input_shape, raw)
    return raw, optimize_onnx(raw, tmp_path / "opt.onnx")


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return predict(onnx_predictor(path), x)


def test_export_has_a_dynamic_batch_and_matches_torch(digits: Any, tmp_path: Path) -> None:
    info = export_onnx(digits.model, (1, 8, 8), tmp_path / "m.onnx")
    assert info.input_shape == (None, 1, 8, 8) and {"Conv", "Gemm"} <= info.op_types
    assert not (tmp_path / "m.onnx.data").exists()  # one self-contained file
    ref = predict(torch_predictor(digits.model), digits.eval.x)
    fn = onnx_predictor(tmp_path / "m.onnx")
    for batch in (1, 7, len(digits.eval)):  # several batch sizes through the same graph
        np.testing.assert_allclose(fn(digits.eval.x[:batch]), ref[:batch], atol=1e-4)


def test_export_refuses_an_unsupported_operator(
    unexportable_model: torch.nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(CompressionError, match="unsupported operator"):
        export_onnx(unexportable_model, (1, 8, 8), tmp_path / "eig.onnx")


def test_check_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"definitely not protobuf \x00\xff")
    with pytest.raises(CompressionError, match=r"bogus\.onnx"):
        check_onnx(bogus)


def test_optimized_graph_computes_the_same(digits: Any, tmp_path: Path) -> None:
    raw, optimized = _export(digits, tmp_path)
    np.testing.assert_allclose(
        _logits(optimized, digits.eval.x), _logits(raw, digits.eval.x), atol=1e-4
    )


def test_static_int8_is_per_channel_qdq_and_agrees_with_fp32(digits: Any, tmp_path: Path) -> None:
    raw, optimized = _export(digits, tmp_path)
    out = tmp_path / "int8.onnx"
    plan = quantize_int8(
        optimized,
        out,
        op_types=check_onnx(optimized).op_types,
        mode="auto",
        input_name="input",
        calib=digits.calib.head(256),
        work_dir=tmp_path,
        recipe=recipe_for("x86-avx2"),
    )
    assert plan.static_ops == {"Conv", "Gemm"} and not plan.dynamic_ops
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in graph.initializer}
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights must be stored as int8"
    per_channel = [
        numpy_helper.to_array(inits[n.input[1]]).size
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in int8_weights}
    ]
    assert 16 in per_channel  # the first conv's 16 output channels each have a scale
    agreement = top1_agreement(_logits(out, digits.eval.x), _logits(raw, digits.eval.x))
    assert agreement >= 0.98
    assert out.stat().st_size < 0.35 * raw.stat().st_size


def test_dynamic_int8_leaves_convs_alone_and_quantizes_dense_layers(
    sensors: Any, tmp_path: Path
) -> None:
    raw, optimized = _export(sensors, tmp_path)
    out = tmp_path / "dyn.onnx"
    plan = quantize_int8(
        optimized,
        out,
        op_types=check_onnx(optimized).op_types,
        mode="dynamic",
        input_name="input",
        calib=None,
        work_dir=tmp_path,
        recipe=recipe_for("x86-avx2"),
    )
    assert plan.dynamic_ops == {"MatMul"} and not plan.static_ops
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    agreement = top1_agreement(_logits(out, sensors.eval.x), _logits(raw, sensors.eval.x))
    assert agreement >= 0.98


def test_plan_chooses_the_mode_per_layer_type() -> None:
    cnn = frozenset({"Conv", "Relu", "MaxPool", "Gemm"})
    assert plan_quantization(cnn, "auto").static_ops == {"Conv", "Gemm"}
    dynamic = plan_quantization(cnn, "dynamic")
    assert "Conv" in dynamic.float_ops and "Conv" not in dynamic.dynamic_ops
    assert dynamic.dynamic_ops == {"MatMul"}  # Gemm is rewritten first
    rnn = plan_quantization(frozenset({"LSTM", "MatMul"}), "auto")
    assert (rnn.static_ops, rnn.dynamic_ops) == ({"MatMul"}, {"LSTM"})
    assert plan_quantization(frozenset({"Relu"}), "auto").is_empty
    with pytest.raises(CompressionError):
        plan_quantization(cnn, "int4")


def test_int8_refuses_an_empty_calibration_set(digits: Any, tmp_path: Path) -> None:
    _, optimized = _export(digits, tmp_path)
    with pytest.raises(CompressionError, match="calibration set"):
        quantize_int8(
            optimized,
            tmp_path / "x.onnx",
            op_types=check_onnx(optimized).op_types,
            mode="static",
            input_name="input",
            calib=None,
            work_dir=tmp_path,
            recipe=recipe_for("x86-avx2"),
        )
    with pytest.raises(CompressionError, match="calibration set is empty"):
        LabelledSet.of(np.zeros((0, 1, 8, 8)), np.zeros(0, dtype=np.int64), role="calibration")


def test_gemm_rewrite_is_exact(sensors: Any, tmp_path: Path) -> None:
    _, optimized = _export(sensors, tmp_path)
    rewritten = gemm_to_matmul(optimized, tmp_path / "mm.onnx")
    ops = [n.op_type for n in onnx.load(str(rewritten)).graph.node]
    assert "Gemm" not in ops and "MatMul" in ops
    np.testing.assert_allclose(
        _logits(rewritten, sensors.eval.x), _logits(optimized, sensors.eval.x), atol=1e-5
    )


def test_fp16_halves_the_weights_and_keeps_float32_io(digits: Any, tmp_path: Path) -> None:
    raw, optimized = _export(digits, tmp_path)
    out = convert_fp16(optimized, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert out.stat().st_size < 0.6 * raw.stat().st_size
    agreement = top1_agreement(_logits(out, digits.eval.x), _logits(raw, digits.eval.x))
    assert agreement >= 0.98


def test_pruning_zeroes_the_smallest_weights_of_a_copy(digits: Any) -> None:
    pruned, report = prune_magnitude(digits.model, 0.5)
    assert 0.49 <= report.sparsity <= 0.51
    assert all(not hasattr(m, "weight_orig") for m in pruned.modules())  # made permanent
    original = digits.model.features[0].weight
    assert int((original == 0).sum()) == 0  # the input model is untouched
    with pytest.raises(CompressionError):
        prune_magnitude(digits.model, 1.0)


def test_calibration_reader_yields_every_sample_and_rewinds() -> None:
    x = np.arange(70 * 4, dtype=np.float32).reshape(70, 4)
    reader = ArrayCalibrationReader("input", x, batch_size=32)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(batch["input"].shape[0])
    assert sizes == [32, 32, 6]
    reader.rewind()
    first = reader.get_next()
    assert first is not None
    np.testing.assert_array_equal(first["input"], x[:32])


def _metrics(**changes: Any) -> Any:
    from cloud_hub.compress.evaluate import ArtifactMetrics

    base = {
        "eval_samples": 100,
        "accuracy_fp32": 0.97,
        "accuracy": 0.96,
        "top1_agreement": 0.99,
        "size_bytes_fp32": 4_000_000,
        "size_bytes": 1_048_576,
        "latency_ms": {"b1": 2.0, "b32": 20.0},
        "latency_ms_fp32_torch": {"b1": 5.0, "b32": 50.0},
        "latency_threads": 1,
    }
    return ArtifactMetrics(**{**base, **changes})


def test_gate_names_every_exceeded_budget_with_both_numbers() -> None:
    from cloud_hub.compress.gate import budget_violations, enforce_budgets
    from cloud_hub.compress.profile import Budgets
    from cloud_hub.errors import GateRefusedError

    budgets = Budgets(
        max_size_mb=1.0, max_accuracy_drop_pts=1.0, max_latency_ms=2.0, min_accuracy_pct=50.0
    )
    assert budget_violations(_metrics(), budgets) == ()  # exactly at the limits passes
    enforce_budgets("x", _metrics(), budgets)
    bad = _metrics(accuracy=0.90, size_bytes=3 * 1_048_576, latency_ms={"b1": 9.5, "b32": 1.0})
    assert len(budget_violations(bad, budgets)) == 3
    with pytest.raises(GateRefusedError) as err:
        enforce_budgets("x86-cpu", bad, budgets)
    text = str(err.value)
    assert "size 3.000 MB > max 1.000 MB" in text
    assert "accuracy drop 7.00 pts (fp32 97.00% -> 90.00%) > max 1.00 pts" in text
    assert "batch-1 latency 9.500 ms > max 2.000 ms" in text


def test_gate_floor_and_champion_refuse_what_the_drop_rule_passes() -> None:
    """A chance-level model's artifact loses nothing against its own fp32 model: only the
    floor refuses it; the champion comparison refuses an artifact worse than the champion."""
    from cloud_hub.compress.gate import budget_violations
    from cloud_hub.compress.profile import Budgets

    budgets = Budgets(
        max_size_mb=1.0, max_accuracy_drop_pts=1.0, max_latency_ms=2.0, min_accuracy_pct=60.0
    )
    chance = _metrics(accuracy_fp32=0.32, accuracy=0.32)
    assert budget_violations(chance, budgets) == ("accuracy 32.00% < floor 60.00%",)
    assert budget_violations(_metrics(accuracy=0.60, accuracy_fp32=0.60), budgets) == ()
    good = _metrics()  # 96 % artifact
    assert budget_violations(good, budgets, champion_accuracy=0.96) == ()
    assert budget_violations(good, budgets, champion_accuracy=0.97) == (
        "accuracy 96.00% < champion 97.00% - 0.00 pts",
    )
    assert budget_violations(good, budgets, champion_accuracy=0.97, champion_margin_pts=1.0) == ()


class _SequenceModel(torch.nn.Module):
    """LSTM + dense head: the layer mix where the plan uses both static and dynamic int8."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 32, batch_first=True)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_auto_int8_mixes_static_dense_and_dynamic_lstm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _SequenceModel().eval()
    export_onnx(model, (10, 6), tmp_path / "seq.onnx")
    optimized = optimize_onnx(tmp_path / "seq.onnx", tmp_path / "seq.opt.onnx")
    x = np.random.default_rng(0).normal(size=(200, 10, 6)).astype(np.float32)
    calib = LabelledSet.of(x, np.zeros(200, dtype=np.int64), role="calibration")
    out = tmp_path / "seq.int8.onnx"
    plan = quantize_int8(
        optimized,
        out,
        op_types=check_onnx(optimized).op_types,
        mode="auto",
        input_name="input",
        calib=calib,
        work_dir=tmp_path,
        recipe=recipe_for("x86-avx2"),
    )
    assert (plan.static_ops, plan.dynamic_ops) == ({"Gemm"}, {"LSTM"})
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLSTM", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert top1_agreement(_logits(out, x), _logits(optimized, x)) >= 0.98


_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "Attention", "Gather", "Relu", "Add"]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.frozensets(st.sampled_from(_OPS)), mode=st.sampled_from(["auto", "static", "dynamic"])
)
def test_plan_invariants(ops: frozenset[str], mode: str) -> None:
    plan = plan_quantization(ops, mode)
    assert not plan.static_ops & plan.dynamic_ops
    assert "Conv" not in plan.dynamic_ops  # dynamic int8 convs are 6-8x slower than fp32
    assert plan.static_ops <= ops
    if mode == "dynamic":
        assert not plan.static_ops  # no calibration in this mode
        assert (
            not {"Conv", "ConvTranspose"} & ops or plan.float_ops >= {"Conv", "ConvTranspose"} & ops
        )
    else:
        assert plan.static_ops == ops & {"Conv", "ConvTranspose", "Gemm", "MatMul"}
