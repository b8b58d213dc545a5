"""Registering signed bundles in the registry (manifest → bundle row + model version).

The registry is the hub's only index of bundles, and only bundles that verify against the
hub's own trust root and keyring enter it (R1): the rollout engine and the delta builder take
their targets and bases from here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from cloud_hub.bundles.trust import HubTrust, Purpose, verify_hub_bundle
from cloud_hub.errors import HubError
from cloud_hub.registry import catalog
from cloud_hub.registry.records import BundleRecord
from shared.errors import FedfleetError

if TYPE_CHECKING:
    from cloud_hub.bundles.store import BundleStore
    from cloud_hub.registry import Registry

__all__ = ["index_store_bundles", "register_bundle_bytes"]

log = logging.getLogger(__name__)


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


def index_store_bundles(
    registry: Registry,
    store: BundleStore,
    *,
    now: float,
    bundle_ids: Iterable[str] | None = None,
) -> int:
    """Register the bundles of ``store`` the registry does not know yet (all of them, or
    only ``bundle_ids``), each only if it verifies (R1); returns how many were added.

    This is how a bundle built into the hub's store by ``cloud-hub bundle build`` becomes a
    rollout target without an upload: at start and when a rollout names it (#15).
    """
    wanted = set(store.ids()) if bundle_ids is None else set(bundle_ids) & set(store.ids())
    count = 0
    for bundle_id in sorted(wanted):
        try:
            with registry.session() as s:
                if catalog.find_bundle(s, bundle_id) is not None:
                    continue
                register_bundle_bytes(
                    s,
                    store.read(bundle_id),
                    trust=store.trust(),
                    path=str(store.path_of(bundle_id)),
                    now=now,
                )
            count += 1
        except (HubError, FedfleetError, OSError) as exc:
            log.warning("bundle %s not indexed (R1: not trusted): %s", bundle_id, exc)
    if count:
        log.info("%d new bundle(s) indexed from %s", count, store.directory)
    return count
