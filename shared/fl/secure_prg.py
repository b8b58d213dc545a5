"""A cryptographic mask generator for Flower's SecAgg+ (a hardening layer, not a rewrite).

Why: in Flower 1.41 ``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``
XOR-folds the shared secret to 32 bits and expands it with ``np.random.RandomState``
(Mersenne Twister). A 32-bit seed can be brute-forced, and MT19937's output is predictable
from its own output, so the masks do not hide the model updates they are added to (upstream
report flwrlabs/flower #7522). It also draws from ``[0, num_range - 1)``, never
``num_range - 1``.

What: :func:`secure_pseudo_rand_gen` has the same signature and output semantics (a list of
``int64`` arrays, uniform in ``[0, num_range)``), but derives a 256-bit ChaCha20 key from the
*whole* seed with HKDF-SHA256 and reads the ChaCha20 keystream, with rejection sampling so that
every value of the range is equally likely (no modulo bias, including ``num_range - 1``).
For a power-of-two range (SecAgg+'s ``modulus_range``) masking accepts every word, so the
masks of all of a model's arrays come from one keystream read and one mask operation, with
the same values as array-by-array reads (the known-answer vectors pin both paths).

How it is installed: Flower imports the function *by name* into
``flwr.server.workflow.secure_aggregation.secaggplus_workflow`` (server side: unmasking) and
``flwr.client.mod.secure_aggregation.secaggplus_mod`` (client side: masking). Both sides must
use the same generator, or the masks do not cancel. :func:`secure_mask_generator` is a
reference-counted, thread-safe context manager that swaps those module attributes (and the
original in ``secaggplus_utils``) while at least one secure round is in progress in this
process and restores Flower's function afterwards. fedfleet's SecAgg+ workflow (hub) enters
it around every secure round, so the hardening is scoped and explicit. fedfleet's clients do
not run Flower's mod any more: :mod:`shared.fl.secaggplus_client` speaks the same protocol and
masks with :func:`add_mask_into` directly, in every process (Ray actors and SuperNode
ClientApp processes included). The client-side swaps below serve Flower's own mod when it
runs inside this block (the tests compare against it).

The same installation also swaps, for speed only, Flower's Shamir ``create_shares`` (client
side) and ``combine_shares`` (server side) for :mod:`shared.fl.shamir` (byte-identical
shares, faster arithmetic), its PEM key parsers for :mod:`shared.fl.secagg_keys` (each key
parsed once per round), the client's masking stage for :mod:`shared.fl.secagg_masking`
(every mask added into one vector in place, byte-identical masked vectors) and the array
(de)serialization of both sides for :mod:`shared.fl.npy_codec` (the same bytes, each header
layout handled once). The protocol, messages, shares and key agreement stay Flower's
(:data:`FLOWER_REPLACEMENTS` lists every swapped name).
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from shared.fl import npy_codec, secagg_keys, shamir

__all__ = [
    "CLIENT_MODULE",
    "FLOWER_MASK_GENERATOR",
    "FLOWER_REPLACEMENTS",
    "MASK_GENERATOR",
    "PATCHED_MODULES",
    "SERVER_MODULE",
    "add_mask_into",
    "is_secure_mask_generator_active",
    "mask_generator_in_use",
    "secure_mask_generator",
    "secure_pseudo_rand_gen",
]

#: The name of :func:`secure_pseudo_rand_gen` in run configs, client reports and lineage.
MASK_GENERATOR = "chacha20-hkdf-sha256"
#: The name of Flower's own ``pseudo_rand_gen`` (what a stock Flower client masks with).
FLOWER_MASK_GENERATOR = "flower-mt19937"

_KDF_INFO = b"fedfleet/secaggplus-mask/v1"
_MAX_RANGE = 1 << 62
_ZEROS = bytes(1 << 21)  # 2 MiB: a mask of up to 262,144 values per array in one call

# Modules whose ``pseudo_rand_gen`` attribute is swapped while a secure round runs.
PATCHED_MODULES: tuple[str, ...] = (
    "flwr.common.secure_aggregation.secaggplus_utils",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
)


SERVER_MODULE = PATCHED_MODULES[1]  # unmasking (the hub's SecAgg+ workflow)
CLIENT_MODULE = PATCHED_MODULES[2]  # masking (a client's SecAgg+ mod)


class _KeyStream:
    """The ChaCha20 keystream under a key derived from the full seed."""

    def __init__(self, seed: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(seed)
        # A fresh key per seed, so a fixed all-zero nonce/counter block is safe.
        self._encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()

    def words(self, count: int) -> NDArray[np.uint64]:
        """The next ``count`` little-endian 64-bit keystream words (read-only, no copy)."""
        size = 8 * count
        # The keystream is ChaCha20 applied to zeros: reuse one zero buffer instead of
        # allocating and filling a fresh one per mask (that cost more than the cipher).
        zeros = memoryview(_ZEROS)[:size] if size <= len(_ZEROS) else bytes(size)
        return np.frombuffer(self._encryptor.update(zeros), dtype="<u8")

    def words_into(self, out: NDArray[np.uint64]) -> None:
        """Write the next ``out.size`` keystream words into ``out`` (at most 2 MiB of them)."""
        self._encryptor.update_into(memoryview(_ZEROS)[: 8 * out.size], out.data.cast("B"))


def _uniform(stream: _KeyStream, num_range: int, count: int) -> NDArray[np.int64]:
    """``count`` integers uniform in ``[0, num_range)``, ``num_range`` not a power of two
    (rejection sampling, no bias; each array draws its own batches, as the vectors fix)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    # Accept words below the largest multiple of num_range that fits in 64 bits.
    limit = np.uint64(((1 << 64) // num_range) * num_range)
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        words = stream.words(need + need // 8 + 8)
        accepted = words[words < limit][:need]
        out[filled : filled + accepted.size] = (accepted % np.uint64(num_range)).astype(np.int64)
        filled += accepted.size
    return out


def secure_pseudo_rand_gen(
    seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]
) -> list[NDArray[np.int64]]:
    """Drop-in for Flower's ``pseudo_rand_gen``: masks from a cryptographic PRG.

    Returns one ``int64`` array per shape in ``dimensions_list`` (a 0-d array for ``()``),
    every entry uniform in ``[0, num_range)``. The same ``seed`` always yields the same masks,
    which is what lets the server remove them.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) == 0:
        raise ValueError("the mask seed must be non-empty bytes")
    if not 1 <= num_range <= _MAX_RANGE:
        raise ValueError(f"num_range must be in [1, 2**62], got {num_range}")
    stream = _KeyStream(bytes(seed))
    shapes = [tuple(int(d) for d in dimension) for dimension in dimensions_list]
    sizes = [math.prod(shape) for shape in shapes]  # 1 for a 0-d shape
    if num_range & (num_range - 1) == 0:
        return _split(_power_of_two_range(stream, num_range, sum(sizes)), shapes, sizes)
    return [
        _uniform(stream, num_range, size).reshape(shape)
        for shape, size in zip(shapes, sizes, strict=True)
    ]


def _power_of_two_range(stream: _KeyStream, num_range: int, count: int) -> NDArray[np.int64]:
    """``count`` values for a power-of-two range in one keystream read and one mask.

    Masking accepts every word, so reading the words of all arrays at once yields exactly
    the values that array-by-array reads yield (same stream, same order): one cipher call
    and one fresh array instead of one of each per array of the model.
    """
    words = stream.words(count)
    values = np.empty(count, dtype=np.uint64)
    np.bitwise_and(words, np.uint64(num_range - 1), out=values)
    return values.view(np.int64)  # below 2**62: the same values, no copy


def _split(
    values: NDArray[np.int64], shapes: list[tuple[int, ...]], sizes: list[int]
) -> list[NDArray[np.int64]]:
    """``values`` cut into consecutive arrays of ``shapes`` (writable views, no copies)."""
    output: list[NDArray[np.int64]] = []
    start = 0
    for shape, size in zip(shapes, sizes, strict=True):
        output.append(values[start : start + size].reshape(shape))
        start += size
    return output


_CHUNK_WORDS = 1 << 15  # 256 KiB of keystream per step: stays in a core's cache


def add_mask_into(
    total: NDArray[np.uint64], seed: bytes, num_range: int, *, subtract: bool = False
) -> None:
    """``total`` plus (or minus) the mask of ``seed``, modulo ``num_range``, in place.

    The mask is :func:`secure_pseudo_rand_gen` of ``seed`` over ``total.size`` values,
    flattened (one array or the model's arrays end to end: the same values, see there), for a
    power-of-two ``num_range``. Each mask value is the low bits of a keystream word, and
    ``num_range`` divides 2**64, so the whole words are added (modulo 2**64): the result is
    the same modulo ``num_range``, one pass cheaper. The caller reduces the sum (``& (num_range
    - 1)``) once, after the last mask. The keystream is read in cache-sized chunks into one
    scratch buffer, so adding a neighbour's mask allocates nothing the size of the model.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) == 0:
        raise ValueError("the mask seed must be non-empty bytes")
    if not 1 <= num_range <= _MAX_RANGE or num_range & (num_range - 1):
        raise ValueError(f"num_range must be a power of two in [1, 2**62], got {num_range}")
    if total.dtype != np.uint64 or total.ndim != 1:
        raise ValueError("the masks are summed into a flat uint64 vector")
    stream = _KeyStream(bytes(seed))
    scratch = np.empty(min(total.size, _CHUNK_WORDS), dtype=np.uint64)
    combine = np.subtract if subtract else np.add
    for start in range(0, total.size, _CHUNK_WORDS):
        part = total[start : start + _CHUNK_WORDS]
        words = scratch[: part.size]
        stream.words_into(words)
        combine(part, words, out=part)


_SHAMIR_MODULE = "flwr.common.secure_aggregation.crypto.shamir"


def _collect_masked_vectors(*args: Any) -> Any:
    """The client's masking stage from :mod:`shared.fl.secagg_masking` (imported on use:
    that module builds on :func:`add_mask_into`, so it imports this one)."""
    from shared.fl.secagg_masking import collect_masked_vectors

    return collect_masked_vectors(*args)


#: (module, attribute, replacement) swapped while a secure round runs in this process.
FLOWER_REPLACEMENTS: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    *((name, "pseudo_rand_gen", secure_pseudo_rand_gen) for name in PATCHED_MODULES),
    (_SHAMIR_MODULE, "create_shares", shamir.create_shares),
    (_SHAMIR_MODULE, "combine_shares", shamir.combine_shares),
    ("flwr.client.mod.secure_aggregation.secaggplus_mod", "create_shares", shamir.create_shares),
    (CLIENT_MODULE, "_collect_masked_vectors", _collect_masked_vectors),
    (CLIENT_MODULE, "parameters_to_ndarrays", npy_codec.parameters_to_ndarrays),
    (CLIENT_MODULE, "ndarray_to_bytes", npy_codec.ndarray_to_bytes),
    (SERVER_MODULE, "bytes_to_ndarray", npy_codec.bytes_to_ndarray),
    (
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "combine_shares",
        shamir.combine_shares,
    ),
    *(
        (name, parser.__name__, parser)
        for name in PATCHED_MODULES[1:]  # the server workflow and the client mod
        for parser in (secagg_keys.bytes_to_private_key, secagg_keys.bytes_to_public_key)
    ),
)

_lock = threading.Lock()
_depth = 0
_originals: dict[tuple[str, str], Callable[..., Any]] = {}


def is_secure_mask_generator_active() -> bool:
    """True while :func:`secure_mask_generator` is entered somewhere in this process."""
    with _lock:
        return _depth > 0


def mask_generator_in_use(module_name: str) -> str:
    """The name of the mask generator ``module_name``'s SecAgg+ code calls right now.

    Read from the function object Flower's module would call (``SERVER_MODULE`` to unmask,
    ``CLIENT_MODULE`` to mask), so it names what actually runs, not what was configured.
    """
    generator = importlib.import_module(module_name).pseudo_rand_gen
    if generator is secure_pseudo_rand_gen:
        return MASK_GENERATOR
    if generator.__module__ == PATCHED_MODULES[0] and generator.__name__ == "pseudo_rand_gen":
        return FLOWER_MASK_GENERATOR
    return f"unknown:{generator.__module__}.{generator.__qualname__}"


@contextmanager
def secure_mask_generator() -> Iterator[None]:
    """Use :func:`secure_pseudo_rand_gen` in Flower's SecAgg+ code within this block.

    Re-entrant and thread-safe: nested or concurrent rounds (server thread and in-process
    clients) share one installation, removed when the last one leaves.
    """
    global _depth
    with _lock:
        if _depth == 0:
            for name, attribute, replacement in FLOWER_REPLACEMENTS:
                module = importlib.import_module(name)
                _originals[(name, attribute)] = getattr(module, attribute)
                setattr(module, attribute, replacement)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for (name, attribute), original in _originals.items():
                    setattr(importlib.import_module(name), attribute, original)
                _originals.clear()
                secagg_keys.forget_parsed_keys()
