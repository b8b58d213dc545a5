"""Delta bundles live inside the signed-manifest world: every full-bundle refusal applies."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from cloud_hub.delta import delta_manifest
from shared.bundle import (
    BundleManifest,
    VerifyPolicy,
    artifact_info,
    build_bundle,
    resolve_deltas,
    verify_bundle,
)
from shared.errors import DeltaBaseError, ExpiredError, HashMismatchError, RollbackError
from shared.signing import KeyEntry, Keyring, SigningKey, TrustRoot, format_time, sign_envelope

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def keys():
    root, signer = SigningKey.generate(), SigningKey.generate()
    keyring = Keyring(
        version=1,
        expires=format_time(NOW + timedelta(days=365)),
        signing_keys={
            signer.keyid: KeyEntry(
                public=signer.public_hex, expires=format_time(NOW + timedelta(days=90))
            )
        },
    )
    trust = TrustRoot(root_keys={root.keyid: root.public_hex})
    return signer, sign_envelope(keyring.to_signed(), [root]), trust


def _manifest(version: int, model: bytes) -> tuple[BundleManifest, dict[str, bytes]]:
    artifacts = {"model.onnx": model, "labels.json": b'["0","1","2","3","4","5","6","7","8","9"]'}
    infos = [
        artifact_info("model.onnx", model),
        artifact_info("labels.json", artifacts["labels.json"], role="labels"),
    ]
    m = BundleManifest(
        model_name="digits-cnn",
        version=version,
        device_class="x86-cpu",
        created=format_time(NOW),
        expires=format_time(NOW + timedelta(days=30)),
        artifacts=infos,
    )
    return m, artifacts


def _policy(trust: TrustRoot, installed: int, now: datetime = NOW) -> VerifyPolicy:
    return VerifyPolicy(
        trust=trust, device_class="x86-cpu", now=now, installed_versions={"digits-cnn": installed}
    )


@pytest.fixture(scope="module")
def delta_bundle(versions, keys):
    signer, keyring_env, _trust = keys
    base_m, base_a = _manifest(1, versions.base_int8)
    full_m, full_a = _manifest(2, versions.finetuned_int8)
    built = delta_manifest(full_m, full_a, base_m, base_a)
    assert built is not None
    manifest, wire = built
    data = build_bundle(manifest, wire, signing_keys=[signer], keyring_envelope=keyring_env)
    full = build_bundle(full_m, full_a, signing_keys=[signer], keyring_envelope=keyring_env)
    return data, full, base_a, full_a


def test_delta_bundle_reconstructs_the_signed_full_artifact(delta_bundle, keys) -> None:
    data, full, base_a, full_a = delta_bundle
    verified = verify_bundle(data, _policy(keys[2], installed=1))
    assert verified.manifest.is_delta
    assert verified.manifest.model_artifact().delta is not None
    assert resolve_deltas(verified.manifest, verified.artifacts, base_a) == full_a
    assert len(data) < 0.5 * len(full)


def test_delta_against_wrong_base_is_refused(delta_bundle, keys, versions) -> None:
    data, _full, base_a, _ = delta_bundle
    verified = verify_bundle(data, _policy(keys[2], installed=1))
    wrong = {**base_a, "model.onnx": versions.base_fp32}
    with pytest.raises(DeltaBaseError):
        resolve_deltas(verified.manifest, verified.artifacts, wrong)
    with pytest.raises(DeltaBaseError):
        resolve_deltas(verified.manifest, verified.artifacts, {})


def test_tampered_delta_payload_is_refused(delta_bundle, keys) -> None:
    data = bytearray(delta_bundle[0])
    data[-100] ^= 0x01  # inside the artifacts region
    with pytest.raises(HashMismatchError):
        verify_bundle(bytes(data), _policy(keys[2], installed=1))


def test_delta_with_forged_target_hash_cannot_pass(delta_bundle, keys, versions) -> None:
    """A signer bug or a wrong delta: reconstruction must still match the signed full hash."""
    signer, keyring_env, trust = keys
    base_m, base_a = _manifest(1, versions.base_int8)
    full_m, full_a = _manifest(2, versions.finetuned_int8)
    manifest, wire = delta_manifest(full_m, full_a, base_m, base_a)  # type: ignore[misc]
    model = manifest.model_artifact()
    forged = dataclasses.replace(model, sha256="0" * 64)
    manifest = dataclasses.replace(manifest, artifacts=[forged, *manifest.artifacts[1:]])
    data = build_bundle(manifest, wire, signing_keys=[signer], keyring_envelope=keyring_env)
    verified = verify_bundle(data, _policy(trust, installed=1))
    with pytest.raises(HashMismatchError):
        resolve_deltas(verified.manifest, verified.artifacts, base_a)


def test_full_bundle_refusals_apply_to_deltas(delta_bundle, keys) -> None:
    data = delta_bundle[0]
    with pytest.raises(RollbackError):
        verify_bundle(data, _policy(keys[2], installed=2))
    with pytest.raises(ExpiredError):
        verify_bundle(data, _policy(keys[2], installed=1, now=NOW + timedelta(days=31)))
