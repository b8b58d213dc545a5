"""Building bundles: from a file, from a compression output folder, version monotonicity."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cloud_hub.bundles import (
    BundleSpec,
    VersionNotNewerError,
    build_bundle_from_dir,
    build_bundle_from_file,
    default_store,
)
from cloud_hub.cli import main as hub_main
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.bundle import VerifyPolicy, verify_bundle


@pytest.fixture()
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "hub")


def _policy(keys: KeyStore, device_class: str = "x86-cpu") -> VerifyPolicy:
    return VerifyPolicy(
        trust=keys.trust_root(), device_class=device_class, now=datetime.now(timezone.utc)
    )


def test_build_from_file_signs_and_stores(keys: KeyStore, tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    model.write_bytes(b"\x08\x01" * 500)
    store = default_store(keys)
    spec = BundleSpec(
        model_name="digits",
        device_class="x86-cpu",
        version=3,
        metrics={"accuracy": 0.97},
        lineage={"run": "r1", "rounds": 5},
    )
    built = build_bundle_from_file(keys, store, spec, model_path=model)
    verified = verify_bundle(built.data, _policy(keys), expected_bundle_id=built.bundle_id)
    m = verified.manifest
    assert (m.model_name, m.version, m.device_class) == ("digits", 3, "x86-cpu")
    assert m.metrics == {"accuracy": 0.97} and m.lineage == {"run": "r1", "rounds": 5}
    assert verified.artifacts["net.onnx"] == model.read_bytes()
    assert store.read(store.find(bundle_id=built.bundle_id)) == built.data
    # not newer: refused with a clear message, nothing recorded
    with pytest.raises(VersionNotNewerError, match="--version 4"):
        build_bundle_from_file(
            keys,
            store,
            BundleSpec(model_name="digits", device_class="x86-cpu", version=3),
            model_path=model,
        )
    # other class: independent version line; auto version = newest + 1
    build_bundle_from_file(
        keys,
        store,
        BundleSpec(model_name="digits", device_class="rpi4", version=1),
        model_path=model,
    )
    auto = build_bundle_from_file(
        keys, store, BundleSpec(model_name="digits", device_class="x86-cpu"), model_path=model
    )
    assert auto.manifest.version == 4
    assert len(store.entries()) == 3


def _compress_output(root: Path) -> Path:
    prof = root / "x86-cpu"
    prof.mkdir(parents=True)
    (prof / "model.onnx").write_bytes(b"onnx" * 100)
    (prof / "metrics.json").write_text(
        json.dumps({"accuracy_fp32": 0.98, "accuracy": 0.975, "size_mb": 0.1})
    )
    (prof / "preprocess.json").write_text(json.dumps({"scale": 16.0}))
    (prof / "reference_stats.json").write_text(json.dumps({"features": {}}))
    return root


def test_build_from_compression_folder(keys: KeyStore, tmp_path: Path) -> None:
    out = _compress_output(tmp_path / "compressed")
    store = default_store(keys)
    spec = BundleSpec(model_name="digits", device_class="x86-cpu", version=1, metrics={"note": "x"})
    for folder in (out, out / "x86-cpu"):  # parent with profile sub-folders, or the profile itself
        built = build_bundle_from_dir(keys, store, spec, directory=folder)
        roles = {a.name: a.role for a in built.manifest.artifacts}
        assert roles == {
            "model.onnx": "model",
            "metrics.json": "metrics",
            "preprocess.json": "preprocess",
            "reference_stats.json": "reference_stats",
        }
        assert built.manifest.metrics == {
            "accuracy_fp32": 0.98,
            "accuracy": 0.975,
            "size_mb": 0.1,
            **spec.metrics,
        }
        verify_bundle(built.data, _policy(keys))
        spec = BundleSpec(model_name="digits", device_class="x86-cpu", version=2)
    with pytest.raises(HubConfigError, match="no model"):
        build_bundle_from_dir(
            keys, store, BundleSpec(model_name="digits", device_class="rpi4"), directory=out
        )


def test_bad_specs_refused() -> None:
    with pytest.raises(HubConfigError):
        BundleSpec(model_name="a/b", device_class="x")
    with pytest.raises(HubConfigError):
        BundleSpec(model_name="a", device_class="x", version=0)
    with pytest.raises(HubConfigError):
        BundleSpec(model_name="a", device_class="x", metrics={"bad": float("nan")})
    with pytest.raises(HubConfigError):
        BundleSpec(model_name="a", device_class="x", expires_days=0)


def test_cli_bundle_build(
    keys: KeyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"abc" * 1000)
    out = tmp_path / "out" / "m.ffb"
    base = [
        "bundle",
        "build",
        "--dir",
        str(keys.directory),
        "--name",
        "m",
        "--class",
        "x86-cpu",
        "-o",
        str(out),
    ]
    assert (
        hub_main([*base, "--model", str(model), "--version", "1", "--metrics", '{"accuracy": 0.9}'])
        == 0
    )
    assert verify_bundle(out.read_bytes(), _policy(keys)).manifest.metrics == {"accuracy": 0.9}
    assert hub_main([*base, "--model", str(model), "--version", "1"]) == 2
    assert "not newer" in capsys.readouterr().err
    cdir = _compress_output(tmp_path / "c")
    assert hub_main([*base, "--from-dir", str(cdir), "--version", "2"]) == 0
    assert len(verify_bundle(out.read_bytes(), _policy(keys)).artifacts) == 4


def test_compression_pipeline_metrics_document(keys: KeyStore, tmp_path: Path) -> None:
    prof = _compress_output(tmp_path / "c") / "x86-cpu"
    doc = {
        "type": "compression-metrics",
        "schema_version": 1,
        "model_name": "digits",
        "profile": "x86-cpu",
        "device_class": "x86-cpu",
        "build_profile": {"format": "onnx"},
        "metrics": {"accuracy_fp32": 0.98, "accuracy": 0.97, "size_bytes": 400},
        "quantization": {"mode": "static"},
        "pruning": None,
        "artifact": {"file": "model.onnx", "sha256": "0" * 64, "size": 400},
    }
    (prof / "metrics.json").write_text(json.dumps(doc))
    store = default_store(keys)
    built = build_bundle_from_dir(
        keys, store, BundleSpec(model_name="digits", device_class="x86-cpu"), directory=prof
    )
    assert built.manifest.metrics == {
        "accuracy_fp32": 0.98,
        "accuracy": 0.97,
        "size_bytes": 400,
        "profile": "x86-cpu",
        "quantization": {"mode": "static"},
    }
    assert built.manifest.profile == "x86-cpu"
    with pytest.raises(HubConfigError, match="built for device class"):
        build_bundle_from_dir(
            keys, store, BundleSpec(model_name="digits", device_class="rpi4"), directory=prof
        )
