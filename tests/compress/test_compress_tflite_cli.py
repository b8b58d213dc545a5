"""The TFLite path for real (litert-torch in its own venv, LiteRT to evaluate) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.compress import CompressionConfig, compress_for_profile, load_profile
from cloud_hub.compress.evaluate import predict, tflite_predictor
from cloud_hub.compress.tflite_env import create_env, find_toolchain
from cloud_hub.errors import CompressionError
from cloud_hub.fl.model_store import ModelStore
from shared.fl.training import get_weights


def _toolchain_or_skip() -> None:
    try:
        find_toolchain()
    except CompressionError as exc:
        pytest.skip(f"{exc} (the slow test builds it)")


def _rpi4(trained: Any, out: Path, config: CompressionConfig) -> Any:
    return compress_for_profile(
        "digits-cnn",
        trained.state_dict,
        load_profile("rpi4"),
        calib=trained.calib,
        eval=trained.eval,
        out_dir=out,
        config=config,
    )


def _check_rpi4(artifact: Any, trained: Any) -> None:
    assert sorted(p.name for p in artifact.directory.iterdir()) == [
        "golden.json",
        "metrics.json",
        "model.tflite",
        "preprocess.json",
        "reference_stats.json",
    ]
    m = artifact.metrics
    assert m.top1_agreement >= 0.98
    assert m.size_bytes < 0.35 * m.size_bytes_fp32  # int8 weights, not an fp32 copy
    # LiteRT (what an rpi4 agent runs) reproduces the hub's accuracy on the same inputs.
    logits = predict(tflite_predictor(artifact.artifact_path), trained.eval.x)
    assert float(np.mean(logits.argmax(axis=1) == trained.eval.y)) == m.accuracy
    # The agent's TFLite backend, fed one sample at a time (the artifact's batch is 1).
    from edge_agent.runtime.tflite_backend import TFLiteBackend

    backend = TFLiteBackend(artifact.artifact_path, module="ai_edge_litert")
    agent_top1 = [int(backend.run(x[None]).argmax()) for x in trained.eval.x]
    np.testing.assert_array_equal(agent_top1, logits.argmax(axis=1))
    # the golden batch passes on the agent's LiteRT runtime, as its health check runs it
    from edge_agent.runtime.golden import run_golden_batch
    from shared.golden import GoldenBatch

    golden = GoldenBatch.from_dict(json.loads((artifact.directory / "golden.json").read_text()))
    assert run_golden_batch(backend, golden).passed
    preprocess = json.loads((artifact.directory / "preprocess.json").read_text())
    assert preprocess["format"] == "tflite" and preprocess["input_shape"] == [1, 8, 8]
    assert preprocess["batch_size"] == 1


def test_rpi4_tflite_int8_for_real(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    _toolchain_or_skip()
    _check_rpi4(_rpi4(digits, tmp_path, fast_config), digits)


@pytest.mark.slow
def test_rpi4_tflite_after_building_the_converter_env(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    """Builds .venv-litert/ when absent (minutes, ~2 GB), then converts."""
    create_env()
    _check_rpi4(_rpi4(digits, tmp_path, fast_config), digits)


def test_cli_compresses_a_model_store_candidate(
    digits: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.models import build_model

    model = build_model("digits-cnn")
    model.load_state_dict(digits.state_dict)
    store = ModelStore(tmp_path / "store")
    store.save_candidate(
        run_id="run-1",
        model_name="digits-cnn",
        weights=get_weights(model),
        lineage={"rounds": 3},
        metrics={},
        created_at="2026-11-24T00:00:00Z",
    )
    out = tmp_path / "out"
    code = main(
        ["compress", str(tmp_path / "store" / "run-1"), "--profile", "x86-cpu", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "x86-cpu: " in printed
    # the build report's verdict per target: one the hub ran, one it could not
    assert "evaluated with the target's kernels" in printed
    assert "could not evaluate with target kernels" in printed
    metrics = json.loads((out / "x86-cpu" / "metrics.json").read_text())
    assert metrics["model_name"] == "digits-cnn" and metrics["metrics"]["top1_agreement"] >= 0.98


def test_cli_bad_inputs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    out = tmp_path / "out"
    args = [
        "compress",
        str(junk),
        "--model-name",
        "digits-cnn",
        "--profile",
        "x86-cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "is not a torch state_dict" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compress", str(tmp_path), "--all-profiles", "--out", str(out)]) == 2
    assert "not a model-store candidate" in capsys.readouterr().err
    assert main(["compress", str(junk), "--model-name", "digits-cnn"]) == 2
    assert "--profile NAME" in capsys.readouterr().err
