"""KeyStore: creation, file modes, refusal to overwrite, rotation and revocation."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore, KeyStoreConfig
from shared.bundle import BundleManifest, VerifyPolicy, artifact_info, build_bundle, verify_bundle
from shared.errors import ExpiredError, RevokedKeyError, RollbackError
from shared.signing import TrustRoot, format_time, verify_keyring

UTC = timezone.utc


def _bundle(store: KeyStore, version: int = 1) -> bytes:
    now = datetime.now(UTC)
    model = b"model" * 10
    manifest = BundleManifest(
        model_name="m",
        version=version,
        device_class="c",
        created=format_time(now),
        expires=format_time(now + timedelta(days=1)),
        artifacts=[artifact_info("model.onnx", model)],
    )
    return build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=store.signing_keys(),
        keyring_envelope=store.keyring_envelope(),
    )


def test_init_creates_separate_private_keys_and_v1_keyring(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "hub", config=KeyStoreConfig(keyring_days=7))
    assert stat.S_IMODE(store.root_path.stat().st_mode) == 0o600
    signing_files = list(store.signing_dir.glob("*.pem"))
    assert len(signing_files) == 1
    assert stat.S_IMODE(signing_files[0].stat().st_mode) == 0o600
    assert store.root_key().keyid not in {k.keyid for k in store.signing_keys()}
    ring = store.keyring()
    assert ring.version == 1 and ring.revoked == []
    expires = datetime.strptime(ring.expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(days=6) < expires - datetime.now(UTC) <= timedelta(days=7)
    # the pinned trust root verifies the keyring, and a bundle signed by the store verifies
    trust = TrustRoot.from_dict(json.loads(store.trust_root_path.read_text()))
    pol = VerifyPolicy(trust=trust, device_class="c", now=datetime.now(UTC))
    assert verify_bundle(_bundle(store), pol).manifest.model_name == "m"
    # a jumped clock past the keyring expiry refuses it
    with pytest.raises(ExpiredError):
        verify_keyring(store.keyring_envelope(), trust, now=datetime.now(UTC) + timedelta(days=8))


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = KeyStore.init(tmp_path)
    root_before = first.root_path.read_bytes()
    with pytest.raises(HubConfigError, match="--force"):
        KeyStore.init(tmp_path)
    assert first.root_path.read_bytes() == root_before
    KeyStore.init(tmp_path, force=True)
    assert first.root_path.read_bytes() != root_before
    assert len(list(first.signing_dir.glob("*.pem"))) == 1


def test_rotate_revokes_old_key_and_bumps_version(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path)
    trust = store.trust_root()
    old_bundle = _bundle(store)
    old_key = store.signing_keys()[0]
    new_key = store.rotate()
    ring = store.keyring()
    assert ring.version == 2
    assert old_key.keyid in ring.revoked and new_key.keyid in ring.signing_keys
    assert [k.keyid for k in store.signing_keys()] == [new_key.keyid]
    now = datetime.now(UTC)
    # devices that saw keyring v2 refuse the old key and an old keyring
    pol = VerifyPolicy(trust=trust, device_class="c", now=now, min_keyring_version=2)
    with pytest.raises(RollbackError):
        verify_bundle(old_bundle, pol)
    # the old key with the new keyring is revoked; the new key verifies
    from shared.bundle import parse_bundle

    parsed = parse_bundle(old_bundle)
    from shared.bundle import verify_offer

    with pytest.raises(RevokedKeyError):
        verify_offer(parsed.manifest_envelope, store.keyring_envelope(), pol)
    assert verify_bundle(_bundle(store, 2), pol).manifest.version == 2


def test_missing_store_and_offline_root_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="keys init"):
        KeyStore(tmp_path / "none").signing_keys()
    store = KeyStore.init(tmp_path / "hub")
    store.root_path.rename(tmp_path / "offline-root.pem")  # taken offline
    assert store.signing_keys()  # signing still works without the root
    with pytest.raises(HubConfigError, match="offline"):
        store.rotate()


def test_cli_keys_init_rotate_trust_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path / "hub")
    assert hub_main(["keys", "init", "--dir", d, "--keyring-days", "30"]) == 0
    assert hub_main(["keys", "init", "--dir", d]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert hub_main(["keys", "rotate", "--dir", d]) == 0
    capsys.readouterr()
    assert hub_main(["keys", "trust-root", "--dir", d]) == 0
    trust = TrustRoot.from_dict(json.loads(capsys.readouterr().out))
    assert trust == KeyStore(d).trust_root()
    assert KeyStore(d).keyring().version == 2


def test_expired_keyring_blocks_signing_until_rotated(tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=10)
    store = KeyStore.init(tmp_path, config=KeyStoreConfig(keyring_days=2), now=past)
    with pytest.raises(HubConfigError, match="keys rotate"):
        store.signing_keys()
    store.rotate()
    assert store.keyring().version == 2 and len(store.signing_keys()) == 1
