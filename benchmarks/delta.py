"""Delta bundles vs full bundles vs a generic bsdiff4+zstd of the whole file.

Same run, same models: the digits CNN trained centrally (the installed version), then
(a) one federated round of fine-tuning (FedAvg over K clients, one local epoch each on a
non-IID shard) and (b) a full retraining from the same initialisation with other data order.
Each new version is exported to ONNX fp32 and quantised to int8 (static QDQ, the x86/rpi
profiles' artifact). For each, we compare the bytes of the full artifact, of fedfleet's
delta (the smaller of the model-aware delta and bsdiff4, zstd-compressed) and of a plain
bsdiff4+zstd of the whole file (the generic baseline), and time applying the delta on the
agent side.

Last output line: one JSON object with ``delta_ratio_finetune`` (int8, the artifact CPU
devices install), ``delta_ratio_finetune_fp32``, ``delta_ratio_retrain`` (int8),
``delta_ratio_retrain_fp32``, ``generic_ratio_finetune`` (int8), ``generic_ratio_finetune_fp32``,
``apply_ms``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_hub.delta import build_delta_artifact
from shared.data import load_digits_dataset
from shared.delta import apply_delta
from shared.models import build_model
from tests.delta.conftest import export_onnx, quantize_int8, train


def fedavg_round(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, clients: int, seed: int
) -> None:
    """One FedAvg round: each client trains one epoch on its shard; weights are averaged."""
    rng = np.random.default_rng(seed)
    order = np.argsort(y + rng.random(len(y)) * 3)  # label-sorted-ish shards: non-IID
    shards = np.array_split(order, clients)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    acc = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in base.items()}
    total = 0
    for i, shard in enumerate(shards):
        model.load_state_dict(base)
        train(model, x[shard], y[shard], steps=max(1, len(shard) // 64), lr=0.01, seed=seed + i)
        for k, v in model.state_dict().items():
            acc[k] += v.float() * len(shard)
        total += len(shard)
    model.load_state_dict({k: (v / total).to(base[k].dtype) for k, v in acc.items()})


def generic(base: bytes, target: bytes) -> int:
    import bsdiff4

    return len(zstandard.ZstdCompressor(level=19).compress(bsdiff4.diff(base, target)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller training, fewer timing repeats"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    steps = 120 if args.quick else 400
    x, y = load_digits_dataset()
    calib = x[:128]

    model = build_model("digits-cnn", seed=0)
    train(model, x, y, steps=steps, lr=0.05, seed=1)
    base_fp32 = export_onnx(model)
    fedavg_round(model, x, y, clients=10, seed=7)
    finetune_fp32 = export_onnx(model)
    fresh = build_model("digits-cnn", seed=0)
    train(fresh, x, y, steps=steps, lr=0.05, seed=3)
    retrain_fp32 = export_onnx(fresh)
    base_int8, finetune_int8, retrain_int8 = (
        quantize_int8(m, calib) for m in (base_fp32, finetune_fp32, retrain_fp32)
    )

    rows = []
    apply_times: list[float] = []
    results: dict[str, float] = {}
    for label, base, target in [
        ("finetune_int8", base_int8, finetune_int8),
        ("finetune_fp32", base_fp32, finetune_fp32),
        ("retrain_int8", base_int8, retrain_int8),
        ("retrain_fp32", base_fp32, retrain_fp32),
    ]:
        built = build_delta_artifact("model.onnx", base, target)
        reps = 5 if args.quick else 20
        for _ in range(reps):
            s = time.perf_counter()
            out = apply_delta(base, built.delta)
            apply_times.append((time.perf_counter() - s) * 1000)
        assert out == target
        gen = generic(base, target)
        results[f"delta_ratio_{label}"] = round(built.ratio, 4)
        results[f"generic_ratio_{label}"] = round(gen / len(target), 4)
        rows.append((label, len(target), len(built.delta), built.method, gen))

    print(
        f"{'case':<16}{'full B':>10}{'delta B':>10}{'method':>14}{'generic B':>11}{'delta/full':>12}"
    )
    for label, full, delta, method, gen in rows:
        print(f"{label:<16}{full:>10}{delta:>10}{method:>14}{gen:>11}{delta / full:>12.3f}")
    summary = {
        "delta_ratio_finetune": results["delta_ratio_finetune_int8"],
        "delta_ratio_finetune_fp32": results["delta_ratio_finetune_fp32"],
        "delta_ratio_retrain": results["delta_ratio_retrain_int8"],
        "delta_ratio_retrain_fp32": results["delta_ratio_retrain_fp32"],
        "generic_ratio_finetune": results["generic_ratio_finetune_int8"],
        "generic_ratio_finetune_fp32": results["generic_ratio_finetune_fp32"],
        "apply_ms": round(statistics.median(apply_times), 3),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
