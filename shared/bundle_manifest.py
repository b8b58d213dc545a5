"""The bundle manifest: the signed description of a bundle's artifacts, and its shape rules.

The manifest is the ``signed`` part of the bundle's manifest envelope; the bundle id is the
sha256 of its canonical bytes, so chunks and commands that name it cannot be mixed with
another manifest's. Shape rules (counts, names, sizes, hashes, targets) hold for every
manifest, verified (:func:`shared.bundle.verify_offer`) or not (:func:`parse_manifest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared._codec import to_plain
from shared.bundle_policy import BundleLimits
from shared.canonical import canonical_bytes, sha256_hex
from shared.device_facts import TARGETS
from shared.errors import MalformedBundleError
from shared.golden import GoldenBatch
from shared.signing import SPEC_VERSION, read_document

__all__ = [
    "ArtifactInfo",
    "BundleManifest",
    "DeltaInfo",
    "artifact_info",
    "bundle_id_of",
    "check_manifest_shape",
    "parse_manifest",
]


@dataclass(frozen=True)
class DeltaInfo:
    """The artifact travels as a delta against a base the device already has.

    ``sha256``/``size`` here are the delta's; the enclosing ``ArtifactInfo`` keeps the full
    target's, so the reconstructed file is verified exactly like a full artifact.
    """

    base_version: int
    base_sha256: str
    method: str
    sha256: str
    size: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactInfo:
    """One file in the bundle. ``sha256``/``size`` are always those of the full artifact."""

    name: str
    sha256: str
    size: int
    role: str = "model"  # model | preprocess | labels | reference_stats | metrics | other
    media_type: str = "application/octet-stream"
    delta: DeltaInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wire_size(self) -> int:
        """Bytes this artifact occupies in the bundle (the delta's size for a delta)."""
        return self.delta.size if self.delta is not None else self.size

    @property
    def wire_sha256(self) -> str:
        return self.delta.sha256 if self.delta is not None else self.sha256


@dataclass(frozen=True)
class BundleManifest:
    model_name: str
    version: int
    device_class: str
    created: str
    expires: str
    artifacts: list[ArtifactInfo]
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: str = ""
    # the int8/GPU targets the artifact was built and gated for (shared.device_facts)
    targets: list[str] = field(default_factory=list)
    # checked on the device before commit (shared.golden); None for bundles built by hand
    golden: GoldenBatch | None = None
    type: str = "bundle-manifest"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_signed(self) -> dict[str, Any]:
        return to_plain(self)  # type: ignore[no-any-return]

    def artifact(self, name: str) -> ArtifactInfo:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def is_delta(self) -> bool:
        return any(a.delta is not None for a in self.artifacts)

    def model_artifact(self) -> ArtifactInfo:
        for a in self.artifacts:
            if a.role == "model":
                return a
        raise MalformedBundleError("manifest has no model artifact")


def bundle_id_of(manifest_envelope: Mapping[str, Any]) -> str:
    signed = manifest_envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedBundleError("manifest envelope has no 'signed' object")
    return sha256_hex(canonical_bytes(signed))


def check_manifest_shape(manifest: BundleManifest, limits: BundleLimits) -> None:
    """Refuse a manifest no bundle can honestly have (``MalformedBundleError``, naming why)."""
    if not manifest.artifacts or len(manifest.artifacts) > limits.max_artifacts:
        raise MalformedBundleError(f"manifest must list 1..{limits.max_artifacts} artifacts")
    names = [a.name for a in manifest.artifacts]
    if len(set(names)) != len(names):
        raise MalformedBundleError("duplicate artifact names")
    for a in manifest.artifacts:
        if not a.name or "/" in a.name or "\\" in a.name or a.name.startswith("."):
            raise MalformedBundleError(f"unsafe artifact name {a.name!r}")
        if a.size < 0 or a.size > limits.max_artifact_bytes:
            raise MalformedBundleError(f"artifact {a.name!r} size {a.size} out of bounds")
        hashes = [a.sha256] + ([a.delta.sha256, a.delta.base_sha256] if a.delta else [])
        if any(len(h) != 64 or any(c not in "0123456789abcdef" for c in h) for h in hashes):
            raise MalformedBundleError(f"artifact {a.name!r} has a malformed sha256")
        if a.delta is not None and not 0 <= a.delta.size <= limits.max_artifact_bytes:
            raise MalformedBundleError(f"artifact {a.name!r} delta size out of bounds")
    if sum(a.wire_size for a in manifest.artifacts) > limits.max_total_bytes:
        raise MalformedBundleError("bundle larger than the configured limit")
    if manifest.version < 1:
        raise MalformedBundleError("manifest version must be >= 1")
    unknown_targets = [t for t in manifest.targets if t not in TARGETS]
    if unknown_targets:
        raise MalformedBundleError(f"manifest names unknown targets {unknown_targets}")


def parse_manifest(
    manifest_envelope: Mapping[str, Any], limits: BundleLimits | None = None
) -> BundleManifest:
    """The typed manifest inside an envelope, shape-checked but NOT signature-verified
    (for indexing bundles the hub itself built; devices use :func:`shared.bundle.verify_offer`)."""
    signed = manifest_envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedBundleError("manifest envelope has no 'signed' object")
    manifest = read_document(signed, BundleManifest, "manifest")
    check_manifest_shape(manifest, limits or BundleLimits())
    return manifest


def artifact_info(
    name: str, data: bytes, role: str = "model", media_type: str = "application/octet-stream"
) -> ArtifactInfo:
    """Describe ``data`` for a manifest."""
    return ArtifactInfo(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        role=role,
        media_type=media_type,
    )
