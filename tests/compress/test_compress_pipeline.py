"""The whole pipeline: output layout, gate, bad input, inference parity, compress_all."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cloud_hub.compress import (
    Budgets,
    CompressionConfig,
    compress_all,
    compress_for_profile,
    load_profile,
)
from cloud_hub.compress.evaluate import onnx_predictor, predict
from cloud_hub.compress.source import build_fp32_model, load_state_dict_file
from cloud_hub.errors import CompressionError, GateRefusedError
from shared.drift_reference import ReferenceStats

LAYOUT = {"model.onnx", "metrics.json", "preprocess.json", "reference_stats.json", "golden.json"}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_x86_profile_writes_the_bundle_builder_layout(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    out = tmp_path / "out"
    artifact = compress_for_profile(
        "digits-cnn",
        digits.state_dict,
        load_profile("x86-cpu"),
        calib=digits.calib,
        eval=digits.eval,
        out_dir=out,
        config=fast_config,
    )
    assert _listing(out) == ["x86-cpu"]  # no staging folder left behind
    assert set(_listing(artifact.directory)) == LAYOUT
    m = artifact.metrics
    assert m.top1_agreement >= 0.98
    assert m.accuracy_fp32 > 0.9 and m.accuracy_drop_pts <= 1.0
    assert m.size_bytes == artifact.artifact_path.stat().st_size < 0.35 * m.size_bytes_fp32
    assert set(m.latency_ms) == {"b1", "b32"} and all(v > 0 for v in m.latency_ms.values())
    metrics = json.loads((artifact.directory / "metrics.json").read_text())
    assert metrics["profile"] == "x86-cpu" and metrics["device_class"] == "x86-cpu"
    assert metrics["metrics"]["accuracy"] == m.accuracy
    assert metrics["quantization"]["static_qdq"] == ["Conv", "Gemm"]
    preprocess = json.loads((artifact.directory / "preprocess.json").read_text())
    assert preprocess["input_shape"] == [1, 8, 8] and preprocess["batch_size"] is None
    assert preprocess["dtype"] == "float32"
    assert preprocess["labels"] == [str(i) for i in range(10)]
    stats = ReferenceStats.from_json((artifact.directory / "reference_stats.json").read_bytes())
    assert stats.names == ("c0_mean", "c0_std") and stats.n_samples == len(digits.calib)
    assert stats.confidence is not None and 0.5 < stats.confidence.mean <= 1.0


def test_the_agents_runtime_gives_the_hubs_top1(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    """Parity: a stock onnxruntime CPU session fed one sample at a time, as on a device."""
    artifact = compress_for_profile(
        "digits-cnn",
        digits.state_dict,
        load_profile("x86-cpu"),
        calib=digits.calib,
        eval=digits.eval,
        out_dir=tmp_path,
        config=fast_config,
    )
    hub_top1 = predict(onnx_predictor(artifact.artifact_path), digits.eval.x).argmax(axis=1)
    session = ort.InferenceSession(str(artifact.artifact_path), providers=["CPUExecutionProvider"])
    agent_top1 = np.array(
        [session.run(None, {"input": x[None]})[0].argmax() for x in digits.eval.x]
    )
    np.testing.assert_array_equal(agent_top1, hub_top1)
    assert float(np.mean(agent_top1 == digits.eval.y)) == artifact.metrics.accuracy
    # ... and the agent's own onnxruntime backend, on whole batches.
    from edge_agent.runtime.onnx_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(artifact.artifact_path, provider="CPUExecutionProvider")
    assert backend.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(backend.run(digits.eval.x).argmax(axis=1), hub_top1)


def test_fp16_and_pruned_profiles(
    sensors: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    jetson = compress_for_profile(
        "sensor-mlp",
        sensors.state_dict,
        load_profile("jetson-orin"),
        calib=sensors.calib,
        eval=sensors.eval,
        out_dir=tmp_path,
        config=fast_config,
    )
    assert jetson.metrics.top1_agreement >= 0.98 and jetson.quantization is None
    pruned_profile = dataclasses.replace(
        load_profile("x86-cpu"), name="x86-pruned", pruning_amount=0.3
    )
    pruned = compress_for_profile(
        "sensor-mlp",
        sensors.state_dict,
        pruned_profile,
        calib=sensors.calib,
        eval=sensors.eval,
        out_dir=tmp_path,
        config=fast_config,
    )
    assert pruned.pruning is not None and pruned.pruning.sparsity >= 0.29
    assert pruned.metrics.accuracy_drop_pts <= 1.0
    preprocess = json.loads((jetson.directory / "preprocess.json").read_text())
    assert preprocess["labels"] == ["healthy", "wearing", "failing"]


def test_impossible_budget_is_refused_with_the_numbers_and_nothing_written(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    tight = dataclasses.replace(
        load_profile("x86-cpu"),
        budgets=Budgets(
            max_size_mb=0.001, max_accuracy_drop_pts=1.0, max_latency_ms=1e-6, min_accuracy_pct=50.0
        ),
    )
    with pytest.raises(GateRefusedError) as err:
        compress_for_profile(
            "digits-cnn",
            digits.state_dict,
            tight,
            calib=digits.calib,
            eval=digits.eval,
            out_dir=tmp_path / "out",
            config=fast_config,
        )
    message = str(err.value)
    assert "profile 'x86-cpu' refused" in message
    assert "MB > max 0.001 MB" in message and "ms > max 0.000 ms" in message
    assert not (tmp_path / "out").exists()


def test_a_refused_rebuild_keeps_the_previous_good_output(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    profile = load_profile("x86-cpu")
    kwargs = {
        "calib": digits.calib,
        "eval": digits.eval,
        "out_dir": tmp_path,
        "config": fast_config,
    }
    first = compress_for_profile("digits-cnn", digits.state_dict, profile, **kwargs)  # type: ignore[arg-type]
    before = first.artifact_path.read_bytes()
    tight = dataclasses.replace(
        profile,
        budgets=Budgets(
            max_size_mb=1e-4, max_accuracy_drop_pts=1.0, max_latency_ms=1e3, min_accuracy_pct=50.0
        ),
    )
    with pytest.raises(GateRefusedError):
        compress_for_profile("digits-cnn", digits.state_dict, tight, **kwargs)  # type: ignore[arg-type]
    assert _listing(tmp_path) == ["x86-cpu"]
    assert first.artifact_path.read_bytes() == before


def test_bad_inputs_are_clear_errors_and_leave_nothing(
    digits: Any,
    sensors: Any,
    unexportable_model: torch.nn.Module,
    tmp_path: Path,
    fast_config: CompressionConfig,
) -> None:
    out = tmp_path / "out"
    profile = load_profile("x86-cpu")
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("these are not weights")
    with pytest.raises(CompressionError, match="is not a torch state_dict"):
        load_state_dict_file(not_a_model)
    with pytest.raises(CompressionError, match="do not fit model 'digits-cnn'"):
        build_fp32_model("digits-cnn", sensors.state_dict)
    with pytest.raises(CompressionError, match="unsupported operator"):
        compress_for_profile(
            "eig-model",
            None,
            profile,
            calib=digits.calib,
            eval=digits.eval,
            out_dir=out,
            config=fast_config,
            model=unexportable_model,
        )
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    with pytest.raises(CompressionError, match="calibration set is empty"):
        compress_for_profile(
            "digits-cnn",
            digits.state_dict,
            profile,
            calib=(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64)),
            eval=digits.eval,
            out_dir=out,
            config=fast_config,
        )
    with pytest.raises(CompressionError, match="shape"):
        compress_for_profile(
            "digits-cnn",
            digits.state_dict,
            profile,
            calib=sensors.calib,
            eval=digits.eval,
            out_dir=out,
            config=fast_config,
        )
    assert _listing(out) == ["keep.txt"]


def test_tflite_profile_without_its_environment_fails_loudly(digits: Any, tmp_path: Path) -> None:
    config = CompressionConfig(tflite_env=tmp_path / "no-such-env")
    with pytest.raises(CompressionError, match="cloud-hub tflite-env create"):
        compress_for_profile(
            "digits-cnn",
            digits.state_dict,
            load_profile("rpi4"),
            calib=digits.calib,
            eval=digits.eval,
            out_dir=tmp_path / "out",
            config=config,
        )
    assert not (tmp_path / "out").exists()


def test_compress_all_reports_each_profile(
    sensors: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    good = load_profile("x86-cpu")
    refused = dataclasses.replace(
        good,
        name="tiny",
        budgets=Budgets(
            max_size_mb=1e-5, max_accuracy_drop_pts=1, max_latency_ms=1e3, min_accuracy_pct=50.0
        ),
    )
    outcomes = compress_all(
        "sensor-mlp",
        sensors.state_dict,
        [good, refused],
        calib=sensors.calib,
        eval=sensors.eval,
        out_dir=tmp_path,
        config=fast_config,
    )
    assert [o.profile_name for o in outcomes] == ["x86-cpu", "tiny"]
    assert outcomes[0].artifact is not None and outcomes[0].error is None
    assert isinstance(outcomes[1].error, GateRefusedError) and outcomes[1].artifact is None
    assert _listing(tmp_path) == ["x86-cpu"]


def test_model_may_be_given_as_a_module(digits: Any) -> None:
    model = build_fp32_model("digits-cnn", digits.state_dict)
    x = torch.from_numpy(digits.eval.x[:4])
    torch.testing.assert_close(model(x), digits.model(x))
