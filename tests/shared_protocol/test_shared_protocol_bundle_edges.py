"""The manifest shape checks, the container parser and delta resolution at their edges.

Each refusal is asserted with its error class and the exact message (the field it names),
and each bound is probed on both sides, so an off-by-one or a dropped check is noticed.
Pure: values in, verdicts out (no keys needed: the manifest is shape-checked unsigned).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from typing import Any

import pytest

from shared.bundle import (
    FORMAT_VERSION,
    MAGIC,
    ArtifactInfo,
    BundleLimits,
    BundleManifest,
    DeltaInfo,
    artifact_info,
    container_prefix,
    parse_bundle,
    parse_manifest,
    resolve_deltas,
)
from shared.delta import make_bsdiff_delta
from shared.errors import DeltaBaseError, HashMismatchError, MalformedBundleError

SHA_A = "a" * 64
SHA_B = "b" * 64
LIMITS = BundleLimits(max_artifact_bytes=100, max_total_bytes=150, max_artifacts=3)


def _manifest(*artifacts: ArtifactInfo, **changes: Any) -> BundleManifest:
    manifest = BundleManifest(
        model_name="digits",
        version=2,
        device_class="x86-cpu",
        created="2026-01-01T00:00:00Z",
        expires="2026-01-11T00:00:00Z",
        artifacts=list(artifacts) or [ArtifactInfo("model.onnx", SHA_A, 10)],
    )
    return replace(manifest, **changes)


def _parse(manifest: BundleManifest | dict[str, Any], limits: BundleLimits = LIMITS) -> Any:
    signed = manifest if isinstance(manifest, dict) else manifest.to_signed()
    return parse_manifest({"signed": signed, "signatures": []}, limits)


def _refused(manifest: BundleManifest | dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedBundleError) as info:
        _parse(manifest)
    assert str(info.value) == message


# -- the manifest ------------------------------------------------------------------------------


def test_a_well_formed_manifest_comes_back_typed() -> None:
    manifest = _manifest(
        ArtifactInfo("model.onnx", SHA_A, 100),
        ArtifactInfo("labels.json", SHA_B, 0, role="labels"),
        targets=["x86-avx2", "arm64-neon"],
    )
    assert _parse(manifest) == manifest
    assert parse_manifest({"signed": manifest.to_signed()}) == manifest  # default limits


def test_the_envelope_needs_a_signed_object() -> None:
    for envelope in ({}, {"signed": "text"}, {"signed": None}):
        with pytest.raises(MalformedBundleError) as info:
            parse_manifest(envelope)
        assert str(info.value) == "manifest envelope has no 'signed' object"


def test_type_and_spec_version_are_checked_by_name() -> None:
    signed = _manifest().to_signed()
    _refused(
        {**signed, "type": "keyring"},
        "manifest: type must be 'bundle-manifest', got 'keyring'",
    )
    _refused({**signed, "spec_version": "2.0"}, "manifest: unsupported spec_version '2.0'")
    assert _parse({**signed, "spec_version": "1.7"}).spec_version == "1.7"


def test_a_field_of_the_wrong_type_is_named() -> None:
    signed = _manifest().to_signed()
    with pytest.raises(MalformedBundleError, match=r"^manifest\b.*\bversion\b"):
        _parse({**signed, "version": "two"})
    with pytest.raises(MalformedBundleError, match=r"^manifest\b.*\bartifacts\b"):
        _parse({**signed, "artifacts": "model.onnx"})


def test_artifact_count_is_bounded_on_both_sides() -> None:
    three = [ArtifactInfo(f"a{i}", SHA_A, 1) for i in range(3)]
    assert len(_parse(_manifest(*three)).artifacts) == 3
    four = [*three, ArtifactInfo("a3", SHA_A, 1)]
    _refused(_manifest(*four), "manifest must list 1..3 artifacts")
    _refused(replace(_manifest(), artifacts=[]), "manifest must list 1..3 artifacts")


def test_duplicate_artifact_names_are_refused() -> None:
    twice = (ArtifactInfo("model.onnx", SHA_A, 1), ArtifactInfo("model.onnx", SHA_B, 2))
    _refused(_manifest(*twice), "duplicate artifact names")


@pytest.mark.parametrize("name", ["", "dir/model.onnx", "dir\\model.onnx", ".hidden", ".."])
def test_unsafe_artifact_names_are_refused(name: str) -> None:
    _refused(_manifest(ArtifactInfo(name, SHA_A, 1)), f"unsafe artifact name {name!r}")


def test_a_dot_inside_a_name_is_fine() -> None:
    assert _parse(_manifest(ArtifactInfo("model.v2.onnx", SHA_A, 1))).artifacts[0].size == 1


def test_artifact_size_is_bounded_on_both_sides() -> None:
    for size in (0, 100):
        assert _parse(_manifest(ArtifactInfo("m", SHA_A, size))).artifacts[0].size == size
    for size in (-1, 101):
        _refused(
            _manifest(ArtifactInfo("m", SHA_A, size)), f"artifact 'm' size {size} out of bounds"
        )


@pytest.mark.parametrize(
    "sha",
    ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "X" * 64, "", "a" * 63 + " "],
)
def test_a_malformed_artifact_sha256_is_refused(sha: str) -> None:
    _refused(_manifest(ArtifactInfo("m", sha, 1)), "artifact 'm' has a malformed sha256")


def test_every_hex_digit_is_accepted() -> None:
    sha = "0123456789abcdef" * 4
    assert _parse(_manifest(ArtifactInfo("m", sha, 1))).artifacts[0].sha256 == sha


def _delta(**changes: Any) -> DeltaInfo:
    return replace(DeltaInfo(1, SHA_B, "bsdiff4", SHA_A, 5), **changes)


@pytest.mark.parametrize("field", ["sha256", "base_sha256"])
def test_a_malformed_delta_hash_is_refused(field: str) -> None:
    delta = _delta(**{field: "x" * 64})
    _refused(
        _manifest(ArtifactInfo("m", SHA_A, 10, delta=delta)),
        "artifact 'm' has a malformed sha256",
    )


def test_delta_size_is_bounded_on_both_sides() -> None:
    for size in (0, 100):
        parsed = _parse(_manifest(ArtifactInfo("m", SHA_A, 10, delta=_delta(size=size))))
        assert parsed.artifacts[0].wire_size == size
    for size in (-1, 101):
        _refused(
            _manifest(ArtifactInfo("m", SHA_A, 10, delta=_delta(size=size))),
            "artifact 'm' delta size out of bounds",
        )


def test_the_total_counts_wire_sizes_up_to_the_limit() -> None:
    at_limit = (ArtifactInfo("m", SHA_A, 100), ArtifactInfo("l", SHA_A, 50))
    assert len(_parse(_manifest(*at_limit)).artifacts) == 2
    over = (ArtifactInfo("m", SHA_A, 100), ArtifactInfo("l", SHA_A, 51))
    _refused(_manifest(*over), "bundle larger than the configured limit")
    # a delta travels as its delta: the full size (100 + 100) is not what is counted
    small_delta = ArtifactInfo("m2", SHA_A, 100, delta=_delta(size=1))
    assert len(_parse(_manifest(ArtifactInfo("m", SHA_A, 100), small_delta)).artifacts) == 2


def test_version_must_be_at_least_one() -> None:
    assert _parse(_manifest(version=1)).version == 1
    _refused(_manifest(version=0), "manifest version must be >= 1")


def test_unknown_targets_are_named() -> None:
    _refused(
        _manifest(targets=["x86-avx2", "quantum", "x86-vnni", "abacus"]),
        "manifest names unknown targets ['quantum', 'abacus']",
    )


# -- the container -----------------------------------------------------------------------------

ENVELOPES = ({"signed": {"k": 1}, "signatures": []}, {"signed": {"r": 2}, "signatures": []})


def _container(header: bytes, payload: bytes = b"", fmt: int = FORMAT_VERSION) -> bytes:
    return struct.pack(">8sBI", MAGIC, fmt, len(header)) + header + payload


def _malformed(data: bytes, message: str, limits: BundleLimits | None = None) -> None:
    with pytest.raises(MalformedBundleError) as info:
        parse_bundle(data, limits)
    assert str(info.value) == message


def test_a_container_splits_into_envelopes_and_payload() -> None:
    prefix = container_prefix(*ENVELOPES)
    parsed = parse_bundle(prefix + b"artifact bytes")
    assert (parsed.manifest_envelope, parsed.keyring_envelope) == ENVELOPES
    assert parsed.payload == b"artifact bytes" and isinstance(parsed.payload, bytes)
    assert parse_bundle(prefix).payload == b""


def test_short_or_foreign_containers_are_refused_by_name() -> None:
    good = container_prefix(*ENVELOPES)
    _malformed(good[:12], "truncated: shorter than the bundle prefix")
    _malformed(b"", "truncated: shorter than the bundle prefix")
    with pytest.raises(MalformedBundleError, match=r"^bad header: "):
        parse_bundle(_container(b""))  # exactly a prefix, announcing an empty header
    _malformed(b"FFBUNDLX" + good[8:], "not a fedfleet bundle (bad magic)")
    _malformed(_container(good[13:], fmt=2), "unsupported bundle format 2")
    _malformed(_container(good[13:], fmt=0), "unsupported bundle format 0")
    _malformed(good[:-1], "truncated header")


def test_the_header_length_limit_holds_up_to_its_value() -> None:
    header = container_prefix(*ENVELOPES)[13:]
    exact = BundleLimits(max_header_bytes=len(header))
    assert parse_bundle(_container(header), exact).manifest_envelope == ENVELOPES[0]
    _malformed(
        _container(header),
        f"header of {len(header)} bytes exceeds limit",
        BundleLimits(max_header_bytes=len(header) - 1),
    )


def test_the_default_header_limit_is_one_mebibyte() -> None:
    filler = {"signed": {"pad": "x" * (1024 * 1024)}}
    header = container_prefix(filler, ENVELOPES[1])[13:]
    _malformed(_container(header), f"header of {len(header)} bytes exceeds limit")


def test_a_header_that_is_not_json_is_refused_with_the_reason() -> None:
    with pytest.raises(MalformedBundleError, match=r"^bad header: .+"):
        parse_bundle(_container(b"{not json"))
    with pytest.raises(MalformedBundleError, match=r"^bad header: .+"):
        parse_bundle(_container(b"[]"))


@pytest.mark.parametrize(
    "header",
    [
        {"manifest": ENVELOPES[0]},
        {"keyring": ENVELOPES[1]},
        {"manifest": ENVELOPES[0], "keyring": "ring"},
        {"manifest": [1], "keyring": ENVELOPES[1]},
    ],
)
def test_the_header_needs_both_envelopes(header: dict[str, Any]) -> None:
    import json

    _malformed(
        _container(json.dumps(header).encode()),
        "header needs 'manifest' and 'keyring' envelopes",
    )


# -- delta resolution --------------------------------------------------------------------------

BASE = b"weights v1 " * 40
TARGET = BASE.replace(b"v1", b"v2", 7)
DELTA = make_bsdiff_delta(BASE, TARGET)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _delta_manifest(target: bytes = TARGET, delta: bytes = DELTA) -> BundleManifest:
    info = DeltaInfo(3, _sha(BASE), "bsdiff4", _sha(delta), len(delta))
    model = ArtifactInfo("model.onnx", _sha(target), len(target), delta=info)
    return _manifest(model, artifact_info("labels.json", b"[]", "labels"))


def test_deltas_are_applied_and_full_artifacts_pass_through() -> None:
    wire = {"model.onnx": DELTA, "labels.json": b"[]"}
    full = resolve_deltas(_delta_manifest(), wire, {"model.onnx": BASE})
    assert full == {"model.onnx": TARGET, "labels.json": b"[]"}
    plain = _manifest(artifact_info("model.onnx", TARGET))
    assert resolve_deltas(plain, {"model.onnx": TARGET}, {}) == {"model.onnx": TARGET}


@pytest.mark.parametrize("base", [{}, {"model.onnx": BASE + b"!"}, {"other": BASE}])
def test_a_delta_needs_the_signed_base(base: dict[str, bytes]) -> None:
    with pytest.raises(DeltaBaseError) as info:
        resolve_deltas(_delta_manifest(), {"model.onnx": DELTA, "labels.json": b"[]"}, base)
    assert str(info.value) == (
        f"artifact 'model.onnx': delta needs base version 3 ({_sha(BASE)[:12]}…), "
        "which this device does not have"
    )


def test_a_delta_that_does_not_apply_is_a_hash_mismatch() -> None:
    garbage = b"FFDELTA\x02" + b"\x00" * 20
    with pytest.raises(HashMismatchError, match=r"^artifact 'model.onnx': delta does not apply: "):
        resolve_deltas(
            _delta_manifest(delta=garbage), {"model.onnx": garbage}, {"model.onnx": BASE}
        )


def test_a_delta_may_not_grow_past_the_signed_size() -> None:
    """The signed size bounds the reconstruction (a delta cannot inflate on the device)."""
    manifest = _delta_manifest(target=TARGET[:-1])  # signed one byte shorter than the delta
    with pytest.raises(
        HashMismatchError,
        match=r"^artifact 'model.onnx': delta does not apply: delta target size missing or out",
    ):
        resolve_deltas(manifest, {"model.onnx": DELTA}, {"model.onnx": BASE})


def test_a_reconstruction_other_than_the_signed_one_is_refused() -> None:
    other = TARGET[:-1] + b"?"  # same size, other bytes
    message = r"^artifact 'model.onnx': reconstructed artifact does not match the manifest$"
    with pytest.raises(HashMismatchError, match=message):
        resolve_deltas(_delta_manifest(target=other), {"model.onnx": DELTA}, {"model.onnx": BASE})
    bigger = ArtifactInfo("model.onnx", _sha(TARGET), len(TARGET) + 1)  # right hash, wrong size
    with pytest.raises(HashMismatchError, match=message):
        resolve_deltas(_manifest(bigger), {"model.onnx": TARGET}, {})
    full = ArtifactInfo("model.onnx", _sha(TARGET + b"!"), len(TARGET))  # right size, wrong hash
    with pytest.raises(HashMismatchError, match=message):
        resolve_deltas(_manifest(full), {"model.onnx": TARGET}, {})


# -- building, ids, lookups, rollback orders ---------------------------------------------------


def test_artifact_info_describes_the_bytes() -> None:
    assert artifact_info("m.onnx", b"abc") == ArtifactInfo(
        "m.onnx", _sha(b"abc"), 3, role="model", media_type="application/octet-stream"
    )
    info = artifact_info("l.json", b"[]", "labels", "application/json")
    assert (info.role, info.media_type, info.size, info.delta) == (
        "labels",
        "application/json",
        2,
        None,
    )


def test_build_bundle_refuses_artifacts_that_do_not_match_the_manifest() -> None:
    from shared.bundle import build_bundle
    from shared.errors import ConfigError
    from shared.signing import SigningKey

    key = SigningKey.generate()
    manifest = _manifest(artifact_info("m", b"model"), artifact_info("l", b"[]", "labels"))
    ring: dict[str, Any] = {"signed": {}, "signatures": []}

    def build(artifacts: dict[str, bytes]) -> bytes:
        return build_bundle(manifest, artifacts, signing_keys=[key], keyring_envelope=ring)

    data = build({"m": b"model", "l": b"[]"})
    parsed = parse_bundle(data)
    assert parsed.payload == b"model[]" and parsed.keyring_envelope == ring
    assert data.startswith(container_prefix(parsed.manifest_envelope, ring))
    assert parsed.manifest_envelope["signed"] == manifest.to_signed()
    cases = {
        "artifact 'l' listed in the manifest but not given": {"m": b"model"},
        "artifact 'm' does not match its manifest entry": {"m": b"mode!", "l": b"[]"},
        "artifact 'l' does not match its manifest entry": {"m": b"model", "l": b"[]!"},
        "artifacts not in the manifest: ['x', 'y']": {
            "m": b"model",
            "l": b"[]",
            "y": b"",
            "x": b"",
        },
    }
    for message, artifacts in cases.items():
        with pytest.raises(ConfigError) as info:
            build(artifacts)
        assert str(info.value) == message


def test_a_delta_artifact_is_built_from_its_delta_bytes() -> None:
    from shared.bundle import build_bundle
    from shared.signing import SigningKey

    manifest = _delta_manifest()
    ring: dict[str, Any] = {"signed": {}, "signatures": []}
    artifacts = {"model.onnx": DELTA, "labels.json": b"[]"}
    data = build_bundle(
        manifest, artifacts, signing_keys=[SigningKey.generate()], keyring_envelope=ring
    )
    assert parse_bundle(data).payload == DELTA + b"[]"
    assert manifest.is_delta and not _manifest().is_delta


def test_the_bundle_id_is_the_hash_of_the_signed_part() -> None:
    from shared.bundle import bundle_id_of
    from shared.canonical import canonical_bytes

    signed = _manifest().to_signed()
    assert bundle_id_of({"signed": signed, "signatures": ["x"]}) == _sha(canonical_bytes(signed))
    for envelope in ({}, {"signed": [1]}):
        with pytest.raises(MalformedBundleError) as info:
            bundle_id_of(envelope)
        assert str(info.value) == "manifest envelope has no 'signed' object"


def test_artifacts_are_found_by_name_and_the_model_by_role() -> None:
    labels = ArtifactInfo("labels.json", SHA_B, 2, role="labels")
    first, second = ArtifactInfo("a.onnx", SHA_A, 1), ArtifactInfo("b.onnx", SHA_B, 1)
    manifest = _manifest(labels, first, second)
    assert manifest.artifact("b.onnx") is second and manifest.artifact("labels.json") is labels
    with pytest.raises(KeyError) as missing:
        manifest.artifact("c.onnx")
    assert missing.value.args == ("c.onnx",)
    assert manifest.model_artifact() is first
    with pytest.raises(MalformedBundleError) as info:
        _manifest(labels).model_artifact()
    assert str(info.value) == "manifest has no model artifact"


def test_the_model_hash_an_order_may_name_is_empty_without_a_model() -> None:
    from shared.bundle import _model_sha256

    labels = ArtifactInfo("labels.json", SHA_B, 2, role="labels")
    assert _model_sha256(_manifest(labels, ArtifactInfo("a.onnx", SHA_A, 1))) == SHA_A
    assert _model_sha256(_manifest(labels)) == ""


def _order(**changes: Any) -> Any:
    from shared.bundle import RollbackOrder

    order = RollbackOrder(
        order_id="o-1",
        model_name="digits",
        device_class="x86-cpu",
        to_version=2,
        to_bundle_id=SHA_A,
        issued="2026-01-01T00:00:00Z",
        expires="2026-01-02T00:00:00Z",
        device_ids=["dev-1"],
        from_bundle_id=SHA_B,
    )
    return replace(order, **changes)


@pytest.mark.parametrize(
    ("order_sha", "model", "version", "bundle_id", "sha", "named"),
    [
        ("", "digits", 2, SHA_A, "", True),
        ("", "digits", 2, SHA_B, "", False),  # no content hash: only the bundle id counts
        ("", "other", 2, SHA_A, "", False),
        ("", "digits", 3, SHA_A, "", False),
        ("f" * 64, "digits", 2, SHA_B, "f" * 64, True),  # by content, whichever bundle
        ("f" * 64, "digits", 2, SHA_B, "e" * 64, False),
        ("f" * 64, "other", 2, SHA_A, "f" * 64, False),
    ],
)
def test_an_order_names_its_target_by_bundle_or_content(
    order_sha: str, model: str, version: int, bundle_id: str, sha: str, named: bool
) -> None:
    order = _order(to_sha256=order_sha)
    kw = {"model_name": model, "version": version, "bundle_id": bundle_id, "sha256": sha}
    assert order.names_target(**kw) is named


def test_a_signed_order_reads_back_unverified() -> None:
    from shared.bundle import parse_rollback_order, sign_rollback_order
    from shared.signing import SigningKey

    order = _order(to_sha256="f" * 64)
    envelope = sign_rollback_order(order, [SigningKey.generate()])
    assert len(envelope["signatures"]) == 1
    assert parse_rollback_order(envelope) == order
    bad_envelopes: tuple[Any, ...] = (None, [], {}, {"signed": "x"})
    for bad in bad_envelopes:
        with pytest.raises(MalformedBundleError) as info:
            parse_rollback_order(bad)
        assert str(info.value) == "rollback order envelope has no 'signed' object"
    broken = {"signed": {**envelope["signed"], "to_version": "two"}}
    with pytest.raises(MalformedBundleError, match=r"^rollback order\b.*\bto_version\b"):
        parse_rollback_order(broken)
