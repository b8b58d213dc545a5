"""The delta format on small synthetic files: exact operations, exact frames, exact refusals.

No model is built here (the spans are written by hand), so each test takes milliseconds;
the round trips on real ONNX models are in ``test_delta_format``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from shared.canonical import canonical_bytes
from shared.delta import (
    METHOD_BSDIFF,
    METHOD_MODEL,
    TensorSpan,
    _frame,
    _gaps,
    _gather,
    _parse,
    _zstd_decompress,
    apply_delta,
    delta_method,
    make_bsdiff_delta,
    make_model_delta,
    make_smallest_delta,
)
from shared.errors import MalformedBundleError

Part = bytes | tuple[str, "np.ndarray[Any, Any]", bool]


def _layout(*parts: Part) -> tuple[bytes, list[TensorSpan]]:
    """A file of structure bytes and named tensors, with the tensors' spans."""
    out, spans = bytearray(), []
    for part in parts:
        if isinstance(part, bytes):
            out += part
            continue
        name, array, integer = part
        raw = array.tobytes()
        spans.append(TensorSpan(name, len(out), len(raw), integer, array.itemsize))
        out += raw
    return bytes(out), spans


W0 = np.array([0, 1, 2, 3, 4, 5, 6, 127], "<i1")
H0 = np.array([1, 256, -1, 32767], "<i2")
F0 = np.array([1.0, 2.0], "<f4")
S0 = np.array([9, 8, 7, 6, 5, 4], "<u1")
BASE, BASE_SPANS = _layout(
    b"HEAD-v1", ("s", S0, True), ("w", W0, True), b"-", ("f", F0, False), ("h", H0, True), b"E"
)
TARGET, TARGET_SPANS = _layout(
    b"HEAD",
    ("w", W0 + np.int8(1), True),  # 127 + 1 wraps
    b"::",
    ("h", H0 + np.int16(-2), True),  # a change in the high byte too
    ("f", np.array([1.5, 2.0], "<f4"), False),
    ("s", S0, True),
    ("n", np.array([1, 2], "<i2"), True),  # a new tensor travels in the gap stream
    b"END",
)


def _header(delta: bytes) -> dict[str, Any]:
    return _parse(delta)[1]


def test_model_delta_operations_name_each_tensor_at_its_base_offset() -> None:
    delta = make_model_delta(BASE, TARGET, BASE_SPANS, TARGET_SPANS)
    offsets = {sp.name: sp.offset for sp in BASE_SPANS}
    assert _header(delta) == {
        "target_size": len(TARGET),
        "base_size": len(BASE),
        "ops": [
            ["gap", 4, 0],
            ["sub1", 8, offsets["w"]],
            ["gap", 2, 0],
            ["sub2", 8, offsets["h"]],
            ["xor4", 8, offsets["f"]],
            ["copy", 6, offsets["s"]],
            ["gap", 4, 0],
            ["gap", 3, 0],
        ],
        "base_gaps": [[0, 7], [21, 1], [38, 1]],
        "tensor_bytes": 24,
    }
    assert delta_method(delta) == "model-aware"
    assert apply_delta(BASE, delta) == TARGET


def test_differences_are_stored_wrapping_and_byte_plane_shuffled() -> None:
    delta = make_model_delta(BASE, TARGET, BASE_SPANS, TARGET_SPANS)
    method, header, body = _parse(delta)
    assert method == METHOD_MODEL
    tensor_bytes = header["tensor_bytes"]
    assert isinstance(tensor_bytes, int)
    tensors = _zstd_decompress(body, 1 << 20)[:tensor_bytes]
    assert tensors[:8] == b"\x01" * 8  # sub1: +1 everywhere, 127 -> -128 included
    # sub2: -2 = 0xfffe per element; low bytes first, then high bytes
    assert tensors[8:16] == b"\xfe" * 4 + b"\xff" * 4
    # xor4 of 1.5 vs 1.0 (0x3fc00000 ^ 0x3f800000) and 2.0 vs 2.0; planes byte by byte
    assert tensors[16:24] == b"\x00" * 4 + b"\x40\x00" + b"\x00" * 2


def test_an_item_size_that_does_not_divide_the_tensor_falls_back_to_bytes() -> None:
    base, base_spans = _layout(("t", np.arange(6, dtype="<u1"), True))
    target = bytes(b + 3 for b in base)
    odd = [TensorSpan("t", 0, 6, True, itemsize=4), TensorSpan("x", 6, 0, True, itemsize=3)]
    delta = make_model_delta(base, target, base_spans, odd)
    assert _header(delta)["ops"] == [["sub1", 6, 0]]
    assert apply_delta(base, delta) == target
    three = [TensorSpan("t", 0, 6, True, itemsize=3)]
    assert _header(make_model_delta(base, target, base_spans, three))["ops"] == [["sub1", 6, 0]]


def test_a_resized_or_overlapping_tensor_travels_in_the_gap_stream() -> None:
    base, base_spans = _layout(
        b"ab", ("t", np.arange(4, dtype="<u1"), True), ("u", np.arange(2, dtype="<u1"), True)
    )
    target = b"ab" + bytes(range(6)) + bytes([7, 7])
    spans = [
        TensorSpan("t", 2, 6, True),  # longer than in the base
        TensorSpan("t", 3, 2, True),  # overlaps the one before
        TensorSpan("u", 8, 2, True),  # the tensors after them are still diffed
    ]
    delta = make_model_delta(base, target, base_spans, spans)
    assert _header(delta)["ops"] == [["gap", 2, 0], ["gap", 6, 0], ["sub1", 2, 6]]
    assert apply_delta(base, delta) == target
    resized_last = [TensorSpan("t", 2, 6, True), TensorSpan("u", 8, 2, True)]
    delta = make_model_delta(base, target, base_spans, resized_last)
    assert _header(delta)["ops"] == [["gap", 2, 0], ["gap", 6, 0], ["sub1", 2, 6]]


def test_gaps_are_the_bytes_no_span_covers() -> None:
    def span(offset: int, length: int) -> TensorSpan:
        return TensorSpan("t", offset, length, True)

    assert _gaps(10, [span(7, 1), span(2, 3)]) == [(0, 2), (5, 2), (8, 2)]
    assert _gaps(10, [span(0, 4), span(2, 4), span(6, 4)]) == []
    assert _gaps(10, [span(0, 10)]) == []
    assert _gaps(5, []) == [(0, 5)]
    assert _gather(b"0123456789", [(1, 2), (7, 3)]) == b"12789"


def test_frames_have_the_documented_layout() -> None:
    framed = _frame(METHOD_BSDIFF, {"b": 1, "a": 2}, b"payload")
    head = canonical_bytes({"a": 2, "b": 1})
    assert framed[:12] == struct.pack(">7sBI", b"FFDELTA", 2, len(head))
    assert framed[12 : 12 + len(head)] == head
    assert _zstd_decompress(framed[12 + len(head) :], 100) == b"payload"
    assert _parse(framed) == (METHOD_BSDIFF, {"a": 2, "b": 1}, framed[12 + len(head) :])


def test_bsdiff_delta_header_and_round_trip() -> None:
    delta = make_bsdiff_delta(BASE, TARGET)
    assert _header(delta) == {"target_size": len(TARGET), "base_size": len(BASE)}
    assert delta_method(delta) == "bsdiff4"
    assert apply_delta(BASE, delta) == TARGET


def test_the_smallest_delta_is_kept() -> None:
    bsdiff = make_bsdiff_delta(BASE, TARGET)
    model = make_model_delta(BASE, TARGET, BASE_SPANS, TARGET_SPANS)
    smallest = make_smallest_delta(BASE, TARGET, BASE_SPANS, TARGET_SPANS)
    assert smallest == min(bsdiff, model, key=len)
    assert make_smallest_delta(BASE, TARGET, None, TARGET_SPANS) == bsdiff
    assert make_smallest_delta(BASE, TARGET, BASE_SPANS, None) == bsdiff
    assert len(bsdiff) != len(model)


# -- refusals ----------------------------------------------------------------------------------


def _refused(base: bytes, delta: bytes, message: str, **kw: Any) -> None:
    with pytest.raises(MalformedBundleError) as info:
        apply_delta(base, delta, **kw)
    assert str(info.value) == message


def test_frames_that_are_not_deltas_are_refused_by_name() -> None:
    good = make_bsdiff_delta(BASE, TARGET)
    _refused(BASE, good[:11], "delta truncated")
    with pytest.raises(MalformedBundleError, match=r"^bad delta header: "):
        apply_delta(BASE, struct.pack(">7sBI", b"FFDELTA", 2, 0))  # a prefix and nothing else
    _refused(BASE, b"FFDELTX" + good[7:], "not a fedfleet delta")
    for method in (0, 3):
        _refused(BASE, good[:7] + bytes([method]) + good[8:], "not a fedfleet delta")
    head_len = struct.unpack(">I", good[8:12])[0]
    _refused(BASE, good[: 12 + head_len - 1], "delta header truncated")
    with pytest.raises(MalformedBundleError, match=r"^bad delta header: "):
        apply_delta(BASE, struct.pack(">7sBI", b"FFDELTA", 2, 2) + b"[]")
    assert _parse(good[: 12 + head_len])[2] == b""  # a header alone is a frame


def test_the_target_size_is_bounded_by_the_caller() -> None:
    delta = make_bsdiff_delta(BASE, TARGET)
    assert apply_delta(BASE, delta, max_target_bytes=len(TARGET)) == TARGET
    message = "delta target size missing or out of bounds"
    _refused(BASE, delta, message, max_target_bytes=len(TARGET) - 1)
    for size in (-1, "40", None):
        _refused(BASE, _frame(2, {"target_size": size, "base_size": len(BASE)}, b""), message)


def test_the_base_must_have_the_size_the_delta_was_built_against() -> None:
    delta = make_bsdiff_delta(BASE, TARGET)
    _refused(
        BASE + b"x",
        delta,
        f"delta was built against a base of {len(BASE)} bytes, not {len(BASE) + 1}",
    )


def test_a_payload_that_does_not_decompress_or_patch_is_refused() -> None:
    head = canonical_bytes({"target_size": 4, "base_size": len(BASE)})
    raw = struct.pack(">7sBI", b"FFDELTA", METHOD_BSDIFF, len(head)) + head + b"not zstd"
    with pytest.raises(MalformedBundleError, match=r"^delta payload does not decompress: "):
        apply_delta(BASE, raw)
    with pytest.raises(MalformedBundleError, match=r"^bsdiff patch failed: "):
        apply_delta(BASE, _frame(METHOD_BSDIFF, {"target_size": 4, "base_size": len(BASE)}, b"x"))


def test_a_streamed_payload_larger_than_its_bound_is_refused() -> None:
    """A payload frame that does not declare its size may decompress to twice the target
    plus 1 MiB, no more (a frame that declares its size is decompressed to that size)."""
    import zstandard

    def framed(payload: bytes) -> bytes:
        header = canonical_bytes({"target_size": 0, "base_size": 0})
        body = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
        return struct.pack(">7sBI", b"FFDELTA", METHOD_BSDIFF, len(header)) + header + body

    limit = 2 + 1024 * 1024  # max(target_size, 1) * 2 + 1 MiB
    with pytest.raises(MalformedBundleError, match=r"^delta payload does not decompress: "):
        apply_delta(b"", framed(b"\x00" * (limit + 1)))
    with pytest.raises(MalformedBundleError, match=r"^bsdiff patch failed: "):
        apply_delta(b"", framed(b"\x00" * limit))


def test_a_delta_producing_another_size_is_refused() -> None:
    patch = make_bsdiff_delta(BASE, TARGET)
    header: dict[str, object] = {"target_size": len(TARGET) + 1, "base_size": len(BASE)}
    lying = _frame(METHOD_BSDIFF, header, _zstd_decompress(_parse(patch)[2], 1 << 20))
    _refused(BASE, lying, f"delta produced {len(TARGET)} bytes, expected {len(TARGET) + 1}")


def _model(
    ops: Any, *, gaps: Any = (), tensors: bytes = b"", gap_stream: bytes = b"", size: int = 1
) -> bytes:
    import bsdiff4

    gap_patch = bsdiff4.diff(_gather(BASE, [tuple(g) for g in gaps]), gap_stream)
    header = {
        "target_size": size,
        "base_size": len(BASE),
        "ops": ops,
        "base_gaps": [list(g) for g in gaps],
        "tensor_bytes": len(tensors),
    }
    return _frame(METHOD_MODEL, header, tensors + gap_patch)


def test_incomplete_model_delta_headers_are_refused() -> None:
    complete: dict[str, object] = {
        "target_size": 1,
        "base_size": len(BASE),
        "ops": [],
        "base_gaps": [],
    }
    changes: tuple[dict[str, object], ...] = (
        {"ops": {}},
        {"base_gaps": None},
        {"tensor_bytes": "0"},
        {},
    )
    for change in changes:
        header = {"tensor_bytes": 0, **complete, **change} if change else complete
        _refused(BASE, _frame(METHOD_MODEL, header, b""), "model delta header incomplete")
    for tensor_bytes in (-1, 1):
        header = {**complete, "tensor_bytes": tensor_bytes}
        _refused(BASE, _frame(METHOD_MODEL, header, b""), "model delta tensor stream out of bounds")


@pytest.mark.parametrize(
    "gap", [[0], [0, 1, 2], [-1, 2], [0, -1], [0, "1"], "01", [True, 1.5], [1.0, 2]]
)
def test_malformed_base_gap_ranges_are_refused(gap: Any) -> None:
    header = {"target_size": 1, "base_size": len(BASE), "ops": [], "tensor_bytes": 0}
    framed = _frame(METHOD_MODEL, {**header, "base_gaps": [gap]}, b"")
    _refused(BASE, framed, "malformed base gap range")


def test_a_base_gap_may_end_at_the_end_of_the_base_but_not_past_it() -> None:
    end = len(BASE)
    assert apply_delta(BASE, _model([["gap", 1, 0]], gaps=[(end - 2, 2)], gap_stream=b"z")) == b"z"
    past = _model([], gaps=[(end - 2, 3)])
    _refused(BASE, past, "base gap range past the end of the base")


def test_a_gap_patch_that_does_not_apply_is_refused() -> None:
    header = {"target_size": 1, "base_size": len(BASE), "ops": [], "base_gaps": []}
    with pytest.raises(MalformedBundleError, match=r"^gap patch failed: "):
        apply_delta(BASE, _frame(METHOD_MODEL, {**header, "tensor_bytes": 0}, b"junk"))


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([["copy", 1]], "malformed delta op"),
        (["copy"], "malformed delta op"),
        ([["copy", 1, 0, 0]], "malformed delta op"),
        ([["copy", "1", 0]], "malformed delta op bounds"),
        ([["copy", 1, None]], "malformed delta op bounds"),
        ([["copy", -1, 0]], "malformed delta op bounds"),
        ([["copy", 1, -1]], "malformed delta op bounds"),
        ([["copy", 1, len(BASE)]], "delta op reads past the end of the base"),
        ([["sub1", 2, len(BASE) - 1]], "delta op reads past the end of the base"),
        ([["xor2", 4, len(BASE) - 2]], "delta op reads past the end of the base"),
        ([["gap", 2, 0]], "delta op reads past the end of the gap stream"),
        ([["move", 1, 0]], "unknown delta op 'move'"),
        ([["sub2", 3, 0]], "tensor op out of bounds"),
        ([["sub1", 2, 0]], "tensor op out of bounds"),
        ([["copy", 1, 0]], "delta streams have trailing bytes"),
        ([["sub1", 1, 0]], "delta streams have trailing bytes"),  # the gap stream
        ([["gap", 1, 0]], "delta streams have trailing bytes"),  # the tensor stream
    ],
)
def test_malformed_model_delta_ops_are_refused(ops: Any, message: str) -> None:
    _refused(BASE, _model(ops, tensors=b"\x00", gap_stream=b"g"), message)


def test_empty_ops_are_allowed() -> None:
    ops = [["copy", 0, 0], ["gap", 0, 0], ["sub1", 0, 0], ["copy", 1, 0]]
    assert apply_delta(BASE, _model(ops)) == BASE[:1]


def test_the_delta_header_is_bounded_at_64_mib() -> None:
    limit = 64 * 1024 * 1024
    frame = struct.pack(">7sBI", b"FFDELTA", METHOD_BSDIFF, limit + 1) + b" " * (limit + 1)
    with pytest.raises(MalformedBundleError, match=rf"payload of {limit + 1} bytes exceeds limit"):
        apply_delta(BASE, frame)


def test_ops_may_read_up_to_the_last_byte_of_each_stream() -> None:
    end = len(BASE)
    ops = [["copy", 1, end - 1], ["gap", 1, 0], ["xor2", 2, end - 2], ["sub1", 1, end - 1]]
    framed = _model(ops, tensors=b"\x01\x00\x02", gap_stream=b"g", size=5)
    last, pair = BASE[-1], BASE[-2:]
    expected = bytes([last]) + b"g" + bytes([pair[0] ^ 1, pair[1]]) + bytes([(last + 2) % 256])
    assert apply_delta(BASE, framed, max_target_bytes=5) == expected
