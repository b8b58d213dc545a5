"""The hub's bundle store: the one owner of the bundle folder.

Layout::

    DIR/BUNDLE_ID.ffb                  full bundles, named by bundle id (sha256 of the manifest)
    DIR/deltas/TARGET_ID/BASE_ID.ffb   delta bundles built on demand (``cloud_hub.delta``)

The folder holds no secrets and lives beside the key folder, never inside it
(:func:`default_store`). The registry is the only index: the store knows its files and
nothing else, and what it lists it reads from the bundles' own signed headers.

Rules enforced here, numbered as in the threat model:

- R1: a bundle is written only after it verifies against the hub's own trust root and
  keyring; a file dropped into the folder by hand is trusted only once it verifies.
- R12: every path is built from a bundle id checked to be 64 lowercase hex digits.
- R15: every write goes through ``shared.files.atomic_write`` (fresh temporary, fsync, rename).

Versions increase per (model, device class): :meth:`BundleStore.add` refuses a version that is
not newer than every bundle this hub signed for the pair. A lock file serialises builders.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cloud_hub.bundles.trust import (
    HubKeys,
    HubTrust,
    Purpose,
    check_bundle_id,
    verify_hub_bundle,
    verify_hub_manifest,
)
from cloud_hub.errors import HubConfigError, RegistryError
from cloud_hub.keys import KeyStore
from shared.bundle import VerifiedBundle, bundle_id_of, parse_bundle
from shared.errors import BundleError, FedfleetError
from shared.files import atomic_write

__all__ = ["BundleStore", "StoredBundle", "TrustedBundle", "VersionNotNewerError", "default_store"]

log = logging.getLogger(__name__)
UTC = timezone.utc
_PREFIX = struct.Struct(">8sBI")  # shared.bundle's container prefix: magic, format, header length
_MAX_HEADER = 1024 * 1024


class VersionNotNewerError(HubConfigError):
    """The requested version is not newer than the newest stored one for that model/class."""


@dataclass(frozen=True)
class StoredBundle:
    """One bundle in the store, as its signed header describes it."""

    model_name: str
    device_class: str
    version: int
    bundle_id: str
    file: str  # relative to the store directory
    size: int
    created: str


@dataclass(frozen=True)
class TrustedBundle:
    """Bundle bytes that verified against the hub's own trust, with the verdict."""

    data: bytes
    verified: VerifiedBundle

    @property
    def bundle_id(self) -> str:
        return self.verified.offer.bundle_id


class BundleStore:
    """Full bundles and the delta cache, in one folder, written atomically."""

    def __init__(self, directory: str | os.PathLike[str], keys: HubKeys) -> None:
        self.directory = Path(directory)
        self.keys = keys

    # -- paths (R12: ids are checked before any path is built) -------------------------------
    def path_of(self, bundle_id: str) -> Path:
        return self.directory / f"{check_bundle_id(bundle_id)}.ffb"

    def delta_path(self, target_id: str, base_id: str) -> Path:
        target, base = check_bundle_id(target_id), check_bundle_id(base_id)
        return self.directory / "deltas" / target / f"{base}.ffb"

    def trust(self) -> HubTrust:
        return HubTrust.of(self.keys)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # -- full bundles ------------------------------------------------------------------------
    def add(
        self,
        data: bytes,
        *,
        require_newer: bool = True,
        purpose: Purpose = Purpose.DELIVER,
        now: datetime | None = None,
    ) -> StoredBundle:
        """Verify ``data`` (R1) and keep it. ``require_newer``: refuse a version that is not
        newer than every stored one of its model and class (builds; uploads may be older).

        Raises ``shared.errors.BundleError`` (with the reason) for a bundle that does not
        verify, ``VersionNotNewerError`` for a version that is not newer.
        """
        verified = verify_hub_bundle(data, self.trust(), now=now, purpose=purpose)
        m, bundle_id = verified.manifest, verified.offer.bundle_id
        with self._locked():
            if require_newer:
                self.check_version(m.model_name, m.device_class, m.version)
            path = self.path_of(bundle_id)
            if not path.is_file() or path.read_bytes() != data:
                atomic_write(path, data)  # R15
        return StoredBundle(
            model_name=m.model_name,
            device_class=m.device_class,
            version=m.version,
            bundle_id=bundle_id,
            file=path.name,
            size=len(data),
            created=m.created,
        )

    def read(self, entry: StoredBundle | str) -> bytes:
        """The bytes of a stored bundle, unverified (use :meth:`read_verified` to ship them)."""
        bundle_id = entry.bundle_id if isinstance(entry, StoredBundle) else entry
        try:
            return self.path_of(bundle_id).read_bytes()
        except (OSError, BundleError) as exc:
            raise RegistryError(
                f"bundle {str(bundle_id)[:64]!r} is not in the store: {exc}"
            ) from exc

    def read_verified(
        self, bundle_id: str, *, purpose: Purpose = Purpose.DELIVER, now: datetime | None = None
    ) -> TrustedBundle:
        """A stored bundle that verifies now (R1): the bytes on disk may have changed since
        they were stored, and only verified bytes are shipped or re-signed."""
        data = self.read(bundle_id)
        verified = verify_hub_bundle(data, self.trust(), now=now, purpose=purpose)
        if verified.offer.bundle_id != bundle_id:
            raise RegistryError(
                f"file {bundle_id[:16]}….ffb holds bundle {verified.offer.bundle_id}"
            )
        return TrustedBundle(data=data, verified=verified)

    def ids(self) -> list[str]:
        """Ids of the full-bundle files in the folder (whatever their content)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.stem for p in self.directory.glob("*.ffb") if check_id_quietly(p.stem) and p.is_file()
        )

    def entries(self, *, now: datetime | None = None) -> list[StoredBundle]:
        """Every bundle in the folder that this hub signed (any keyring version); files that
        do not verify are skipped and logged (R1)."""
        now = now or datetime.now(UTC)
        trust = self.trust()
        out: list[StoredBundle] = []
        for bundle_id in self.ids():
            path = self.path_of(bundle_id)
            try:
                parsed = parse_bundle(_read_header(path))
                offer = verify_hub_manifest(
                    parsed.manifest_envelope,
                    parsed.keyring_envelope,
                    trust,
                    now=now,
                    purpose=Purpose.HISTORY,
                )
                if bundle_id_of(parsed.manifest_envelope) != bundle_id:
                    raise RegistryError("file name is not its bundle id")
                size = path.stat().st_size
            except (FedfleetError, RegistryError, OSError) as exc:
                log.warning("bundle file %s not trusted: %s", path.name, exc)
                continue
            m = offer.manifest
            out.append(
                StoredBundle(
                    m.model_name, m.device_class, m.version, bundle_id, path.name, size, m.created
                )
            )
        return sorted(out, key=lambda e: (e.model_name, e.device_class, e.version, e.bundle_id))

    def latest_version(self, model_name: str, device_class: str) -> int:
        """Newest stored version for (model, class); 0 when there is none."""
        versions = [
            e.version
            for e in self.entries()
            if e.model_name == model_name and e.device_class == device_class
        ]
        return max(versions, default=0)

    def check_version(self, model_name: str, device_class: str, version: int) -> None:
        """Raise ``VersionNotNewerError`` unless ``version`` is newer than every stored one."""
        latest = self.latest_version(model_name, device_class)
        if version <= latest:
            raise VersionNotNewerError(
                f"version {version} of {model_name!r} for class {device_class!r} is not newer "
                f"than the newest built version {latest}; use --version {latest + 1} or higher"
            )

    def find(
        self,
        *,
        bundle_id: str | None = None,
        model_name: str | None = None,
        device_class: str | None = None,
        version: int | None = None,
    ) -> StoredBundle:
        """The newest entry matching every given field; ``RegistryError`` if none."""
        for e in reversed(self.entries()):
            if (
                (bundle_id is None or e.bundle_id == bundle_id)
                and (model_name is None or e.model_name == model_name)
                and (device_class is None or e.device_class == device_class)
                and (version is None or e.version == version)
            ):
                return e
        raise RegistryError("no stored bundle matches the query")

    # -- delta cache ---------------------------------------------------------------------------
    def cached_delta(self, target_id: str, base_id: str) -> bytes | None:
        try:
            return self.delta_path(target_id, base_id).read_bytes()
        except FileNotFoundError:
            return None

    def keep_delta(self, target_id: str, base_id: str, data: bytes) -> None:
        path = self.delta_path(target_id, base_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)  # R15: no fixed temporary name, durable rename

    # -- migration ---------------------------------------------------------------------------
    def adopt_legacy(self, old_directory: Path) -> int:
        """Move the bundles of an older layout (``KEYDIR/bundles`` with an ``index.json``) into
        this store. Only bundles that verify are adopted; the old index and delta cache are
        dropped (the registry is the index; deltas are rebuilt on demand). Returns the count."""
        if not old_directory.is_dir() or old_directory.resolve() == self.directory.resolve():
            return 0
        adopted = 0
        for path in sorted(old_directory.glob("*.ffb")):
            try:
                self.add(path.read_bytes(), require_newer=False, purpose=Purpose.HISTORY)
                adopted += 1
            except (FedfleetError, OSError) as exc:
                log.warning("legacy bundle %s not adopted: %s", path, exc)
                continue
            path.unlink()
        # the old index, lock, delta cache and temporaries are not carried over
        (old_directory / "index.json").unlink(missing_ok=True)
        (old_directory / ".lock").unlink(missing_ok=True)
        shutil.rmtree(old_directory / "deltas", ignore_errors=True)
        for stale in [*old_directory.glob("*.tmp"), *old_directory.glob(".*.tmp")]:
            stale.unlink(missing_ok=True)
        leftovers = list(old_directory.iterdir())
        if leftovers:
            log.warning(
                "%s keeps %d file(s) that are not trusted bundles", old_directory, len(leftovers)
            )
        else:
            old_directory.rmdir()
        log.info("adopted %d bundle(s) from %s into %s", adopted, old_directory, self.directory)
        return adopted


def check_id_quietly(name: str) -> bool:
    try:
        check_bundle_id(name)
    except BundleError:
        return False
    return True


def _read_header(path: Path) -> bytes:
    """The prefix and header of a bundle file (its artifacts are not read)."""
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            return prefix
        _, _, header_len = _PREFIX.unpack(prefix)
        return prefix + f.read(min(header_len, _MAX_HEADER + 1))


def default_store(keys: KeyStore) -> BundleStore:
    """The bundle store of a hub whose keys live in ``KEYDIR``: ``KEYDIR/../bundles``.

    Bundles sit beside the key folder, never inside it (that folder holds secrets only). A
    store left inside the key folder by an older version is adopted on first use.
    """
    key_dir = keys.directory
    store = BundleStore(key_dir.parent / "bundles", keys)
    legacy = key_dir / "bundles"
    if legacy.is_dir():
        store.adopt_legacy(legacy)
    return store
