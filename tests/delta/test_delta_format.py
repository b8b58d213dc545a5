"""Delta round trips on real models and refusals at the format level."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from cloud_hub.delta import build_delta_artifact
from cloud_hub.delta.spans import onnx_tensor_spans
from shared.delta import apply_delta, make_bsdiff_delta, make_model_delta
from shared.errors import MalformedBundleError


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_finetune_delta_round_trip_is_byte_identical(versions, kind: str) -> None:
    base = getattr(versions, f"base_{kind}")
    target = getattr(versions, f"finetuned_{kind}")
    assert base != target
    built = build_delta_artifact("model.onnx", base, target)
    assert apply_delta(base, built.delta) == target
    assert built.ratio < 0.6, f"{kind} fine-tune delta ratio {built.ratio:.3f}"


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_builder_keeps_the_smaller_method(versions, kind: str) -> None:
    base = getattr(versions, f"base_{kind}")
    target = getattr(versions, f"finetuned_{kind}")
    model = make_model_delta(base, target, onnx_tensor_spans(base), onnx_tensor_spans(target))
    generic = make_bsdiff_delta(base, target)
    assert apply_delta(base, model) == target
    assert apply_delta(base, generic) == target
    built = build_delta_artifact("model.onnx", base, target)
    assert len(built.delta) == min(len(model), len(generic))


def test_int8_finetune_delta_is_small(versions) -> None:
    built = build_delta_artifact("model.onnx", versions.base_int8, versions.finetuned_int8)
    assert built.ratio <= 0.30, built.ratio


def test_model_aware_delta_beats_bsdiff_on_fp32_retrain(versions) -> None:
    base, target = versions.base_fp32, versions.retrained_fp32
    model = make_model_delta(base, target, onnx_tensor_spans(base), onnx_tensor_spans(target))
    assert apply_delta(base, model) == target
    assert len(model) < len(make_bsdiff_delta(base, target))


def test_retrain_delta_round_trip(versions) -> None:
    built = build_delta_artifact("model.onnx", versions.base_fp32, versions.retrained_fp32)
    assert apply_delta(versions.base_fp32, built.delta) == versions.retrained_fp32


def test_delta_against_wrong_base_is_refused(versions) -> None:
    built = build_delta_artifact("model.onnx", versions.base_fp32, versions.finetuned_fp32)
    with pytest.raises(MalformedBundleError):
        apply_delta(versions.base_int8, built.delta)  # another file of another size


def test_tampered_delta_is_refused_or_detected(versions) -> None:
    built = build_delta_artifact("model.onnx", versions.base_fp32, versions.finetuned_fp32)
    tampered = bytearray(built.delta)
    tampered[-10] ^= 0xFF
    try:
        out = apply_delta(versions.base_fp32, bytes(tampered))
    except MalformedBundleError:
        return
    # If the compressed stream still decodes, the reconstructed bytes differ: the caller's
    # sha256 check against the signed manifest is what refuses it (see test_delta_bundle).
    assert out != versions.finetuned_fp32


def test_non_onnx_artifacts_fall_back_to_bsdiff() -> None:
    base = b"labels: cat dog\n" * 200
    target = base.replace(b"dog", b"cow", 3)
    built = build_delta_artifact("labels.txt", base, target)
    assert built.method == "bsdiff4"
    assert apply_delta(base, built.delta) == target


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_deltas_raise_only_malformed_bundle_error(garbage: bytes) -> None:
    with pytest.raises(MalformedBundleError):
        apply_delta(b"x" * 100, b"FFDELTA\x01" + garbage)
