"""The SecAgg+ client's masking stage, with every mask summed into one vector in place.

Why: Flower 1.41's ``_collect_masked_vectors`` (in ``secaggplus_mod``) builds, for the
client's own seed and for each of its ``k`` neighbours, the full list of mask arrays
(``pseudo_rand_gen``) and then a new list of sums (``parameters_addition``): 2(k + 1) fresh
copies of the model as int64 arrays per round, each written once and read once. That memory
traffic cost more than the mask cipher itself.

What: the same stage, step for step: the same checks and decryption of the neighbours'
shares, the same quantization (Flower's own functions, read from Flower's module at call
time), the same key agreement (Flower's ``generate_shared_key`` on the first key pair),
the same masks (:func:`shared.fl.secure_prg.add_mask_into`: the keystream of
:func:`~shared.fl.secure_prg.secure_pseudo_rand_gen`), the same sign rule (added when this
node's id is the larger) and the same reduction. The update is flattened into one uint64
vector and every mask is added to it in place, modulo 2**64; for SecAgg+'s power-of-two
``modulus_range`` that equals Flower's int64 sums taken ``& (modulus_range - 1)``, so the
masked vectors sent are byte for byte Flower's. A modulus that is not a power of two
(Flower's server refuses one) runs Flower's own function.

:func:`shared.fl.secure_prg.secure_mask_generator` installs :func:`collect_masked_vectors`
in place of Flower's with the rest of fedfleet's SecAgg+ layer.
"""

from __future__ import annotations

import importlib
from logging import WARNING
from typing import Any, cast

import numpy as np
from flwr.app.typing import ConfigRecordValues
from flwr.common import Parameters
from flwr.common.secure_aggregation.secaggplus_constants import Key
from numpy.typing import NDArray

from shared.fl.secagg_shares import open_neighbour_shares
from shared.fl.secure_prg import CLIENT_MODULE, add_mask_into

__all__ = ["FLOWER_COLLECT_MASKED_VECTORS", "collect_masked_vectors"]

_flower = importlib.import_module(CLIENT_MODULE)
#: Flower's own stage (read before anything swaps it): the path for other moduli.
FLOWER_COLLECT_MASKED_VECTORS = _flower._collect_masked_vectors


def _store_neighbour_shares(state: Any, configs: Any) -> list[int]:
    """Decrypt the neighbours' shares into ``state``; the ids that sent one (Flower's checks)."""
    available, seed_shares, key_shares = open_neighbour_shares(
        state.nid, state.threshold, state.ss2_dict, configs
    )
    state.rd_seed_share_dict.update(seed_shares)
    state.sk1_share_dict.update(key_shares)
    return available


def _quantized_update(state: Any, num_examples: int, parameters: Parameters) -> list[NDArray]:
    """The weighted, quantized update with its weight in front (Flower's functions)."""
    ratio = num_examples / state.max_weight
    if ratio > 1:
        _flower.log(
            WARNING,
            "Potential overflow warning: the provided weight (%s) exceeds the specified"
            " max_weight (%s). This may lead to overflow issues.",
            num_examples,
            state.max_weight,
        )
    q_ratio = round(ratio * state.target_range)
    weighted = _flower.parameters_multiply(
        _flower.parameters_to_ndarrays(parameters), q_ratio / state.target_range
    )
    quantized = _flower.quantize(weighted, state.clipping_range, state.target_range)
    return cast(list[NDArray], _flower.factor_combine(q_ratio, quantized))


def collect_masked_vectors(
    state: Any, configs: Any, num_examples: int, updated_parameters: Parameters
) -> dict[str, ConfigRecordValues]:
    """Drop-in for Flower's ``_collect_masked_vectors`` (same arguments, same reply)."""
    modulus = int(state.mod_range)
    if modulus & (modulus - 1):
        return cast(
            dict[str, ConfigRecordValues],
            FLOWER_COLLECT_MASKED_VECTORS(state, configs, num_examples, updated_parameters),
        )
    available = _store_neighbour_shares(state, configs)
    arrays = _quantized_update(state, num_examples, updated_parameters)
    total = np.concatenate([np.ravel(a) for a in arrays]).astype(np.int64, copy=False)
    masked = total.view(np.uint64)
    add_mask_into(masked, state.rd_seed, modulus)  # the private mask
    own_key = _flower.bytes_to_private_key(state.sk1)
    for node_id in available:  # the pairwise masks
        seed = _flower.generate_shared_key(
            own_key, _flower.bytes_to_public_key(state.public_keys_dict[node_id][0])
        )
        add_mask_into(masked, seed, modulus, subtract=not state.nid > node_id)
    np.bitwise_and(masked, np.uint64(modulus - 1), out=masked)
    vectors, start = [], 0
    for array in arrays:
        vectors.append(total[start : start + array.size].reshape(array.shape))
        start += array.size
    return {Key.MASKED_PARAMETERS: [_flower.ndarray_to_bytes(v) for v in vectors]}
