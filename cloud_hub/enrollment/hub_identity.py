"""The hub's own MQTT identity: configured once, persisted, reserved, issued by its own CA.

R2: a device must never be able to hold the hub's broker rights. Three things make sure:

- the name is chosen once (``cloud-hub broker-config --hub-user NAME``) and persisted in
  ``DATA_DIR/hub-ca/identity.json``; a later run with another name is refused;
- enrollment refuses that name as a device id (whatever name was configured);
- the hub's client certificates come from a separate issuing CA (``DATA_DIR/hub-ca``) that
  only the broker's hub listener trusts, and only that listener's ACL grants hub rights. A
  device certificate (device CA) is refused there during the TLS handshake, and on the
  device listener even a certificate named like the hub gets only a device's rights.

On disk::

    DATA_DIR/hub-ca/ca.key, ca.crt   the hub client CA (issues the hub's MQTT certificates)
    DATA_DIR/hub-ca/identity.json    {"type": "hub_identity", "version": 1, "name": ...}
    DATA_DIR/hub-ca/issued.json      serials of the hub certificates issued so far: every run
                                     of ``broker-config`` issues a new one and revokes the
                                     older ones on the hub listener (a leaked hub.key is
                                     retired by running it again)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.errors import HubConfigError
from shared.errors import ConfigError
from shared.files import atomic_write
from shared.topics import validate_device_id

__all__ = [
    "DEFAULT_HUB_USER",
    "HUB_CA_DIR",
    "HubIdentity",
    "configure_hub_identity",
    "hub_client_ca",
    "issued_hub_certificates",
    "load_hub_identity",
    "record_hub_certificate",
]

DEFAULT_HUB_USER = "fedfleet-hub"
HUB_CA_DIR = "hub-ca"
_IDENTITY_FILE = "identity.json"
_ISSUED_FILE = "issued.json"
UTC = timezone.utc
_MAX_IDENTITY_BYTES = 64 * 1024


@dataclass(frozen=True)
class HubIdentity:
    """The hub's MQTT user name (the CN of its client certificates)."""

    TYPE = "hub_identity"
    VERSION = 1

    name: str
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown fields, kept

    def __post_init__(self) -> None:
        try:
            validate_device_id(self.name)
        except ConfigError as exc:
            raise HubConfigError(f"hub MQTT identity: {exc}") from exc

    def reserves(self, device_id: str) -> bool:
        """Whether ``device_id`` would be confused with this identity (case-insensitive)."""
        return device_id.casefold() == self.name.casefold()

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "type": self.TYPE, "version": self.VERSION, "name": self.name}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HubIdentity:
        if data.get("type") != cls.TYPE or not isinstance(data.get("name"), str):
            raise HubConfigError("not a hub identity record")
        version = data.get("version")
        if version != cls.VERSION:
            raise HubConfigError(f"unsupported hub identity version {version!r}")
        extra = {k: v for k, v in data.items() if k not in ("type", "version", "name")}
        return cls(name=data["name"], extra=extra)


def _identity_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / HUB_CA_DIR / _IDENTITY_FILE


def load_hub_identity(data_dir: str | os.PathLike[str]) -> HubIdentity | None:
    """The persisted identity, or ``None`` while none was configured."""
    path = _identity_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HubConfigError(f"cannot read {path}: {exc}") from exc
    if len(raw) > _MAX_IDENTITY_BYTES:
        raise HubConfigError(f"{path} is too large")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HubConfigError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HubConfigError(f"{path} is not a hub identity record")
    return HubIdentity.from_dict(data)


def configure_hub_identity(data_dir: str | os.PathLike[str], name: str | None) -> HubIdentity:
    """The hub identity, persisting ``name`` (default ``fedfleet-hub``) on first use.

    R2: set once. Asking for another name later is refused: certificates, ACL and the
    reservation at enrollment all hang on it."""
    current = load_hub_identity(data_dir)
    if current is not None:
        if name is not None and name != current.name:
            raise HubConfigError(
                f"the hub's MQTT identity is already {current.name!r} "
                f"({_identity_path(data_dir)}); it is configured once"
            )
        return current
    identity = HubIdentity(name=name or DEFAULT_HUB_USER)
    path = _identity_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write(path, json.dumps(identity.to_dict(), sort_keys=True).encode() + b"\n")
    return identity


def issued_hub_certificates(data_dir: str | os.PathLike[str]) -> list[tuple[int, datetime]]:
    """``(serial, issued_at)`` of every hub certificate issued so far, oldest first."""
    path = Path(data_dir) / HUB_CA_DIR / _ISSUED_FILE
    try:
        data = json.loads(path.read_bytes())
        return [
            (int(item["serial"], 16), datetime.fromtimestamp(float(item["issued_at"]), UTC))
            for item in data["certificates"]
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HubConfigError(f"cannot read {path}: {exc}") from exc


def record_hub_certificate(
    data_dir: str | os.PathLike[str], serial: int, *, now: datetime | None = None
) -> None:
    """Remember an issued hub certificate, before it is written anywhere (so that the next
    rotation revokes it even if this run dies half way)."""
    issued = [*issued_hub_certificates(data_dir), (serial, now or datetime.now(UTC))]
    record = {
        "type": "hub_certificates",
        "version": 1,
        "certificates": [{"serial": f"{s:x}", "issued_at": t.timestamp()} for s, t in issued],
    }
    path = Path(data_dir) / HUB_CA_DIR / _ISSUED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, sort_keys=True).encode() + b"\n")


def hub_client_ca(data_dir: str | os.PathLike[str]) -> CertificateAuthority:
    """The CA that issues only the hub's own MQTT client certificates (created on first use)."""
    return CertificateAuthority.load_or_create(
        Path(data_dir) / HUB_CA_DIR, common_name="fedfleet hub client CA"
    )
