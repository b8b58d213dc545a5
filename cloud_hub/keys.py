"""The hub's on-disk key store: root key, online signing keys and the root-signed keyring.

Layout of a key store directory::

    DIR/
      root.pem            Ed25519 root key (mode 0600). It signs ONLY keyrings. In production
                          it belongs offline (an HSM, or a machine that is never on the
                          network): copy it away after ``keys init`` and bring it back only
                          to rotate.
      signing/KEYID.pem   online signing keys (mode 0600); they sign manifests and rollback
                          orders, and can be rotated without touching any device.
      keyring.json        the current root-signed keyring envelope (public)
      trust_root.json     what devices pin at enrollment (public)
      freshness.json      the last signed freshness document (public; re-signed every few
                          hours by the online key, see :mod:`shared.freshness`)

Rotation (``rotate``) adds a new signing key, revokes the current one and re-signs the keyring
with version + 1; devices accept it because the pinned root signed it, and from then on refuse
anything signed by the revoked key. The running hub publishes the keyring retained on
``trust/keyring`` (R10: rotation reaches idle devices, not only those that get a deployment)
and re-signs the short-lived freshness document on ``trust/freshness``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubConfigError
from shared.bundle import MAX_ORDER_DEVICES, RollbackOrder, sign_rollback_order
from shared.errors import ExpiredError, FedfleetError
from shared.files import atomic_write
from shared.freshness import (
    MAX_FRESHNESS_LIFETIME,
    FreshnessDocument,
    ReleasedBundle,
    sign_freshness,
)
from shared.messages import new_id
from shared.signing import (
    KeyEntry,
    Keyring,
    SigningKey,
    TrustRoot,
    format_time,
    sign_envelope,
    verify_keyring,
)

__all__ = ["KeyStore", "KeyStoreConfig"]

UTC = timezone.utc
MAX_DAYS = 3650


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class KeyStoreConfig:
    """Lifetimes of what the key store signs."""

    keyring_days: int = 365
    signing_key_days: int = 365
    freshness_hours: float = 6.0  # R10: a withheld update shows within hours, not a year

    def __post_init__(self) -> None:
        for name in ("keyring_days", "signing_key_days"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_DAYS:
                raise HubConfigError(f"{name} must be between 1 and {MAX_DAYS}, got {value}")
        limit = MAX_FRESHNESS_LIFETIME / timedelta(hours=1)
        if not 0 < self.freshness_hours <= limit:
            raise HubConfigError(f"freshness_hours must be in (0, {limit:g}]")


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write a secret file with mode 0600 from the start (never world-readable, not even briefly)."""
    if path.exists() and not force:
        raise HubConfigError(f"{path} exists; pass --force to overwrite")
    atomic_write(path, data, mode=0o600)


def _write_public(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


class KeyStore:
    """Keys and keyring in one directory. Construct with ``KeyStore(dir)``; create with ``init``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    # -- paths -------------------------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def keyring_path(self) -> Path:
        return self.directory / "keyring.json"

    @property
    def trust_root_path(self) -> Path:
        return self.directory / "trust_root.json"

    @property
    def freshness_path(self) -> Path:
        return self.directory / "freshness.json"

    @property
    def signing_dir(self) -> Path:
        return self.directory / "signing"

    def exists(self) -> bool:
        return self.keyring_path.exists() and self.trust_root_path.exists()

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        config: KeyStoreConfig | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> KeyStore:
        """Create a root key, one signing key and keyring version 1 in ``directory``."""
        config = config or KeyStoreConfig()
        store = cls(directory)
        if not force and (store.root_path.exists() or store.keyring_path.exists()):
            raise HubConfigError(
                f"a key store already exists in {store.directory}; pass --force to overwrite"
            )
        store.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(store.directory, 0o700)
        store.signing_dir.mkdir(exist_ok=True)
        os.chmod(store.signing_dir, 0o700)
        if force:
            for old in store.signing_dir.glob("*.pem"):
                old.unlink()
        root = SigningKey.generate()
        signing = SigningKey.generate()
        _write_private(store.root_path, root.to_pem(), force=force)
        _write_private(store.signing_dir / f"{signing.keyid}.pem", signing.to_pem(), force=force)
        trust = TrustRoot(root_keys={root.keyid: root.public_hex}, threshold=1)
        _write_public(store.trust_root_path, trust.to_dict())
        now = now or _now()
        keyring = Keyring(
            version=1,
            expires=format_time(now + timedelta(days=config.keyring_days)),
            signing_keys={
                signing.keyid: KeyEntry(
                    public=signing.public_hex,
                    expires=format_time(now + timedelta(days=config.signing_key_days)),
                )
            },
        )
        _write_public(store.keyring_path, sign_envelope(keyring.to_signed(), [root]))
        return store

    # -- reading -----------------------------------------------------------------------------
    def _require(self) -> None:
        if not self.exists():
            raise HubConfigError(
                f"no key store in {self.directory}; run `cloud-hub keys init --keys-dir {self.directory}`"
            )

    def trust_root(self) -> TrustRoot:
        self._require()
        try:
            return TrustRoot.from_dict(json.loads(self.trust_root_path.read_text("utf-8")))
        except (ValueError, FedfleetError) as exc:
            raise HubConfigError(f"{self.trust_root_path}: {exc}") from exc

    def keyring_envelope(self) -> dict[str, Any]:
        self._require()
        try:
            value = json.loads(self.keyring_path.read_text("utf-8"))
        except ValueError as exc:
            raise HubConfigError(f"{self.keyring_path}: {exc}") from exc
        if not isinstance(value, dict):
            raise HubConfigError(f"{self.keyring_path}: not a keyring envelope")
        return value

    def keyring(self, *, now: datetime | None = None) -> Keyring:
        """The current keyring, verified against our own trust root (catches a stale file)."""
        try:
            return verify_keyring(self.keyring_envelope(), self.trust_root(), now=now or _now())
        except ExpiredError as exc:
            raise HubConfigError(
                f"{exc}; run `cloud-hub keys rotate --keys-dir {self.directory}` to issue a new one"
            ) from exc
        except FedfleetError as exc:
            raise HubConfigError(f"the key store's keyring does not verify: {exc}") from exc

    def _load_key(self, path: Path) -> SigningKey:
        try:
            return SigningKey.from_pem(path.read_bytes())
        except (OSError, FedfleetError) as exc:
            raise HubConfigError(f"cannot load key {path}: {exc}") from exc

    def root_key(self) -> SigningKey:
        if not self.root_path.exists():
            raise HubConfigError(
                f"root key {self.root_path} is not present (kept offline?); bring it back to rotate"
            )
        return self._load_key(self.root_path)

    def signing_keys(self, *, now: datetime | None = None) -> list[SigningKey]:
        """The online keys the current keyring accepts (not revoked, not expired)."""
        active = self.keyring(now=now).active_keys(now or _now())
        keys = []
        for kid in sorted(active):
            path = self.signing_dir / f"{kid}.pem"
            if path.exists():
                keys.append(self._load_key(path))
        if not keys:
            raise HubConfigError(
                "no usable signing key (all revoked or expired); run `cloud-hub keys rotate`"
            )
        return keys

    # -- changes -----------------------------------------------------------------------------
    def rotate(
        self, *, config: KeyStoreConfig | None = None, now: datetime | None = None
    ) -> SigningKey:
        """Add a new signing key, revoke every current one, and re-sign the keyring (version+1)."""
        config = config or KeyStoreConfig()
        now = now or _now()
        root = self.root_key()
        try:  # an expired keyring can still be rotated: we only need its contents
            current = verify_keyring(
                self.keyring_envelope(), self.trust_root(), now=datetime.min.replace(tzinfo=UTC)
            )
        except FedfleetError as exc:
            raise HubConfigError(f"the key store's keyring does not verify: {exc}") from exc
        new = SigningKey.generate()
        _write_private(self.signing_dir / f"{new.keyid}.pem", new.to_pem(), force=False)
        revoked = sorted(set(current.revoked) | set(current.signing_keys))
        keyring = Keyring(
            version=current.version + 1,
            expires=format_time(now + timedelta(days=config.keyring_days)),
            signing_keys={
                new.keyid: KeyEntry(
                    public=new.public_hex,
                    expires=format_time(now + timedelta(days=config.signing_key_days)),
                )
            },
            revoked=revoked,
            threshold=current.threshold,
        )
        _write_public(self.keyring_path, sign_envelope(keyring.to_signed(), [root]))
        return new

    def sign_freshness(
        self,
        released: Mapping[str, ReleasedBundle],
        *,
        config: KeyStoreConfig | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Sign a new freshness document naming the current keyring and ``released`` (device
        class -> newest bundle released to the whole class); keep it in ``freshness.json``.

        The version grows with every document (at least the Unix time of ``now``), so a device
        refuses an older one even across a hub restart that lost ``freshness.json``."""
        config = config or KeyStoreConfig()
        now = now or _now()
        keyring = self.keyring(now=now)
        doc = FreshnessDocument(
            version=max(self._last_freshness_version() + 1, int(now.timestamp())),
            issued=format_time(now),
            expires=format_time(now + timedelta(hours=config.freshness_hours)),
            keyring_version=keyring.version,
            released=dict(released),
        )
        envelope = sign_freshness(doc, self.signing_keys(now=now))
        _write_public(self.freshness_path, envelope)
        return envelope

    def _last_freshness_version(self) -> int:
        try:
            version = json.loads(self.freshness_path.read_text("utf-8"))["signed"]["version"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0  # none yet, or unreadable: the clock-based floor still applies
        return version if isinstance(version, int) else 0

    def sign_rollback_order(
        self,
        *,
        model_name: str,
        device_class: str,
        to_version: int,
        to_bundle_id: str,
        device_ids: Sequence[str],
        from_bundle_id: str,
        to_sha256: str = "",
        valid_hours: float = 24.0,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """A signed, one-time permission for ``device_ids`` (of ``device_class``), while they
        run ``from_bundle_id``, to go back to ``to_version`` (R5: bound, so not replayable)."""
        if not 0 < valid_hours <= 24 * 30:
            raise HubConfigError("rollback orders are valid between 0 and 30 days")
        if not device_ids or len(device_ids) > MAX_ORDER_DEVICES or not from_bundle_id:
            raise HubConfigError(
                f"a rollback order names 1..{MAX_ORDER_DEVICES} devices and the bundle they run"
            )
        now = now or _now()
        order = RollbackOrder(
            order_id=new_id(),
            model_name=model_name,
            device_class=device_class,
            to_version=to_version,
            to_bundle_id=to_bundle_id,
            issued=format_time(now),
            expires=format_time(now + timedelta(hours=valid_hours)),
            device_ids=list(device_ids),
            from_bundle_id=from_bundle_id,
            to_sha256=to_sha256,
        )
        return sign_rollback_order(order, self.signing_keys(now=now))
