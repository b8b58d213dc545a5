"""fedfleet's Shamir sharing for SecAgg+: byte-compatible with Flower's, in both directions."""

from __future__ import annotations

import contextlib
import importlib
import os
import random
from typing import Any, cast

import pytest
from Crypto.Protocol.SecretSharing import _Element
from flwr.common.secure_aggregation.crypto import shamir as flower_shamir
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fl import secagg_keys, shamir
from shared.fl.secure_prg import FLOWER_REPLACEMENTS, secure_mask_generator


def test_field_multiplication_and_inverse_match_pycryptodome() -> None:
    rng = random.Random(7)
    for _ in range(200):
        a, b = rng.getrandbits(128), rng.getrandbits(128)
        assert shamir._mul(a, b) == int(cast(Any, _Element(a)) * _Element(b))
        if a:
            assert shamir._inverse(a) == int(_Element(a).inverse())
            assert shamir._mul(a, shamir._inverse(a)) == 1


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=0, max_size=400),
    num=st.integers(min_value=1, max_value=30),
    data=st.data(),
)
def test_shares_interoperate_with_flower_both_ways(
    secret: bytes, num: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(min_value=1, max_value=num))
    ours = shamir.create_shares(secret, threshold, num)
    theirs = flower_shamir.create_shares(secret, threshold, num)
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    assert [s[:4] for s in ours] == [s[:4] for s in theirs]  # same indices, same layout
    pick = data.draw(st.permutations(range(num))).__getitem__
    subset = [pick(i) for i in range(threshold)]
    assert flower_shamir.combine_shares([ours[i] for i in subset]) == secret
    assert shamir.combine_shares([theirs[i] for i in subset]) == secret
    assert shamir.combine_shares(ours) == secret  # more than the threshold is fine too


def test_a_real_secagg_private_key_round_trips() -> None:
    pem = private_key_to_bytes(generate_key_pairs()[0])
    shares = shamir.create_shares(pem, 12, 20)
    assert shamir.combine_shares(random.Random(1).sample(shares, 12)) == pem
    assert flower_shamir.combine_shares(shares[3:15]) == pem


def test_shares_are_fresh_randomness_each_time() -> None:
    secret = os.urandom(32)
    first, second = shamir.create_shares(secret, 3, 5), shamir.create_shares(secret, 3, 5)
    assert all(a != b for a, b in zip(first[1:], second[1:], strict=True))


def test_below_the_threshold_the_secret_does_not_come_back() -> None:
    secret = os.urandom(32)
    shares = shamir.create_shares(secret, 6, 10)
    for _ in range(5):
        with contextlib.suppress(ValueError):  # usually the result does not even unpad
            assert shamir.combine_shares(random.sample(shares, 5)) != secret


def test_malformed_share_lists_are_refused() -> None:
    shares = shamir.create_shares(b"k" * 32, 2, 3)
    with pytest.raises(ValueError, match="Duplicate"):
        shamir.combine_shares([shares[0], shares[0]])
    with pytest.raises(ValueError, match="different lengths"):
        shamir.combine_shares([shares[0], shares[1][:-16]])
    with pytest.raises(ValueError, match="4 \\+ 16"):
        shamir.combine_shares([shares[0][:10], shares[1][:10]])
    with pytest.raises(ValueError):
        shamir.combine_shares([])
    with pytest.raises(ValueError):
        shamir.create_shares(b"k", 4, 3)


def test_installed_for_a_secure_round_only_and_parsed_keys_forgotten() -> None:
    def current() -> list[object]:
        return [getattr(importlib.import_module(m), a) for m, a, _ in FLOWER_REPLACEMENTS]

    originals = current()
    replacements = [r for _, _, r in FLOWER_REPLACEMENTS]
    assert all(o is not r for o, r in zip(originals, replacements, strict=True))
    pem = private_key_to_bytes(generate_key_pairs()[0])
    with secure_mask_generator():
        assert current() == replacements
        key = secagg_keys.bytes_to_private_key(pem)
        assert secagg_keys.bytes_to_private_key(pem) is key  # parsed once per round
    assert current() == originals
    assert secagg_keys.bytes_to_private_key(pem) is not key  # forgotten when the round ended
    secagg_keys.forget_parsed_keys()


def test_lagrange_weights_are_computed_once_per_index_set_in_any_order() -> None:
    shares = shamir.create_shares(os.urandom(32), 4, 6)
    shamir._lagrange_at_zero.cache_clear()
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        assert shamir.combine_shares([shares[i] for i in order]) == shamir.combine_shares(
            shares[:5]
        )
    assert shamir._lagrange_at_zero.cache_info().misses == 1
