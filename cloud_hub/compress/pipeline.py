"""The compression pipeline: fp32 torch model -> gated artifact folder, per build profile.

``compress_for_profile`` runs: (optional) magnitude pruning -> ONNX export (checked) ->
onnxruntime graph optimization -> int8 (plan per layer type, recipe per target) or fp16 or
fp32 -> evaluation (fp32 torch vs artifact on the same eval set, size, CPU latency at batch 1
and 32; for a target whose kernels the hub does not run, also the exact Q/DQ numerics, and
the gate takes the worse) -> gate (drop, floor, champion, size, latency) -> ``metrics.json``
(with the build report) / ``preprocess.json`` / ``reference_stats.json`` / ``golden.json``;
TFLite profiles take the litert-torch subprocess instead of the ONNX steps. Output layout:
``layout.py``.

``model`` may also be an ``nn.Module`` not in the registry (tests use this for a model with
an operator ONNX cannot express); its ``model_name`` is then only a label.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from cloud_hub.compress.build_report import BuildReport, plan_build_report
from cloud_hub.compress.calibration import LabelledSet
from cloud_hub.compress.evaluate import (
    ArtifactMetrics,
    LatencyConfig,
    Predictor,
    accuracy,
    measure_latency_ms,
    onnx_predictor,
    predict,
    tflite_predictor,
    top1_agreement,
    torch_predictor,
)
from cloud_hub.compress.export import check_onnx, export_onnx
from cloud_hub.compress.fp16 import convert_fp16
from cloud_hub.compress.gate import enforce_budgets
from cloud_hub.compress.golden import GoldenConfig, select_golden_batch
from cloud_hub.compress.layout import (
    GOLDEN_FILE,
    METRICS_FILE,
    PREPROCESS_FILE,
    REFERENCE_STATS_FILE,
    staged_directory,
    write_json,
)
from cloud_hub.compress.optimize import optimize_onnx
from cloud_hub.compress.profile import BuildProfile
from cloud_hub.compress.prune import PruningReport, prune_magnitude
from cloud_hub.compress.quantize import QuantizationPlan, quantize_int8
from cloud_hub.compress.recipes import recipe_for_targets
from cloud_hub.compress.source import build_fp32_model
from cloud_hub.compress.tflite import convert_tflite
from cloud_hub.compress.tflite_env import find_toolchain
from cloud_hub.errors import CompressionError
from shared.device_facts import DeviceFacts
from shared.drift_reference import MIN_SAMPLES as MIN_REFERENCE_SAMPLES
from shared.drift_reference import ReferenceStats
from shared.errors import FedfleetError
from shared.models import get_spec

__all__ = [
    "CompressedArtifact",
    "CompressionConfig",
    "ProfileOutcome",
    "compress_all",
    "compress_for_profile",
]

log = logging.getLogger(__name__)

LABELS: dict[str, tuple[str, ...]] = {"sensor-mlp": ("healthy", "wearing", "failing")}
DataArg = LabelledSet | tuple[ArrayLike, ArrayLike]


@dataclass(frozen=True)
class CompressionConfig:
    """Knobs of the pipeline that are not per device class."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    eval_batch_size: int = 256
    tflite_env: Path | None = None  # default: tflite_env.default_env_dir()
    tflite_timeout_s: float = 900.0
    golden: GoldenConfig = field(default_factory=GoldenConfig)
    hub_facts: DeviceFacts | None = None  # default: this machine's (build_report.py)

    def __post_init__(self) -> None:
        if not 1 <= self.eval_batch_size <= 65_536 or self.tflite_timeout_s <= 0:
            raise CompressionError("eval_batch_size must be in [1, 65536], timeout positive")


@dataclass(frozen=True)
class CompressedArtifact:
    """A committed output folder for one profile."""

    model_name: str
    profile: BuildProfile
    directory: Path
    artifact_path: Path
    metrics: ArtifactMetrics
    quantization: QuantizationPlan | None
    pruning: PruningReport | None
    build_report: BuildReport | None = None


@dataclass(frozen=True)
class ProfileOutcome:
    """``compress_all``'s result for one profile: an artifact or the error that stopped it."""

    profile_name: str
    artifact: CompressedArtifact | None
    error: CompressionError | None


def _labelled(data: DataArg, role: str) -> LabelledSet:
    if isinstance(data, LabelledSet):
        return data
    x, y = data
    return LabelledSet.of(x, y, role=role)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _latencies(fn: Predictor, shape: tuple[int, ...], config: LatencyConfig) -> dict[str, float]:
    return {f"b{b}": round(measure_latency_ms(fn, shape, b, config), 4) for b in config.batch_sizes}


def _build_onnx(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    profile: BuildProfile,
    calib: LabelledSet,
    work: Path,
    dst: Path,
) -> tuple[Path, QuantizationPlan | None]:
    info = export_onnx(model, shape, work / "fp32.onnx", opset=profile.opset)
    optimized = optimize_onnx(work / "fp32.onnx", work / "fp32.opt.onnx")
    plan = None
    if profile.precision == "int8":
        plan = quantize_int8(
            optimized,
            dst,
            op_types=check_onnx(optimized).op_types,
            mode=profile.quantization,
            input_name=info.input_name,
            calib=calib.head(profile.calibration_size),
            work_dir=work,
            recipe=recipe_for_targets(profile.targets),
        )
    elif profile.precision == "fp16":
        convert_fp16(optimized, dst)
    else:
        shutil.copyfile(optimized, dst)
    check_onnx(dst)
    return optimized, plan


def compress_for_profile(
    model_name: str,
    state_dict: dict[str, torch.Tensor] | None,
    profile: BuildProfile,
    *,
    calib: DataArg,
    eval: DataArg,
    out_dir: Path,
    config: CompressionConfig | None = None,
    model: torch.nn.Module | None = None,
    champion_accuracy: float | None = None,
    champion_margin_pts: float = 0.0,
) -> CompressedArtifact:
    """Build, evaluate, gate and commit ``out_dir/<profile.name>/``; see the module docstring.

    ``champion_accuracy``: the deployed champion's accuracy on the same evaluation set; the
    artifact must not trail it by more than ``champion_margin_pts`` (the retraining
    pipeline's champion rule, applied to the artifact).

    Raises ``CompressionError`` (bad input or a failed step) or ``GateRefusedError`` (over a
    budget); either way nothing is left in ``out_dir`` for this profile.
    """
    config = config or CompressionConfig()
    calib_set = _labelled(calib, "calibration")
    eval_set = _labelled(eval, "evaluation")
    if model is None:
        if state_dict is None:
            raise CompressionError("give a state_dict (or a model)")
        model = build_fp32_model(model_name, state_dict)
        shape = get_spec(model_name).input_shape
    else:
        model = model.float().eval()
        shape = eval_set.sample_shape
    eval_set.require_shape(shape)
    calib_set.require_shape(shape)
    if len(calib_set) < MIN_REFERENCE_SAMPLES:  # the drift reference needs a real sample
        raise CompressionError(
            f"the calibration set has {len(calib_set)} samples; at least "
            f"{MIN_REFERENCE_SAMPLES} are needed for the drift reference statistics"
        )
    if profile.format == "tflite":
        toolchain = find_toolchain(config.tflite_env)  # fail before any work if absent
    pruning = None
    if profile.pruning_amount > 0:
        model, pruning = prune_magnitude(model, profile.pruning_amount)
    with _torch_threads(config.latency.threads):
        fp32_fn = torch_predictor(model)
        fp32_logits = predict(fp32_fn, eval_set.x, batch_size=config.eval_batch_size)
        fp32_latency = _latencies(fp32_fn, shape, config.latency)

    with (
        tempfile.TemporaryDirectory(prefix="fedfleet-compress-") as tmp,
        staged_directory(out_dir, profile.name) as stage,
    ):
        work = Path(tmp)
        artifact = stage / profile.artifact_filename
        plan: QuantizationPlan | None = None
        if profile.format == "onnx":
            baseline, plan = _build_onnx(model, shape, profile, calib_set, work, artifact)
            fn = onnx_predictor(artifact, threads=config.latency.threads)
        else:
            out = convert_tflite(
                model_name,
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                precision=profile.precision,
                calib_x=calib_set.head(profile.calibration_size).x,
                work_dir=work,
                toolchain=toolchain,
                timeout_s=config.tflite_timeout_s,
            )
            shutil.copyfile(out.model_path, artifact)
            baseline = out.fp32_path
            fn = tflite_predictor(artifact, threads=config.latency.threads)
        report = plan_build_report(profile.targets, profile.int8_recipe, config.hub_facts)
        logits, report = _judged_logits(fn, artifact, profile, report, eval_set, config)
        metrics = ArtifactMetrics(
            eval_samples=len(eval_set),
            accuracy_fp32=accuracy(fp32_logits, eval_set.y),
            accuracy=accuracy(logits, eval_set.y),
            top1_agreement=top1_agreement(logits, fp32_logits),
            size_bytes_fp32=baseline.stat().st_size,
            size_bytes=artifact.stat().st_size,
            latency_ms=_latencies(fn, shape, config.latency),
            latency_ms_fp32_torch=fp32_latency,
            latency_threads=config.latency.threads,
        )
        log.info("%s/%s: %s", model_name, profile.name, metrics.to_dict())
        enforce_budgets(
            profile.name,
            metrics,
            profile.budgets,
            champion_accuracy=champion_accuracy,
            champion_margin_pts=champion_margin_pts,
        )
        _write_sidecars(
            stage, model_name, profile, shape, metrics, plan, pruning, calib_set, logits, report
        )
        golden = select_golden_batch(
            eval_set.x, logits, evaluated_with=_evaluated_with(report), config=config.golden
        )
        write_json(stage / GOLDEN_FILE, golden.to_dict())
    final = out_dir / profile.name
    return CompressedArtifact(
        model_name=model_name,
        profile=profile,
        directory=final,
        artifact_path=final / profile.artifact_filename,
        metrics=metrics,
        quantization=plan,
        pruning=pruning,
        build_report=report,
    )


def _judged_logits(
    hub_fn: Predictor,
    artifact: Path,
    profile: BuildProfile,
    report: BuildReport,
    eval_set: LabelledSet,
    config: CompressionConfig,
) -> tuple[NDArray[np.float32], BuildReport]:
    """The logits the gate judges: the hub's kernels where they are a target's, the exact
    Q/DQ numerics for targets whose kernels the hub does not run; the less accurate wins."""
    candidates = {"hub_kernels": predict(hub_fn, eval_set.x, batch_size=config.eval_batch_size)}
    if profile.int8_recipe is not None and report.needs_exact_numerics:
        exact_fn = onnx_predictor(artifact, threads=config.latency.threads, exact_qdq=True)
        candidates["exact_qdq"] = predict(exact_fn, eval_set.x, batch_size=config.eval_batch_size)
        if not report.hub_runs_a_target:
            del candidates["hub_kernels"]  # the hub's own int8 kernels are no target's
    accuracies = {k: accuracy(v, eval_set.y) for k, v in candidates.items()}
    worst = min(accuracies, key=lambda k: accuracies[k])
    return candidates[worst], report.with_accuracies(accuracies)


def _evaluated_with(report: BuildReport) -> str:
    where = "hub kernels" if report.hub_runs_a_target else "exact Q/DQ numerics"
    hub = ",".join(report.hub.targets()) or report.hub.arch or "unknown"
    return f"onnxruntime {report.onnxruntime_version}, {where} on {hub} ({report.hub.cpu_model})"


def _softmax_max(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return np.asarray((p / p.sum(axis=1, keepdims=True)).max(axis=1))


def _write_sidecars(
    stage: Path,
    model_name: str,
    profile: BuildProfile,
    shape: tuple[int, ...],
    metrics: ArtifactMetrics,
    plan: QuantizationPlan | None,
    pruning: PruningReport | None,
    calib: LabelledSet,
    logits: NDArray[np.float32],
    report: BuildReport,
) -> None:
    artifact = stage / profile.artifact_filename
    data = artifact.read_bytes()
    write_json(
        stage / METRICS_FILE,
        {
            "type": "compression-metrics",
            "schema_version": 1,
            "model_name": model_name,
            "profile": profile.name,
            "device_class": profile.device_class,
            "build_profile": profile.to_dict(),
            "metrics": metrics.to_dict(),
            "quantization": None if plan is None else plan.to_dict(),
            "pruning": None if pruning is None else asdict(pruning),
            "targets": list(profile.targets),
            "build_report": report.to_dict(),
            "artifact": {
                "file": artifact.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            },
        },
    )
    num_classes = int(logits.shape[1])
    labels = LABELS.get(model_name, tuple(str(i) for i in range(num_classes)))
    preprocess: dict[str, Any] = {
        "type": "preprocess",
        "schema_version": 1,
        "model_name": model_name,
        "task": _task(model_name),
        "format": profile.format,
        "input_name": "input",
        "output_name": "logits",
        "input_shape": list(shape),  # per sample, no batch dimension (the agent reads this)
        "batch_size": None if profile.format == "onnx" else 1,  # None = any batch
        "dtype": "float32",
        "layout": "NCHW" if len(shape) == 3 else "NC",
        "normalisation": {"mean": 0.0, "std": 1.0},  # inputs arrive scaled as in shared.data
        "labels": list(labels),
        "output": "logits",
    }
    write_json(stage / PREPROCESS_FILE, preprocess)
    try:
        stats = ReferenceStats.from_samples(calib.x, confidences=_softmax_max(logits))
    except FedfleetError as exc:
        raise CompressionError(f"reference statistics: {exc}") from exc
    (stage / REFERENCE_STATS_FILE).write_bytes(stats.to_json())


def _task(model_name: str) -> str:
    try:
        return get_spec(model_name).task
    except FedfleetError:
        return "classification"


def compress_all(
    model_name: str,
    state_dict: dict[str, torch.Tensor],
    profiles: Sequence[BuildProfile],
    *,
    calib: DataArg,
    eval: DataArg,
    out_dir: Path,
    config: CompressionConfig | None = None,
) -> tuple[ProfileOutcome, ...]:
    """Every profile in turn; one profile's failure (e.g. a gate refusal) does not stop the
    others — check each ``ProfileOutcome.error``."""
    calib_set = _labelled(calib, "calibration")
    eval_set = _labelled(eval, "evaluation")
    outcomes = []
    for profile in profiles:
        try:
            artifact = compress_for_profile(
                model_name,
                state_dict,
                profile,
                calib=calib_set,
                eval=eval_set,
                out_dir=out_dir,
                config=config,
            )
            outcomes.append(ProfileOutcome(profile.name, artifact, None))
        except CompressionError as exc:
            log.warning("profile %s failed: %s", profile.name, exc)
            outcomes.append(ProfileOutcome(profile.name, None, exc))
    return tuple(outcomes)
