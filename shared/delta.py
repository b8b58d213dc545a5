"""Model-aware and generic binary deltas between two versions of an artifact.

Applying a delta is pure (bytes in, bytes out) and needs neither onnx nor torch, so a device
with only the ``agent`` extra can apply it. Building the model-aware delta needs the
*locations* of the weight tensors in the target file (the hub finds them with ``onnx``, see
``cloud_hub.bundles.delta``); the format itself is byte-level:

A model-aware delta is a list of operations that write the target file front to back:

* ``copy``   — ``length`` bytes from the base at ``base_offset`` (unchanged tensor);
* ``xor``    — a changed tensor: the base bytes at ``base_offset`` XOR a stored mask.
  For float tensors, nearby values share sign/exponent/high mantissa bits, so the XOR mask
  is mostly zero bytes and compresses very well;
* ``sub``    — a changed integer (e.g. int8-quantised) tensor: stored ``target - base`` per
  byte modulo 256; small integer moves become small, repetitive bytes;
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

import numpy as np

from shared.canonical import canonical_bytes, parse_json_object
from shared.errors import MalformedBundleError, MalformedMessageError, MessageTooLargeError

MAGIC = b"FFDELTA"
METHOD_MODEL = 1
METHOD_BSDIFF = 2
METHOD_NAMES = {METHOD_MODEL: "model-aware", METHOD_BSDIFF: "bsdiff4"}
_PREFIX = struct.Struct(">7sBI")
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
    integer: bool  # int8/uint8 and other integer tensors use ``sub``, floats ``xor``


@dataclass(frozen=True)
class DeltaOp:
    op: str  # copy | xor | sub | insert
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


def make_model_delta(
    base: bytes,
    target: bytes,
    base_spans: Sequence[TensorSpan],
    target_spans: Sequence[TensorSpan],
) -> bytes:
    """Build a model-aware delta from the tensor locations in both files."""
    by_name = {s.name: s for s in base_spans}
    ops: list[list[int | str]] = []
    payload = bytearray()
    pos = 0

    def insert(upto: int) -> None:
        nonlocal pos
        if upto > pos:
            ops.append(["insert", upto - pos, 0])
            payload.extend(target[pos:upto])
            pos = upto

    for span in sorted(target_spans, key=lambda s: s.offset):
        if span.offset < pos:  # overlapping spans (shouldn't happen): treat as literal
            continue
        insert(span.offset)
        tdata = target[span.offset : span.offset + span.length]
        b = by_name.get(span.name)
        if b is None or b.length != span.length:
            insert(span.offset + span.length)
            continue
        bdata = base[b.offset : b.offset + b.length]
        if bdata == tdata:
            ops.append(["copy", span.length, b.offset])
        elif span.integer:
            diff = (np.frombuffer(tdata, np.uint8) - np.frombuffer(bdata, np.uint8)).astype(
                np.uint8
            )
            ops.append(["sub", span.length, b.offset])
            payload.extend(diff.tobytes())
        else:
            mask = np.frombuffer(tdata, np.uint8) ^ np.frombuffer(bdata, np.uint8)
            ops.append(["xor", span.length, b.offset])
            payload.extend(mask.tobytes())
        pos = span.offset + span.length
    insert(len(target))
    header = {"target_size": len(target), "base_size": len(base), "ops": ops}
    return _frame(METHOD_MODEL, header, bytes(payload))


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
        out = _apply_ops(base, header.get("ops"), payload)
    if len(out) != target_size:
        raise MalformedBundleError(f"delta produced {len(out)} bytes, expected {target_size}")
    return out


def _apply_ops(base: bytes, ops: object, payload: bytes) -> bytes:
    if not isinstance(ops, list):
        raise MalformedBundleError("delta ops missing")
    out = bytearray()
    cursor = 0
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
        if op in ("copy", "xor", "sub") and base_offset + length > len(base):
            raise MalformedBundleError("delta op reads past the end of the base")
        if op in ("insert", "xor", "sub") and cursor + length > len(payload):
            raise MalformedBundleError("delta op reads past the end of the payload")
        if op == "copy":
            out.extend(base[base_offset : base_offset + length])
        elif op == "insert":
            out.extend(payload[cursor : cursor + length])
            cursor += length
        elif op == "xor":
            b = np.frombuffer(base, np.uint8, length, base_offset)
            m = np.frombuffer(payload, np.uint8, length, cursor)
            out.extend((b ^ m).tobytes())
            cursor += length
        elif op == "sub":
            b = np.frombuffer(base, np.uint8, length, base_offset)
            d = np.frombuffer(payload, np.uint8, length, cursor)
            out.extend((b + d).astype(np.uint8).tobytes())
            cursor += length
        else:
            raise MalformedBundleError(f"unknown delta op {op!r}")
    if cursor != len(payload):
        raise MalformedBundleError("delta payload has trailing bytes")
    return bytes(out)
