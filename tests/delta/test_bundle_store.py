"""The bundle store owns the bundle folder: full bundles and the delta cache, beside the key
folder (never inside it), with the registry as the only index."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloud_hub.bundles import (
    BundleSpec,
    VersionNotNewerError,
    build_bundle_from_file,
    default_store,
)
from cloud_hub.cli import main as hub_main
from cloud_hub.delta import DeltaCache
from cloud_hub.errors import DeliveryError
from cloud_hub.keys import KeyStore
from tests.onnx_models import linear_onnx
from tests.security._support_bundles import CLASS, MODEL, hub_bundle, weights


def test_bundles_live_beside_the_key_folder_not_in_it(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub-data" / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    v2_id, _ = hub_bundle(keys, store, 2)
    assert store.directory == tmp_path / "hub-data" / "bundles"
    assert DeltaCache(store).delta(v2_id, v1_id) is not None
    assert store.delta_path(v2_id, v1_id).is_file()
    assert store.delta_path(v2_id, v1_id).is_relative_to(store.directory)
    in_keys = sorted(p.name for p in keys.directory.rglob("*") if p.is_file())
    assert in_keys == sorted(
        [
            "root.pem",
            "keyring.json",
            "trust_root.json",
            *(p.name for p in keys.signing_dir.iterdir()),
        ]
    )
    assert not list(store.directory.glob("index.json"))  # the registry is the index


def test_an_older_store_inside_the_key_folder_is_adopted(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    ids = [hub_bundle(keys, store, v)[0] for v in (1, 2)]
    # lay the bundles out as an older version did: KEYDIR/bundles with an index.json, a delta
    # cache with a permanent failure marker and a stale temporary, and a file nobody signed
    legacy = keys.directory / "bundles"
    (legacy / "deltas" / ids[1]).mkdir(parents=True)
    for bundle_id in ids:
        shutil.move(store.path_of(bundle_id), legacy / f"{bundle_id}.ffb")
    (legacy / "index.json").write_text(json.dumps({"entries": []}))
    (legacy / "deltas" / ids[1] / f"{ids[0]}.none").write_bytes(b"")
    (legacy / "deltas" / ids[1] / f"{ids[0]}.tmp").write_bytes(b"half")
    (legacy / f"{'f' * 64}.ffb").write_bytes(b"FFBUNDLE junk")
    shutil.rmtree(store.directory)

    adopted = default_store(keys)
    assert adopted.ids() == sorted(ids)
    assert [e.version for e in adopted.entries()] == [1, 2]
    assert not (legacy / "index.json").exists()
    assert not list(legacy.rglob("*.none")) and not (legacy / "deltas").exists()
    # what did not verify stays where it was, untrusted and out of the store
    assert sorted(p.name for p in legacy.iterdir()) == [f"{'f' * 64}.ffb"]
    with pytest.raises(VersionNotNewerError):  # the version floor came along
        hub_bundle(keys, adopted, 2)
    assert DeltaCache(adopted).delta(ids[1], ids[0]) is not None


def test_bundle_build_never_writes_into_the_key_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = KeyStore.init(tmp_path / "hub-data" / "keys")
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_onnx(weights(1)))
    base = ["bundle", "build", "--dir", str(keys.directory), "--name", MODEL, "--class", CLASS]
    inside = keys.directory / "v1.ffb"
    assert hub_main([*base, "--model", str(model), "--version", "1", "-o", str(inside)]) == 2
    assert "holds secrets only" in capsys.readouterr().err
    assert not inside.exists()
    out = tmp_path / "out" / "v1.ffb"
    assert hub_main([*base, "--model", str(model), "--version", "1", "-o", str(out)]) == 0
    assert "hub-data/bundles" in capsys.readouterr().out
    assert not list(keys.directory.rglob("*.ffb"))
    assert default_store(keys).ids() and out.is_file()
    assert hub_main(["bundle", "list", "--dir", str(keys.directory)]) == 0
    assert f"{MODEL}\t{CLASS}\tv1" in capsys.readouterr().out


def test_build_through_the_store_is_verified_and_versioned(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    model = tmp_path / "m.onnx"
    model.write_bytes(linear_onnx(weights(1)))
    spec = BundleSpec(model_name=MODEL, device_class=CLASS)
    first = build_bundle_from_file(keys, store, spec, model_path=model)
    second = build_bundle_from_file(keys, store, spec, model_path=model)
    assert (first.manifest.version, second.manifest.version) == (1, 2)
    assert store.read_verified(second.bundle_id).data == second.data


def test_an_expired_base_still_serves_a_delta_an_expired_target_never_ships(
    tmp_path: Path,
) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    onnx = linear_onnx(weights(1))
    old = build_bundle_from_file(
        keys,
        store,
        BundleSpec(model_name=MODEL, device_class=CLASS, version=1, expires_days=30),
        model_path=_write(tmp_path / "model.onnx", onnx),  # the name v2 uses too
        now=datetime.now(timezone.utc) - timedelta(days=40),
    )
    v2_id, _ = hub_bundle(keys, store, 2)
    cache = DeltaCache(store)
    with pytest.raises(DeliveryError, match="expired"):
        cache.target(old.bundle_id)  # devices would refuse it: the hub never offers it
    assert cache.delta(v2_id, old.bundle_id) is not None  # devices still run the old one


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
