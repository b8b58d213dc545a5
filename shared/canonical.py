"""Canonical encoding: the exact bytes that are hashed and signed.

JSON with sorted keys, no insignificant whitespace, UTF-8, and no NaN/Infinity. Two sides that
build the same value always produce the same bytes, so a signature made by the hub verifies
on every agent regardless of key order or formatting.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from shared.errors import MalformedMessageError, MessageTooLargeError, NonFiniteNumberError

__all__ = ["canonical_bytes", "parse_json", "parse_json_object", "sha256_hex"]


def canonical_bytes(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises ``ValueError`` for NaN/Infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reject_constant(name: str) -> Any:
    raise NonFiniteNumberError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # R14: 1e999 overflows to infinity
        raise NonFiniteNumberError(f"number {text[:40]} is not finite")
    return value


# one decoder for every call (``json.loads`` with hooks builds a new one each time)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json(data: bytes | bytearray | memoryview, *, max_bytes: int) -> Any:
    """Decode JSON from untrusted bytes, bounded by ``max_bytes``.

    Numbers must be finite: ``NaN``/``Infinity`` and numbers that overflow a float
    (``1e999``) raise :class:`NonFiniteNumberError`; other bad input raises
    :class:`MalformedMessageError` (its parent)."""
    if len(data) > max_bytes:
        raise MessageTooLargeError(f"payload of {len(data)} bytes exceeds limit {max_bytes}")
    try:
        return _DECODER.decode(bytes(data).decode("utf-8"))
    except NonFiniteNumberError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedMessageError(f"payload is not valid UTF-8 JSON: {exc}") from exc


def parse_json_object(data: bytes | bytearray | memoryview, *, max_bytes: int) -> dict[str, Any]:
    """Decode a JSON object from untrusted bytes (see :func:`parse_json`)."""
    value = parse_json(data, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise MalformedMessageError(f"payload must be a JSON object, got {type(value).__name__}")
    return value
