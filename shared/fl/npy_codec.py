"""Flower's array (de)serialization with the ``.npy`` header handled once per layout.

Why: SecAgg+ moves the model as ``.npy`` bytes more often than a plain round (the client
mod turns the fit result into bytes and back before masking, sends the masked vectors as
bytes, the hub reads each one). Flower 1.41's ``ndarray_to_bytes`` / ``bytes_to_ndarray``
run ``np.save`` / ``np.load``, which write and parse the header (a Python dict literal,
parsed with ``ast.literal_eval``) for every array: that cost more than copying the data.

What: :func:`ndarray_to_bytes` and :func:`bytes_to_ndarray` return exactly what Flower's
functions return (same bytes; a fresh, writable array of the same dtype and shape), but
write a header made by ``np.save`` once per (dtype, shape, order) and parse each distinct
header with numpy's own reader once. Anything else (object arrays, other file formats,
short data) goes through Flower's functions unchanged, errors included.
:func:`shared.fl.secure_prg.secure_mask_generator` installs them in Flower's SecAgg+ modules
while a secure round runs.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from flwr.common import Parameters
from flwr.compat.common import parameter as flower
from numpy.typing import NDArray

__all__ = ["bytes_to_ndarray", "ndarray_to_bytes", "parameters_to_ndarrays"]

_MAGIC = b"\x93NUMPY"
_MAX_ENTRIES = 1024  # a bound, not a tuning knob: past it a cache starts over
_lock = threading.Lock()
_headers_written: dict[tuple[str, tuple[int, ...], bool], bytes] = {}
_headers_read: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], bool, int]] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    with _lock:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        cache[key] = value


def ndarray_to_bytes(ndarray: NDArray[Any]) -> bytes:
    """Flower's ``ndarray_to_bytes`` (``np.save``, no pickles): the same bytes."""
    if not isinstance(ndarray, np.ndarray) or ndarray.dtype.hasobject:
        return flower.ndarray_to_bytes(ndarray)
    fortran = bool(ndarray.flags.f_contiguous and not ndarray.flags.c_contiguous)
    key = (ndarray.dtype.str, ndarray.shape, fortran)
    header = _headers_written.get(key)
    if header is None:
        whole = flower.ndarray_to_bytes(ndarray)
        _remember(_headers_written, key, whole[: len(whole) - ndarray.nbytes])
        return whole
    return header + ndarray.tobytes(order="F" if fortran else "C")


def _read_header(tensor: bytes) -> tuple[np.dtype[Any], tuple[int, ...], bool, int] | None:
    """dtype, shape, Fortran order and data offset of a ``.npy`` header (None: not one)."""
    if not tensor.startswith(_MAGIC) or len(tensor) < 10:
        return None
    major = tensor[6]
    length_bytes = 2 if major == 1 else 4
    if major not in (1, 2) or len(tensor) < 8 + length_bytes:
        return None  # version 3 (utf-8 field names) and anything else: Flower's path
    offset = 8 + length_bytes + int.from_bytes(tensor[8 : 8 + length_bytes], "little")
    header = tensor[:offset]
    known = _headers_read.get(header)
    if known is None:
        stream = io.BytesIO(header)
        read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
        read_header = read[np.lib.format.read_magic(stream)[0]]
        shape, fortran, dtype = read_header(stream)
        known = (dtype, tuple(shape), bool(fortran), offset)
        _remember(_headers_read, header, known)
    return known


def bytes_to_ndarray(tensor: bytes) -> NDArray[Any]:
    """Flower's ``bytes_to_ndarray`` (``np.load``, no pickles): a fresh, writable array."""
    layout = None
    if isinstance(tensor, bytes):
        try:
            layout = _read_header(tensor)
        except ValueError:
            layout = None  # let Flower's function raise its own error
    if layout is None or layout[0].hasobject:
        return flower.bytes_to_ndarray(tensor)
    dtype, shape, fortran, offset = layout
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(tensor) - offset < count * dtype.itemsize:
        return flower.bytes_to_ndarray(tensor)
    flat = np.frombuffer(tensor, dtype=dtype, count=count, offset=offset).copy()
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def parameters_to_ndarrays(parameters: Parameters) -> list[NDArray[Any]]:
    """Flower's ``parameters_to_ndarrays`` on :func:`bytes_to_ndarray`."""
    return [bytes_to_ndarray(tensor) for tensor in parameters.tensors]
