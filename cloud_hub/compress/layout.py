"""The output folder the bundle builder consumes, written atomically.

Per profile, ``OUT/<profile>/`` holds::

    model.onnx | model.tflite   the artifact
    metrics.json                {"type": "compression-metrics", "schema_version": 1,
                                 "model_name", "profile": NAME, "device_class",
                                 "build_profile": {...}, "metrics": {fp32 vs
                                 compressed accuracy, size, latency b1/b32},
                                 "quantization": {...} | null, "pruning": {...} | null,
                                 "artifact": {"file", "sha256", "size"}}
    preprocess.json             {"type": "preprocess", "schema_version": 1, "model_name",
                                 "task", "format", "input_name", "output_name",
                                 "input_shape": per-sample shape without the batch
                                 dimension, "batch_size": null (any) | 1, "dtype",
                                 "layout", "normalisation": {"mean", "std"}, "labels": [...],
                                 "output": "logits"}
    reference_stats.json        ``shared.drift_reference.ReferenceStats`` (its docstring
                                 has the schema: per-feature mean, std, PSI bin edges and
                                 fractions, a quantile sketch for KS, top-1 confidence)
    golden.json                 ``shared.golden.GoldenBatch``: inputs, the artifact's
                                 logits and top-1 as the hub measured them, a tolerance
                                 (the bundle builder puts it inside the signed manifest)

``metrics.json`` also carries ``"targets"`` and ``"build_report"`` (hub CPU model, ISA
flags, onnxruntime version, int8 recipe, per target whether the hub ran its kernels).

Everything is written in a hidden staging folder next to the target and renamed into place
only when complete; on any error the staging folder is removed, so a failed run leaves
nothing half-written (and an earlier good output for the same profile untouched).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "GOLDEN_FILE",
    "METRICS_FILE",
    "PREPROCESS_FILE",
    "REFERENCE_STATS_FILE",
    "staged_directory",
    "write_json",
]

GOLDEN_FILE = "golden.json"
METRICS_FILE = "metrics.json"
PREPROCESS_FILE = "preprocess.json"
REFERENCE_STATS_FILE = "reference_stats.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def staged_directory(out_dir: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging folder; on clean exit it becomes ``out_dir/name``."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the output is meant to be shared
    try:
        yield staging
        _replace(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _replace(staging: Path, final: Path) -> None:
    if not final.exists():
        staging.rename(final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    old.rmdir()
    final.rename(old)
    try:
        staging.rename(final)
    except OSError:
        old.rename(final)  # put the previous good output back
        raise
    shutil.rmtree(old, ignore_errors=True)
