"""Model-aware and generic binary deltas between two versions of an artifact.

Applying a delta is pure (bytes in, bytes out) and needs neither onnx nor torch, so a device
with only the ``agent`` extra can apply it. Building the model-aware delta needs the
*locations* of the weight tensors in the target file (the hub finds them with ``onnx``, see
``cloud_hub.bundles.delta``); the format itself is byte-level:

A model-aware delta is a list of operations that write the target file front to back:

* ``copy``   — ``length`` bytes from the base at ``base_offset`` (unchanged tensor);
* ``subN``   — a changed tensor of N-byte elements: ``target - base`` per element, as
  unsigned integers modulo 2**(8N), stored byte-plane shuffled (all lowest bytes, then all
  next bytes, ...). For int8-quantised weights most differences are 0 or ±1; for floats a
  small update leaves sign and exponent alone, so the bit-pattern difference is a small
  integer and the high byte planes are runs of 0x00/0xFF that compress to almost nothing;
* ``insert`` — literal bytes (graph structure, new tensors).

All stored bytes are concatenated and compressed with zstandard. The generic method is
``bsdiff4`` of the whole file, compressed the same way. The builder keeps the smaller.

Frame: ``b"FFDELTA" | u8 method (1 model-aware, 2 bsdiff) | u32 header length | header JSON |
zstd(payload)``. The result is checked by the caller against the signed manifest's sha256
and size of the full target, exactly as if the full artifact had been received.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.canonical import canonical_bytes, parse_json_object
from shared.errors import MalformedBundleError, MalformedMessageError, MessageTooLargeError

MAGIC = b"FFDELTA"
METHOD_MODEL = 1
METHOD_BSDIFF = 2
METHOD_NAMES = {METHOD_MODEL: "model-aware", METHOD_BSDIFF: "bsdiff4"}
_PREFIX = struct.Struct(">7sBI")
# Element arithmetic is little-endian, as ONNX raw_data is.
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
MAX_TARGET_BYTES = 2 * 1024**3

__all__ = [
    "METHOD_BSDIFF",
    "METHOD_MODEL",
    "DeltaOp",
    "TensorSpan",
    "apply_delta",
    "delta_method",
    "make_bsdiff_delta",
    "make_model_delta",
    "make_smallest_delta",
]


@dataclass(frozen=True)
class TensorSpan:
    """Where one named tensor's raw bytes sit inside a model file."""

    name: str
    offset: int
    length: int
    integer: bool  # informational: integer (quantised) vs floating point tensor
    itemsize: int = 1  # bytes per element: the granularity of the stored differences


@dataclass(frozen=True)
class DeltaOp:
    op: str  # copy | gap | subN | xorN
    length: int
    base_offset: int = 0


def _zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


def _zstd_decompress(data: bytes, max_size: int) -> bytes:
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise MalformedBundleError(f"delta payload does not decompress: {exc}") from exc


def _frame(method: int, header: dict[str, object], payload: bytes) -> bytes:
    head = canonical_bytes(header)
    return _PREFIX.pack(MAGIC, method, len(head)) + head + _zstd_compress(payload)


def _gaps(size: int, spans: Sequence[TensorSpan]) -> list[tuple[int, int]]:
    """The byte ranges of a file not covered by ``spans`` (sorted, non-overlapping)."""
    out, pos = [], 0
    for sp in sorted(spans, key=lambda x: x.offset):
        if sp.offset > pos:
            out.append((pos, sp.offset - pos))
        pos = max(pos, sp.offset + sp.length)
    if size > pos:
        out.append((pos, size - pos))
    return out


def _gather(data: bytes, ranges: Sequence[tuple[int, int]]) -> bytes:
    return b"".join(data[o : o + n] for o, n in ranges)


def make_model_delta(
    base: bytes,
    target: bytes,
    base_spans: Sequence[TensorSpan],
    target_spans: Sequence[TensorSpan],
) -> bytes:
    """Build a model-aware delta from the tensor locations in both files.

    Tensors are diffed element-wise against the same-named base tensor; everything between
    tensors (graph structure, small constants) is gathered into one stream and bsdiff'ed
    against the base's gathered stream, whose ranges the header lists so the device can
    rebuild it without parsing the model.
    """
    import bsdiff4

    by_name = {sp.name: sp for sp in base_spans}
    ops: list[list[int | str]] = []
    tensor_payload = bytearray()
    target_gap_stream = bytearray()
    pos = 0

    def gap(upto: int) -> None:
        nonlocal pos
        if upto > pos:
            ops.append(["gap", upto - pos, 0])
            target_gap_stream.extend(target[pos:upto])
            pos = upto

    for span in sorted(target_spans, key=lambda x: x.offset):
        if span.offset < pos:  # overlapping spans (shouldn't happen): leave it in the gap
            continue
        gap(span.offset)
        tdata = target[span.offset : span.offset + span.length]
        b = by_name.get(span.name)
        if b is None or b.length != span.length:
            gap(span.offset + span.length)
            continue
        bdata = base[b.offset : b.offset + b.length]
        n = span.itemsize if span.itemsize in _DTYPES and span.length % span.itemsize == 0 else 1
        if bdata == tdata:
            ops.append(["copy", span.length, b.offset])
        elif span.integer:
            dt = _DTYPES[n]  # integer tensors: element difference, wrapping
            diff = np.frombuffer(tdata, dt) - np.frombuffer(bdata, dt)
            ops.append([f"sub{n}", span.length, b.offset])
            tensor_payload.extend(diff.view(np.uint8).reshape(-1, n).T.tobytes())
        else:
            mask = np.frombuffer(tdata, np.uint8) ^ np.frombuffer(bdata, np.uint8)
            ops.append([f"xor{n}", span.length, b.offset])
            tensor_payload.extend(mask.reshape(-1, n).T.tobytes())
        pos = span.offset + span.length
    gap(len(target))
    base_gap_ranges = _gaps(len(base), base_spans)
    gap_patch = bsdiff4.diff(_gather(base, base_gap_ranges), bytes(target_gap_stream))
    header = {
        "target_size": len(target),
        "base_size": len(base),
        "ops": ops,
        "base_gaps": [list(r) for r in base_gap_ranges],
        "tensor_bytes": len(tensor_payload),
    }
    return _frame(METHOD_MODEL, header, bytes(tensor_payload) + gap_patch)


def make_bsdiff_delta(base: bytes, target: bytes) -> bytes:
    import bsdiff4

    return _frame(
        METHOD_BSDIFF,
        {"target_size": len(target), "base_size": len(base)},
        bsdiff4.diff(base, target),
    )


def make_smallest_delta(
    base: bytes,
    target: bytes,
    base_spans: Sequence[TensorSpan] | None,
    target_spans: Sequence[TensorSpan] | None,
) -> bytes:
    """The smaller of the model-aware delta (when spans are known) and bsdiff4."""
    candidates = [make_bsdiff_delta(base, target)]
    if base_spans is not None and target_spans is not None:
        candidates.append(make_model_delta(base, target, base_spans, target_spans))
    return min(candidates, key=len)


def _parse(delta: bytes) -> tuple[int, dict[str, object], bytes]:
    if len(delta) < _PREFIX.size:
        raise MalformedBundleError("delta truncated")
    magic, method, hlen = _PREFIX.unpack_from(delta, 0)
    if magic != MAGIC or method not in METHOD_NAMES:
        raise MalformedBundleError("not a fedfleet delta")
    end = _PREFIX.size + hlen
    if len(delta) < end:
        raise MalformedBundleError("delta header truncated")
    try:
        header = parse_json_object(delta[_PREFIX.size : end], max_bytes=64 * 1024 * 1024)
    except (MalformedMessageError, MessageTooLargeError) as exc:
        raise MalformedBundleError(f"bad delta header: {exc}") from exc
    return method, header, delta[end:]


def delta_method(delta: bytes) -> str:
    return METHOD_NAMES[_parse(delta)[0]]


def apply_delta(base: bytes, delta: bytes, *, max_target_bytes: int = MAX_TARGET_BYTES) -> bytes:
    """Reconstruct the target from ``base``; raises ``MalformedBundleError`` on any defect.

    The caller must still check the result against the manifest's sha256 and size.
    """
    method, header, body = _parse(delta)
    target_size, base_size = header.get("target_size"), header.get("base_size")
    if not isinstance(target_size, int) or not 0 <= target_size <= max_target_bytes:
        raise MalformedBundleError("delta target size missing or out of bounds")
    if base_size != len(base):
        raise MalformedBundleError(
            f"delta was built against a base of {base_size} bytes, not {len(base)}"
        )
    payload = _zstd_decompress(body, max_size=max(target_size, 1) * 2 + 1024 * 1024)
    if method == METHOD_BSDIFF:
        import bsdiff4

        try:
            out = bsdiff4.patch(base, payload)
        except Exception as exc:  # bsdiff4 raises bare ValueError/RuntimeError on garbage
            raise MalformedBundleError(f"bsdiff patch failed: {exc}") from exc
    else:
        out = _apply_model_delta(base, header, payload)
    if len(out) != target_size:
        raise MalformedBundleError(f"delta produced {len(out)} bytes, expected {target_size}")
    return out


_SUB_SIZES = {"sub1": 1, "sub2": 2, "sub4": 4, "sub8": 8}
_XOR_SIZES = {"xor1": 1, "xor2": 2, "xor4": 4, "xor8": 8}
_READS_BASE = {"copy", *_SUB_SIZES, *_XOR_SIZES}


def _unshuffle(planes: bytes, cursor: int, length: int, n: int) -> NDArray[np.uint8]:
    p = np.frombuffer(planes, np.uint8, length, cursor).reshape(n, -1)
    return np.ascontiguousarray(p.T).reshape(-1)


def _apply_model_delta(base: bytes, header: dict[str, object], payload: bytes) -> bytes:
    import bsdiff4

    ops, base_gaps, tensor_bytes = (
        header.get("ops"),
        header.get("base_gaps"),
        header.get("tensor_bytes"),
    )
    if (
        not isinstance(ops, list)
        or not isinstance(base_gaps, list)
        or not isinstance(tensor_bytes, int)
    ):
        raise MalformedBundleError("model delta header incomplete")
    if not 0 <= tensor_bytes <= len(payload):
        raise MalformedBundleError("model delta tensor stream out of bounds")
    ranges: list[tuple[int, int]] = []
    for r in base_gaps:
        if not (
            isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and v >= 0 for v in r)
        ):
            raise MalformedBundleError("malformed base gap range")
        if r[0] + r[1] > len(base):
            raise MalformedBundleError("base gap range past the end of the base")
        ranges.append((r[0], r[1]))
    tensors = payload[:tensor_bytes]
    try:
        gap_stream = bsdiff4.patch(_gather(base, ranges), payload[tensor_bytes:])
    except Exception as exc:  # bsdiff4 raises bare ValueError/RuntimeError on garbage
        raise MalformedBundleError(f"gap patch failed: {exc}") from exc
    out = bytearray()
    t_cursor = g_cursor = 0
    for entry in ops:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise MalformedBundleError("malformed delta op")
        op, length, base_offset = entry
        if (
            not (isinstance(length, int) and isinstance(base_offset, int))
            or length < 0
            or base_offset < 0
        ):
            raise MalformedBundleError("malformed delta op bounds")
        if op in _READS_BASE and base_offset + length > len(base):
            raise MalformedBundleError("delta op reads past the end of the base")
        if op == "gap":
            if g_cursor + length > len(gap_stream):
                raise MalformedBundleError("delta op reads past the end of the gap stream")
            out.extend(gap_stream[g_cursor : g_cursor + length])
            g_cursor += length
            continue
        if op == "copy":
            out.extend(base[base_offset : base_offset + length])
            continue
        n = _SUB_SIZES.get(op) or _XOR_SIZES.get(op)
        if n is None:
            raise MalformedBundleError(f"unknown delta op {op!r}")
        if length % n or t_cursor + length > len(tensors):
            raise MalformedBundleError("tensor op out of bounds")
        diff = _unshuffle(tensors, t_cursor, length, n)
        t_cursor += length
        if op in _XOR_SIZES:
            out.extend((np.frombuffer(base, np.uint8, length, base_offset) ^ diff).tobytes())
        else:
            dt = _DTYPES[n]
            b = np.frombuffer(base, dt, length // n, base_offset)
            out.extend((b + diff.view(dt)).tobytes())
    if t_cursor != len(tensors) or g_cursor != len(gap_stream):
        raise MalformedBundleError("delta streams have trailing bytes")
    return bytes(out)
