"""Registering signed bundle files in the registry (manifest → bundle row + model version)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cloud_hub.registry import catalog
from cloud_hub.registry.records import BundleRecord
from shared.bundle import bundle_id_of, parse_bundle, parse_manifest, verify_artifacts

__all__ = ["register_bundle_bytes"]


def register_bundle_bytes(
    session: Session, data: bytes, *, path: str = "", now: float
) -> BundleRecord:
    """Parse a bundle, check its artifacts against the manifest hashes, and register it.

    Signatures are not checked here (devices verify them against their pinned trust root);
    the hash check refuses truncated or corrupted files. Raises ``shared.errors.BundleError``
    subclasses for bad bytes, ``ConflictError`` for an id registered with other content.
    """
    parsed = parse_bundle(data)
    manifest = parse_manifest(parsed.manifest_envelope)
    verify_artifacts(manifest, parsed.payload)
    record = catalog.register_bundle(
        session,
        bundle_id=bundle_id_of(parsed.manifest_envelope),
        model_name=manifest.model_name,
        version=manifest.version,
        device_class=manifest.device_class,
        size=len(data),
        path=path,
        manifest=manifest.to_signed(),
        kind="delta" if manifest.is_delta else "full",
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
