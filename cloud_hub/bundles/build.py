"""Build signed bundles from a model file or from a compression output folder.

A compression output folder (written by ``cloud_hub.compress``) holds, per build profile::

    model.onnx | model.tflite   the compressed model          role "model"
    metrics.json                fp32 vs compressed accuracy,  role "metrics" (also copied
                                size, latency                  into the manifest's metrics)
    preprocess.json             input pre-processing          role "preprocess"
    reference_stats.json        drift reference statistics    role "reference_stats"
    labels.json (optional)      class names                   role "labels"
    golden.json                 the golden batch              inside the signed manifest
                                                               (``manifest.golden``)

The manifest also names the ``targets`` the artifact was built for (from ``metrics.json``).

``directory`` may be that profile folder itself, or its parent holding one sub-folder per
profile (then the one named after ``profile`` or the device class is used).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cloud_hub.bundles.store import BundleStore, StoredBundle
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.bundle import ArtifactInfo, BundleManifest, artifact_info, build_bundle
from shared.canonical import canonical_bytes
from shared.errors import BundleError, FedfleetError
from shared.golden import GoldenBatch
from shared.signing import format_time

__all__ = [
    "BuiltBundle",
    "BundleSpec",
    "build_bundle_from_dir",
    "build_bundle_from_file",
    "build_signed_bundle",
]

UTC = timezone.utc
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_EXPIRES_DAYS = 3650
MAX_METADATA_BYTES = 64 * 1024

_MODEL_FILES = {"model.onnx": "application/onnx", "model.tflite": "application/vnd.tflite"}
GOLDEN_FILE = "golden.json"
_SIDE_FILES = {
    "metrics.json": "metrics",
    "preprocess.json": "preprocess",
    "reference_stats.json": "reference_stats",
    "labels.json": "labels",
}


@dataclass(frozen=True, kw_only=True)
class BundleSpec:
    """What goes into a manifest besides the artifacts. ``version=None`` = newest + 1."""

    model_name: str
    device_class: str
    version: int | None = None
    expires_days: float = 30.0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    profile: str = ""
    targets: tuple[str, ...] = ()
    golden: GoldenBatch | None = None

    def __post_init__(self) -> None:
        for name in ("model_name", "device_class"):
            if not _NAME_RE.fullmatch(getattr(self, name)):
                raise HubConfigError(f"{name} must be 1-128 of [A-Za-z0-9._-]")
        if self.version is not None and self.version < 1:
            raise HubConfigError("version must be >= 1")
        if not 0 < self.expires_days <= MAX_EXPIRES_DAYS:
            raise HubConfigError(f"expires_days must be in (0, {MAX_EXPIRES_DAYS}]")
        for name in ("metrics", "lineage"):
            try:
                size = len(canonical_bytes(dict(getattr(self, name))))
            except (TypeError, ValueError) as exc:
                raise HubConfigError(f"{name} must be plain finite JSON: {exc}") from exc
            if size > MAX_METADATA_BYTES:
                raise HubConfigError(f"{name} is over {MAX_METADATA_BYTES} bytes")


@dataclass(frozen=True)
class BuiltBundle:
    """A signed bundle and where the store keeps it."""

    data: bytes
    bundle_id: str
    manifest: BundleManifest
    stored: StoredBundle


def build_signed_bundle(
    keys: KeyStore,
    store: BundleStore,
    spec: BundleSpec,
    artifacts: Sequence[tuple[ArtifactInfo, bytes]],
    *,
    now: datetime | None = None,
) -> BuiltBundle:
    """Sign a manifest over ``artifacts``, pack the bundle and record it in ``store``."""
    if not artifacts:
        raise HubConfigError("a bundle needs at least one artifact")
    if not any(info.role == "model" for info, _ in artifacts):
        raise HubConfigError("a bundle needs an artifact with role 'model'")
    now = now or datetime.now(UTC)
    version = spec.version
    if version is None:
        version = store.latest_version(spec.model_name, spec.device_class) + 1
    store.check_version(spec.model_name, spec.device_class, version)  # fail before signing
    manifest = BundleManifest(
        model_name=spec.model_name,
        version=version,
        device_class=spec.device_class,
        created=format_time(now),
        expires=format_time(now + timedelta(days=spec.expires_days)),
        artifacts=[info for info, _ in artifacts],
        lineage=dict(spec.lineage),
        metrics=dict(spec.metrics),
        profile=spec.profile,
        targets=list(spec.targets),
        golden=spec.golden,
    )
    try:
        data = build_bundle(
            manifest,
            {info.name: blob for info, blob in artifacts},
            signing_keys=keys.signing_keys(now=now),
            keyring_envelope=keys.keyring_envelope(),
        )
    except FedfleetError as exc:
        raise HubConfigError(f"cannot build bundle: {exc}") from exc
    try:
        # the store re-verifies what we just signed (R1) and re-checks the version under its lock
        stored = store.add(data, now=now)
    except BundleError as exc:
        raise HubConfigError(f"the bundle just signed does not verify: {exc}") from exc
    bundle_id = stored.bundle_id
    return BuiltBundle(data=data, bundle_id=bundle_id, manifest=manifest, stored=stored)


def _read(path: Path, max_bytes: int | None = None) -> bytes:
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise HubConfigError(f"{path} is larger than {max_bytes} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise HubConfigError(f"cannot read {path}: {exc}") from exc


def build_bundle_from_file(
    keys: KeyStore,
    store: BundleStore,
    spec: BundleSpec,
    *,
    model_path: str | Path,
    now: datetime | None = None,
) -> BuiltBundle:
    """Bundle one model file (ONNX for now; any file works) under its own file name."""
    path = Path(model_path)
    if not path.is_file():
        raise HubConfigError(f"model file {path} not found")
    data = _read(path)
    media = _MODEL_FILES.get(f"model{path.suffix}", "application/octet-stream")
    info = artifact_info(path.name, data, role="model", media_type=media)
    return build_signed_bundle(keys, store, spec, [(info, data)], now=now)


def _profile_dir(directory: Path, spec: BundleSpec) -> Path:
    if any((directory / name).is_file() for name in _MODEL_FILES):
        return directory
    for name in (spec.profile, spec.device_class):
        if name and any((directory / name / m).is_file() for m in _MODEL_FILES):
            return directory / name
    raise HubConfigError(
        f"{directory} holds no model.onnx/model.tflite, nor a sub-folder named "
        f"{spec.profile or spec.device_class!r} that does"
    )


def _manifest_metrics(doc: dict[str, Any], spec: BundleSpec, path: Path) -> dict[str, Any]:
    """What of a ``metrics.json`` goes into the manifest. The compression pipeline's document
    (``type: compression-metrics``) contributes its figures, profile, quantization and pruning;
    it must have been built for the bundle's device class. Any other object is copied whole."""
    if doc.get("type") != "compression-metrics":
        return doc
    built_for = doc.get("device_class")
    if isinstance(built_for, str) and built_for != spec.device_class:
        raise HubConfigError(
            f"{path} was built for device class {built_for!r}, not {spec.device_class!r}"
        )
    figures = doc.get("metrics")
    out: dict[str, Any] = dict(figures) if isinstance(figures, dict) else {}
    for key in ("profile", "quantization", "pruning"):
        if doc.get(key) is not None:
            out[key] = doc[key]
    return out


def build_bundle_from_dir(
    keys: KeyStore,
    store: BundleStore,
    spec: BundleSpec,
    *,
    directory: str | Path,
    now: datetime | None = None,
) -> BuiltBundle:
    """Bundle a compression output folder; its ``metrics.json`` is copied into the manifest."""
    folder = _profile_dir(Path(directory), spec)
    models = [name for name in _MODEL_FILES if (folder / name).is_file()]
    if len(models) != 1:
        raise HubConfigError(f"{folder} must hold exactly one of {sorted(_MODEL_FILES)}")
    artifacts: list[tuple[ArtifactInfo, bytes]] = []
    data = _read(folder / models[0])
    artifacts.append((artifact_info(models[0], data, "model", _MODEL_FILES[models[0]]), data))
    metrics: dict[str, Any] = {}
    targets: tuple[str, ...] = ()
    for name, role in _SIDE_FILES.items():
        path = folder / name
        if not path.is_file():
            continue
        blob = _read(path, max_bytes=16 * 1024 * 1024)
        try:
            parsed = json.loads(blob)
        except ValueError as exc:
            raise HubConfigError(f"{path} is not valid JSON: {exc}") from exc
        if role == "metrics":
            if not isinstance(parsed, dict):
                raise HubConfigError(f"{path} must hold a JSON object")
            metrics = _manifest_metrics(parsed, spec, path)
            found = parsed.get("targets")
            if isinstance(found, list) and all(isinstance(t, str) for t in found):
                targets = tuple(found)
        artifacts.append((artifact_info(name, blob, role, "application/json"), blob))
    golden = spec.golden or _read_golden(folder / GOLDEN_FILE)
    merged = BundleSpec(
        model_name=spec.model_name,
        device_class=spec.device_class,
        version=spec.version,
        expires_days=spec.expires_days,
        metrics={**metrics, **spec.metrics},
        lineage=spec.lineage,
        profile=spec.profile or str(metrics.get("profile", "")),
        targets=spec.targets or targets,
        golden=golden,
    )
    return build_signed_bundle(keys, store, merged, artifacts, now=now)


def _read_golden(path: Path) -> GoldenBatch | None:
    """The compression output's golden batch (absent for a folder built by hand)."""
    if not path.is_file():
        return None
    try:
        parsed = json.loads(_read(path, max_bytes=4 * 1024 * 1024))
        if not isinstance(parsed, dict):
            raise HubConfigError(f"{path} must hold a JSON object")
        return GoldenBatch.from_dict(parsed)
    except (ValueError, FedfleetError) as exc:
        raise HubConfigError(f"{path} is not a valid golden batch: {exc}") from exc
