"""Bundle verification refusals at the pure level (bytes in, verdict out), with a jumped clock.

Modelled on python-tuf's tests: every refusal has its own error class, and expiry/rollback
are proved by moving ``now`` instead of sleeping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.bundle import (
    BundleManifest,
    RollbackOrder,
    VerifyPolicy,
    artifact_info,
    build_bundle,
    bundle_id_of,
    parse_bundle,
    sign_rollback_order,
    stale_rollback_binding,
    verify_artifacts,
    verify_bundle,
    verify_offer,
    verify_rollback_order,
)
from shared.errors import (
    BadSignatureError,
    BundleError,
    ExpiredError,
    HashMismatchError,
    MalformedBundleError,
    MixAndMatchError,
    RevokedKeyError,
    RollbackError,
    UnknownKeyError,
    WrongTargetError,
)
from shared.signing import KeyEntry, Keyring, SigningKey, TrustRoot, format_time, sign_envelope

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = SigningKey.generate()
K1 = SigningKey.generate()
K2 = SigningKey.generate()
OTHER = SigningKey.generate()
TRUST = TrustRoot(root_keys={ROOT.keyid: ROOT.public_hex})


def keyring(
    version: int = 1,
    keys: tuple[SigningKey, ...] = (K1,),
    revoked: tuple[SigningKey, ...] = (),
    days: int = 30,
    signer: SigningKey = ROOT,
) -> dict[str, Any]:
    ring = Keyring(
        version=version,
        expires=format_time(T0 + timedelta(days=days)),
        signing_keys={
            k.keyid: KeyEntry(public=k.public_hex, expires=format_time(T0 + timedelta(days=365)))
            for k in keys
        },
        revoked=[k.keyid for k in revoked],
    )
    return sign_envelope(ring.to_signed(), [signer])


@dataclass(frozen=True)
class Built:
    data: bytes
    bundle_id: str


def make_bundle(
    version: int = 2,
    *,
    model: bytes = b"onnx-model-bytes" * 8,
    key: SigningKey = K1,
    ring: dict[str, Any] | None = None,
    device_class: str = "x86-cpu",
    expires_days: int = 10,
    model_name: str = "digits",
) -> Built:
    labels = b'["zero","one"]'
    manifest = BundleManifest(
        model_name=model_name,
        version=version,
        device_class=device_class,
        created=format_time(T0),
        expires=format_time(T0 + timedelta(days=expires_days)),
        artifacts=[
            artifact_info("model.onnx", model),
            artifact_info("labels.json", labels, "labels"),
        ],
    )
    data = build_bundle(
        manifest,
        {"model.onnx": model, "labels.json": labels},
        signing_keys=[key],
        keyring_envelope=ring or keyring(),
    )
    return Built(data, bundle_id_of(parse_bundle(data).manifest_envelope))


RUNNING = "c" * 64  # the bundle the verifying device runs


def policy(now: datetime = T0, installed: int | None = 1, min_keyring: int = 0) -> VerifyPolicy:
    return VerifyPolicy(
        trust=TRUST,
        device_class="x86-cpu",
        now=now,
        installed_versions={} if installed is None else {"digits": installed},
        min_keyring_version=min_keyring,
        device_id="dev-1",
        active_bundle_id=RUNNING,
    )


GOOD = make_bundle()


def test_good_bundle_verifies() -> None:
    verified = verify_bundle(GOOD.data, policy(), expected_bundle_id=GOOD.bundle_id)
    assert verified.manifest.version == 2
    assert verified.artifacts["model.onnx"] == b"onnx-model-bytes" * 8
    assert verify_bundle(GOOD.data, policy(installed=None)).offer.bundle_id == GOOD.bundle_id


def _swap_header(data: bytes, mutate: Any) -> bytes:
    """Rebuild a bundle after ``mutate(header_dict)``; keeps the artifact payload."""
    import json
    import struct

    parsed = parse_bundle(data)
    header = {"manifest": parsed.manifest_envelope, "keyring": parsed.keyring_envelope}
    mutate(header)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack(">8sBI", b"FFBUNDLE", 1, len(raw)) + raw + parsed.payload


def test_bad_signature_refused() -> None:
    def tamper(h: dict[str, Any]) -> None:
        h["manifest"]["signed"]["metrics"] = {"accuracy": 1.0}  # changed after signing

    with pytest.raises(BadSignatureError):
        verify_bundle(_swap_header(GOOD.data, tamper), policy())

    def flip_sig(h: dict[str, Any]) -> None:
        sig = h["manifest"]["signatures"][0]["sig"]
        h["manifest"]["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]

    with pytest.raises(BadSignatureError):
        verify_bundle(_swap_header(GOOD.data, flip_sig), policy())


def test_unknown_key_refused() -> None:
    with pytest.raises(UnknownKeyError):
        verify_bundle(make_bundle(key=OTHER).data, policy())
    # a keyring signed by someone other than the pinned root
    with pytest.raises(UnknownKeyError):
        verify_bundle(make_bundle(ring=keyring(signer=OTHER)).data, policy())


def test_revoked_key_refused() -> None:
    rotated = keyring(version=2, keys=(K2,), revoked=(K1,))
    with pytest.raises(RevokedKeyError):
        verify_bundle(make_bundle(key=K1, ring=rotated).data, policy())
    # the same keyring accepts the new key
    verify_bundle(make_bundle(key=K2, ring=rotated).data, policy())


def test_expired_manifest_refused_when_clock_jumps() -> None:
    verify_bundle(GOOD.data, policy(now=T0 + timedelta(days=9)))
    with pytest.raises(ExpiredError, match="manifest"):
        verify_bundle(GOOD.data, policy(now=T0 + timedelta(days=10, seconds=1)))


def test_expired_keyring_refused_when_clock_jumps() -> None:
    short = make_bundle(ring=keyring(days=3), expires_days=20)
    verify_bundle(short.data, policy(now=T0 + timedelta(days=2)))
    with pytest.raises(ExpiredError, match="keyring"):
        verify_bundle(short.data, policy(now=T0 + timedelta(days=4)))


def test_keyring_rollback_refused() -> None:
    with pytest.raises(RollbackError, match="keyring"):
        verify_bundle(GOOD.data, policy(min_keyring=2))


@pytest.mark.parametrize("installed", [2, 3, 100])
def test_version_not_newer_refused(installed: int) -> None:
    with pytest.raises(RollbackError):
        verify_bundle(GOOD.data, policy(installed=installed))


def test_hash_and_size_mismatch_refused() -> None:
    tampered = bytearray(GOOD.data)
    tampered[-1] ^= 0xFF  # last byte of labels.json
    with pytest.raises(HashMismatchError):
        verify_bundle(bytes(tampered), policy())
    with pytest.raises(HashMismatchError):
        verify_bundle(GOOD.data[:-1], policy())
    with pytest.raises(HashMismatchError):
        verify_bundle(GOOD.data + b"x", policy())


def test_mix_and_match_refused() -> None:
    other = make_bundle(version=3, model=b"another-model!!!" * 8)
    # header of one bundle, artifacts of another (same sizes): the hashes do not match
    mixed = parse_bundle(GOOD.data)
    header_len = len(GOOD.data) - len(mixed.payload)
    frankenstein = GOOD.data[:header_len] + parse_bundle(other.data).payload
    with pytest.raises(HashMismatchError):
        verify_bundle(frankenstein, policy())
    # a whole, valid bundle delivered where another one was offered
    with pytest.raises(MixAndMatchError):
        verify_bundle(other.data, policy(), expected_bundle_id=GOOD.bundle_id)


def test_wrong_device_class_refused() -> None:
    with pytest.raises(WrongTargetError):
        verify_bundle(make_bundle(device_class="rpi4").data, policy())


def _order(bundle: Built, version: int, **changes: Any) -> dict[str, Any]:
    order = RollbackOrder(
        order_id="o1",
        model_name="digits",
        device_class="x86-cpu",
        to_version=version,
        to_bundle_id=bundle.bundle_id,
        issued=format_time(T0),
        expires=format_time(T0 + timedelta(days=1)),
        device_ids=["dev-1"],
        from_bundle_id=RUNNING,
    )
    key = changes.pop("key", K1)
    return sign_rollback_order(replace(order, **changes), [key])


def test_signed_rollback_order_authorises_exactly_that_older_bundle() -> None:
    old = make_bundle(version=2)
    pol = policy(installed=5)
    ring = keyring()
    parsed = parse_bundle(old.data)
    with pytest.raises(RollbackError):
        verify_offer(parsed.manifest_envelope, parsed.keyring_envelope, pol)
    order = verify_rollback_order(_order(old, 2), ring, pol)
    verified = verify_bundle(old.data, pol, rollback_order=order)
    assert verified.manifest.version == 2
    # an order for another bundle id or another version does not authorise this one
    wrong_id = verify_rollback_order(_order(GOOD, 2, to_bundle_id="f" * 64), ring, pol)
    with pytest.raises(RollbackError):
        verify_bundle(old.data, pol, rollback_order=wrong_id)
    wrong_version = verify_rollback_order(_order(old, 1), ring, pol)
    with pytest.raises(RollbackError):
        verify_bundle(old.data, pol, rollback_order=wrong_version)


def test_rollback_order_refusals() -> None:
    pol = policy(installed=5)
    with pytest.raises(UnknownKeyError):
        verify_rollback_order(_order(GOOD, 2, key=OTHER), keyring(), pol)
    with pytest.raises(ExpiredError):
        verify_rollback_order(_order(GOOD, 2), keyring(), policy(now=T0 + timedelta(days=2)))
    with pytest.raises(WrongTargetError):
        verify_rollback_order(_order(GOOD, 2, device_class="rpi4"), keyring(), pol)
    forged = _order(GOOD, 2)
    forged["signed"]["to_version"] = 1
    with pytest.raises(BadSignatureError):
        verify_rollback_order(forged, keyring(), pol)
    with pytest.raises(RevokedKeyError):
        verify_rollback_order(
            _order(GOOD, 2, key=K1), keyring(version=2, keys=(K2,), revoked=(K1,)), pol
        )


def test_rollback_order_is_bound_to_device_and_to_what_it_runs() -> None:
    """R5: an order for other devices, or for devices running another bundle, is refused."""
    pol = policy(installed=5)
    assert verify_rollback_order(_order(GOOD, 2), keyring(), pol).device_ids == ["dev-1"]
    changes: dict[str, Any]
    for changes in (
        {"device_ids": ["dev-2"]},
        {"device_ids": []},
        {"from_bundle_id": "d" * 64},
        {"from_bundle_id": ""},
    ):
        with pytest.raises(WrongTargetError):
            verify_rollback_order(_order(GOOD, 2, **changes), keyring(), pol)
    with pytest.raises(WrongTargetError, match="not addressed"):
        verify_rollback_order(_order(GOOD, 2), keyring(), replace(pol, device_id="dev-2"))


def test_another_model_replaces_the_current_one_only_by_signed_order() -> None:
    """R5: the floor is per device class: a signed, unexpired bundle of another model is
    refused unless a signed order names exactly it; the content hash names it too."""
    other = make_bundle(model_name="other-model", version=9)
    pol = policy(installed=5)
    parsed = parse_bundle(other.data)
    with pytest.raises(RollbackError, match="signed order"):
        verify_offer(parsed.manifest_envelope, parsed.keyring_envelope, pol)
    order = verify_rollback_order(_order(other, 9, model_name="other-model"), keyring(), pol)
    assert (
        verify_offer(
            parsed.manifest_envelope, parsed.keyring_envelope, pol, rollback_order=order
        ).manifest.model_name
        == "other-model"
    )
    by_content = verify_rollback_order(
        _order(
            other,
            9,
            model_name="other-model",
            to_bundle_id="e" * 64,
            to_sha256=hashlib.sha256(b"onnx-model-bytes" * 8).hexdigest(),
        ),
        keyring(),
        pol,
    )
    verify_offer(parsed.manifest_envelope, parsed.keyring_envelope, pol, rollback_order=by_content)
    # a first install (nothing installed) needs no order
    verify_offer(parsed.manifest_envelope, parsed.keyring_envelope, policy(installed=None))


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_byte_flip_is_refused_with_a_bundle_error(data: st.DataObject) -> None:
    pos = data.draw(st.integers(min_value=0, max_value=len(GOOD.data) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    original = GOOD.data[pos]
    # bytes.fromhex is case-insensitive: flipping the case of a hex letter in a (unsigned)
    # signature string re-encodes the same signature; that is not a modification of content.
    if mask == 0x20 and original in b"abcdef":
        mask = 0x01
    tampered = bytearray(GOOD.data)
    tampered[pos] ^= mask
    with pytest.raises(BundleError):
        verify_bundle(bytes(tampered), policy(), expected_bundle_id=GOOD.bundle_id)


@given(st.binary(max_size=400))
@settings(max_examples=200)
def test_garbage_is_refused_as_malformed(blob: bytes) -> None:
    with pytest.raises(BundleError):
        verify_bundle(blob, policy())
    with pytest.raises(MalformedBundleError):
        verify_bundle(b"FFBUNDLE\x01\x00\x00\x00\x10" + blob[:15], policy())


# -- each refusal names what was refused and why (operators read these in refusal logs) --------


def _three_artifacts() -> tuple[BundleManifest, bytes]:
    parts = {"model.onnx": b"m" * 40, "labels.json": b'["a"]', "reference.json": b"{}" * 9}
    manifest = BundleManifest(
        model_name="digits",
        version=2,
        device_class="x86-cpu",
        created=format_time(T0),
        expires=format_time(T0 + timedelta(days=10)),
        artifacts=[artifact_info(name, data) for name, data in parts.items()],
    )
    return manifest, b"".join(parts.values())


def test_artifacts_are_split_at_their_offsets_and_refusals_name_them() -> None:
    manifest, payload = _three_artifacts()
    assert verify_artifacts(manifest, payload) == {
        "model.onnx": b"m" * 40,
        "labels.json": b'["a"]',
        "reference.json": b"{}" * 9,
    }
    with pytest.raises(HashMismatchError, match=r"^payload is 62 bytes, manifest says 63$"):
        verify_artifacts(manifest, payload[:-1])
    tampered = payload[:-1] + b"?"
    with pytest.raises(HashMismatchError, match=r"^artifact 'reference.json': sha256 mismatch$"):
        verify_artifacts(manifest, tampered)


def test_offer_refusals_say_what_and_why() -> None:
    parsed = parse_bundle(GOOD.data)
    env, ring = parsed.manifest_envelope, parsed.keyring_envelope
    offer = verify_offer(env, ring, policy())
    assert offer.keyring.version == 1 and offer.bundle_id == GOOD.bundle_id
    forged = {**env, "signed": {**env["signed"], "version": 99}}
    with pytest.raises(BadSignatureError, match=r"^manifest: signature does not verify$"):
        verify_offer(forged, ring, policy())
    expires = T0 + timedelta(days=10)  # valid until, not at, its expiry
    verify_offer(env, ring, policy(now=expires - timedelta(seconds=1)))
    with pytest.raises(ExpiredError, match=r"^manifest expired at 2026-01-11T00:00:00Z$"):
        verify_offer(env, ring, policy(now=expires))
    with pytest.raises(
        WrongTargetError,
        match=r"^bundle targets device class 'x86-cpu', this device is 'rpi4'$",
    ):
        verify_offer(env, ring, replace(policy(), device_class="rpi4"))
    with pytest.raises(
        RollbackError, match=r"^version 2 of 'digits' is not newer than installed 3$"
    ):
        verify_offer(env, ring, policy(installed=3))
    other = parse_bundle(make_bundle(model_name="other-model").data)
    two_models = replace(policy(), installed_versions={"digits": 1, "alpha": 4})
    with pytest.raises(
        RollbackError,
        match=r"^model 'other-model' would replace 'alpha, digits': a signed order is needed$",
    ):
        verify_offer(other.manifest_envelope, other.keyring_envelope, two_models)


def test_a_validly_signed_manifest_is_shape_checked_against_the_devices_limits() -> None:
    from shared.bundle import BundleLimits

    parsed = parse_bundle(GOOD.data)  # two artifacts, signed by an active key
    env, ring = parsed.manifest_envelope, parsed.keyring_envelope
    one_artifact = replace(policy(), limits=BundleLimits(max_artifacts=1))
    with pytest.raises(MalformedBundleError, match=r"^manifest must list 1\.\.1 artifacts$"):
        verify_offer(env, ring, one_artifact)
    # the shape is judged before expiry: a malformed manifest is malformed whenever it comes
    expired = replace(one_artifact, now=T0 + timedelta(days=10))
    with pytest.raises(MalformedBundleError, match=r"^manifest must list 1\.\.1 artifacts$"):
        verify_offer(env, ring, expired)
    assert verify_offer(env, ring, replace(policy(), limits=BundleLimits(max_artifacts=2)))


def test_bundle_checks_its_limits_and_the_offered_id() -> None:
    from shared.bundle import BundleLimits

    small_header = replace(policy(), limits=BundleLimits(max_header_bytes=64))
    with pytest.raises(BundleError):
        verify_bundle(GOOD.data, small_header)
    with pytest.raises(
        MixAndMatchError, match=r"^bundle does not carry the manifest it was offered with$"
    ):
        verify_bundle(GOOD.data, policy(), expected_bundle_id="f" * 64)


def test_rollback_order_refusals_say_what_and_why() -> None:
    pol = policy(installed=5)
    order = _order(GOOD, 2)
    forged = {**order, "signed": {**order["signed"], "to_version": 1}}
    with pytest.raises(BadSignatureError, match=r"^rollback order: signature does not verify$"):
        verify_rollback_order(forged, keyring(), pol)
    wrong_type = sign_envelope({**order["signed"], "type": "manifest"}, [K1])
    with pytest.raises(
        MalformedBundleError, match=r"^rollback order: type must be 'rollback-order'"
    ):
        verify_rollback_order(wrong_type, keyring(), pol)
    malformed = sign_envelope({**order["signed"], "to_version": "two"}, [K1])
    with pytest.raises(MalformedBundleError, match=r"^rollback order\b.*to_version"):
        verify_rollback_order(malformed, keyring(), pol)
    bad_time = _order(GOOD, 2, expires="tomorrow")
    with pytest.raises(
        MalformedBundleError, match=r"^rollback order expires: bad timestamp 'tomorrow'$"
    ):
        verify_rollback_order(bad_time, keyring(), pol)
    expires = T0 + timedelta(days=1)  # valid until, not at, its expiry
    verify_rollback_order(order, keyring(), policy(now=expires - timedelta(seconds=1)))
    with pytest.raises(ExpiredError, match=r"^rollback order expired at 2026-01-02T00:00:00Z$"):
        verify_rollback_order(order, keyring(), policy(now=expires))
    with pytest.raises(WrongTargetError, match=r"^rollback order targets class 'rpi4'$"):
        verify_rollback_order(_order(GOOD, 2, device_class="rpi4"), keyring(), pol)


def test_rollback_order_device_list_bounds_and_running_bundle_named() -> None:
    from shared.bundle import MAX_ORDER_DEVICES

    pol = policy(installed=5)
    most = ["dev-1"] + [f"d-{i}" for i in range(MAX_ORDER_DEVICES - 1)]
    assert len(verify_rollback_order(_order(GOOD, 2, device_ids=most), keyring(), pol).device_ids)
    too_many = [*most, "d-extra"]
    for ids in (too_many, []):
        with pytest.raises(
            WrongTargetError, match=r"^rollback order names no devices \(or too many\)$"
        ):
            verify_rollback_order(_order(GOOD, 2, device_ids=ids), keyring(), pol)
    moved_on = _order(GOOD, 2, from_bundle_id="d" * 64)
    with pytest.raises(WrongTargetError, match=r"this device runs 'cccccccccccc'$"):
        verify_rollback_order(moved_on, keyring(), pol)
    with pytest.raises(WrongTargetError, match=r"this device runs 'nothing'$"):
        verify_rollback_order(moved_on, keyring(), replace(pol, active_bundle_id=None))


def test_a_manifest_with_a_bad_expiry_is_refused_by_name() -> None:
    model = b"x" * 10
    manifest = BundleManifest(
        model_name="digits",
        version=2,
        device_class="x86-cpu",
        created=format_time(T0),
        expires="soon",
        artifacts=[artifact_info("model.onnx", model)],
    )
    data = build_bundle(
        manifest, {"model.onnx": model}, signing_keys=[K1], keyring_envelope=keyring()
    )
    parsed = parse_bundle(data)
    with pytest.raises(MalformedBundleError, match=r"^manifest expires: bad timestamp 'soon'$"):
        verify_offer(parsed.manifest_envelope, parsed.keyring_envelope, policy())


def test_rollback_order_refuses_an_older_keyring_and_names_both_bundles() -> None:
    pol = policy(installed=5, min_keyring=2)
    with pytest.raises(RollbackError):  # the keyring floor holds for orders too
        verify_rollback_order(_order(GOOD, 2), keyring(version=1), pol)
    assert verify_rollback_order(_order(GOOD, 2), keyring(version=2), pol).to_version == 2
    moved_on = _order(GOOD, 2, from_bundle_id="d" * 64)
    with pytest.raises(
        WrongTargetError,
        match=r"^rollback order is for devices running 'dddddddddddd', this device runs ",
    ) as refused:
        verify_rollback_order(moved_on, keyring(version=2), pol)
    # the hub reads both bundles back from the refusal and re-binds the order
    ordered, running = stale_rollback_binding(f"rejected: WrongTargetError: {refused.value}") or (
        "",
        "",
    )
    assert ordered == "d" * 12 and running == str(pol.active_bundle_id)[:12]


def test_only_the_stale_binding_refusal_reads_back_as_one() -> None:
    pol = policy(installed=5)
    with pytest.raises(WrongTargetError) as other_class:
        verify_rollback_order(_order(GOOD, 2), keyring(), replace(pol, device_class="rpi4"))
    # another refusal of an order, even of the same class, is not re-bound
    assert stale_rollback_binding(f"rejected: WrongTargetError: {other_class.value}") is None
    assert stale_rollback_binding("") is None
