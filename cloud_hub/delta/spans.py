"""Locate the weight tensors inside a serialized ONNX file (hub side; needs ``onnx``)."""

from __future__ import annotations

import onnx
from onnx import TensorProto

from cloud_hub.errors import CompressionError
from shared.delta import TensorSpan

_INTEGER_TYPES = {
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    TensorProto.INT64,
}
_ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.FLOAT16: 2,
    TensorProto.BFLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.INT16: 2,
    TensorProto.UINT16: 2,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
}
MIN_SPAN_BYTES = 64  # smaller tensors are cheaper as literal bytes


def onnx_tensor_spans(model_bytes: bytes) -> list[TensorSpan]:
    """Byte ranges of every initializer's ``raw_data`` in ``model_bytes``.

    Protobuf gives no offsets, so each tensor's raw bytes are searched for in the file, in
    file order (initializers are serialized in order, so searching from the previous end
    finds the right occurrence even when two tensors hold identical bytes).
    """
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CompressionError(f"not an ONNX model: {exc}") from exc
    spans: list[TensorSpan] = []
    cursor = 0
    for init in model.graph.initializer:
        raw = init.raw_data
        if len(raw) < MIN_SPAN_BYTES:
            continue
        at = model_bytes.find(raw, cursor)
        if at < 0:
            at = model_bytes.find(raw)
            if at < 0:
                continue
        else:
            cursor = at + len(raw)
        spans.append(
            TensorSpan(
                name=init.name,
                offset=at,
                length=len(raw),
                integer=init.data_type in _INTEGER_TYPES,
                itemsize=_ITEMSIZE.get(init.data_type, 1),
            )
        )
    # Drop overlaps (a search that matched inside another tensor).
    spans.sort(key=lambda s: s.offset)
    clean: list[TensorSpan] = []
    end = 0
    for s in spans:
        if s.offset >= end:
            clean.append(s)
            end = s.offset + s.length
    return clean
