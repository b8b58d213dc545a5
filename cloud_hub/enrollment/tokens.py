"""Single-use, expiring enrollment tokens and enrolled-device records (pure values).

A token is 32 random bytes (URL-safe base64) shown once to the operator. The hub stores only
its SHA-256: a leaked database does not leak usable tokens. A plain hash (no salt, no slow
KDF) is right here because the secret has 256 bits of entropy, not a password's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cloud_hub.enrollment.errors import TokenExpiredError, TokenUsedError
from cloud_hub.errors import HubConfigError
from shared.errors import ConfigError
from shared.topics import validate_device_id

__all__ = [
    "MAX_LABELS",
    "TOKEN_PREFIX",
    "EnrolledDevice",
    "TokenRecord",
    "check_redeemable",
    "hash_token",
    "issue_token",
    "validate_labels",
]

MAX_TTL = timedelta(days=30)
MAX_LABELS = 32
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_MAX_LABEL_VALUE = 256


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 text."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels are small ``key=value`` strings used to target rollouts."""
    if len(labels) > MAX_LABELS:
        raise HubConfigError(f"at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise HubConfigError(f"invalid label key {key!r}")
        if not isinstance(value, str) or len(value) > _MAX_LABEL_VALUE:
            raise HubConfigError(f"invalid value for label {key!r}")
        out[key] = value
    return out


def _validate_id(value: str, what: str) -> str:
    try:
        return validate_device_id(value)
    except ConfigError as exc:
        raise HubConfigError(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class TokenRecord:
    """What the hub keeps about one token (never the token itself)."""

    token_hash: str
    device_class: str
    created_at: datetime
    expires_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    device_id: str | None = None  # a token issued for one specific (e.g. re-installed) device
    used_at: datetime | None = None
    used_by: str | None = None

    @property
    def token_id(self) -> str:
        """A short public handle for listings and logs (a prefix of the hash, not the token)."""
        return self.token_hash[:12]

    def redeemed(self, device_id: str, at: datetime) -> TokenRecord:
        return replace(self, used_at=at, used_by=device_id)


# Enrollment tokens start with this: never with "-" (base64url can), which a command line
# would read as an option (`edge-agent install --token -X…`), and recognisable when leaked.
TOKEN_PREFIX = "ffe_"


def issue_token(
    *,
    device_class: str,
    ttl: timedelta,
    now: datetime,
    labels: Mapping[str, str] | None = None,
    device_id: str | None = None,
) -> tuple[str, TokenRecord]:
    """A new token: ``(secret shown once, record to store)``."""
    _validate_id(device_class, "device class")
    if device_id is not None:
        _validate_id(device_id, "device id")
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise HubConfigError(f"token lifetime must be between 1 s and {MAX_TTL.days} days")
    secret = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    record = TokenRecord(
        token_hash=hash_token(secret),
        device_class=device_class,
        created_at=now,
        expires_at=now + ttl,
        labels=validate_labels(labels or {}),
        device_id=device_id,
    )
    return secret, record


def check_redeemable(record: TokenRecord, now: datetime) -> None:
    """Raise why ``record`` cannot be redeemed at ``now`` (used is checked before expired)."""
    if record.used_at is not None:
        raise TokenUsedError(
            f"enrollment token {record.token_id} was already used by {record.used_by}"
        )
    if now >= record.expires_at:
        raise TokenExpiredError(f"enrollment token {record.token_id} has expired")


@dataclass(frozen=True)
class EnrolledDevice:
    """A device that holds a certificate from this hub."""

    device_id: str
    device_class: str
    cert_serial: int
    cert_fingerprint: str
    cert_not_after: datetime
    enrolled_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    token_id: str = ""
    revoked_at: datetime | None = None  # its certificate is on the CRL from then on
