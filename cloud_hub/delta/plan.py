"""Which bundle each device gets: a delta against the version it runs, or the full bundle.

Delta bundles are built on demand from the full bundles in the hub's bundle store and cached
there (:meth:`cloud_hub.bundles.BundleStore.keep_delta`), signed by the hub's current signing
key like any bundle. A device whose installed bundle is unknown, not in the verified index,
not in the store, or for which no artifact shrinks enough gets the full bundle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cloud_hub.bundles.store import BundleStore, TrustedBundle
from cloud_hub.bundles.trust import HubKeys, HubTrust, Purpose, check_bundle_id, verify_hub_bundle
from cloud_hub.delta.builder import delta_manifest
from cloud_hub.errors import CompressionError, DeliveryError, HubError
from shared.bundle import BundleManifest, VerifiedBundle, build_bundle
from shared.errors import BundleError

__all__ = ["DeliveryGroup", "DeliveryPlan", "DeltaCache", "make_delta_bundle", "plan_delivery"]

log = logging.getLogger(__name__)


def _speaks_for(delta: BundleManifest, target: BundleManifest) -> bool:
    """R1: a delta says exactly what its target says (model, class, version) and never
    outlives it."""
    fields = ("model_name", "device_class", "version", "expires")
    return all(getattr(delta, f) == getattr(target, f) for f in fields)


def _delta_from_verified(
    target: VerifiedBundle, base: VerifiedBundle, keys: HubKeys
) -> bytes | None:
    if target.manifest.is_delta or base.manifest.is_delta:
        return None
    try:
        built = delta_manifest(target.manifest, target.artifacts, base.manifest, base.artifacts)
    except CompressionError as exc:
        log.info("no delta: %s", exc)
        return None
    if built is None:
        return None
    manifest, wire = built
    if not _speaks_for(manifest, target.manifest):
        raise CompressionError("delta manifest differs from its target's identity or expiry")
    return build_bundle(
        manifest, wire, signing_keys=keys.signing_keys(), keyring_envelope=keys.keyring_envelope()
    )


def make_delta_bundle(
    full: bytes, base: bytes, keys: HubKeys, *, now: datetime | None = None
) -> bytes | None:
    """A signed delta bundle taking a device from ``base`` to ``full``; ``None`` if no
    artifact shrinks enough to be worth it (or either is a delta itself).

    R1: both bundles must verify against the hub's own trust root and current keyring before
    anything derived from them is signed (``shared.errors.BundleError`` with the reason if not).
    """
    trust = HubTrust.of(keys)
    target = verify_hub_bundle(full, trust, now=now, purpose=Purpose.DELIVER)
    installed = verify_hub_bundle(base, trust, now=now, purpose=Purpose.DELTA_BASE)
    return _delta_from_verified(target, installed, keys)


class DeltaCache:
    """Deltas between bundles of the store, built once and kept there.

    ``indexed`` says whether a bundle id is in the registry (the verified index); without it
    every stored bundle that verifies may serve as a base. A build that fails is not retried
    for ``retry_after_s`` (R15: a bounded, in-memory negative cache, never a permanent mark).
    """

    def __init__(
        self,
        store: BundleStore,
        *,
        indexed: Callable[[str], bool] | None = None,
        retry_after_s: float = 300.0,
        max_failures: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.indexed = indexed
        self.retry_after_s = retry_after_s
        self.max_failures = max_failures
        self.clock = clock
        self._failed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def target(self, bundle_id: str) -> TrustedBundle:
        """A rollout's target, verified now (R1); ``DeliveryError`` with the reason if not."""
        return self._trusted(bundle_id, Purpose.DELIVER)

    def _trusted(self, bundle_id: str, purpose: Purpose) -> TrustedBundle:
        try:
            check_bundle_id(bundle_id)  # R12: before the id goes anywhere near a path
            if self.indexed is not None and not self.indexed(bundle_id):
                raise DeliveryError("not in the registry")
            return self.store.read_verified(bundle_id, purpose=purpose)
        except (BundleError, HubError) as exc:
            raise DeliveryError(f"bundle {bundle_id[:64]!r} not usable: {exc}") from exc

    def delta(
        self, target_id: str, base_id: str, *, target: TrustedBundle | None = None
    ) -> bytes | None:
        """The delta bundle ``base_id`` → ``target_id``; ``None``: ship the full bundle.

        ``target``: the verified target, if the caller holds it already."""
        try:
            check_bundle_id(target_id)
            check_bundle_id(base_id)  # R12: the base id is what a device says it runs
        except BundleError as exc:
            log.warning("no delta: %s", exc)
            return None
        key = (target_id, base_id)
        if self._recently_failed(key):
            return None
        try:
            if target is None or target.bundle_id != target_id:
                target = self._trusted(target_id, Purpose.DELIVER)
            cached = self._cached(target, base_id)
            if cached is not None:
                return cached
            base = self._trusted(base_id, Purpose.DELTA_BASE)
            delta = _delta_from_verified(target.verified, base.verified, self.store.keys)
        except (DeliveryError, BundleError, CompressionError) as exc:
            log.warning("delta %s -> %s not built: %s", base_id[:12], target_id[:12], exc)
            self._remember_failure(key)
            return None
        if delta is None:
            self._remember_failure(key)  # nothing shrinks enough: same answer until it expires
            return None
        self.store.keep_delta(target_id, base_id, delta)
        return delta

    def _cached(self, target: TrustedBundle, base_id: str) -> bytes | None:
        """A cached delta, if it still verifies and says what its target says (R1)."""
        data = self.store.cached_delta(target.bundle_id, base_id)
        if data is None:
            return None
        try:
            cached = verify_hub_bundle(data, self.store.trust()).manifest
        except BundleError as exc:
            log.warning(
                "cached delta %s -> %s dropped: %s", base_id[:12], target.bundle_id[:12], exc
            )
            return None
        return data if cached.is_delta and _speaks_for(cached, target.verified.manifest) else None

    def _recently_failed(self, key: tuple[str, str]) -> bool:
        with self._lock:
            at = self._failed.get(key)
            if at is None:
                return False
            if self.clock() - at < self.retry_after_s:
                return True
            del self._failed[key]
            return False

    def _remember_failure(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failed[key] = self.clock()
            self._failed.move_to_end(key)
            while len(self._failed) > self.max_failures:
                self._failed.popitem(last=False)


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
    target = cache.target(target_bundle_id)
    full = target.data
    by_base: dict[str | None, list[str]] = {}
    for device in device_ids:
        base = installed.get(device)
        by_base.setdefault(base if base and base != target_bundle_id else None, []).append(device)
    groups: list[DeliveryGroup] = []
    full_devices = list(by_base.pop(None, []))
    for base, devices in sorted(by_base.items(), key=lambda kv: str(kv[0])):
        assert base is not None
        delta = cache.delta(target_bundle_id, base, target=target)
        if delta is None or len(delta) >= len(full):
            full_devices.extend(devices)
        else:
            groups.append(DeliveryGroup(delta, tuple(devices), base))
    if full_devices:
        groups.append(DeliveryGroup(full, tuple(full_devices), None))
    return DeliveryPlan(target_bundle_id=target_bundle_id, full_bundle=full, groups=tuple(groups))
