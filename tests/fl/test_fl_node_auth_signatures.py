"""SuperNode authentication with fewer ECDSA operations (``shared.flower_node_auth``): the
SuperLink verifies a (key, timestamp, signature) triple once and gives Flower's answers; the
SuperNode reuses a signed timestamp for at most a second."""

from __future__ import annotations

import time
from base64 import b64decode
from typing import Any

import httpx
import pytest
from flwr.common.constant import TIMESTAMP_HEADER
from flwr.supercore.constant import FLEET_HTTP_SIGNATURE_HEADER
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    sign_message,
    verify_signature,
)

from shared.flower_node_auth import (
    VerifiedSignatures,
    cache_verified_signatures,
    reuse_node_signatures,
)


def _signed(message: bytes = b"2026-12-06T02:00:00+00:00") -> tuple[Any, Any, bytes, bytes]:
    private, public = generate_key_pairs()
    return private, public, message, sign_message(private, message)


def test_a_valid_signature_is_verified_once_and_a_bad_one_every_time() -> None:
    _, public, message, signature = _signed()
    cache = VerifiedSignatures(verify_signature)
    assert cache(public, message, signature) and cache(public, message, signature)
    assert cache.verified == 1  # the second answer came from the table
    forged = bytes(signature[:-1]) + bytes([signature[-1] ^ 1])
    assert not cache(public, message, forged) and not cache(public, message, forged)
    assert cache.verified == 3  # failures are checked again, never remembered
    assert not cache(public, b"another timestamp", signature)  # the triple, not the key
    _, other_key, _, _ = _signed()
    assert not cache(other_key, message, signature)  # nor another node's key


def test_the_table_is_bounded_least_recently_used_first() -> None:
    private, public = generate_key_pairs()
    cache = VerifiedSignatures(verify_signature, size=2)
    triples = [(f"t{i}".encode(), sign_message(private, f"t{i}".encode())) for i in range(3)]
    for message, signature in triples:
        assert cache(public, message, signature)
    assert cache.verified == 3
    assert cache(public, *triples[2]) and cache.verified == 3  # still held
    assert cache(public, *triples[0]) and cache.verified == 4  # dropped: checked again
    with pytest.raises(ValueError):
        VerifiedSignatures(verify_signature, size=0)


def test_the_superlink_uses_the_cache_in_flowers_node_check() -> None:
    from flwr.superlink.routers.fleet import node_auth

    cached = cache_verified_signatures()
    assert node_auth.verify_signature is cached and cache_verified_signatures() is cached
    _, public, message, signature = _signed()
    assert node_auth.verify_signature(public, message, signature)
    assert not node_auth.verify_signature(public, message, signature[::-1])


class _Context:
    def __init__(self) -> None:
        self.request = httpx.Request("POST", "https://superlink.example/v1/fleet/pull")


def _headers(interceptor: Any) -> tuple[str, bytes]:
    context = _Context()
    interceptor.intercept(context, lambda ctx: httpx.Response(200))
    headers = context.request.headers
    return headers[TIMESTAMP_HEADER], b64decode(headers[FLEET_HTTP_SIGNATURE_HEADER])


def test_a_supernode_signs_a_new_timestamp_once_the_last_is_a_second_old() -> None:
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    reuse_node_signatures(max_age_s=0.3)
    reuse_node_signatures(max_age_s=0.3)  # once per process: a second call changes nothing
    private, public = generate_key_pairs()
    interceptor = NodeAuthHttpInterceptor(private, public)
    first = _headers(interceptor)
    assert _headers(interceptor) == first  # reused within max_age_s
    assert verify_signature(public, first[0].encode("ascii"), first[1])  # Flower's check
    time.sleep(0.35)
    second = _headers(interceptor)
    assert second[0] > first[0] and verify_signature(public, second[0].encode(), second[1])
    with pytest.raises(ValueError):
        reuse_node_signatures(max_age_s=600)  # beyond Flower's own 300 s window
