"""``edge-agent infer`` against a model file and against a running agent process."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main


def test_infer_with_model_file(sensor_model, tmp_path: Path, capsys) -> None:
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps({"inputs": sensor_model.batch(3).tolist()}))
    assert main(["infer", "--model", str(sensor_model.onnx), "--providers", "cpu", str(inp)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["predictions"]) == 3 and out["runtime"]["provider"] == "CPUExecutionProvider"
    inp.write_text("[[1, 2]]")
    assert main(["infer", "--model", str(sensor_model.onnx), str(inp)]) == 2
    assert "does not match the model" in capsys.readouterr().err


@pytest.mark.integration
def test_infer_against_a_running_agent_process(sensor_model, tmp_path: Path, capsys) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.serving",
            "--model",
            str(sensor_model.onnx),
            "--port",
            "0",
            "--providers",
            "cpu",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "agent.log").open("w"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, (tmp_path / "agent.log").read_text()
        ready = json.loads(line)
        assert ready["runtime"]["provider"] == "CPUExecutionProvider"
        inp = tmp_path / "in.json"
        inp.write_text(json.dumps(sensor_model.batch(2).tolist()))
        assert main(["infer", "--url", ready["url"], str(inp)]) == 0
        assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
        nan = np.full((1, 12), np.nan, np.float32)
        b64 = {"inputs_b64": base64.b64encode(nan.tobytes()).decode(), "shape": [1, 12]}
        inp.write_text(json.dumps(b64))
        assert main(["infer", "--url", ready["url"], str(inp)]) == 1
        assert "NaN or infinity" in capsys.readouterr().err
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()


def test_infer_reports_unreachable_agent(tmp_path: Path, capsys) -> None:
    inp = tmp_path / "in.json"
    inp.write_text("[[0]]")
    assert main(["infer", "--url", "http://127.0.0.1:9", str(inp)]) == 2
    assert "unreachable" in capsys.readouterr().err
