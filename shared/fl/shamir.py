"""Shamir secret sharing for SecAgg+, byte for byte what Flower's own functions produce.

Why: Flower 1.41's ``flwr.common.secure_aggregation.crypto.shamir`` runs PyCryptodome's
``Shamir`` on every 16-byte chunk of a secret. Its GF(2^128) multiplication builds a
128-character string per bit of the smaller operand (a constant-time idiom that is slow in
Python), reconstruction recomputes the Lagrange coefficients and one inversion per share for
every chunk, and each call starts a thread pool. At 20 clients that is most of a SecAgg+
round's extra seconds (clients share two secrets each, the hub reconstructs one per client).

What: the same field (GF(2^128) modulo x^128 + x^7 + x^2 + x + 1, an element's big-endian 16
bytes read as a polynomial whose least significant bit is the constant term), the same
padding, chunking and share layout (4-byte little-endian index, then one 16-byte share per
chunk), so shares made here combine with Flower's ``combine_shares`` and the other way round;
only the arithmetic is faster. Polynomial coefficients come from :func:`secrets.token_bytes`
(the operating system's CSPRNG, as PyCryptodome's ``get_random_bytes``). Multiplication runs
over the set bits of one operand on Python integers (carry-less), the Lagrange coefficients
at zero depend only on the share indices and are computed once per index set (cached), and
inversion is the binary extended Euclidean algorithm.

Timing: as with any pure-Python big-integer code, the running time depends on the operands.
The hub reconstructs only after the clients' masked vectors are in, and a client shares
secrets it generated moments earlier, in its own process.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

__all__ = ["combine_shares", "create_shares", "create_shares_of"]

_BLOCK = 16
_INDEX_BYTES = 4
_MASK = (1 << 128) - 1
_MAX_SHARES = (1 << 32) - 1  # the share index is written in 4 bytes
_SPARE_BYTES = 4
_SLOT_BITS = 8 * (_BLOCK + _SPARE_BYTES)


def _reduce(value: int) -> int:
    """``value`` modulo x^128 + x^7 + x^2 + x + 1."""
    while value >> 128:
        high = value >> 128
        value = (value & _MASK) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return value


def _clmul(a: int, b: int) -> int:
    """Carry-less product of two polynomials over GF(2) (loops over ``b``'s set bits)."""
    if a.bit_count() < b.bit_count():
        a, b = b, a
    product = 0
    while b:
        lowest = b & -b
        product ^= a << (lowest.bit_length() - 1)
        b ^= lowest
    return product


def _mul(a: int, b: int) -> int:
    return _reduce(_clmul(a, b))


def _inverse(a: int) -> int:
    """The inverse of ``a`` in GF(2^128) (binary extended Euclid)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^128)")
    u, v = a, (1 << 128) | 0x87
    g1, g2 = 1, 0
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g1, g2, shift = v, u, g2, g1, -shift
        u ^= v << shift
        g1 ^= g2 << shift
    return _reduce(g1)


def _pad(secret: bytes) -> bytes:
    """PKCS#7 padding to a multiple of 16 bytes (what Flower pads with)."""
    fill = _BLOCK - len(secret) % _BLOCK
    return secret + bytes([fill]) * fill


def _unpad(padded: bytes) -> bytes:
    fill = padded[-1] if padded else 0
    if not 1 <= fill <= _BLOCK or padded[-fill:] != bytes([fill]) * fill:
        raise ValueError("Failed to combine shares")
    return padded[:-fill]


def _pack(blocks: bytes) -> int:
    """16-byte blocks as one integer with a 160-bit slot per block (the first block highest).

    The 32 spare bits of each slot hold what a multiplication by a share index (< 2^32)
    carries above bit 128, so one big-integer operation works on every block at once.
    """
    widened = b"".join(
        b"\x00" * _SPARE_BYTES + blocks[i : i + _BLOCK] for i in range(0, len(blocks), _BLOCK)
    )
    return int.from_bytes(widened, "big")


def _times_index_packed(packed: int, index: int, low: int, spare: int) -> int:
    """Each slot of ``packed`` times the small element ``index``, reduced, in one pass."""
    product = 0
    bits = index
    while bits:
        lowest = bits & -bits
        product ^= packed << (lowest.bit_length() - 1)
        bits ^= lowest
    high = (product >> 128) & spare  # at most 32 bits per slot: one reduction suffices
    return (product & low) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``, any ``threshold`` of which reconstruct it.

    Same signature and output layout as Flower's ``create_shares``: every 16-byte chunk of
    the padded secret is the constant term of its own random polynomial of degree
    ``threshold - 1``; share ``i`` holds each polynomial's value at ``i``.
    """
    return create_shares_of([secret], threshold, num)[0]


def create_shares_of(secrets_: list[bytes], threshold: int, num: int) -> list[list[bytes]]:
    """:func:`create_shares` of each secret in ``secrets_`` (same threshold and count).

    Every chunk has its own polynomial anyway, so the chunks of all the secrets are evaluated
    in one pass (a SecAgg+ client shares its mask seed and its key at once).
    """
    if not 1 <= threshold <= num <= _MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= num <= {_MAX_SHARES}, got {threshold}, {num}")
    padded_secrets = [_pad(bytes(secret)) for secret in secrets_]
    padded = b"".join(padded_secrets)
    slots = len(padded) // _BLOCK
    low = _pack(b"\xff" * len(padded))
    spare = sum(((1 << 32) - 1) << (_SLOT_BITS * i) for i in range(slots))
    randomness = secrets.token_bytes(len(padded) * (threshold - 1))  # one system call
    # Horner's rule, highest coefficient first; the constant term is the secret.
    coefficients = [
        _pack(randomness[i : i + len(padded)]) for i in range(0, len(randomness), len(padded))
    ]
    coefficients.append(_pack(padded))
    slot_bytes = _SLOT_BITS // 8
    values = []
    for index in range(1, num + 1):
        value = 0
        for coefficient in coefficients:
            value = _times_index_packed(value, index, low, spare) ^ coefficient
        raw = value.to_bytes(slots * slot_bytes, "big")
        values.append(
            b"".join(raw[i + _SPARE_BYTES : i + slot_bytes] for i in range(0, len(raw), slot_bytes))
        )
    shares: list[list[bytes]] = []
    start = 0
    for secret_padded in padded_secrets:
        stop = start + len(secret_padded)
        shares.append(
            [
                index.to_bytes(_INDEX_BYTES, "little") + value[start:stop]
                for index, value in enumerate(values, start=1)
            ]
        )
        start = stop
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """l_j(0) = prod_{m != j} x_m / (x_j - x_m) for each share index x_j (cached per set)."""
    weights = []
    for j, x_j in enumerate(indices):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(indices):
            if m != j:
                numerator = _mul(numerator, x_m)
                denominator = _mul(denominator, x_j ^ x_m)
        weights.append(_mul(numerator, _inverse(denominator)))
    return tuple(weights)


def combine_shares(share_list: list[bytes]) -> bytes:
    """The secret behind ``share_list`` (at least the threshold number of distinct shares).

    Same signature and errors as Flower's ``combine_shares``: a :class:`ValueError` when the
    shares are malformed, duplicated or do not reconstruct a validly padded secret.
    """
    if not share_list:
        raise ValueError("no shares to combine")
    length = len(share_list[0])
    if length < _INDEX_BYTES + _BLOCK or (length - _INDEX_BYTES) % _BLOCK:
        raise ValueError(f"a share must be 4 + 16*k bytes, got {length}")
    if any(len(share) != length for share in share_list):
        raise ValueError("shares of different lengths cannot be combined")
    indices = tuple(int.from_bytes(share[:_INDEX_BYTES], "little") for share in share_list)
    if len(set(indices)) != len(indices):
        raise ValueError("Duplicate share")
    # The weights depend on the set of indices, not their order: sorted, one cache entry
    # serves every owner whose shares came back from the same positions (no dropouts).
    ordered = tuple(sorted(indices))
    weight_of = dict(zip(ordered, _lagrange_at_zero(ordered), strict=True))
    weights = [weight_of[index] for index in indices]
    # Every chunk of a share sits in its own 256-bit slot (room for a product of two 128-bit
    # polynomials), so one shift-and-xor per set bit of the weight multiplies all chunks at
    # once; the products of all shares are summed first and reduced once per chunk.
    total = 0
    for share, weight in zip(share_list, weights, strict=True):
        total ^= _times_packed_wide(_pack_wide(share[_INDEX_BYTES:]), weight)
    raw = total.to_bytes((length - _INDEX_BYTES) * 2, "big")
    padded = b"".join(
        _reduce(int.from_bytes(raw[i : i + 2 * _BLOCK], "big")).to_bytes(_BLOCK, "big")
        for i in range(0, len(raw), 2 * _BLOCK)
    )
    return _unpad(padded)


def _pack_wide(blocks: bytes) -> int:
    """16-byte blocks as one integer with a 256-bit slot per block (the first block highest)."""
    return int.from_bytes(
        b"".join(bytes(_BLOCK) + blocks[i : i + _BLOCK] for i in range(0, len(blocks), _BLOCK)),
        "big",
    )


def _times_packed_wide(packed: int, weight: int) -> int:
    """Each slot of ``packed`` times ``weight``, carry-less, unreduced (slots do not overlap)."""
    product = 0
    for position in _set_bits(weight):
        product ^= packed << position
    return product


@lru_cache(maxsize=4096)
def _set_bits(value: int) -> tuple[int, ...]:
    """The positions of ``value``'s set bits (a Lagrange weight serves many owners)."""
    return tuple(i for i in range(value.bit_length()) if value >> i & 1)
