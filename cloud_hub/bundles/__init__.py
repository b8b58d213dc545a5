"""Signed model bundles on the hub: build them (from a model file or a compression output
folder), verify them against the hub's own trust, and keep them in the bundle store."""

from cloud_hub.bundles.build import (
    BuiltBundle,
    BundleSpec,
    build_bundle_from_dir,
    build_bundle_from_file,
    build_signed_bundle,
)
from cloud_hub.bundles.store import (
    BundleStore,
    StoredBundle,
    TrustedBundle,
    VersionNotNewerError,
    default_store,
)
from cloud_hub.bundles.trust import HubKeys, HubTrust, Purpose, check_bundle_id, verify_hub_bundle

__all__ = [
    "BuiltBundle",
    "BundleSpec",
    "BundleStore",
    "HubKeys",
    "HubTrust",
    "Purpose",
    "StoredBundle",
    "TrustedBundle",
    "VersionNotNewerError",
    "build_bundle_from_dir",
    "build_bundle_from_file",
    "build_signed_bundle",
    "check_bundle_id",
    "default_store",
    "verify_hub_bundle",
]
