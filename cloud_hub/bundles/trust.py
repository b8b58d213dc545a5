"""What the hub trusts before it stores, indexes or re-signs anything derived from a bundle.

The hub's online key signs delta bundles, so a bundle the hub did not sign itself must never
reach a device through one (R1). Every bundle that enters the store, the registry or a delta
first passes the checks a device makes, against the hub's *own* trust root and the keyring
it publishes now (python-tuf's "trusted metadata set" idea). A pure core: bytes and values in,
a verdict or a ``shared.errors.BundleError`` out; the clock is a parameter.

Three uses, three strengths (:class:`Purpose`):

- ``DELIVER``: a target the hub offers to devices or derives a delta from. Everything a device
  checks today: keyring signed by our root and not older than the one we publish, manifest
  signed by a key that keyring accepts now, not expired, artifacts hash to the manifest.
- ``DELTA_BASE``: the bundle a device already runs. Same, except that the manifest may have
  expired since it was installed; its signatures are checked as of its last valid second.
- ``HISTORY``: any bundle the hub ever signed (listings, the version floor): signed through
  our root by a keyring of any version, as of its last valid second.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from shared.bundle import (
    BundleLimits,
    VerifiedBundle,
    VerifiedOffer,
    VerifyPolicy,
    parse_bundle,
    parse_manifest,
    verify_artifacts,
    verify_offer,
)
from shared.errors import ExpiredError, MalformedBundleError
from shared.signing import SigningKey, TrustRoot, parse_time, verify_keyring

__all__ = [
    "BUNDLE_ID_RE",
    "MAX_BUNDLE_LIFETIME",
    "HubKeys",
    "HubTrust",
    "Purpose",
    "check_bundle_id",
    "verify_hub_bundle",
    "verify_hub_manifest",
]

UTC = timezone.utc
# A bundle id is the sha256 of the signed manifest: exactly 64 lowercase hex digits.
BUNDLE_ID_RE = re.compile(r"[0-9a-f]{64}")
# The longest lifetime `bundle build` signs; anything longer did not come from this hub.
MAX_BUNDLE_LIFETIME = timedelta(days=3650)


def check_bundle_id(bundle_id: object) -> str:
    """``bundle_id`` if it is 64 lowercase hex digits; ``MalformedBundleError`` otherwise.

    R12: ids arrive from devices (what they say they run) and from operators; no path is ever
    built from one before this check.
    """
    if not isinstance(bundle_id, str) or not BUNDLE_ID_RE.fullmatch(bundle_id):
        shown = repr(bundle_id)[:80]
        raise MalformedBundleError(f"invalid bundle id {shown}: expected 64 lowercase hex digits")
    return bundle_id


class HubKeys(Protocol):
    """The hub's key material as the bundle plane needs it (``cloud_hub.keys.KeyStore``)."""

    def trust_root(self) -> TrustRoot: ...

    def keyring_envelope(self) -> dict[str, Any]: ...

    def signing_keys(self) -> list[SigningKey]: ...


class Purpose(enum.Enum):
    DELIVER = "deliver"
    DELTA_BASE = "delta-base"
    HISTORY = "history"


@dataclass(frozen=True)
class HubTrust:
    """The hub's own trust root and the keyring envelope it publishes now."""

    root: TrustRoot
    keyring_envelope: Mapping[str, Any]

    @classmethod
    def of(cls, keys: HubKeys) -> HubTrust:
        return cls(root=keys.trust_root(), keyring_envelope=keys.keyring_envelope())

    def current_keyring_version(self, now: datetime) -> int:
        """The version of the keyring we publish; it must itself verify against our root."""
        return verify_keyring(self.keyring_envelope, self.root, now=now).version


def _checked_at(manifest_envelope: Mapping[str, Any], now: datetime, purpose: Purpose) -> datetime:
    if purpose is Purpose.DELIVER:
        return now
    # Unverified read, used only to pick the instant; the signature check below still runs.
    expires = parse_time(parse_manifest(manifest_envelope).expires, "manifest expires")
    return min(now, expires - timedelta(seconds=1))


def verify_hub_manifest(
    manifest_envelope: Mapping[str, Any],
    keyring_envelope: Mapping[str, Any],
    trust: HubTrust,
    *,
    now: datetime,
    purpose: Purpose = Purpose.DELIVER,
    limits: BundleLimits | None = None,
) -> VerifiedOffer:
    """Verify a manifest envelope (no artifacts) against the hub's own trust (R1)."""
    at = _checked_at(manifest_envelope, now, purpose)
    floor = 0 if purpose is Purpose.HISTORY else trust.current_keyring_version(now)
    claimed = parse_manifest(manifest_envelope, limits)
    policy = VerifyPolicy(
        trust=trust.root,
        device_class=claimed.device_class,
        now=at,
        min_keyring_version=floor,
        limits=limits or BundleLimits(),
    )
    offer = verify_offer(manifest_envelope, keyring_envelope, policy)
    # R1: nothing this hub signed lives longer than `bundle build` allows (a 10-year expiry
    # in an upload is someone else's bundle even if it verified).
    lifetime = parse_time(offer.manifest.expires, "manifest expires") - parse_time(
        offer.manifest.created, "manifest created"
    )
    if lifetime > MAX_BUNDLE_LIFETIME:
        raise ExpiredError(
            f"manifest lifetime {lifetime.days} days exceeds the {MAX_BUNDLE_LIFETIME.days} "
            "days this hub signs"
        )
    return offer


def verify_hub_bundle(
    data: bytes,
    trust: HubTrust,
    *,
    now: datetime | None = None,
    purpose: Purpose = Purpose.DELIVER,
    limits: BundleLimits | None = None,
) -> VerifiedBundle:
    """Parse and fully verify a bundle against the hub's own trust (R1)."""
    now = now or datetime.now(UTC)
    parsed = parse_bundle(data, limits)
    offer = verify_hub_manifest(
        parsed.manifest_envelope,
        parsed.keyring_envelope,
        trust,
        now=now,
        purpose=purpose,
        limits=limits,
    )
    return VerifiedBundle(offer=offer, artifacts=verify_artifacts(offer.manifest, parsed.payload))
