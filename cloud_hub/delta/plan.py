"""Which bundle each device gets: a delta against the version it runs, or the full bundle.

Delta bundles are built on demand from the full bundles in the hub's bundle store and cached
next to them (``BUNDLE_DIR/deltas/TARGET_ID/BASE_ID.ffb``), signed by the hub's current
signing key like any bundle. A device whose installed bundle is unknown, not in the store, or
for which no artifact shrinks enough gets the full bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cloud_hub.delta.builder import delta_manifest
from cloud_hub.errors import CompressionError, DeliveryError
from shared.bundle import build_bundle, parse_bundle, parse_manifest, verify_artifacts
from shared.errors import BundleError, ConfigError
from shared.signing import SigningKey
from shared.topics import validate_device_id

__all__ = ["DeliveryGroup", "DeliveryPlan", "DeltaCache", "plan_delivery"]

log = logging.getLogger(__name__)


class Signer(Protocol):
    def signing_keys(self) -> list[SigningKey]: ...

    def keyring_envelope(self) -> dict[str, object]: ...


def _split(bundle: bytes) -> tuple[object, dict[str, bytes], dict[str, object]]:
    parsed = parse_bundle(bundle)
    manifest = parse_manifest(parsed.manifest_envelope)
    return manifest, verify_artifacts(manifest, parsed.payload), parsed.keyring_envelope


def make_delta_bundle(full: bytes, base: bytes, signer: Signer) -> bytes | None:
    """A signed delta bundle taking a device from ``base`` to ``full``; ``None`` if no
    artifact shrinks enough to be worth it (or the base is a delta itself)."""
    full_m, full_a, _ = _split(full)
    base_m, base_a, _ = _split(base)
    if getattr(full_m, "is_delta", False) or getattr(base_m, "is_delta", False):
        return None
    try:
        built = delta_manifest(full_m, full_a, base_m, base_a)  # type: ignore[arg-type]
    except CompressionError as exc:
        log.info("no delta: %s", exc)
        return None
    if built is None:
        return None
    manifest, wire = built
    return build_bundle(
        manifest,
        wire,
        signing_keys=signer.signing_keys(),
        keyring_envelope=signer.keyring_envelope(),
    )


class DeltaCache:
    """Full bundles live in ``bundle_dir/ID.ffb``; deltas are built once and kept."""

    def __init__(self, bundle_dir: Path, signer: Signer) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.signer = signer

    def full(self, bundle_id: str) -> bytes:
        try:
            validate_device_id(bundle_id)
            return (self.bundle_dir / f"{bundle_id}.ffb").read_bytes()
        except (ConfigError, OSError) as exc:
            raise DeliveryError(f"bundle {bundle_id[:16]} not in {self.bundle_dir}: {exc}") from exc

    def delta(self, target_id: str, base_id: str, *, full: bytes | None = None) -> bytes | None:
        """The delta bundle ``base_id`` → ``target_id`` (``full``: the target's bytes, if the
        caller already read them)."""
        path = self.bundle_dir / "deltas" / target_id / f"{base_id}.ffb"
        none_marker = path.with_suffix(".none")
        if path.exists():
            return path.read_bytes()
        if none_marker.exists():
            return None
        try:
            base = self.full(base_id)
        except DeliveryError:
            return None  # the device runs something this hub never stored: full bundle
        try:
            delta = make_delta_bundle(full or self.full(target_id), base, self.signer)
        except (BundleError, CompressionError) as exc:
            log.warning("delta %s -> %s not built: %s", base_id[:12], target_id[:12], exc)
            delta = None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if delta is None:
            none_marker.write_bytes(b"")
            return None
        tmp.write_bytes(delta)
        tmp.replace(path)
        return delta


@dataclass(frozen=True)
class DeliveryGroup:
    bundle: bytes
    device_ids: tuple[str, ...]
    base_bundle_id: str | None  # None: the full bundle


@dataclass(frozen=True)
class DeliveryPlan:
    target_bundle_id: str
    full_bundle: bytes  # what a device that cannot use a delta gets (and asks for)
    groups: tuple[DeliveryGroup, ...] = field(default_factory=tuple)

    @property
    def full_size(self) -> int:
        return len(self.full_bundle)

    @property
    def bytes_shipped(self) -> int:
        """Bytes the devices receive (each device downloads its group's bundle once)."""
        return sum(len(g.bundle) * len(g.device_ids) for g in self.groups)

    @property
    def bytes_full(self) -> int:
        """What shipping the full bundle to every device would have cost."""
        return self.full_size * sum(len(g.device_ids) for g in self.groups)


def plan_delivery(
    cache: DeltaCache,
    target_bundle_id: str,
    installed: Mapping[str, str | None],
    device_ids: Sequence[str],
) -> DeliveryPlan:
    """Group ``device_ids`` by the smallest bundle each can use."""
    full = cache.full(target_bundle_id)
    by_base: dict[str | None, list[str]] = {}
    for device in device_ids:
        base = installed.get(device)
        by_base.setdefault(base if base and base != target_bundle_id else None, []).append(device)
    groups: list[DeliveryGroup] = []
    full_devices = list(by_base.pop(None, []))
    for base, devices in sorted(by_base.items(), key=lambda kv: str(kv[0])):
        assert base is not None
        delta = cache.delta(target_bundle_id, base, full=full)
        if delta is None or len(delta) >= len(full):
            full_devices.extend(devices)
        else:
            groups.append(DeliveryGroup(delta, tuple(devices), base))
    if full_devices:
        groups.append(DeliveryGroup(full, tuple(full_devices), None))
    return DeliveryPlan(target_bundle_id=target_bundle_id, full_bundle=full, groups=tuple(groups))
