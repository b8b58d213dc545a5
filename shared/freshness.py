"""The signed freshness document (TUF's *timestamp* role) and its pure verification.

The keyring says which online keys may sign; it is root-signed and long-lived, so on its own
it cannot tell a device that it is missing something. The hub therefore re-signs, every few
hours and with its online key, a short-lived document that names:

- the current keyring version (a device that holds an older one was not given the new one);
- per device class, the newest bundle released to the whole class.

A device that stops receiving fresh documents (the broker withholds them, or replays an
old one) sees the last one expire and reports itself *stale*; a document that names a
version newer than the device runs reveals that offers are being withheld (a *freeze*).

Pure: envelopes and values in, a document or an exception out (``now`` is a parameter so
tests can jump the clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared._codec import to_plain
from shared.errors import MalformedBundleError, MixAndMatchError, RollbackError
from shared.signing import (
    SPEC_VERSION,
    Keyring,
    SigningKey,
    parse_time,
    read_document,
    sign_envelope,
)

__all__ = [
    "MAX_FRESHNESS_LIFETIME",
    "FreshnessDocument",
    "ReleasedBundle",
    "parse_freshness",
    "sign_freshness",
    "verify_freshness",
]

#: A freshness document valid for longer than this is refused: a long-lived one, replayed by
#: the broker, would hide a freeze for its whole lifetime.
MAX_FRESHNESS_LIFETIME = timedelta(days=7)
MAX_RELEASED_CLASSES = 1024


@dataclass(frozen=True)
class ReleasedBundle:
    """The newest bundle released to every device of a class."""

    model_name: str
    version: int
    bundle_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FreshnessDocument:
    """Signed by an online key of the keyring; ``version`` only ever grows."""

    version: int
    issued: str
    expires: str
    keyring_version: int
    released: dict[str, ReleasedBundle] = field(default_factory=dict)  # device class -> bundle
    type: str = "freshness"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_signed(self) -> dict[str, Any]:
        return to_plain(self)  # type: ignore[no-any-return]

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires, "freshness expires")


def sign_freshness(document: FreshnessDocument, keys: Sequence[SigningKey]) -> dict[str, Any]:
    return sign_envelope(document.to_signed(), keys)


def _check_document_shape(doc: FreshnessDocument) -> None:
    if doc.version < 1 or doc.keyring_version < 1:
        raise MalformedBundleError("freshness document: version and keyring_version must be >= 1")
    if len(doc.released) > MAX_RELEASED_CLASSES:
        raise MalformedBundleError(f"freshness document names over {MAX_RELEASED_CLASSES} classes")
    lifetime = doc.expires_at - parse_time(doc.issued, "freshness issued")
    if not timedelta(0) < lifetime <= MAX_FRESHNESS_LIFETIME:
        raise MalformedBundleError(
            f"freshness document valid for {lifetime}; at most {MAX_FRESHNESS_LIFETIME} allowed"
        )


def parse_freshness(envelope: Mapping[str, Any]) -> FreshnessDocument:
    """The document inside an envelope, shape-checked but NOT signature-verified: for a
    device's own record of a document it verified when it arrived."""
    signed = envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedBundleError("freshness envelope has no 'signed' object")
    doc = read_document(signed, FreshnessDocument, "freshness document")
    _check_document_shape(doc)
    return doc


def verify_freshness(
    envelope: Any, keyring: Keyring, *, now: datetime, min_version: int = 0
) -> FreshnessDocument:
    """Verify a freshness document against an already verified ``keyring``.

    Refuses (each with its own error class, in this order): signatures that do not meet the
    keyring's threshold with active keys (``BadSignatureError``/``UnknownKeyError``/
    ``RevokedKeyError``); a malformed or over-long-lived document (``MalformedBundleError``);
    a document naming another keyring version than ``keyring`` (``MixAndMatchError``); one
    older than ``min_version``, the newest seen (``RollbackError``: the same version again is
    fine, a retained message arrives on every reconnect); an expired one (``ExpiredError``).
    """

    def check_current(doc: FreshnessDocument) -> None:
        _check_document_shape(doc)
        if doc.keyring_version != keyring.version:
            raise MixAndMatchError(
                f"freshness document names keyring v{doc.keyring_version}, "
                f"it came with v{keyring.version}"
            )
        if doc.version < min_version:
            raise RollbackError(f"freshness document v{doc.version} older than seen v{min_version}")

    return keyring.verify_document(
        envelope, FreshnessDocument, what="freshness document", now=now, check=check_current
    )
