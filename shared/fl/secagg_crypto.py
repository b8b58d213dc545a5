"""SecAgg+ key derivation and share encryption, byte for byte Flower 1.41's, with less overhead.

Why: Flower's ``generate_shared_key`` builds a ``cryptography`` HKDF object per call and its
``encrypt``/``decrypt`` build a ``Fernet`` object per share. The object set-up costs about a
tenth of the P-384 exchange it follows, and a SecAgg+ client derives two keys and seals or
opens one share per neighbour (the hub's mask generator derives one key per mask as well).

What: the same constructions, computed with the standard library's one-shot HMAC:

- :func:`hkdf_sha256` is RFC 5869 HKDF-SHA256 (extract with an all-zero salt when none is
  given, one expand block), the KDF of ``cryptography``'s ``HKDF(SHA256(), 32, None, info)``;
- :func:`shared_key` is Flower's ``generate_shared_key``: ECDH, HKDF-SHA256 without salt or
  info, URL-safe base64 (a Fernet key);
- :func:`seal` / :func:`open_sealed` are Fernet tokens (version 0x80, big-endian timestamp,
  random IV, AES-128-CBC with PKCS#7 padding, HMAC-SHA256 over all of it, URL-safe base64):
  what ``Fernet(key).encrypt`` makes and ``Fernet(key).decrypt`` accepts. Opening checks the
  version and the HMAC (in constant time) before decrypting, and refuses what Fernet refuses
  with the same :class:`cryptography.fernet.InvalidToken`.

The tests check each against ``cryptography``'s own objects and Flower's functions.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import time

from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["hkdf_sha256", "open_sealed", "seal", "shared_key"]

_HASH_BYTES = 32
_ZERO_SALT = bytes(_HASH_BYTES)
_VERSION = b"\x80"
_BLOCK = 16
_HEADER = 1 + 8 + _BLOCK  # version, timestamp, IV


def hkdf_sha256(key_material: bytes, info: bytes = b"", length: int = _HASH_BYTES) -> bytes:
    """HKDF-SHA256 of ``key_material`` (no salt) for up to 32 bytes of output."""
    if not 1 <= length <= _HASH_BYTES:
        raise ValueError(f"one HKDF-SHA256 block gives 1 to 32 bytes, not {length}")
    pseudo_random_key = hmac.digest(_ZERO_SALT, key_material, "sha256")
    return hmac.digest(pseudo_random_key, info + b"\x01", "sha256")[:length]


def shared_key(
    private_key: ec.EllipticCurvePrivateKey, public_key: ec.EllipticCurvePublicKey
) -> bytes:
    """Flower's ``generate_shared_key``: a Fernet key both ends of an ECDH exchange derive."""
    return base64.urlsafe_b64encode(hkdf_sha256(private_key.exchange(ec.ECDH(), public_key)))


def _split_key(key: bytes) -> tuple[bytes, bytes]:
    raw = base64.urlsafe_b64decode(key)
    if len(raw) != 2 * _BLOCK:
        raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
    return raw[:_BLOCK], raw[_BLOCK:]


def seal(key: bytes, plaintext: bytes, iv: bytes | None = None, now: int | None = None) -> bytes:
    """``Fernet(key).encrypt(plaintext)``: ``iv`` 16 fresh random bytes (drawn when None),
    ``now`` the token's timestamp (the clock when None)."""
    signing_key, encryption_key = _split_key(key)
    iv = os.urandom(_BLOCK) if iv is None else iv
    if len(iv) != _BLOCK:
        raise ValueError("a Fernet IV is 16 bytes")
    fill = _BLOCK - len(plaintext) % _BLOCK
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext + bytes([fill]) * fill) + encryptor.finalize()
    stamp = int(time.time()) if now is None else now
    parts = _VERSION + stamp.to_bytes(8, "big") + iv + ciphertext
    return base64.urlsafe_b64encode(parts + hmac.digest(signing_key, parts, "sha256"))


def open_sealed(key: bytes, token: bytes) -> bytes:
    """``Fernet(key).decrypt(token)`` (no time-to-live, as Flower calls it)."""
    signing_key, encryption_key = _split_key(key)
    try:
        data = base64.urlsafe_b64decode(token)
    except (TypeError, binascii.Error):
        raise InvalidToken from None
    body = len(data) - _HEADER - _HASH_BYTES
    if not data or data[:1] != _VERSION or body < _BLOCK or body % _BLOCK:
        raise InvalidToken
    parts, tag = data[:-_HASH_BYTES], data[-_HASH_BYTES:]
    if not hmac.compare_digest(hmac.digest(signing_key, parts, "sha256"), tag):
        raise InvalidToken
    decryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(data[9:_HEADER])).decryptor()
    padded = decryptor.update(parts[_HEADER:]) + decryptor.finalize()
    fill = padded[-1]
    if not 1 <= fill <= _BLOCK or padded[-fill:] != bytes([fill]) * fill:
        raise InvalidToken
    return padded[:-fill]
