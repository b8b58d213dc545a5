"""Flower's SuperNode authentication without an ECDSA signature per request on both ends.

Flower 1.41 authenticates every Fleet request of a SuperNode by a signed timestamp: the
SuperNode signs ``now()`` with its P-384 key for each request
(``NodeAuthHttpInterceptor.intercept``, ~0.15 ms) and the SuperLink verifies that signature
for each request (``node_auth.authenticate_node``, ~0.34 ms), then checks that the timestamp
is at most ``TIMESTAMP_TOLERANCE`` (300 s) + ``SYSTEM_TIME_TOLERANCE`` (5 s) old and that the
key belongs to the node the request names. The signature covers the timestamp only, so
Flower accepts the same headers again for five minutes by design. A SecAgg+ round over six
SuperNodes is a few hundred such requests: the verifications were about a fifth of the
SuperLink's CPU.

- :func:`reuse_node_signatures` (SuperNode): a signed timestamp is reused for requests within
  ``max_age_s`` (1 s) of its signing, then a new one is signed — far inside Flower's window.
- :func:`cache_verified_signatures` (SuperLink): a signature that verified is remembered by
  (public key, message, signature) in a bounded table; the same triple is not verified again.
  Verification is a pure function of that triple, so the answers are Flower's; the age check
  and the node check still run on every request, and failed verifications are never cached.

A stock SuperNode (a signature per request) is served as before: its triples miss the cache.
Both patches refuse to start on a Flower whose functions are not the ones they replace.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = [
    "CACHE_SIZE",
    "SIGNATURE_REUSE_S",
    "VerifiedSignatures",
    "cache_verified_signatures",
    "reuse_node_signatures",
]

SIGNATURE_REUSE_S = 1.0
_REUSE_S = {"max_age_s": SIGNATURE_REUSE_S}  # what the patched interceptor reads
CACHE_SIZE = 4096  # triples; one per SuperNode per second in use, so thousands of nodes


class VerifiedSignatures:
    """``verify(public_key, message, signature)`` with the triples that verified remembered
    (at most ``size``, least recently used dropped first)."""

    def __init__(self, verify: Callable[[Any, bytes, bytes], bool], size: int = CACHE_SIZE):
        if size < 1:
            raise ValueError("the cache needs room for one signature")
        self._verify = verify
        self._size = size
        self._valid: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._lock = threading.Lock()
        self.verified = 0  # signatures actually checked (cache misses)

    def __call__(self, public_key: Any, message: bytes, signature: bytes) -> bool:
        from cryptography.hazmat.primitives import serialization

        point = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        key = (point, bytes(message), bytes(signature))
        with self._lock:
            if key in self._valid:
                self._valid.move_to_end(key)
                return True
        self.verified += 1
        if not self._verify(public_key, message, signature):
            return False
        with self._lock:
            self._valid[key] = None
            while len(self._valid) > self._size:
                self._valid.popitem(last=False)
        return True


def cache_verified_signatures(size: int = CACHE_SIZE) -> VerifiedSignatures:
    """Make this process's SuperLink verify each SuperNode signature once (module doc)."""
    from flwr.supercore.primitives.asymmetric import verify_signature
    from flwr.superlink.routers.fleet import node_auth

    current = node_auth.verify_signature
    if isinstance(current, VerifiedSignatures):
        return current
    if current is not verify_signature:
        raise RuntimeError("Flower's node_auth.verify_signature is not the one this caches")
    cached = VerifiedSignatures(verify_signature, size)
    node_auth.verify_signature = cached
    return cached


def reuse_node_signatures(max_age_s: float = SIGNATURE_REUSE_S) -> None:
    """Make this process's SuperNode reuse a signed timestamp for ``max_age_s`` (module doc;
    a later call sets the age again)."""
    from base64 import b64encode

    from flwr.common.constant import TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
    from flwr.supercore.constant import (
        FLEET_HTTP_PUBLIC_KEY_HEADER,
        FLEET_HTTP_SIGNATURE_HEADER,
    )
    from flwr.supercore.date import now
    from flwr.supercore.interceptors.http.utils import add_headers
    from flwr.supercore.primitives.asymmetric import sign_message
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    if not 0 < max_age_s < TIMESTAMP_TOLERANCE:
        raise ValueError(f"max_age_s must be in (0, {TIMESTAMP_TOLERANCE}) s")
    _REUSE_S["max_age_s"] = max_age_s
    flower_intercept = NodeAuthHttpInterceptor.intercept
    if getattr(flower_intercept, "_fedfleet_reuse", False):
        return
    if flower_intercept.__qualname__ != "NodeAuthHttpInterceptor.intercept":
        raise RuntimeError("Flower's NodeAuthHttpInterceptor.intercept is not the one replaced")

    def intercept(self: Any, context: Any, call_next: Any) -> Any:
        signed = getattr(self, "_fedfleet_signed", None)  # (monotonic, timestamp, signature)
        if signed is None or time.monotonic() - signed[0] >= _REUSE_S["max_age_s"]:
            timestamp = now().isoformat()
            signature = sign_message(self._private_key, timestamp.encode("ascii"))
            signed = (time.monotonic(), timestamp, b64encode(signature).decode("ascii"))
            self._fedfleet_signed = signed
        add_headers(
            context.request,
            {
                FLEET_HTTP_PUBLIC_KEY_HEADER: b64encode(self._public_key_bytes).decode("ascii"),
                TIMESTAMP_HEADER: signed[1],
                FLEET_HTTP_SIGNATURE_HEADER: signed[2],
            },
        )
        return call_next(context)

    intercept._fedfleet_reuse = True  # type: ignore[attr-defined]
    NodeAuthHttpInterceptor.intercept = intercept  # type: ignore[method-assign]
