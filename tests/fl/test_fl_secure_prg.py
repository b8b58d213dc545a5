"""The SecAgg+ mask generator: output semantics, strength against the 32-bit fold, scoping."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from flwr.common.secure_aggregation import secaggplus_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fl.secure_prg import (
    PATCHED_MODULES,
    is_secure_mask_generator_active,
    secure_mask_generator,
    secure_pseudo_rand_gen,
)

FLOWER_PRG = secaggplus_utils.pseudo_rand_gen


def test_shapes_dtype_and_determinism() -> None:
    dims = [(3, 4), (), (7,), (2, 0, 5)]
    a = secure_pseudo_rand_gen(b"k" * 32, 1 << 32, dims)
    b = secure_pseudo_rand_gen(b"k" * 32, 1 << 32, dims)
    assert [x.shape for x in a] == dims
    assert all(x.dtype == np.int64 for x in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = secure_pseudo_rand_gen(b"j" * 32, 1 << 32, dims)
    assert not np.array_equal(a[0], c[0])


def test_every_value_of_the_range_is_drawn_including_the_top() -> None:
    ours = secure_pseudo_rand_gen(b"seed" * 8, 4, [(20_000,)])[0]
    assert set(np.unique(ours)) == {0, 1, 2, 3}
    # Flower 1.41's generator never draws num_range - 1 (the bug this layer also fixes).
    flowers = FLOWER_PRG(b"seed" * 8, 4, [(20_000,)])[0]
    assert 3 not in set(np.unique(flowers))


def test_non_power_of_two_range_is_uniform() -> None:
    values = secure_pseudo_rand_gen(b"u" * 32, 6, [(60_000,)])[0]
    counts = np.bincount(values, minlength=6)
    assert counts.min() > 9_400 and counts.max() < 10_600


def test_seeds_equal_under_a_32_bit_fold_give_different_masks() -> None:
    # Flower folds the key by XOR-ing 4-byte words: swapping two words keeps the fold.
    a = bytes(range(32))
    b = a[4:8] + a[0:4] + a[8:]
    assert a != b
    flower_a, flower_b = FLOWER_PRG(a, 1 << 32, [(64,)])[0], FLOWER_PRG(b, 1 << 32, [(64,)])[0]
    np.testing.assert_array_equal(flower_a, flower_b)  # the weakness
    ours_a, ours_b = (
        secure_pseudo_rand_gen(a, 1 << 32, [(64,)])[0],
        secure_pseudo_rand_gen(b, 1 << 32, [(64,)])[0],
    )
    assert not np.array_equal(ours_a, ours_b)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.binary(min_size=1, max_size=64),
    num_range=st.integers(min_value=1, max_value=(1 << 32)),
    dims=st.lists(st.lists(st.integers(0, 6), max_size=3).map(tuple), max_size=4),
)
def test_values_stay_in_range(seed: bytes, num_range: int, dims: list[tuple[int, ...]]) -> None:
    for arr, shape in zip(secure_pseudo_rand_gen(seed, num_range, dims), dims, strict=True):
        assert arr.shape == shape
        if arr.size:
            assert arr.min() >= 0 and arr.max() < num_range


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        secure_pseudo_rand_gen(b"", 16, [(1,)])
    with pytest.raises(ValueError):
        secure_pseudo_rand_gen(b"k", 0, [(1,)])


def test_installation_is_scoped_and_reference_counted() -> None:
    modules = [importlib.import_module(name) for name in PATCHED_MODULES]
    originals = [m.pseudo_rand_gen for m in modules]
    assert all(f is not secure_pseudo_rand_gen for f in originals)
    assert not is_secure_mask_generator_active()
    with secure_mask_generator():
        assert all(m.pseudo_rand_gen is secure_pseudo_rand_gen for m in modules)
        with secure_mask_generator():
            assert is_secure_mask_generator_active()
        # the inner exit must not uninstall while the outer block is still running
        assert all(m.pseudo_rand_gen is secure_pseudo_rand_gen for m in modules)
    assert not is_secure_mask_generator_active()
    assert [m.pseudo_rand_gen for m in modules] == originals


# Known answers: the generator's output is part of the protocol (hub and agents must agree).
KNOWN_ANSWERS = {
    1 << 32: ([1691800871, 2770860205, 185532246, 820787512], "72849ab3c54f95a8141e51bfa63a3f71"),
    6: ([3, 1, 2, 0], "950bb995c0bca0e3186a716bf69fc157"),
    1 << 62: (
        [1235822922096366887, 403052631614290093, 3957127934641110870, 4236128108881393976],
        "30145ada090feef9642284827a8e2120",
    ),
    1000003: ([560644, 535729, 596336, 30042], "05b48b115e46761dc126f439fa27f7dc"),
}


@pytest.mark.parametrize("num_range", sorted(KNOWN_ANSWERS))
def test_known_answer_vectors(num_range: int) -> None:
    import hashlib

    first, digest = KNOWN_ANSWERS[num_range]
    out = secure_pseudo_rand_gen(b"fedfleet-kat-seed", num_range, [(3, 4), (), (1000,), (200000,)])
    assert out[0].ravel()[:4].tolist() == first
    whole = b"".join(a.astype("<i8").tobytes() for a in out)
    assert hashlib.sha256(whole).hexdigest()[:32] == digest
    assert all(a.dtype == np.int64 for a in out)
    out[2][0] = 1  # the arrays handed to Flower are writable (it adds masks in place)


def test_masks_longer_than_the_zero_buffer_continue_the_same_stream() -> None:
    big = secure_pseudo_rand_gen(b"long", 1 << 32, [(300_000,)])[0]
    small = secure_pseudo_rand_gen(b"long", 1 << 32, [(262_144,)])[0]
    np.testing.assert_array_equal(big[:262_144], small)


def _sequential_reference(seed: bytes, num_range: int, count: int) -> list[int]:
    """The specification, one 64-bit word at a time: HKDF-SHA256 key, ChaCha20 keystream,
    little-endian words, rejection above the largest multiple of the range."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"fedfleet/secaggplus-mask/v1"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    limit = (1 << 64) // num_range * num_range
    out: list[int] = []
    while len(out) < count:
        word = int.from_bytes(stream.update(b"\x00" * 8), "little")
        if word < limit:
            out.append(word % num_range)
    return out


def test_heavy_rejection_matches_the_word_by_word_specification() -> None:
    # 2**64 // r == 4 leaves a fifth of all words rejected: the batched sampler needs several
    # rounds, and values near 2**62 would lose bits through any float on the way
    num_range = (1 << 64) // 5 + 1
    [masks] = secure_pseudo_rand_gen(b"heavy-rejection", num_range, [(3000,)])
    assert masks.dtype == np.int64
    assert masks.tolist() == _sequential_reference(b"heavy-rejection", num_range, 3000)


def test_argument_refusals_say_why_and_a_single_round_is_active() -> None:
    with pytest.raises(ValueError, match=r"^the mask seed must be non-empty bytes$"):
        secure_pseudo_rand_gen(b"", 16, [(1,)])
    with pytest.raises(ValueError, match=r"^num_range must be in \[1, 2\*\*62\], got 0$"):
        secure_pseudo_rand_gen(b"k", 0, [(1,)])
    assert not is_secure_mask_generator_active()
    with secure_mask_generator():
        assert is_secure_mask_generator_active()
    assert not is_secure_mask_generator_active()


def test_a_range_of_one_gives_zeros() -> None:
    [masks] = secure_pseudo_rand_gen(b"k", 1, [(3,)])
    assert masks.tolist() == [0, 0, 0]
