"""Ed25519 keys, signed envelopes and the root-signed keyring (TUF-style delegation).

Trust model (after The Update Framework): the device pins the **root** public key at
enrollment. The root key stays offline and signs only the *keyring*: which online *signing*
keys may sign bundle manifests and rollback orders, until when, and which are revoked. Rotating
the signing key is a new keyring with a higher version; a device never accepts a keyring older
than the newest it has seen (keyring rollback), nor an expired one.

Everything here is pure: bytes and dicts in, values or exceptions out.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared._codec import from_plain, to_plain
from shared.canonical import canonical_bytes
from shared.errors import (
    BadSignatureError,
    ConfigError,
    ExpiredError,
    MalformedBundleError,
    MalformedMessageError,
    RevokedKeyError,
    RollbackError,
    UnknownKeyError,
)

SPEC_VERSION = "1.0"
UTC = timezone.utc


class SignedDocument(Protocol):
    """A typed document that a key signs: it says until when it holds."""

    @property
    def expires(self) -> str: ...


D = TypeVar("D", bound=SignedDocument)

__all__ = [
    "SPEC_VERSION",
    "KeyEntry",
    "Keyring",
    "SignedDocument",
    "SigningKey",
    "TrustRoot",
    "document_type",
    "format_time",
    "key_id",
    "parse_time",
    "read_document",
    "sign_envelope",
    "verify_envelope",
    "verify_keyring",
]


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, where: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError) as exc:
        raise MalformedBundleError(f"{where}: bad timestamp {value!r}") from exc


def _public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """The key id is the sha256 of the raw public key (hex)."""
    return hashlib.sha256(_public_raw(public)).hexdigest()


def public_from_hex(value: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    except ValueError as exc:
        raise MalformedBundleError(f"invalid Ed25519 public key {value[:16]!r}…") from exc


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key with its id."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("signing keys must be Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_hex(self) -> str:
        return _public_raw(self.public).hex()

    @property
    def keyid(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> str:
        return self.private.sign(data).hex()


def sign_envelope(signed: Mapping[str, Any], keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Wrap ``signed`` into ``{"signed": ..., "signatures": [...]}`` over its canonical bytes."""
    payload = canonical_bytes(dict(signed))
    return {
        "signed": dict(signed),
        "signatures": [{"keyid": k.keyid, "sig": k.sign(payload)} for k in keys],
    }


def _split_envelope(envelope: Any, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(envelope, dict):
        raise MalformedBundleError(f"{what}: envelope must be an object")
    signed, sigs = envelope.get("signed"), envelope.get("signatures")
    if not isinstance(signed, dict) or not isinstance(sigs, list):
        raise MalformedBundleError(f"{what}: envelope needs 'signed' object and 'signatures' list")
    for s in sigs:
        if not (
            isinstance(s, dict)
            and isinstance(s.get("keyid"), str)
            and isinstance(s.get("sig"), str)
        ):
            raise MalformedBundleError(f"{what}: malformed signature entry")
    return signed, sigs


def verify_envelope(
    envelope: Any,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    threshold: int,
    what: str,
    revoked: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Check that ``threshold`` distinct trusted keys signed the envelope; return ``signed``.

    A signature by a revoked key raises ``RevokedKeyError``; signatures only by unknown keys
    raise ``UnknownKeyError``; a bad signature by a trusted key raises ``BadSignatureError``.
    """
    signed, sigs = _split_envelope(envelope, what)
    try:
        payload = canonical_bytes(signed)
    except ValueError as exc:
        raise MalformedBundleError(f"{what}: not canonically encodable: {exc}") from exc
    valid: set[str] = set()
    saw_revoked = saw_unknown = saw_bad = False
    for s in sigs:
        kid = s["keyid"]
        if kid in revoked:
            saw_revoked = True
            continue
        public = trusted.get(kid)
        if public is None:
            saw_unknown = True
            continue
        try:
            public.verify(bytes.fromhex(s["sig"]), payload)
        except (InvalidSignature, ValueError):
            saw_bad = True
            continue
        valid.add(kid)
    if len(valid) >= threshold:
        return signed
    if saw_bad:
        raise BadSignatureError(f"{what}: signature does not verify")
    if saw_revoked:
        raise RevokedKeyError(f"{what}: signed by a revoked key")
    if saw_unknown or not sigs:
        raise UnknownKeyError(f"{what}: not signed by a trusted key")
    raise BadSignatureError(f"{what}: {len(valid)} valid signatures, {threshold} required")


@dataclass(frozen=True)
class TrustRoot:
    """What a device pins: the root public key(s) and how many must sign the keyring."""

    root_keys: dict[str, str]  # keyid -> raw public key hex
    threshold: int = 1

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.threshold > len(self.root_keys):
            raise ConfigError("trust root threshold must be between 1 and the number of keys")

    def publics(self) -> dict[str, Ed25519PublicKey]:
        out = {}
        for kid, hex_ in self.root_keys.items():
            pub = public_from_hex(hex_)
            if key_id(pub) != kid:
                raise ConfigError(f"trust root key id {kid[:12]}… does not match its key")
            out[kid] = pub
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"root_keys": dict(self.root_keys), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustRoot:
        keys = data.get("root_keys")
        thr = data.get("threshold", 1)
        if not isinstance(keys, dict) or not isinstance(thr, int):
            raise ConfigError("trust root needs root_keys (object) and threshold (int)")
        return cls(root_keys={str(k): str(v) for k, v in keys.items()}, threshold=thr)


@dataclass(frozen=True)
class KeyEntry:
    public: str  # raw Ed25519 public key, hex
    expires: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Keyring:
    """Root-signed list of online signing keys."""

    version: int
    expires: str
    signing_keys: dict[str, KeyEntry]
    revoked: list[str] = field(default_factory=list)
    threshold: int = 1
    type: str = "keyring"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_signed(self) -> dict[str, Any]:
        return to_plain(self)  # type: ignore[no-any-return]

    def active_keys(self, at: datetime) -> dict[str, Ed25519PublicKey]:
        out = {}
        for kid, entry in self.signing_keys.items():
            if kid in self.revoked or parse_time(entry.expires, "key expiry") <= at:
                continue
            pub = public_from_hex(entry.public)
            if key_id(pub) == kid:
                out[kid] = pub
        return out

    def verify_document(
        self,
        envelope: Any,
        document_class: builtins.type[D],  # the field ``type`` shadows the builtin here
        *,
        what: str,
        now: datetime,
        check: Callable[[D], None] | None = None,
    ) -> D:
        """The one check of a document an online key signs (bundle manifest, rollback order,
        training order, freshness document); the document, typed.

        Refuses, in this order: fewer than ``threshold`` valid signatures by keys this keyring
        lists as active at ``now`` (``BadSignatureError``; ``RevokedKeyError`` for a revoked
        key, ``UnknownKeyError`` for an unlisted or expired one); a ``type`` other than the
        one ``document_class`` declares, so a signature for one role never passes for another,
        another spec major version or an ill-typed field (``MalformedBundleError``); whatever
        ``check``, the document's own rules, refuses; an ``expires`` not after ``now``
        (``ExpiredError``). ``what`` names the document in every refusal.
        """
        signed = verify_envelope(
            envelope,
            self.active_keys(now),
            threshold=self.threshold,
            what=what,
            revoked=frozenset(self.revoked),
        )
        document = read_document(signed, document_class, what)
        if check is not None:
            check(document)
        if parse_time(document.expires, f"{what} expires") <= now:
            raise ExpiredError(f"{what} expired at {document.expires}")
        return document


def document_type(document_class: type) -> str:
    """The ``type`` a document class declares: the default of its ``type`` field."""
    for f in dataclasses.fields(document_class):
        if f.name == "type" and isinstance(f.default, str):
            return f.default
    raise TypeError(f"{document_class.__name__} declares no document type")


def read_document(signed: Mapping[str, Any], document_class: type[D], what: str) -> D:
    """``signed`` as a ``document_class``, NOT signature-verified: its ``type`` must be the
    one the class declares, its spec major version ours, and every field well-typed."""
    expected_type = document_type(document_class)
    if signed.get("type") != expected_type:
        raise MalformedBundleError(
            f"{what}: type must be {expected_type!r}, got {signed.get('type')!r}"
        )
    spec = signed.get("spec_version")
    if not isinstance(spec, str) or spec.split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise MalformedBundleError(f"{what}: unsupported spec_version {spec!r}")
    try:
        document: D = from_plain(document_class, dict(signed), what)
    except MalformedMessageError as exc:
        raise MalformedBundleError(str(exc)) from exc
    return document


def verify_keyring(
    envelope: Any, trust: TrustRoot, *, now: datetime, min_version: int = 0
) -> Keyring:
    """Verify a keyring against the pinned root; refuse expired or older-than-seen keyrings."""
    signed = verify_envelope(envelope, trust.publics(), threshold=trust.threshold, what="keyring")
    keyring = read_document(signed, Keyring, "keyring")
    if keyring.version < min_version:
        raise RollbackError(f"keyring version {keyring.version} older than seen {min_version}")
    if parse_time(keyring.expires, "keyring expires") <= now:
        raise ExpiredError(f"keyring expired at {keyring.expires}")
    if keyring.threshold < 1:
        raise MalformedBundleError("keyring threshold must be >= 1")
    return keyring
