"""The bundle: a signed manifest plus its artifacts, and its pure verification.

Container layout (all integers big-endian)::

    b"FFBUNDLE" | u8 format (1) | u32 header length | header | artifact bytes...

``header`` is canonical JSON ``{"manifest": <signed envelope>, "keyring": <signed envelope>}``;
the artifacts follow in manifest order, each exactly ``size`` bytes. The bundle id is the
sha256 of the manifest's canonical ``signed`` part: chunks and commands name it, so an
artifact or chunk from another manifest is refused (mix-and-match).

Verification takes bytes and values and returns a verdict — no files, no network, no clock
(``now`` is a parameter so tests can jump the clock).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared._codec import from_plain, to_plain
from shared.canonical import canonical_bytes, parse_json_object, sha256_hex
from shared.device_facts import TARGETS
from shared.errors import (
    ConfigError,
    DeltaBaseError,
    ExpiredError,
    HashMismatchError,
    MalformedBundleError,
    MalformedMessageError,
    MessageTooLargeError,
    MixAndMatchError,
    RollbackError,
    WrongTargetError,
)
from shared.golden import GoldenBatch
from shared.signing import (
    SPEC_VERSION,
    Keyring,
    SigningKey,
    TrustRoot,
    _check_spec,
    parse_time,
    sign_envelope,
    verify_envelope,
    verify_keyring,
)

MAGIC = b"FFBUNDLE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sBI")

__all__ = [
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


@dataclass(frozen=True)
class BundleLimits:
    """Size limits on every untrusted input (TUF-style)."""

    max_header_bytes: int = 1024 * 1024
    max_artifact_bytes: int = 2 * 1024**3
    max_total_bytes: int = 4 * 1024**3
    max_artifacts: int = 64


@dataclass(frozen=True)
class VerifyPolicy:
    """What the verifying device knows and trusts."""

    trust: TrustRoot
    device_class: str
    now: datetime
    installed_versions: Mapping[str, int] = field(default_factory=dict)
    min_keyring_version: int = 0
    limits: BundleLimits = field(default_factory=BundleLimits)
    device_id: str = ""  # rollback orders must name this device (R5)
    active_bundle_id: str | None = None  # ... and the bundle it runs now (R5)


def bundle_id_of(manifest_envelope: Mapping[str, Any]) -> str:
    signed = manifest_envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedBundleError("manifest envelope has no 'signed' object")
    return sha256_hex(canonical_bytes(signed))


def _manifest_from_signed(signed: dict[str, Any], limits: BundleLimits) -> BundleManifest:
    _check_spec(signed, "bundle-manifest", "manifest")
    try:
        manifest: BundleManifest = from_plain(BundleManifest, signed, "manifest")
    except MalformedMessageError as exc:
        raise MalformedBundleError(str(exc)) from exc
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
    return manifest


def build_bundle(
    manifest: BundleManifest,
    artifacts: Mapping[str, bytes],
    *,
    signing_keys: list[SigningKey],
    keyring_envelope: Mapping[str, Any],
) -> bytes:
    """Sign ``manifest`` and pack it with its artifacts (checked against the manifest)."""
    for info in manifest.artifacts:
        data = artifacts.get(info.name)
        if data is None:
            raise ConfigError(f"artifact {info.name!r} listed in the manifest but not given")
        # For a delta artifact, ``artifacts`` holds the delta bytes.
        if len(data) != info.wire_size or hashlib.sha256(data).hexdigest() != info.wire_sha256:
            raise ConfigError(f"artifact {info.name!r} does not match its manifest entry")
    extra_names = set(artifacts) - {a.name for a in manifest.artifacts}
    if extra_names:
        raise ConfigError(f"artifacts not in the manifest: {sorted(extra_names)}")
    envelope = sign_envelope(manifest.to_signed(), signing_keys)
    header = canonical_bytes({"manifest": envelope, "keyring": dict(keyring_envelope)})
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header]
    parts.extend(artifacts[a.name] for a in manifest.artifacts)
    return b"".join(parts)


def container_prefix(
    manifest_envelope: Mapping[str, Any], keyring_envelope: Mapping[str, Any]
) -> bytes:
    """The exact bytes a bundle with these envelopes starts with (its artifacts follow).

    A receiver that knows the offer can tell which part of a failed download is corrupt.
    """
    header = canonical_bytes(
        {"manifest": dict(manifest_envelope), "keyring": dict(keyring_envelope)}
    )
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


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


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle split into its parts; nothing verified yet."""

    manifest_envelope: dict[str, Any]
    keyring_envelope: dict[str, Any]
    payload: bytes  # artifact bytes in manifest order


def parse_bundle(data: bytes, limits: BundleLimits | None = None) -> ParsedBundle:
    limits = limits or BundleLimits()
    if len(data) < _PREFIX.size:
        raise MalformedBundleError("truncated: shorter than the bundle prefix")
    magic, fmt, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise MalformedBundleError("not a fedfleet bundle (bad magic)")
    if fmt != FORMAT_VERSION:
        raise MalformedBundleError(f"unsupported bundle format {fmt}")
    if header_len > limits.max_header_bytes:
        raise MalformedBundleError(f"header of {header_len} bytes exceeds limit")
    end = _PREFIX.size + header_len
    if len(data) < end:
        raise MalformedBundleError("truncated header")
    try:
        header = parse_json_object(data[_PREFIX.size : end], max_bytes=limits.max_header_bytes)
    except (MalformedMessageError, MessageTooLargeError) as exc:
        raise MalformedBundleError(f"bad header: {exc}") from exc
    manifest_env, keyring_env = header.get("manifest"), header.get("keyring")
    if not isinstance(manifest_env, dict) or not isinstance(keyring_env, dict):
        raise MalformedBundleError("header needs 'manifest' and 'keyring' envelopes")
    return ParsedBundle(manifest_env, keyring_env, bytes(data[end:]))


MAX_ORDER_DEVICES = 1000


@dataclass(frozen=True)
class RollbackOrder:
    """A signed, one-time permission for the named devices to leave ``from_bundle_id`` (what
    they run now) for an older version of a model, or for another model (R5).

    The target is ``to_version`` held either by bundle ``to_bundle_id`` or, whichever bundle
    (full or delta) delivered it, by a model artifact with sha256 ``to_sha256``. Devices
    remember ``order_id`` until ``expires``: an order works once per device.
    """

    order_id: str
    model_name: str
    device_class: str
    to_version: int
    to_bundle_id: str
    issued: str
    expires: str
    device_ids: list[str] = field(default_factory=list)
    from_bundle_id: str = ""
    to_sha256: str = ""
    type: str = "rollback-order"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def names_target(self, *, model_name: str, version: int, bundle_id: str, sha256: str) -> bool:
        """Whether a bundle (or an installed slot) is the one this order leads to."""
        if model_name != self.model_name or version != self.to_version:
            return False
        return bundle_id == self.to_bundle_id or (bool(self.to_sha256) and sha256 == self.to_sha256)


def sign_rollback_order(order: RollbackOrder, keys: list[SigningKey]) -> dict[str, Any]:
    return sign_envelope(to_plain(order), keys)


def parse_rollback_order(envelope: Any) -> RollbackOrder:
    """The typed order inside an envelope, NOT verified (to re-read an order that
    :func:`verify_rollback_order` accepted earlier, e.g. from a persisted deployment)."""
    signed = envelope.get("signed") if isinstance(envelope, dict) else None
    if not isinstance(signed, dict):
        raise MalformedBundleError("rollback order envelope has no 'signed' object")
    try:
        order: RollbackOrder = from_plain(RollbackOrder, signed, "rollback order")
    except MalformedMessageError as exc:
        raise MalformedBundleError(str(exc)) from exc
    return order


def verify_rollback_order(
    envelope: Any, keyring_envelope: Any, policy: VerifyPolicy
) -> RollbackOrder:
    keyring = verify_keyring(
        keyring_envelope, policy.trust, now=policy.now, min_version=policy.min_keyring_version
    )
    signed = verify_envelope(
        envelope,
        keyring.active_keys(policy.now),
        threshold=keyring.threshold,
        what="rollback order",
        revoked=frozenset(keyring.revoked),
    )
    _check_spec(signed, "rollback-order", "rollback order")
    try:
        order: RollbackOrder = from_plain(RollbackOrder, signed, "rollback order")
    except MalformedMessageError as exc:
        raise MalformedBundleError(str(exc)) from exc
    if parse_time(order.expires, "rollback order expires") <= policy.now:
        raise ExpiredError(f"rollback order expired at {order.expires}")
    if order.device_class != policy.device_class:
        raise WrongTargetError(f"rollback order targets class {order.device_class!r}")
    # R5: an order is bound to devices and to what they run now, so it cannot be replayed
    # to another device, nor to this one once it has moved on
    if not order.device_ids or len(order.device_ids) > MAX_ORDER_DEVICES:
        raise WrongTargetError("rollback order names no devices (or too many)")
    if not policy.device_id or policy.device_id not in order.device_ids:
        raise WrongTargetError(f"rollback order is not addressed to device {policy.device_id!r}")
    if not order.from_bundle_id or order.from_bundle_id != policy.active_bundle_id:
        running = (policy.active_bundle_id or "nothing")[:12]
        raise WrongTargetError(
            f"rollback order is for devices running {order.from_bundle_id[:12]!r}, "
            f"this device runs {running!r}"
        )
    return order


_STALE_BINDING = re.compile(
    r"rollback order is for devices running '([0-9a-f]{0,12})', this device runs '([0-9a-f]{1,12})'"
)


def stale_rollback_binding(detail: str) -> tuple[str, str] | None:
    """The (ordered, running) bundle-id prefixes of a device's refusal of a rollback order bound
    to another bundle than the one it runs (the message :func:`verify_rollback_order` raises);
    ``None`` for any other refusal. The hub re-sends such an order bound to what it runs now."""
    match = _STALE_BINDING.search(detail)
    return (match.group(1), match.group(2)) if match else None


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
    signed = verify_envelope(
        manifest_envelope,
        keyring.active_keys(policy.now),
        threshold=keyring.threshold,
        what="manifest",
        revoked=frozenset(keyring.revoked),
    )
    manifest = _manifest_from_signed(signed, policy.limits)
    bundle_id = bundle_id_of(manifest_envelope)
    if parse_time(manifest.expires, "manifest expires") <= policy.now:
        raise ExpiredError(f"manifest expired at {manifest.expires}")
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


def parse_manifest(
    manifest_envelope: Mapping[str, Any], limits: BundleLimits | None = None
) -> BundleManifest:
    """The typed manifest inside an envelope, shape-checked but NOT signature-verified
    (for indexing bundles the hub itself built; devices use :func:`verify_offer`)."""
    signed = manifest_envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedBundleError("manifest envelope has no 'signed' object")
    return _manifest_from_signed(signed, limits or BundleLimits())


def verify_artifacts(manifest: BundleManifest, payload: bytes) -> dict[str, bytes]:
    """Split ``payload`` by the manifest and check every artifact's size and sha256.

    For a delta artifact the returned bytes are the (verified) delta; pass the result through
    :func:`resolve_deltas` to get full artifacts.
    """
    expected = sum(a.wire_size for a in manifest.artifacts)
    if len(payload) != expected:
        raise HashMismatchError(f"payload is {len(payload)} bytes, manifest says {expected}")
    out: dict[str, bytes] = {}
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
