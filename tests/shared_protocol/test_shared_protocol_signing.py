"""Envelope and keyring verification at their edges (the cases mutation testing showed
untested): signature order, distinct keys for a threshold, an envelope without signatures,
the expiry instant, revoked and expired signing keys, and the refusal messages."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import (
    BadSignatureError,
    ExpiredError,
    MalformedBundleError,
    RevokedKeyError,
    RollbackError,
    UnknownKeyError,
)
from shared.signing import (
    KeyEntry,
    Keyring,
    SigningKey,
    TrustRoot,
    format_time,
    sign_envelope,
    verify_envelope,
    verify_keyring,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=timezone.utc)
DOC = {"type": "note", "n": 1}


def _trusted(*keys: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {k.keyid: k.public for k in keys}


def test_a_bad_unknown_or_revoked_signature_before_a_good_one_does_not_hide_it() -> None:
    good, stranger, revoked = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    env = sign_envelope(DOC, [stranger, revoked, good])
    forged = dict(env["signatures"][2], sig="00" * 64)
    env["signatures"].insert(0, {**forged, "keyid": good.keyid})  # a bad one by a trusted key
    trusted = _trusted(good, revoked)
    rev = frozenset({revoked.keyid})
    assert verify_envelope(env, trusted, threshold=1, what="doc", revoked=rev) == DOC


def test_a_threshold_needs_distinct_keys() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert verify_envelope(sign_envelope(DOC, [a, b]), _trusted(a, b), threshold=2, what="doc")
    twice = sign_envelope(DOC, [a, a])
    with pytest.raises(BadSignatureError, match=r"^doc: 1 valid signatures, 2 required$"):
        verify_envelope(twice, _trusted(a, b), threshold=2, what="doc")


def test_refusals_name_what_was_refused_and_why() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(UnknownKeyError, match=r"^doc: not signed by a trusted key$"):
        verify_envelope({"signed": DOC, "signatures": []}, _trusted(a), threshold=1, what="doc")
    with pytest.raises(UnknownKeyError, match=r"^doc: not signed by a trusted key$"):
        verify_envelope(sign_envelope(DOC, [b]), _trusted(a), threshold=1, what="doc")
    with pytest.raises(RevokedKeyError, match=r"^doc: signed by a revoked key$"):
        verify_envelope(
            sign_envelope(DOC, [a]),
            _trusted(a),
            threshold=1,
            what="doc",
            revoked=frozenset({a.keyid}),
        )
    tampered = sign_envelope(DOC, [a])
    tampered["signed"] = {**DOC, "n": 2}
    with pytest.raises(BadSignatureError, match=r"^doc: signature does not verify$"):
        verify_envelope(tampered, _trusted(a), threshold=1, what="doc")


def _keyring_env(
    root: SigningKey, *, expires: datetime, version: int = 3, threshold: int = 1
) -> tuple[dict[str, Any], SigningKey]:
    online = SigningKey.generate()
    ring = Keyring(
        version=version,
        expires=format_time(expires),
        signing_keys={online.keyid: KeyEntry(online.public_hex, format_time(expires))},
        threshold=threshold,
    )
    return sign_envelope(ring.to_signed(), [root]), online


def test_keyring_expiry_is_refused_at_the_instant_itself() -> None:
    root = SigningKey.generate()
    trust = TrustRoot({root.keyid: root.public_hex})
    env, _ = _keyring_env(root, expires=NOW)
    with pytest.raises(ExpiredError, match=r"^keyring expired at "):
        verify_keyring(env, trust, now=NOW)
    ring = verify_keyring(env, trust, now=NOW - timedelta(seconds=1))
    assert ring.version == 3


def test_keyring_refusals_say_keyring() -> None:
    root, other = SigningKey.generate(), SigningKey.generate()
    trust = TrustRoot({root.keyid: root.public_hex})
    env, _ = _keyring_env(other, expires=NOW + timedelta(days=1))
    with pytest.raises(UnknownKeyError, match=r"^keyring: not signed by a trusted key$"):
        verify_keyring(env, trust, now=NOW)
    env, _ = _keyring_env(root, expires=NOW + timedelta(days=1), version=2)
    with pytest.raises(RollbackError, match=r"^keyring version 2 older than seen 3$"):
        verify_keyring(env, trust, now=NOW, min_version=3)
    env, _ = _keyring_env(root, expires=NOW + timedelta(days=1), threshold=0)
    with pytest.raises(MalformedBundleError, match=r"^keyring threshold must be >= 1$"):
        verify_keyring(env, trust, now=NOW)


def test_active_keys_leave_out_revoked_expired_and_mislabelled_keys() -> None:
    live, revoked, expired, mislabelled = (SigningKey.generate() for _ in range(4))
    later, earlier = format_time(NOW + timedelta(days=1)), format_time(NOW)
    ring = Keyring(
        version=1,
        expires=later,
        signing_keys={  # the live key last: every skipped key must let the loop go on
            revoked.keyid: KeyEntry(revoked.public_hex, later),
            expired.keyid: KeyEntry(expired.public_hex, earlier),  # expires at this instant
            mislabelled.keyid: KeyEntry(live.public_hex, later),  # id of another key
            live.keyid: KeyEntry(live.public_hex, later),
        },
        revoked=[revoked.keyid],
    )
    assert list(ring.active_keys(NOW)) == [live.keyid]
