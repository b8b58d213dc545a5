"""Step 3 (TFLite profiles): run the litert-torch converter in its own environment.

The hub process never imports litert-torch; it writes the state_dict and calibration inputs
to a scratch folder and runs ``_tflite_worker.py`` with the converter venv's Python. A missing
environment is a ``CompressionError`` naming the command that builds it — never a silent
fallback to another format.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cloud_hub.compress.tflite_env import TfliteToolchain, find_toolchain
from cloud_hub.errors import CompressionError

__all__ = ["TfliteOutput", "convert_tflite"]


@dataclass(frozen=True)
class TfliteOutput:
    model_path: Path  # the artifact (int8 or fp32, as asked)
    fp32_path: Path  # the fp32 conversion, the size baseline


def _source_root() -> Path:
    import shared

    return Path(shared.__file__).resolve().parents[1]


def convert_tflite(
    model_name: str,
    state_dict: dict[str, torch.Tensor],
    *,
    precision: str,
    calib_x: np.ndarray | None,
    work_dir: Path,
    toolchain: TfliteToolchain | None = None,
    timeout_s: float = 900.0,
) -> TfliteOutput:
    """Convert in a subprocess; raises ``CompressionError`` with the converter's message."""
    if precision not in ("fp32", "int8"):
        raise CompressionError(f"tflite supports fp32 or int8, not {precision}")
    tool = toolchain or find_toolchain()
    weights = work_dir / "weights.pt"
    torch.save(state_dict, weights)
    out = work_dir / "model.tflite"
    fp32_out = work_dir / "fp32.tflite"
    cmd = [
        str(tool.python),
        "-P",  # do not put the worker's folder on sys.path (its profile.py shadows stdlib)
        str(tool.worker),
        "--model",
        model_name,
        "--weights",
        str(weights),
        "--precision",
        precision,
        "--out",
        str(out),
        "--fp32-out",
        str(fp32_out),
    ]
    if precision == "int8":
        if calib_x is None or len(calib_x) == 0:
            raise CompressionError("tflite int8 needs a non-empty calibration set")
        calib_path = work_dir / "calib.npy"
        np.save(calib_path, np.asarray(calib_x, dtype=np.float32))
        cmd += ["--calib", str(calib_path)]
    env = {
        **os.environ,
        "PYTHONPATH": str(_source_root()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONWARNINGS": "ignore",
    }
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CompressionError(f"tflite conversion timed out after {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise CompressionError(f"cannot start the TFLite converter: {exc}") from exc
    if result.returncode != 0 or not out.is_file():
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "conversion failed" in ln), None)
        raise CompressionError(
            reason or f"tflite converter exited {result.returncode}: {lines[-5:]}"
        )
    return TfliteOutput(model_path=out, fp32_path=fp32_out)
