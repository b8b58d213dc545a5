"""The client's SecAgg+ masking stage: byte for byte what Flower's own stage sends."""

from __future__ import annotations

import copy
import importlib
import os
from typing import Any

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from shared.fl.secagg_masking import FLOWER_COLLECT_MASKED_VECTORS, collect_masked_vectors
from shared.fl.secure_prg import (
    CLIENT_MODULE,
    add_mask_into,
    secure_mask_generator,
    secure_pseudo_rand_gen,
)

SecAggPlusState = importlib.import_module(CLIENT_MODULE).SecAggPlusState


def _keys() -> dict[str, Any]:
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    return {"sk1": sk1, "pk1": pk1, "sk2": sk2, "pk2": pk2}


def _client_after_share_keys(nid: int, neighbours: list[int], mod_range: int) -> tuple[Any, Any]:
    """A client's state and its collect-stage configs, as after Flower's share-keys stage."""
    keys = {node: _keys() for node in [nid, *neighbours]}
    pem = {node: {k: public_key_to_bytes(v) for k, v in ks.items() if k[0] == "p"} for node, ks in keys.items()}  # fmt: skip
    own = keys[nid]
    ss2 = {j: generate_shared_key(own["sk2"], keys[j]["pk2"]) for j in neighbours}
    state = SecAggPlusState(
        nid=nid, sample_num=len(neighbours) + 1, share_num=len(neighbours) + 1, threshold=2,
        clipping_range=8.0, target_range=1 << 22, mod_range=mod_range, max_weight=10_000.0,
        sk1=private_key_to_bytes(own["sk1"]), pk1=pem[nid]["pk1"],
        sk2=private_key_to_bytes(own["sk2"]), pk2=pem[nid]["pk2"], rd_seed=os.urandom(32),
        rd_seed_share_dict={}, sk1_share_dict={}, ss2_dict=ss2,
        public_keys_dict={n: (pem[n]["pk1"], pem[n]["pk2"]) for n in [nid, *neighbours]},
    )  # fmt: skip
    ciphertexts = [
        # what neighbour j encrypted for this client with their shared key (ECDH is symmetric)
        encrypt(ss2[j], share_keys_plaintext_concat(j, nid, os.urandom(52), os.urandom(100)))
        for j in neighbours
    ]
    return state, {Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: list(neighbours)}


def _update() -> Any:
    rng = np.random.default_rng(7)
    arrays = [rng.normal(0, 2, shape).astype(np.float32) for shape in ((16, 1, 3, 3), (16,), (10, 64), (10,))]  # fmt: skip
    return ndarrays_to_parameters(arrays)


def _run(stage: Any, state: Any, configs: Any) -> tuple[Any, Any]:
    mine = copy.deepcopy(state)
    np.random.seed(3)  # Flower's stochastic rounding draws from numpy's global generator
    with secure_mask_generator():
        reply = stage(mine, configs, 42, _update())
    return reply, mine


@pytest.mark.parametrize("mod_range", [1 << 32, 1 << 24])
def test_masked_vectors_are_byte_for_byte_flowers(mod_range: int) -> None:
    # neighbours on both sides of the client's id: masks added and subtracted
    state, configs = _client_after_share_keys(50, [7, 31, 64, 90], mod_range)
    ours, our_state = _run(collect_masked_vectors, state, configs)
    flowers, flower_state = _run(FLOWER_COLLECT_MASKED_VECTORS, state, configs)
    assert ours[Key.MASKED_PARAMETERS] == flowers[Key.MASKED_PARAMETERS]
    assert our_state.rd_seed_share_dict == flower_state.rd_seed_share_dict
    assert our_state.sk1_share_dict == flower_state.sk1_share_dict
    assert set(our_state.sk1_share_dict) == {7, 31, 64, 90}


def test_a_share_from_the_wrong_sender_is_refused_as_flower_refuses_it() -> None:
    state, configs = _client_after_share_keys(5, [1, 9], 1 << 32)
    # sealed with neighbour 1's key, but the plaintext names 9 as its sender
    forged = share_keys_plaintext_concat(9, 5, os.urandom(52), os.urandom(100))
    configs[Key.CIPHERTEXT_LIST][0] = encrypt(state.ss2_dict[1], forged)
    for stage in (collect_masked_vectors, FLOWER_COLLECT_MASKED_VECTORS):
        with pytest.raises(ValueError, match="received ciphertext from 9 instead of 1"):
            _run(stage, state, configs)


def test_installed_for_a_secure_round() -> None:
    module = importlib.import_module(CLIENT_MODULE)
    assert module._collect_masked_vectors is FLOWER_COLLECT_MASKED_VECTORS
    with secure_mask_generator():
        replaced = module._collect_masked_vectors
        assert replaced is not FLOWER_COLLECT_MASKED_VECTORS
        state, configs = _client_after_share_keys(3, [1, 8], 1 << 32)
        np.random.seed(3)
        direct = collect_masked_vectors(copy.deepcopy(state), configs, 42, _update())
        np.random.seed(3)
        assert replaced(copy.deepcopy(state), configs, 42, _update()) == direct
    assert module._collect_masked_vectors is FLOWER_COLLECT_MASKED_VECTORS


def test_masks_summed_in_place_are_the_generators_masks() -> None:
    shapes = [(3, 4), (1,), (70_000,)]  # longer than one keystream chunk
    total = 70_013
    start = np.arange(total, dtype=np.uint64)
    summed = start.copy()
    add_mask_into(summed, b"seed-a", 1 << 32)
    add_mask_into(summed, b"seed-b", 1 << 32, subtract=True)
    flat = [np.concatenate([m.ravel() for m in secure_pseudo_rand_gen(s, 1 << 32, shapes)]) for s in (b"seed-a", b"seed-b")]  # fmt: skip
    expected = (start.astype(np.int64) + flat[0] - flat[1]) % (1 << 32)
    np.testing.assert_array_equal(summed & np.uint64((1 << 32) - 1), expected.astype(np.uint64))


def test_add_mask_into_refuses_what_it_cannot_sum() -> None:
    with pytest.raises(ValueError, match="power of two"):
        add_mask_into(np.zeros(3, np.uint64), b"k", 6)
    with pytest.raises(ValueError, match="flat uint64"):
        add_mask_into(np.zeros(3, np.int64), b"k", 1 << 32)
    with pytest.raises(ValueError, match="non-empty"):
        add_mask_into(np.zeros(3, np.uint64), b"", 1 << 32)
