"""Build profiles: what artifact each device class gets, and the budgets it must meet.

A profile is a TOML file in the repository's ``firmware_bundles/`` folder (one per device
class, e.g. ``x86-cpu.toml``)::

    name = "x86-cpu"
    device_class = "x86-cpu"
    description = "..."
    targets = ["x86-avx2", "x86-vnni"]  # the int8 kernels the artifact must serve

    [artifact]
    format = "onnx"          # onnx | tflite
    precision = "int8"       # fp32 | fp16 | int8
    quantization = "auto"    # auto | static | dynamic (int8 only)
    calibration_size = 256   # samples of the hub-held calibration set (static int8)
    pruning_amount = 0.0     # L1 magnitude pruning before export, in [0, 0.95]; 0 = off
    opset = 17

    [budgets]
    max_size_mb = 5.0
    max_accuracy_drop_pts = 1.0
    max_latency_ms = 20.0    # batch-1 latency on the hub's CPU
    min_accuracy_pct = 90.0  # absolute floor on the artifact's accuracy, in percent

    [runtime]
    providers = ["CPUExecutionProvider"]

Unknown keys are refused (a typo must not silently drop a budget). ``targets`` (see
``shared.device_facts``) picks the int8 recipe (``recipes.py``) and is recorded in the
manifest, so a rollout can say which devices an artifact was not built for.

Where profiles are found (one way): ``load_profile(NAME)`` looks in ``default_profiles_dir()``,
the ``firmware_bundles/`` folder of the source tree this package was imported from (an
editable install or a checkout). An installed wheel has no source tree: pass a folder
(``profiles_dir=`` / ``cloud-hub compress --profiles-dir``) or a path to a ``.toml`` file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.compress.recipes import Int8Recipe, recipe_for_targets
from cloud_hub.errors import HubConfigError
from shared.device_facts import TARGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "FORMATS",
    "PRECISIONS",
    "QUANTIZATION_MODES",
    "Budgets",
    "BuildProfile",
    "default_profiles_dir",
    "list_profiles",
    "load_all_profiles",
    "load_profile",
    "parse_profile",
]

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATION_MODES = ("auto", "static", "dynamic")
ORT_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)
TFLITE_RUNTIMES = ("LiteRT",)
MAX_CALIBRATION_SIZE = 100_000
MAX_PROFILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Budgets:
    """Limits an artifact must meet; the gate refuses it otherwise."""

    max_size_mb: float
    max_accuracy_drop_pts: float
    max_latency_ms: float
    min_accuracy_pct: float  # the floor: a chance-level model's artifact must not pass

    def __post_init__(self) -> None:
        floor = self.min_accuracy_pct
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 < floor <= 100:
            raise HubConfigError(f"budget min_accuracy_pct must be in (0, 100], got {floor!r}")
        for field_name in ("max_size_mb", "max_accuracy_drop_pts", "max_latency_ms"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise HubConfigError(
                    f"budget {field_name} must be a positive number, got {value!r}"
                )
        if self.max_accuracy_drop_pts > 100:
            raise HubConfigError("budget max_accuracy_drop_pts must be <= 100 points")


@dataclass(frozen=True)
class BuildProfile:
    """One device class's build recipe (validated on construction)."""

    name: str
    device_class: str
    format: str
    precision: str
    budgets: Budgets
    providers: tuple[str, ...]
    targets: tuple[str, ...]
    quantization: str = "auto"
    calibration_size: int = 256
    pruning_amount: float = 0.0
    opset: int = 17
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise HubConfigError(f"profile name {self.name!r} must be non-empty [A-Za-z0-9._-]")
        if not self.device_class:
            raise HubConfigError(f"profile {self.name}: device_class is empty")
        if not self.targets or any(t not in TARGETS for t in self.targets):
            raise HubConfigError(
                f"profile {self.name}: targets {list(self.targets)} must be a non-empty list "
                f"from {list(TARGETS)}"
            )
        if self.format == "onnx" and self.precision == "int8":
            recipe_for_targets(self.targets)  # refuses targets that need different recipes
        if self.format not in FORMATS:
            raise HubConfigError(f"profile {self.name}: format {self.format!r} not in {FORMATS}")
        if self.precision not in PRECISIONS:
            raise HubConfigError(
                f"profile {self.name}: precision {self.precision!r} not in {PRECISIONS}"
            )
        if self.quantization not in QUANTIZATION_MODES:
            raise HubConfigError(
                f"profile {self.name}: quantization {self.quantization!r} not in {QUANTIZATION_MODES}"
            )
        if self.format == "tflite" and self.precision == "fp16":
            raise HubConfigError(f"profile {self.name}: tflite supports fp32 or int8, not fp16")
        if self.format == "tflite" and self.precision == "int8" and self.quantization == "dynamic":
            raise HubConfigError(f"profile {self.name}: tflite int8 is static only")
        if not 0 <= self.calibration_size <= MAX_CALIBRATION_SIZE:
            raise HubConfigError(
                f"profile {self.name}: calibration_size must be in [0, {MAX_CALIBRATION_SIZE}]"
            )
        if self.needs_calibration and self.calibration_size == 0:
            raise HubConfigError(
                f"profile {self.name}: {self.format} {self.precision} ({self.quantization}) "
                "needs calibration_size > 0"
            )
        if not 0.0 <= self.pruning_amount <= 0.95:
            raise HubConfigError(f"profile {self.name}: pruning_amount must be in [0, 0.95]")
        if not 13 <= self.opset <= 21:
            raise HubConfigError(f"profile {self.name}: opset must be in [13, 21]")
        known = TFLITE_RUNTIMES if self.format == "tflite" else ORT_PROVIDERS
        if not self.providers or any(p not in known for p in self.providers):
            raise HubConfigError(
                f"profile {self.name}: providers {list(self.providers)} must be a non-empty "
                f"list from {list(known)}"
            )

    @property
    def needs_calibration(self) -> bool:
        """Whether building this profile reads the calibration set."""
        if self.precision != "int8":
            return False
        return self.format == "tflite" or self.quantization in ("auto", "static")

    @property
    def int8_recipe(self) -> Int8Recipe | None:
        """The onnxruntime int8 recipe for this profile's targets (ONNX int8 only)."""
        if self.format != "onnx" or self.precision != "int8":
            return None
        return recipe_for_targets(self.targets)

    @property
    def artifact_filename(self) -> str:
        return "model.tflite" if self.format == "tflite" else "model.onnx"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``metrics.json`` and the bundle manifest."""
        return {
            "name": self.name,
            "device_class": self.device_class,
            "format": self.format,
            "precision": self.precision,
            "quantization": self.quantization,
            "calibration_size": self.calibration_size,
            "pruning_amount": self.pruning_amount,
            "opset": self.opset,
            "providers": list(self.providers),
            "targets": list(self.targets),
            "budgets": {
                "max_size_mb": self.budgets.max_size_mb,
                "max_accuracy_drop_pts": self.budgets.max_accuracy_drop_pts,
                "max_latency_ms": self.budgets.max_latency_ms,
                "min_accuracy_pct": self.budgets.min_accuracy_pct,
            },
        }


_TOP_KEYS = {"name", "device_class", "description", "targets", "artifact", "budgets", "runtime"}
_ARTIFACT_KEYS = {
    "format",
    "precision",
    "quantization",
    "calibration_size",
    "pruning_amount",
    "opset",
}
_BUDGET_KEYS = {"max_size_mb", "max_accuracy_drop_pts", "max_latency_ms", "min_accuracy_pct"}
_RUNTIME_KEYS = {"providers"}


def _table(data: Mapping[str, Any], key: str, allowed: set[str], where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise HubConfigError(f"{where}: missing table [{key}]")
    unknown = set(value) - allowed
    if unknown:
        raise HubConfigError(f"{where}: unknown keys in [{key}]: {sorted(unknown)}")
    return value


def parse_profile(data: Mapping[str, Any], *, source: str = "<profile>") -> BuildProfile:
    """Build a validated profile from parsed TOML; raises ``HubConfigError``."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise HubConfigError(f"{source}: unknown keys {sorted(unknown)}")
    artifact = _table(data, "artifact", _ARTIFACT_KEYS, source)
    budgets = _table(data, "budgets", _BUDGET_KEYS, source)
    runtime = _table(data, "runtime", _RUNTIME_KEYS, source)
    missing = _BUDGET_KEYS - set(budgets)
    if missing:
        raise HubConfigError(f"{source}: missing budgets {sorted(missing)}")
    for key in ("format", "precision"):
        if key not in artifact:
            raise HubConfigError(f"{source}: [artifact] needs {key!r}")
    providers = runtime.get("providers")
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise HubConfigError(f"{source}: [runtime] providers must be a list of strings")
    targets = data.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise HubConfigError(f"{source}: targets must be a list of strings from {list(TARGETS)}")
    try:
        return BuildProfile(
            name=str(data.get("name", "")),
            device_class=str(data.get("device_class", data.get("name", ""))),
            description=str(data.get("description", "")),
            format=str(artifact["format"]),
            precision=str(artifact["precision"]),
            quantization=str(artifact.get("quantization", "auto")),
            calibration_size=_int(artifact.get("calibration_size", 256), "calibration_size"),
            pruning_amount=float(artifact.get("pruning_amount", 0.0)),
            opset=_int(artifact.get("opset", 17), "opset"),
            budgets=Budgets(**{k: budgets[k] for k in _BUDGET_KEYS}),
            providers=tuple(providers),
            targets=tuple(targets),
        )
    except HubConfigError as exc:
        raise HubConfigError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise HubConfigError(f"{source}: {exc}") from exc


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HubConfigError(f"{what} must be an integer, got {value!r}")
    return value


def default_profiles_dir() -> Path:
    """The source tree's ``firmware_bundles/`` folder (see the module docstring)."""
    return Path(__file__).resolve().parents[2] / "firmware_bundles"


def _read_toml(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HubConfigError(f"cannot read profile {path}: {exc.strerror}") from exc
    if len(raw) > MAX_PROFILE_BYTES:
        raise HubConfigError(f"profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HubConfigError(f"profile {path} is not valid TOML: {exc}") from exc


def list_profiles(profiles_dir: Path | None = None) -> tuple[str, ...]:
    """Names of the profiles in a folder (file stems, sorted)."""
    folder = profiles_dir or default_profiles_dir()
    if not folder.is_dir():
        raise HubConfigError(
            f"profiles folder {folder} does not exist; pass --profiles-dir or a .toml path"
        )
    return tuple(sorted(p.stem for p in folder.glob("*.toml")))


def load_profile(name_or_path: str | Path, *, profiles_dir: Path | None = None) -> BuildProfile:
    """Load a profile by name (from ``profiles_dir``) or by a path to a ``.toml`` file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml":
        path = candidate
    else:
        folder = profiles_dir or default_profiles_dir()
        path = folder / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(list_profiles(folder)) if folder.is_dir() else "none"
            raise HubConfigError(f"unknown profile {str(name_or_path)!r}; known: {known}")
    profile = parse_profile(_read_toml(path), source=str(path))
    if profile.name != path.stem:
        raise HubConfigError(f"{path}: name {profile.name!r} does not match the file name")
    return profile


def load_all_profiles(profiles_dir: Path | None = None) -> tuple[BuildProfile, ...]:
    """Every profile in the folder, sorted by name."""
    folder = profiles_dir or default_profiles_dir()
    return tuple(load_profile(name, profiles_dir=folder) for name in list_profiles(folder))
