"""The TFLite converter's own environment (``litert-torch``), built and found here.

``litert-torch`` converts torch -> ``.tflite`` without TensorFlow, but its pins (protobuf 7,
typer 0.29, ~2 GB) clash with Flower's, so it lives in a separate virtual environment and is
only ever run as a subprocess (``_tflite_worker.py``). Default location: ``.venv-litert/``
at the root of the source tree (ignored by git).

Build it (idempotent; ~1-3 min from a warm pip cache)::

    .venv/bin/cloud-hub tflite-env create [--env DIR]
    .venv/bin/cloud-hub tflite-env check                # exit 0 when usable
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.errors import CompressionError

__all__ = [
    "CREATE_COMMAND",
    "LITERT_TORCH_VERSION",
    "TORCH_VERSION",
    "TfliteToolchain",
    "create_env",
    "default_env_dir",
    "find_toolchain",
]

LITERT_TORCH_VERSION = "0.10.0"
TORCH_VERSION = "2.13.0"  # the CPU wheel, same as the hub's
CREATE_COMMAND = "cloud-hub tflite-env create"
_MARKER = "fedfleet-litert.json"


def default_env_dir() -> Path:
    """``<source tree>/.venv-litert``."""
    return Path(__file__).resolve().parents[2] / ".venv-litert"


@dataclass(frozen=True)
class TfliteToolchain:
    """A built converter environment."""

    env_dir: Path

    @property
    def python(self) -> Path:
        return self.env_dir / "bin" / "python"

    @property
    def worker(self) -> Path:
        return Path(__file__).with_name("_tflite_worker.py")


def find_toolchain(env_dir: Path | None = None) -> TfliteToolchain:
    """The converter environment, or ``CompressionError`` saying how to build it."""
    folder = env_dir or default_env_dir()
    toolchain = TfliteToolchain(folder)
    if not toolchain.python.is_file() or not (folder / _MARKER).is_file():
        raise CompressionError(
            f"the TFLite converter environment is missing at {folder} "
            f"(litert-torch=={LITERT_TORCH_VERSION} lives in its own venv); "
            f"build it with: {CREATE_COMMAND}"
        )
    return toolchain


def create_env(env_dir: Path | None = None, *, python: str = sys.executable) -> TfliteToolchain:
    """Create (or complete) the converter venv; raises ``CompressionError`` on failure."""
    folder = env_dir or default_env_dir()
    toolchain = TfliteToolchain(folder)
    if (folder / _MARKER).is_file():
        return toolchain
    steps = [
        [python, "-m", "venv", str(folder)],
        [
            str(toolchain.python),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"litert-torch=={LITERT_TORCH_VERSION}",
            f"torch=={TORCH_VERSION}",
        ],
    ]
    for cmd in steps:
        if cmd[1:3] == ["-m", "venv"] and toolchain.python.is_file():
            continue
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CompressionError(
                f"building the TFLite environment failed at {' '.join(cmd[:4])}: "
                f"{result.stderr.strip()[-2000:]}"
            )
    probe = subprocess.run(
        [str(toolchain.python), "-c", "import litert_torch, torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise CompressionError(f"litert-torch does not import: {probe.stderr.strip()[-2000:]}")
    (folder / _MARKER).write_text(
        json.dumps({"litert_torch": LITERT_TORCH_VERSION, "torch": probe.stdout.strip()}) + "\n"
    )
    return toolchain
