"""What a device brings to the verification of a bundle or a rollback order.

The size limits on every untrusted input (TUF-style) and the device's own view: its pinned
trust root, class, clock, installed versions, keyring floor, identity and running bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.signing import TrustRoot

__all__ = ["BundleLimits", "VerifyPolicy"]


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
