"""Compression benchmark: ORT int8 (static QDQ, per-channel) vs ORT fp32 vs torch eager fp32.

Same run, same model, same inputs. The model is ``edge-cnn`` from the registry (3x32x32,
~29 M MACs, 141 k parameters), trained here on the hub-held digits upscaled to 32x32 — the
8x8 digits CNN is too small for int8 to pay off in latency (its figures are reported too,
for accuracy). Steps are the pipeline's own (``cloud_hub.compress``): export -> graph
optimization -> int8 plan per layer type -> evaluation on the held-out 20 %.

Latency: median wall time per call on the CPU, one intra-op thread for every contender
(``--threads``), batches of 1 and 32, contenders timed in alternation (a loaded machine
slows all of them alike). Where a CUDA GPU is usable (onnxruntime's CUDA provider,
else torch CUDA), the fp16 GPU path is measured too and its speedup over the CPU reported;
otherwise the result says why it was skipped.

int8 uses the recipe of the shipped ``x86-cpu`` profile (targets x86-avx2 + x86-vnni:
``reduce_range``, see ``cloud_hub/compress/recipes.py``); every other recipe this machine
can run is measured for accuracy too (with this CPU's kernels and with exact Q/DQ numerics).
The device-side golden-batch check is timed as an agent runs it (the artifact loaded by the
agent's runtime selection, the golden batch inferred and compared).

The last line of output is one JSON object with (at least) ``cpu`` (``model``, ``flags``),
``recipe``, ``size_ratio_int8``, ``accuracy_fp32``, ``accuracy_int8``, ``accuracy_drop_pts``,
``accuracy_drop_pts_by_recipe``, ``speedup_int8_vs_ort_fp32_b1``/``_b32`` (the headline),
``speedup_int8_b1``/``_b32`` (ORT int8 vs torch eager fp32) and ``golden_batch_check_ms``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cloud_hub.compress.build_report import hub_device_facts  # noqa: E402
from cloud_hub.compress.calibration import LabelledSet  # noqa: E402
from cloud_hub.compress.datasets import hub_datasets  # noqa: E402
from cloud_hub.compress.evaluate import (  # noqa: E402
    LatencyConfig,
    Predictor,
    accuracy,
    measure_latency_ms,
    onnx_predictor,
    predict,
    top1_agreement,
    torch_predictor,
)
from cloud_hub.compress.export import check_onnx, export_onnx  # noqa: E402
from cloud_hub.compress.fp16 import convert_fp16  # noqa: E402
from cloud_hub.compress.golden import select_golden_batch  # noqa: E402
from cloud_hub.compress.optimize import optimize_onnx  # noqa: E402
from cloud_hub.compress.profile import load_profile  # noqa: E402
from cloud_hub.compress.quantize import quantize_int8  # noqa: E402
from cloud_hub.compress.recipes import Int8Recipe, recipe_for  # noqa: E402
from shared.device_facts import TARGETS  # noqa: E402
from shared.models import build_model, get_spec  # noqa: E402


def train(name: str, calib: LabelledSet, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(calib.x), torch.from_numpy(calib.y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def quantize(fp32: Path, dst: Path, calib: LabelledSet, work: Path, recipe: Int8Recipe) -> Any:
    return quantize_int8(
        fp32,
        dst,
        op_types=check_onnx(fp32).op_types,
        mode="auto",
        input_name="input",
        calib=calib.head(256),
        work_dir=work,
        recipe=recipe,
    )


def build_artifacts(
    model: torch.nn.Module, name: str, calib: LabelledSet, work: Path, recipe: Int8Recipe
) -> dict[str, Any]:
    shape = get_spec(name).input_shape
    export_onnx(model, shape, work / f"{name}.fp32.raw.onnx")
    fp32 = optimize_onnx(work / f"{name}.fp32.raw.onnx", work / f"{name}.fp32.onnx")
    int8 = work / f"{name}.int8.onnx"
    plan = quantize(fp32, int8, calib, work, recipe)
    fp16 = convert_fp16(fp32, work / f"{name}.fp16.onnx")
    return {"fp32": fp32, "int8": int8, "fp16": fp16, "plan": plan.to_dict(), "shape": shape}


def latencies(fn: Predictor, shape: tuple[int, ...], config: LatencyConfig) -> dict[str, float]:
    return {f"b{b}": measure_latency_ms(fn, shape, b, config) for b in config.batch_sizes}


def interleaved_latencies(
    fns: dict[str, Predictor], shape: tuple[int, ...], config: LatencyConfig
) -> dict[str, dict[str, float]]:
    """Median ms per call, contenders timed in alternation so machine load hits all alike."""
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {name: {} for name in fns}
    for batch in config.batch_sizes:
        x = rng.random((batch, *shape), dtype=np.float32)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for round_ in range(config.warmup + config.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                if round_ >= config.warmup:
                    times[name].append((time.perf_counter() - start) * 1000.0)
        for name in fns:
            result[name][f"b{batch}"] = statistics.median(times[name])
    return result


def gpu_path(
    fp16_model: Path, model: torch.nn.Module, shape: tuple[int, ...], config: LatencyConfig
) -> dict[str, Any]:
    """fp16 on a CUDA GPU: onnxruntime's CUDA provider if present, else torch CUDA."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        fn = onnx_predictor(fp16_model, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        return {"backend": "onnxruntime-cuda-fp16", **latencies(fn, shape, config)}
    if torch.cuda.is_available():
        gpu_model = model.to("cuda").half().eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = gpu_model(torch.from_numpy(x).to("cuda").half())
                return out.float().cpu().numpy()

        return {"backend": "torch-cuda-fp16", **latencies(run, shape, config)}
    return {"skipped": "no CUDA GPU (onnxruntime CUDA provider absent, torch.cuda unavailable)"}


def drops_by_recipe(
    fp32: Path, calib: LabelledSet, evaluation: LabelledSet, acc_fp32: float, work: Path
) -> dict[str, dict[str, float]]:
    """Accuracy drop (points) of every recipe, on this CPU's kernels and on exact Q/DQ."""
    out: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        path = work / f"recipe-{target}.onnx"
        quantize(fp32, path, calib, work, recipe_for(target))
        out[target] = {
            kind: (
                acc_fp32
                - accuracy(
                    predict(onnx_predictor(path, exact_qdq=exact), evaluation.x), evaluation.y
                )
            )
            * 100
            for kind, exact in (("this_cpu_kernels", False), ("exact_qdq", True))
        }
    return out


def golden_check_ms(int8: Path, logits: np.ndarray, x: np.ndarray) -> dict[str, Any]:
    """The device-side check as the agent runs it: runtime selection, golden batch, compare."""
    from edge_agent.runtime import ModelArtifacts, select_backend
    from edge_agent.runtime.golden import run_golden_batch

    golden = select_golden_batch(x, logits, evaluated_with="benchmark")
    started = time.perf_counter()
    loaded = select_backend(ModelArtifacts.from_model_file(int8, version=1))
    load_ms = (time.perf_counter() - started) * 1000.0
    try:
        runs = [run_golden_batch(loaded.backend, golden) for _ in range(5)]
    finally:
        loaded.backend.close()
    return {
        "ms": statistics.median(v.ms for v in runs),
        "load_ms": load_ms,
        "samples": golden.samples,
        "passed": all(v.passed for v in runs),
        "runtime": loaded.report.candidate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs/repeats (< 60 s)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, all contenders")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    epochs = 3 if args.quick else 6
    config = LatencyConfig(
        threads=args.threads, warmup=2 if args.quick else 5, repeats=7 if args.quick else 40
    )

    recipe = load_profile("x86-cpu").int8_recipe
    assert recipe is not None
    hub = hub_device_facts()
    calib, evaluation = hub_datasets("edge-cnn")
    model = train("edge-cnn", calib, epochs)
    print(f"trained edge-cnn in {time.perf_counter() - started:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        art = build_artifacts(model, "edge-cnn", calib, work, recipe)
        shape = art["shape"]
        torch_fn = torch_predictor(model)
        fp32_fn = onnx_predictor(art["fp32"], threads=args.threads)
        int8_fn = onnx_predictor(art["int8"], threads=args.threads)
        logits = {
            k: predict(fn, evaluation.x)
            for k, fn in (("torch", torch_fn), ("ort_fp32", fp32_fn), ("int8", int8_fn))
        }
        lat = interleaved_latencies(
            {"torch_fp32": torch_fn, "ort_fp32": fp32_fn, "ort_int8": int8_fn}, shape, config
        )
        size_fp32, size_int8 = art["fp32"].stat().st_size, art["int8"].stat().st_size
        size_fp16 = art["fp16"].stat().st_size
        gpu = gpu_path(art["fp16"], model, shape, config)

        # The small digits CNN, trained properly: accuracy and size only (too tiny for latency).
        d_calib, d_eval = hub_datasets("digits-cnn")
        digits = train("digits-cnn", d_calib, 3 if args.quick else 8)
        d_art = build_artifacts(digits, "digits-cnn", d_calib, work, recipe)
        d_fp32 = predict(torch_predictor(digits), d_eval.x)
        d_int8 = predict(onnx_predictor(d_art["int8"]), d_eval.x)
        acc_torch = accuracy(logits["torch"], evaluation.y)
        by_recipe = drops_by_recipe(art["fp32"], calib, evaluation, acc_torch, work)
        golden = golden_check_ms(art["int8"], logits["int8"], evaluation.x)
        digits_figures = {
            "accuracy_fp32": accuracy(d_fp32, d_eval.y),
            "accuracy_int8": accuracy(d_int8, d_eval.y),
            "top1_agreement": top1_agreement(d_int8, d_fp32),
            "size_ratio_int8": d_art["int8"].stat().st_size / d_art["fp32"].stat().st_size,
        }

    acc_fp32 = accuracy(logits["torch"], evaluation.y)
    acc_int8 = accuracy(logits["int8"], evaluation.y)
    if "b32" in gpu:
        gpu["speedup_vs_cpu_ort_int8_b32"] = lat["ort_int8"]["b32"] / gpu["b32"]
        gpu["speedup_vs_cpu_ort_fp32_b32"] = lat["ort_fp32"]["b32"] / gpu["b32"]
    print(
        f"model edge-cnn {shape}, trained {epochs} epoch(s); eval {len(evaluation)} samples; threads {args.threads}"
    )
    print(f"CPU: {hub.cpu_model} flags {hub.isa_flags} (target {','.join(hub.targets())})")
    print(f"int8 plan: {art['plan']}, recipe {recipe.to_dict()}")
    print(
        f"HEADLINE int8 vs ORT fp32: b1 {lat['ort_fp32']['b1'] / lat['ort_int8']['b1']:.2f}x, "
        f"b32 {lat['ort_fp32']['b32'] / lat['ort_int8']['b32']:.2f}x; vs torch eager: "
        f"b1 {lat['torch_fp32']['b1'] / lat['ort_int8']['b1']:.2f}x, "
        f"b32 {lat['torch_fp32']['b32'] / lat['ort_int8']['b32']:.2f}x"
    )
    print(f"accuracy drop (pts) by recipe: {by_recipe}")
    print(f"golden batch check on the device runtime: {golden}")
    print(f"{'':12s} {'acc %':>7s} {'size B':>9s} {'b1 ms':>9s} {'b32 ms':>9s}")
    print(
        f"{'torch fp32':12s} {acc_fp32 * 100:7.2f} {'':>9s} {lat['torch_fp32']['b1']:9.3f} {lat['torch_fp32']['b32']:9.3f}"
    )
    print(
        f"{'ORT fp32':12s} {accuracy(logits['ort_fp32'], evaluation.y) * 100:7.2f} {size_fp32:9d} {lat['ort_fp32']['b1']:9.3f} {lat['ort_fp32']['b32']:9.3f}"
    )
    print(
        f"{'ORT int8':12s} {acc_int8 * 100:7.2f} {size_int8:9d} {lat['ort_int8']['b1']:9.3f} {lat['ort_int8']['b32']:9.3f}"
    )
    print(f"{'ONNX fp16':12s} {'':>7s} {size_fp16:9d}")
    print(f"GPU fp16: {gpu}")
    print(f"digits-cnn (8x8): {digits_figures}")
    result = {
        "cpu": {
            "model": hub.cpu_model,
            "flags": list(hub.isa_flags),
            "targets": list(hub.targets()),
        },
        "recipe": recipe.to_dict(),
        "accuracy_drop_pts_by_recipe": by_recipe,
        "golden_batch_check_ms": golden["ms"],
        "golden_batch_check": golden,
        "model": "edge-cnn",
        "quick": args.quick,
        "threads": args.threads,
        "epochs": epochs,
        "eval_samples": len(evaluation),
        "size_ratio_int8": size_int8 / size_fp32,
        "size_ratio_fp16": size_fp16 / size_fp32,
        "accuracy_fp32": acc_fp32,
        "accuracy_int8": acc_int8,
        "accuracy_drop_pts": (acc_fp32 - acc_int8) * 100,
        "top1_agreement_int8": top1_agreement(logits["int8"], logits["torch"]),
        "speedup_int8_b1": lat["torch_fp32"]["b1"] / lat["ort_int8"]["b1"],
        "speedup_int8_b32": lat["torch_fp32"]["b32"] / lat["ort_int8"]["b32"],
        "speedup_int8_vs_ort_fp32_b1": lat["ort_fp32"]["b1"] / lat["ort_int8"]["b1"],
        "speedup_int8_vs_ort_fp32_b32": lat["ort_fp32"]["b32"] / lat["ort_int8"]["b32"],
        "latency_ms": lat,
        "quantization_plan": art["plan"],
        "gpu_fp16": gpu,
        "digits_cnn": digits_figures,
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
