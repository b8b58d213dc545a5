"""The one check every document an online key signs passes: ``Keyring.verify_document``.

Manifests, rollback orders, training orders and freshness documents all go through it, so
each refusal is asserted here once, by class and exact message, in the order it is made:
signatures by active keys (threshold, revoked, expired, unlisted), the document's type (a
signature made for one role never passes for another), spec and fields, the caller's own
rules, then expiry at the instant itself. Pure: keys, envelopes and a clock in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shared.errors import (
    BadSignatureError,
    ExpiredError,
    MalformedBundleError,
    RevokedKeyError,
    UnknownKeyError,
    WrongTargetError,
)
from shared.signing import (
    SPEC_VERSION,
    KeyEntry,
    Keyring,
    SigningKey,
    document_type,
    format_time,
    sign_envelope,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=timezone.utc)
ACTIVE, SECOND, REVOKED, EXPIRED, STRANGER = (SigningKey.generate() for _ in range(5))


@dataclass(frozen=True)
class Note:
    """A document of the shape every online-signed document has."""

    n: int
    expires: str
    type: str = "note"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def _keyring(threshold: int = 1) -> Keyring:
    def entry(key: SigningKey, expires: datetime) -> KeyEntry:
        return KeyEntry(public=key.public_hex, expires=format_time(expires))

    later = NOW + timedelta(days=30)
    return Keyring(
        version=3,
        expires=format_time(later),
        signing_keys={
            ACTIVE.keyid: entry(ACTIVE, later),
            SECOND.keyid: entry(SECOND, later),
            REVOKED.keyid: entry(REVOKED, later),
            EXPIRED.keyid: entry(EXPIRED, NOW),  # expires at the instant of the check
        },
        revoked=[REVOKED.keyid],
        threshold=threshold,
    )


def _note(*keys: SigningKey, expires: Any = NOW + timedelta(hours=1), **fields: Any) -> Any:
    when = format_time(expires) if isinstance(expires, datetime) else expires
    signed = {"n": 7, "expires": when, "type": "note", "spec_version": "1.0"}
    return sign_envelope({**signed, **fields}, list(keys) or [ACTIVE])


def _verify(envelope: Any, keyring: Keyring | None = None, **kwargs: Any) -> Note:
    return (keyring or _keyring()).verify_document(envelope, Note, what="note", now=NOW, **kwargs)


def _refused(error: type[Exception], message: str, envelope: Any, **kwargs: Any) -> None:
    with pytest.raises(error) as info:
        _verify(envelope, **kwargs)
    assert str(info.value) == message


def test_a_document_signed_by_an_active_key_comes_back_typed() -> None:
    note = _verify(_note(extra_field="kept"))
    assert note == Note(n=7, expires="2026-12-04T13:00:00Z", extra={"extra_field": "kept"})


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (REVOKED, RevokedKeyError, "note: signed by a revoked key"),
        (EXPIRED, UnknownKeyError, "note: not signed by a trusted key"),
        (STRANGER, UnknownKeyError, "note: not signed by a trusted key"),
    ],
)
def test_only_keys_the_keyring_lists_as_active_may_sign(
    key: SigningKey, error: type[Exception], message: str
) -> None:
    _refused(error, message, _note(key))


def test_the_keyring_threshold_counts_distinct_active_keys() -> None:
    two = _keyring(threshold=2)
    assert _verify(_note(ACTIVE, SECOND), two).n == 7
    _refused(
        BadSignatureError,
        "note: 1 valid signatures, 2 required",
        _note(ACTIVE, ACTIVE),
        keyring=two,
    )


def test_a_forged_signature_is_refused_before_the_document_is_read() -> None:
    envelope = _note(type="manifest")  # also of the wrong type: the signature comes first
    envelope["signed"]["n"] = 8
    _refused(BadSignatureError, "note: signature does not verify", envelope)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "bundle-manifest"}, "note: type must be 'note', got 'bundle-manifest'"),
        ({"spec_version": "2.0"}, "note: unsupported spec_version '2.0'"),
        ({"n": "seven"}, "note.n: expected an integer"),
    ],
)
def test_a_validly_signed_document_of_another_role_or_shape_is_refused(
    fields: dict[str, Any], message: str
) -> None:
    _refused(MalformedBundleError, message, _note(**fields))


def test_the_callers_rules_run_on_the_typed_document_before_expiry() -> None:
    seen: list[Note] = []

    def only_small(note: Note) -> None:
        seen.append(note)
        if note.n > 5:
            raise WrongTargetError(f"note {note.n} is too large")

    expired = _note(expires=NOW)
    _refused(WrongTargetError, "note 7 is too large", expired, check=only_small)
    assert seen == [Note(n=7, expires=format_time(NOW))]
    _refused(
        ExpiredError,
        "note expired at 2026-12-04T12:00:00Z",
        _note(n=1, expires=NOW),
        check=only_small,
    )


def test_expiry_is_refused_at_the_instant_itself_and_not_a_second_before() -> None:
    _refused(ExpiredError, "note expired at 2026-12-04T12:00:00Z", _note(expires=NOW))
    assert _verify(_note(expires=NOW + timedelta(seconds=1))).n == 7


def test_a_bad_expiry_is_refused_by_name() -> None:
    _refused(MalformedBundleError, "note expires: bad timestamp 'soon'", _note(expires="soon"))


def test_a_document_class_must_declare_its_type() -> None:
    @dataclass(frozen=True)
    class Untyped:
        expires: str

    assert document_type(Note) == "note"
    assert document_type(Keyring) == "keyring"
    with pytest.raises(TypeError, match="Untyped declares no document type"):
        document_type(Untyped)
