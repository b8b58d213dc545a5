"""Registering signed bundles in the registry (manifest → bundle row + model version).

The registry is the hub's only index of bundles, and only bundles that verify against the
hub's own trust root and keyring enter it (R1): the rollout engine and the delta builder take
their targets and bases from here.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.orm import Session

from cloud_hub.bundles.trust import HubTrust, Purpose, verify_hub_bundle
from cloud_hub.registry import catalog
from cloud_hub.registry.records import BundleRecord

__all__ = ["register_bundle_bytes"]


def register_bundle_bytes(
    session: Session,
    data: bytes,
    *,
    trust: HubTrust,
    path: str = "",
    now: float,
    purpose: Purpose = Purpose.DELIVER,
    base_bundle_id: str | None = None,
) -> BundleRecord:
    """Verify a bundle against ``trust`` (signatures, expiry, keyring, artifact hashes) and
    register it.

    Raises ``shared.errors.BundleError`` subclasses, with the reason, for a bundle that does
    not verify (nothing is registered); ``ConflictError`` for an id registered with other
    content. ``purpose``: ``HISTORY`` for bundles this hub signed earlier (adopting a store).
    """
    at = datetime.fromtimestamp(now, tz=timezone.utc)
    verified = verify_hub_bundle(data, trust, now=at, purpose=purpose)
    manifest = verified.manifest
    record = catalog.register_bundle(
        session,
        bundle_id=verified.offer.bundle_id,
        model_name=manifest.model_name,
        version=manifest.version,
        device_class=manifest.device_class,
        size=len(data),
        path=path,
        manifest=manifest.to_signed(),
        kind="delta" if manifest.is_delta else "full",
        base_bundle_id=base_bundle_id,
        now=now,
    )
    if manifest.metrics or manifest.lineage:
        catalog.add_model_version(
            session,
            manifest.model_name,
            manifest.version,
            lineage=manifest.lineage,
            metrics=manifest.metrics,
            now=now,
        )
    return record
