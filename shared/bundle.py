"""The bundle: a signed manifest plus its artifacts, and its pure verification.

A device verifies in two steps: the offer's manifest before it downloads anything
(:func:`verify_offer`), then the downloaded bytes (:func:`verify_bundle`: the container,
the same manifest, every artifact's size and sha256), and turns deltas into full artifacts
against what it has installed (:func:`resolve_deltas`).

Verification takes bytes and values and returns a verdict — no files, no network, no clock
(``now`` is a parameter so tests can jump the clock).

The parts live beside this module, and their public names are importable from here too:
``shared.bundle_manifest`` (the manifest and its shape rules), ``shared.bundle_container``
(the bytes: build and split), ``shared.bundle_policy`` (limits and what the device trusts),
``shared.rollback_order`` (the signed order that permits an older version, R5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.bundle_container import (
    FORMAT_VERSION,
    MAGIC,
    ParsedBundle,
    build_bundle,
    container_prefix,
    parse_bundle,
)
from shared.bundle_manifest import (
    ArtifactInfo,
    BundleManifest,
    DeltaInfo,
    artifact_info,
    bundle_id_of,
    check_manifest_shape,
    parse_manifest,
)
from shared.bundle_policy import BundleLimits, VerifyPolicy
from shared.errors import (
    DeltaBaseError,
    HashMismatchError,
    MalformedBundleError,
    MixAndMatchError,
    RollbackError,
    WrongTargetError,
)
from shared.rollback_order import (
    MAX_ORDER_DEVICES,
    RollbackOrder,
    parse_rollback_order,
    sign_rollback_order,
    stale_rollback_binding,
    verify_rollback_order,
)
from shared.signing import Keyring, verify_keyring

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_ORDER_DEVICES",
    "ArtifactInfo",
    "BundleLimits",
    "BundleManifest",
    "DeltaInfo",
    "ParsedBundle",
    "RollbackOrder",
    "VerifiedBundle",
    "VerifiedOffer",
    "VerifyPolicy",
    "artifact_info",
    "build_bundle",
    "bundle_id_of",
    "check_manifest_shape",
    "container_prefix",
    "parse_bundle",
    "parse_manifest",
    "parse_rollback_order",
    "resolve_deltas",
    "sign_rollback_order",
    "stale_rollback_binding",
    "verify_artifacts",
    "verify_bundle",
    "verify_offer",
    "verify_rollback_order",
]


@dataclass(frozen=True)
class VerifiedOffer:
    """A manifest whose signature, expiry, target and version passed."""

    manifest: BundleManifest
    keyring: Keyring
    bundle_id: str


def verify_offer(
    manifest_envelope: Any,
    keyring_envelope: Any,
    policy: VerifyPolicy,
    *,
    rollback_order: RollbackOrder | None = None,
) -> VerifiedOffer:
    """Verify a manifest before downloading its artifacts.

    Refuses (each with its own error class): a keyring not signed by the pinned root, older
    than seen, or expired; a manifest signed by an unknown/revoked/expired key or with a bad
    signature; an expired manifest; another device class; a version not newer than the
    installed one — unless ``rollback_order`` (already verified) names exactly this bundle.
    """
    keyring = verify_keyring(
        keyring_envelope, policy.trust, now=policy.now, min_version=policy.min_keyring_version
    )
    manifest = keyring.verify_document(
        manifest_envelope,
        BundleManifest,
        what="manifest",
        now=policy.now,
        check=lambda signed: check_manifest_shape(signed, policy.limits),
    )
    bundle_id = bundle_id_of(manifest_envelope)
    if manifest.device_class != policy.device_class:
        raise WrongTargetError(
            f"bundle targets device class {manifest.device_class!r}, this device is {policy.device_class!r}"
        )
    authorised = rollback_order is not None and rollback_order.names_target(
        model_name=manifest.model_name,
        version=manifest.version,
        bundle_id=bundle_id,
        sha256=_model_sha256(manifest),
    )
    installed = policy.installed_versions.get(manifest.model_name)
    if installed is not None and manifest.version <= installed and not authorised:
        raise RollbackError(
            f"version {manifest.version} of {manifest.model_name!r} is not newer than installed {installed}"
        )
    if installed is None and policy.installed_versions and not authorised:
        # R5: the floor is per device class; another model replaces the current one only
        # by a signed order (an old, unexpired bundle of another model is no way around it)
        current = ", ".join(sorted(policy.installed_versions))
        raise RollbackError(
            f"model {manifest.model_name!r} would replace {current!r}: a signed order is needed"
        )
    return VerifiedOffer(manifest=manifest, keyring=keyring, bundle_id=bundle_id)


def _model_sha256(manifest: BundleManifest) -> str:
    """The full model artifact's sha256 (the same in a full bundle and in its deltas)."""
    try:
        return manifest.model_artifact().sha256
    except MalformedBundleError:
        return ""


PayloadT = TypeVar("PayloadT", bytes, memoryview)


def verify_artifacts(manifest: BundleManifest, payload: PayloadT) -> dict[str, PayloadT]:
    """Split ``payload`` by the manifest and check every artifact's size and sha256.

    For a delta artifact the returned bytes are the (verified) delta; pass the result through
    :func:`resolve_deltas` to get full artifacts. A memoryview payload (a mapped download)
    gives views into it: nothing is copied.
    """
    expected = sum(a.wire_size for a in manifest.artifacts)
    if len(payload) != expected:
        raise HashMismatchError(f"payload is {len(payload)} bytes, manifest says {expected}")
    out: dict[str, PayloadT] = {}
    offset = 0
    for a in manifest.artifacts:
        data = payload[offset : offset + a.wire_size]
        offset += a.wire_size
        if hashlib.sha256(data).hexdigest() != a.wire_sha256:
            raise HashMismatchError(f"artifact {a.name!r}: sha256 mismatch")
        out[a.name] = data
    return out


def resolve_deltas(
    manifest: BundleManifest, wire: Mapping[str, bytes], base: Mapping[str, bytes]
) -> dict[str, bytes]:
    """Turn verified wire artifacts into full artifacts.

    ``base`` maps artifact names to the bytes the device has installed. A delta is applied
    only to a base whose sha256 is the one the signed manifest names (``DeltaBaseError``
    otherwise); the result must match the full artifact's signed sha256 and size.
    """
    from shared.delta import apply_delta

    out: dict[str, bytes] = {}
    for a in manifest.artifacts:
        data = wire[a.name]
        if a.delta is not None:
            have = base.get(a.name)
            if have is None or hashlib.sha256(have).hexdigest() != a.delta.base_sha256:
                raise DeltaBaseError(
                    f"artifact {a.name!r}: delta needs base version {a.delta.base_version} "
                    f"({a.delta.base_sha256[:12]}…), which this device does not have"
                )
            try:
                data = apply_delta(have, data, max_target_bytes=a.size)
            except MalformedBundleError as exc:
                raise HashMismatchError(
                    f"artifact {a.name!r}: delta does not apply: {exc}"
                ) from exc
        if len(data) != a.size or hashlib.sha256(data).hexdigest() != a.sha256:
            raise HashMismatchError(
                f"artifact {a.name!r}: reconstructed artifact does not match the manifest"
            )
        out[a.name] = data
    return out


@dataclass(frozen=True)
class VerifiedBundle:
    offer: VerifiedOffer
    artifacts: dict[str, bytes]

    @property
    def manifest(self) -> BundleManifest:
        return self.offer.manifest


def verify_bundle(
    data: bytes,
    policy: VerifyPolicy,
    *,
    expected_bundle_id: str | None = None,
    rollback_order: RollbackOrder | None = None,
) -> VerifiedBundle:
    """Parse and fully verify a bundle. ``expected_bundle_id`` is what the offer named."""
    parsed = parse_bundle(data, policy.limits)
    offer = verify_offer(
        parsed.manifest_envelope, parsed.keyring_envelope, policy, rollback_order=rollback_order
    )
    if expected_bundle_id is not None and offer.bundle_id != expected_bundle_id:
        raise MixAndMatchError("bundle does not carry the manifest it was offered with")
    return VerifiedBundle(offer=offer, artifacts=verify_artifacts(offer.manifest, parsed.payload))
