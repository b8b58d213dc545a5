"""Signing primitives at their edges: timestamps, keys, the trust root, spec checks.

Every refusal is asserted with its error class and exact message; every bound on both sides.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shared.canonical import canonical_bytes
from shared.errors import ConfigError, MalformedBundleError
from shared.signing import (
    SigningKey,
    TrustRoot,
    format_time,
    key_id,
    parse_time,
    public_from_hex,
    read_document,
    sign_envelope,
)

UTC = timezone.utc
KEY = SigningKey.generate()
OTHER = SigningKey.generate()


def test_times_are_written_and_read_in_utc_to_the_second() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert (
        format_time(datetime(2026, 1, 2, 5, 4, 3, 999, tzinfo=plus_two)) == "2026-01-02T03:04:03Z"
    )
    assert parse_time("2026-01-02T03:04:03Z", "x") == datetime(2026, 1, 2, 3, 4, 3, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:03Z", "x").tzinfo is UTC


@pytest.mark.parametrize("value", ["2026-01-02 03:04:03Z", "2026-01-02T03:04:03", "", None, 5])
def test_a_bad_timestamp_is_refused_by_where_it_was(value: Any) -> None:
    with pytest.raises(MalformedBundleError) as info:
        parse_time(value, "keyring expires")
    assert str(info.value) == f"keyring expires: bad timestamp {value!r}"


def test_the_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    raw = bytes.fromhex(KEY.public_hex)
    assert len(raw) == 32
    assert KEY.keyid == key_id(KEY.public) == hashlib.sha256(raw).hexdigest()
    assert public_from_hex(KEY.public_hex).public_bytes_raw() == raw


@pytest.mark.parametrize("value", ["zz" * 32, "ab" * 31, "0123456789abcdef0123"])
def test_a_malformed_public_key_is_refused_by_its_start(value: str) -> None:
    with pytest.raises(MalformedBundleError) as info:
        public_from_hex(value)
    assert str(info.value) == f"invalid Ed25519 public key {value[:16]!r}…"


def test_signing_keys_round_trip_through_pem_and_sign_hex() -> None:
    again = SigningKey.from_pem(KEY.to_pem())
    assert again.keyid == KEY.keyid
    assert KEY.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    sig = KEY.sign(b"data")
    assert len(sig) == 128 and bytes.fromhex(sig)
    KEY.public.verify(bytes.fromhex(sig), b"data")


def test_a_pem_that_is_not_an_ed25519_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^not a PEM private key: "):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigError) as info:
        SigningKey.from_pem(other)
    assert str(info.value) == "signing keys must be Ed25519"


def test_an_envelope_signs_the_canonical_bytes_with_each_key_in_order() -> None:
    signed = {"b": 1, "a": [1, 2]}
    envelope = sign_envelope(signed, [KEY, OTHER])
    assert envelope["signed"] == signed and envelope["signed"] is not signed
    assert [s["keyid"] for s in envelope["signatures"]] == [KEY.keyid, OTHER.keyid]
    for key, entry in zip((KEY, OTHER), envelope["signatures"], strict=True):
        key.public.verify(bytes.fromhex(entry["sig"]), canonical_bytes(signed))
    assert sign_envelope(signed, [])["signatures"] == []


def _root(*keys: SigningKey, threshold: int = 1) -> TrustRoot:
    return TrustRoot({k.keyid: k.public_hex for k in keys}, threshold=threshold)


def test_the_root_threshold_is_between_one_and_the_number_of_keys() -> None:
    assert _root(KEY, OTHER, threshold=2).threshold == 2
    assert _root(KEY).threshold == 1
    for threshold in (0, 3):
        with pytest.raises(ConfigError) as info:
            _root(KEY, OTHER, threshold=threshold)
        assert str(info.value) == "trust root threshold must be between 1 and the number of keys"


def test_root_keys_must_match_their_ids() -> None:
    assert set(_root(KEY, OTHER).publics()) == {KEY.keyid, OTHER.keyid}
    swapped = TrustRoot({KEY.keyid: OTHER.public_hex})
    with pytest.raises(ConfigError) as info:
        swapped.publics()
    assert str(info.value) == f"trust root key id {KEY.keyid[:12]}… does not match its key"


def test_the_trust_root_round_trips_and_defaults_to_one_signature() -> None:
    root = _root(KEY, OTHER, threshold=2)
    assert root.to_dict() == {
        "root_keys": {KEY.keyid: KEY.public_hex, OTHER.keyid: OTHER.public_hex},
        "threshold": 2,
    }
    assert TrustRoot.from_dict(root.to_dict()) == root
    assert TrustRoot.from_dict({"root_keys": {KEY.keyid: KEY.public_hex}}).threshold == 1
    message = "trust root needs root_keys (object) and threshold (int)"
    for bad in ({}, {"root_keys": [KEY.keyid]}, {"root_keys": {}, "threshold": "1"}):
        with pytest.raises(ConfigError) as info:
            TrustRoot.from_dict(bad)
        assert str(info.value) == message


def test_the_spec_check_names_type_and_version() -> None:
    from shared.signing import Keyring

    good = Keyring(version=1, expires="2026-01-02T00:00:00Z", signing_keys={}).to_signed()
    assert read_document(good, Keyring, "keyring").version == 1
    assert read_document({**good, "spec_version": "1.9"}, Keyring, "keyring").version == 1
    no_type = {k: v for k, v in good.items() if k != "type"}
    no_spec = {k: v for k, v in good.items() if k != "spec_version"}
    cases: dict[str, dict[str, Any]] = {
        "keyring: type must be 'keyring', got 'manifest'": {**good, "type": "manifest"},
        "keyring: type must be 'keyring', got None": no_type,
        "keyring: unsupported spec_version '2.0'": {**good, "spec_version": "2.0"},
        "keyring: unsupported spec_version '10.0'": {**good, "spec_version": "10.0"},
        "keyring: unsupported spec_version 1": {**good, "spec_version": 1},
        "keyring: unsupported spec_version None": no_spec,
        "keyring.version: expected an integer": {**good, "version": "1"},
    }
    for message, signed in cases.items():
        with pytest.raises(MalformedBundleError) as info:
            read_document(signed, Keyring, "keyring")
        assert str(info.value) == message


def test_times_are_written_in_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        noon_utc = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
        assert format_time(noon_utc) == "2026-01-02T12:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ("text", "manifest: envelope must be an object"),
        ({"signed": [], "signatures": []}, "manifest: envelope needs 'signed' object and "),
        ({"signed": {}, "signatures": {}}, "manifest: envelope needs 'signed' object and "),
        ({"signed": {}, "signatures": ["sig"]}, "manifest: malformed signature entry"),
        ({"signed": {}, "signatures": [{"keyid": "k"}]}, "manifest: malformed signature entry"),
        ({"signed": {}, "signatures": [{"keyid": 1, "sig": ""}]}, "manifest: malformed signature"),
        (
            {"signed": {"x": float("nan")}, "signatures": []},
            "manifest: not canonically encodable: ",
        ),
    ],
)
def test_a_malformed_envelope_is_refused_by_what_it_is(envelope: Any, message: str) -> None:
    from shared.signing import verify_envelope

    with pytest.raises(MalformedBundleError) as info:
        verify_envelope(envelope, {KEY.keyid: KEY.public}, threshold=1, what="manifest")
    assert str(info.value).startswith(message)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _keyring(**changes: Any) -> dict[str, Any]:
    from shared.signing import KeyEntry, Keyring

    ring = Keyring(
        version=0,
        expires="2026-02-01T00:00:00Z",
        signing_keys={OTHER.keyid: KeyEntry(OTHER.public_hex, "2026-03-01T00:00:00Z")},
    )
    return sign_envelope({**ring.to_signed(), **changes}, [KEY])


def test_a_keyring_of_version_zero_is_accepted_when_no_floor_is_given() -> None:
    from shared.signing import verify_keyring

    ring = verify_keyring(_keyring(), _root(KEY), now=T0)
    assert ring.version == 0 and set(ring.active_keys(T0)) == {OTHER.keyid}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "manifest"}, r"^keyring: type must be 'keyring', got 'manifest'$"),
        ({"spec_version": "3.1"}, r"^keyring: unsupported spec_version '3.1'$"),
        ({"version": "one"}, r"^keyring\b.*\bversion\b"),
        ({"expires": "soon"}, r"^keyring expires: bad timestamp 'soon'$"),
    ],
)
def test_keyring_refusals_name_the_keyring(changes: dict[str, Any], message: str) -> None:
    from shared.signing import verify_keyring

    with pytest.raises(MalformedBundleError, match=message) as info:
        verify_keyring(_keyring(**changes), _root(KEY), now=T0)
    assert not str(info.value).startswith("keyring: keyring")


def test_a_key_with_a_bad_expiry_is_named() -> None:
    from shared.signing import KeyEntry, Keyring

    ring = Keyring(1, "2026-02-01T00:00:00Z", {OTHER.keyid: KeyEntry(OTHER.public_hex, "never")})
    with pytest.raises(MalformedBundleError) as info:
        ring.active_keys(T0)
    assert str(info.value) == "key expiry: bad timestamp 'never'"
