"""``cloud-hub compress`` (model -> gated artifacts per device class) and ``cloud-hub tflite-env``.

::

    cloud-hub compress CANDIDATE_DIR --profile x86-cpu            # a model-store candidate
    cloud-hub compress CANDIDATE_DIR --all-profiles --out results/compress
    cloud-hub compress --model-name digits-cnn --weights model.pt --profile rpi4
    cloud-hub tflite-env create | check                           # litert-torch's own venv

A candidate folder is what ``cloud_hub.fl.model_store.ModelStore`` writes: ``model.pt`` (a
state_dict) and ``candidate.json`` (its ``model_name``). Calibration/evaluation data default
to the hub-held sets of that model (``cloud_hub.compress.datasets``); ``--calib``/``--eval``
take ``.npz`` files with arrays ``x`` and ``y``. Output: ``OUT/<profile>/`` (see
``cloud_hub.compress.layout``), what ``cloud-hub bundle build --from-dir`` consumes.
Exit status: 0 all profiles built, 1 some refused or failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_hub.errors import CompressionError, HubConfigError

if TYPE_CHECKING:  # imported lazily: onnxruntime is slow to import for every CLI call
    from cloud_hub.compress.calibration import LabelledSet

__all__ = ["register"]

MAX_CANDIDATE_JSON = 4 * 1024 * 1024


def _candidate(path: Path) -> tuple[str, Path]:
    """(model_name, weights) of a model-store candidate folder."""
    record = path / "candidate.json"
    weights = path / "model.pt"
    if not record.is_file() or not weights.is_file():
        raise CompressionError(
            f"{path} is not a model-store candidate (needs candidate.json + model.pt)"
        )
    if record.stat().st_size > MAX_CANDIDATE_JSON:
        raise CompressionError(f"{record} is too large")
    try:
        data = json.loads(record.read_text("utf-8"))
        name = data["model_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CompressionError(f"{record} has no readable model_name: {exc}") from exc
    if not isinstance(name, str):
        raise CompressionError(f"{record}: model_name must be a string")
    return name, weights


def _npz(path: Path, role: str) -> LabelledSet:
    from cloud_hub.compress.calibration import LabelledSet

    try:
        with np.load(path, allow_pickle=False) as data:
            return LabelledSet.of(data["x"], data["y"], role=role)
    except (OSError, ValueError, KeyError) as exc:
        raise CompressionError(f"{path} is not an .npz with arrays x and y: {exc}") from exc


def _resolve_model(args: argparse.Namespace) -> tuple[str, Path]:
    if args.model is not None:
        if args.weights is not None:
            raise HubConfigError("give MODEL or --weights, not both")
        if args.model.is_dir():
            name, weights = _candidate(args.model)
            if args.model_name and args.model_name != name:
                raise HubConfigError(f"--model-name {args.model_name} != candidate's {name}")
            return name, weights
        if not args.model_name:
            raise HubConfigError("a .pt MODEL file needs --model-name")
        return args.model_name, args.model
    if args.weights is None or not args.model_name:
        raise HubConfigError("give MODEL (a candidate folder or .pt) or --model-name + --weights")
    return args.model_name, args.weights


def _compress(args: argparse.Namespace) -> int:
    from cloud_hub.compress import CompressionConfig, compress_all, load_all_profiles, load_profile
    from cloud_hub.compress.datasets import hub_datasets
    from cloud_hub.compress.source import load_state_dict_file

    if bool(args.profile) == bool(args.all_profiles):
        raise HubConfigError("give --profile NAME (repeatable) or --all-profiles")
    model_name, weights = _resolve_model(args)
    if args.all_profiles:
        profiles = load_all_profiles(args.profiles_dir)
    else:
        profiles = tuple(load_profile(p, profiles_dir=args.profiles_dir) for p in args.profile)
    state_dict = load_state_dict_file(weights)
    hub = hub_datasets(model_name) if args.calib is None or args.eval is None else None
    calib = _npz(args.calib, "calibration") if args.calib else hub[0] if hub else None
    evaluation = _npz(args.eval, "evaluation") if args.eval else hub[1] if hub else None
    assert calib is not None and evaluation is not None
    outcomes = compress_all(
        model_name,
        state_dict,
        profiles,
        calib=calib,
        eval=evaluation,
        out_dir=args.out,
        config=CompressionConfig(tflite_env=args.tflite_env),
    )
    for outcome in outcomes:
        if outcome.artifact is not None:
            m = outcome.artifact.metrics
            print(
                f"{outcome.profile_name}: {outcome.artifact.artifact_path} "
                f"acc {m.accuracy_fp32 * 100:.2f}% -> {m.accuracy * 100:.2f}% "
                f"size {m.size_bytes} B ({m.size_ratio:.2f}x fp32) "
                f"latency b1 {m.latency_ms['b1']:.3f} ms b32 {m.latency_ms['b32']:.3f} ms"
            )
            report = outcome.artifact.build_report
            for note in () if report is None else report.evaluations:
                print(f"  {note.target}: {note.note}")
        else:
            print(f"{outcome.profile_name}: error: {outcome.error}")
    return 0 if all(o.error is None for o in outcomes) else 1


def _tflite_env(args: argparse.Namespace) -> int:
    from cloud_hub.compress.tflite_env import create_env, find_toolchain

    toolchain = create_env(args.env) if args.action == "create" else find_toolchain(args.env)
    print(f"TFLite converter environment ready: {toolchain.env_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("compress", help="compress a trained model per device class")
    p.add_argument("model", nargs="?", type=Path, help="model-store candidate folder or .pt file")
    p.add_argument("--model-name", help="registry model name (for a .pt file / --weights)")
    p.add_argument("--weights", type=Path, help="state_dict .pt file")
    p.add_argument("--profile", action="append", help="build profile name or .toml path")
    p.add_argument("--all-profiles", action="store_true", help="every profile in the folder")
    p.add_argument("--profiles-dir", type=Path, default=None, help="default: firmware_bundles/")
    p.add_argument("--calib", type=Path, help=".npz (x, y); default: hub-held set")
    p.add_argument("--eval", type=Path, help=".npz (x, y); default: hub-held set")
    p.add_argument("-o", "--out", type=Path, default=Path("results/compress"), help="output folder")
    p.add_argument("--tflite-env", type=Path, default=None, help="default: .venv-litert/")
    p.set_defaults(func=_compress)

    env = subparsers.add_parser("tflite-env", help="build/check the litert-torch converter venv")
    env.add_argument("action", choices=("create", "check"))
    env.add_argument("--env", type=Path, default=None, help="default: .venv-litert/")
    env.set_defaults(func=_tflite_env)
