"""Parsed SecAgg+ keys, kept only while a secure round runs in this process.

Why: Flower 1.41's SecAgg+ client stores its two private keys as PEM bytes and parses them
again for every neighbour (``bytes_to_private_key`` inside the per-neighbour loops of the
share-keys and masking stages), as it does each neighbour's public key. Parsing a P-384 PKCS#8
key costs about as much as the ECDH exchange it feeds, so a client of a 20-node neighbourhood
spent half of its key agreement re-reading its own key.

What: drop-in replacements for ``bytes_to_private_key`` / ``bytes_to_public_key`` that parse
each distinct PEM once and return the same key object afterwards. The key agreement itself
(ECDH on SECP384R1, HKDF, Fernet) is Flower's, unchanged. :func:`shared.fl.secure_prg.
secure_mask_generator` installs them with the rest of fedfleet's SecAgg+ layer and calls
:func:`forget_parsed_keys` when the last secure round in the process ends, so no private key
object outlives the rounds that use it (Flower keeps the PEM bytes in the round state anyway).
"""

from __future__ import annotations

import threading
from typing import cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "bytes_to_private_key",
    "bytes_to_public_key",
    "forget_parsed_keys",
    "load_private_key",
]

_MAX_ENTRIES = 8192  # a bound, not a tuning knob: past it the cache starts over
_lock = threading.Lock()
_private: dict[bytes, ec.EllipticCurvePrivateKey] = {}
_public: dict[bytes, ec.EllipticCurvePublicKey] = {}


def load_private_key(private_key_bytes: bytes) -> ec.EllipticCurvePrivateKey:
    """Flower's ``bytes_to_private_key`` itself (no cache: the caller keeps the object)."""
    return cast(
        ec.EllipticCurvePrivateKey,
        serialization.load_pem_private_key(data=private_key_bytes, password=None),
    )


def bytes_to_private_key(private_key_bytes: bytes) -> ec.EllipticCurvePrivateKey:
    """Flower's ``bytes_to_private_key``, parsing each distinct PEM once."""
    key = _private.get(private_key_bytes)
    if key is None:
        key = load_private_key(private_key_bytes)
        with _lock:
            if len(_private) >= _MAX_ENTRIES:
                _private.clear()
            _private[private_key_bytes] = key
    return key


def bytes_to_public_key(public_key_bytes: bytes) -> ec.EllipticCurvePublicKey:
    """Flower's ``bytes_to_public_key``, parsing each distinct PEM once."""
    key = _public.get(public_key_bytes)
    if key is None:
        key = cast(
            ec.EllipticCurvePublicKey,
            serialization.load_pem_public_key(data=public_key_bytes),
        )
        with _lock:
            if len(_public) >= _MAX_ENTRIES:
                _public.clear()
            _public[public_key_bytes] = key
    return key


def forget_parsed_keys() -> None:
    """Drop every parsed key (called when the last secure round in the process ends)."""
    with _lock:
        _private.clear()
        _public.clear()
