"""Signed model bundles on the hub: build them (from a model file or a compression output
folder) and keep them in a versioned store."""

from cloud_hub.bundles.build import (
    BuiltBundle,
    BundleSpec,
    build_bundle_from_dir,
    build_bundle_from_file,
    build_signed_bundle,
    default_store,
)
from cloud_hub.bundles.store import BundleStore, StoredBundle, VersionNotNewerError

__all__ = [
    "BuiltBundle",
    "BundleSpec",
    "BundleStore",
    "StoredBundle",
    "VersionNotNewerError",
    "build_bundle_from_dir",
    "build_bundle_from_file",
    "build_signed_bundle",
    "default_store",
]
