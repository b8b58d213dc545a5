"""fedfleet's SecAgg+ client: Flower 1.41's client protocol, its messages, less of its overhead.

Why: beyond the protocol's own work (two P-384 key agreements per neighbour, one mask per
neighbour), Flower's ``secaggplus_mod`` spends a device's time on bookkeeping: its round state
is rebuilt as a type-checked ``ConfigRecord`` and parsed back at every stage, private keys are
re-read from PEM for each neighbour, Shamir sharing runs PyCryptodome per 16-byte chunk, and
the masking stage makes fresh copies of the model for every mask and every sum.

What: :func:`secaggplus_client_mod` runs the same four stages on the same messages (stage
names, record keys, checks: Flower's own ``check_stage``/``check_configs``), with the same
cryptography and data formats (Flower's own functions where they cost nothing extra): P-384
key pairs as PEM, ECDH + HKDF-SHA256 shared keys, Fernet-sealed share messages in Flower's
plaintext layout, Shamir shares in Flower's layout (:mod:`shared.fl.shamir`), Flower's
weighting, stochastic quantization and factor, masks from :mod:`shared.fl.secure_prg` (the
generator the hub's workflow unmasks with), the same sign rule and reduction, arrays in
Flower's ``.npy`` bytes. Flower's server workflow therefore aggregates its replies unchanged,
next to Flower's own client (the tests mix both). The differences are in how the work is
done: state kept as Python objects between stages and saved as one bytes record
(:mod:`shared.fl.secagg_client_state`), keys parsed once, both secrets shared in one Shamir
pass, the update quantized as one vector and every mask added into it in place. Secrets are
dropped as soon as no later stage needs them.
"""

from __future__ import annotations

import os
from logging import WARNING
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.app.typing import ConfigRecordValues
from flwr.client.mod.secure_aggregation.secaggplus_mod import check_configs, check_stage
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation import ndarrays_arithmetic, quantization
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore import log
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from numpy.typing import NDArray

from shared.fl import npy_codec, shamir
from shared.fl.secagg_client_state import ClientRound, load_round, save_round
from shared.fl.secagg_keys import bytes_to_public_key
from shared.fl.secagg_shares import open_neighbour_shares
from shared.fl.secure_prg import MASK_GENERATOR, add_mask_into, secure_pseudo_rand_gen

__all__ = ["MASKED_WITH", "secaggplus_client_mod"]

#: The mask generator this client masks with (reported to the hub with the masked vector).
MASKED_WITH = MASK_GENERATOR
_SEED_BYTES = 32


def secaggplus_client_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """A Flower ``Mod`` speaking Flower's SecAgg+ client protocol (see the module doc)."""
    if message.metadata.message_type != MessageType.TRAIN:
        return call_next(message, context)
    client_round = load_round(context.state)
    configs = message.content.config_records[RECORD_KEY_CONFIGS]
    check_stage(client_round.stage, configs)
    stage = cast(str, configs.pop(Key.STAGE))
    check_configs(stage, configs)
    content = RecordDict()
    if stage == Stage.SETUP:
        client_round = ClientRound(stage=stage, nid=message.metadata.dst_node_id)
        reply = _setup(client_round, configs)
    elif stage == Stage.SHARE_KEYS:
        client_round.stage = stage
        reply = _share_keys(client_round, configs)
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        client_round.stage = stage
        fitted = call_next(message, context)
        if fitted.has_error():
            return fitted
        content = fitted.content
        reply = _collect_masked_vectors(client_round, configs, content)
        for array_record in content.array_records.values():
            array_record.clear()
    else:  # Stage.UNMASK (check_stage admits nothing else)
        client_round.stage = stage
        reply = _unmask(client_round, configs)
    save_round(context.state, client_round)
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(reply, False)
    return Message(content, reply_to=message)


def _setup(r: ClientRound, configs: ConfigRecord) -> dict[str, ConfigRecordValues]:
    r.sample_num = cast(int, configs[Key.SAMPLE_NUMBER])
    r.share_num = cast(int, configs[Key.SHARE_NUMBER])
    r.threshold = cast(int, configs[Key.THRESHOLD])
    r.clipping_range = cast(float, configs[Key.CLIPPING_RANGE])
    r.target_range = cast(int, configs[Key.TARGET_RANGE])
    r.mod_range = cast(int, configs[Key.MOD_RANGE])
    r.max_weight = cast(float, configs[Key.MAX_WEIGHT])
    # One pair for the pairwise masks, one to seal the shares sent to the neighbours.
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    r.sk1, r.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
    r.sk2, r.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
    r.parsed = {r.sk1: sk1, r.sk2: sk2}
    return {Key.PUBLIC_KEY_1: r.pk1, Key.PUBLIC_KEY_2: r.pk2}


def _share_keys(r: ClientRound, configs: ConfigRecord) -> dict[str, ConfigRecordValues]:
    pairs = cast(dict[str, tuple[bytes, bytes]], configs)
    r.public_keys = {int(node): (pk1, pk2) for node, (pk1, pk2) in pairs.items()}
    if len(r.public_keys) < r.threshold:
        raise ValueError("Available neighbours number smaller than threshold")
    keys = [key for pair in r.public_keys.values() for key in pair]
    if len(set(keys)) != len(keys):
        raise ValueError("Some public keys are identical")
    if r.public_keys[r.nid] != (r.pk1, r.pk2):
        raise ValueError("Own public keys are displayed in dict incorrectly, should not happen!")
    r.rd_seed = os.urandom(_SEED_BYTES)
    seed_shares, key_shares = shamir.create_shares_of([r.rd_seed, r.sk1], r.threshold, r.share_num)
    own_key = r.private_key(r.sk2)
    destinations, ciphertexts = [], []
    for idx, (node, (_, pk2)) in enumerate(r.public_keys.items()):
        if node == r.nid:
            r.rd_seed_shares[node], r.sk1_shares[node] = seed_shares[idx], key_shares[idx]
            continue
        key = generate_shared_key(own_key, bytes_to_public_key(pk2))
        r.ss2[node] = key
        plaintext = share_keys_plaintext_concat(r.nid, node, seed_shares[idx], key_shares[idx])
        ciphertexts.append(encrypt(key, plaintext))
        destinations.append(node)
    r.parsed.pop(r.sk2, None)
    r.sk2 = b""  # only this stage seals with it
    return {Key.DESTINATION_LIST: destinations, Key.CIPHERTEXT_LIST: ciphertexts}


def _open_neighbour_shares(r: ClientRound, configs: ConfigRecord) -> list[int]:
    """Decrypt the neighbours' shares into ``r``; the ids that sent one (Flower's checks)."""
    available, seed_shares, key_shares = open_neighbour_shares(r.nid, r.threshold, r.ss2, configs)
    r.rd_seed_shares.update(seed_shares)
    r.sk1_shares.update(key_shares)
    return available


def _collect_masked_vectors(
    r: ClientRound, configs: ConfigRecord, fitted: RecordDict
) -> dict[str, ConfigRecordValues]:
    available = _open_neighbour_shares(r, configs)
    fit_res = compat.recorddict_to_fitres(fitted, keep_input=True)
    arrays = quantized_update(
        r, fit_res.num_examples, npy_codec.parameters_to_ndarrays(fit_res.parameters)
    )
    own_key = r.private_key(r.sk1)
    seeds = [(r.rd_seed, True)] + [
        (generate_shared_key(own_key, bytes_to_public_key(r.public_keys[node][0])), r.nid > node)
        for node in available
    ]
    masked = masked_vectors(arrays, seeds, r.mod_range)
    # Nothing later needs the round's key material: only the shares stay for unmasking.
    r.parsed.clear()
    r.sk1 = r.rd_seed = b""
    r.ss2, r.public_keys = {}, {}
    return {Key.MASKED_PARAMETERS: [npy_codec.ndarray_to_bytes(v) for v in masked]}


def quantized_update(r: ClientRound, num_examples: int, arrays: list[NDArray]) -> list[NDArray]:
    """Flower's weighted, quantized update with its weight factor in front.

    The same functions as Flower's stage, applied to the update as one vector when its arrays
    share a dtype (elementwise, so the same values; the stochastic rounding draws the same
    numbers from numpy's global generator in the same order)."""
    ratio = num_examples / r.max_weight
    if ratio > 1:
        log(
            WARNING,
            "Potential overflow warning: the provided weight (%s) exceeds the specified"
            " max_weight (%s). This may lead to overflow issues.",
            num_examples,
            r.max_weight,
        )
    q_ratio = round(ratio * r.target_range)
    dq_ratio = q_ratio / r.target_range
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) == 1 and np.issubdtype(dtypes.pop(), np.floating):
        flat = np.concatenate([np.ravel(a) for a in arrays]) * dq_ratio
        quantized = _quantize_in_place(flat, r.clipping_range, r.target_range)
        quantized_arrays = _split(quantized, [a.shape for a in arrays])
    else:
        weighted = ndarrays_arithmetic.parameters_multiply(arrays, dq_ratio)
        quantized_arrays = quantization.quantize(weighted, r.clipping_range, r.target_range)
    return cast(list[NDArray], ndarrays_arithmetic.factor_combine(q_ratio, quantized_arrays))


def _quantize_in_place(values: NDArray, clipping_range: float, target_range: int) -> NDArray:
    """Flower's ``quantize`` of one float vector (overwritten), without its temporaries.

    Step for step Flower's arithmetic in the same dtypes: clip, shift and scale in the
    vector's float type, round up, then round down where a uniform draw from numpy's global
    generator falls below the rounding gap (taken in float64, as int32 minus float is)."""
    quantizer = target_range / (2 * clipping_range)
    np.clip(values, -clipping_range, clipping_range, out=values)
    values += clipping_range
    values *= quantizer
    rounded_up = np.ceil(values)
    quantized = rounded_up.astype(np.int32)
    draws = np.random.rand(values.size)
    np.subtract(
        quantized,
        np.less(draws, np.subtract(rounded_up, values, dtype=np.float64)),
        out=quantized,
        casting="unsafe",
    )
    return quantized


def masked_vectors(
    arrays: list[NDArray], seeds: list[tuple[bytes, bool]], modulus: int
) -> list[NDArray[np.int64]]:
    """``arrays`` plus (``True``) or minus each seed's mask, modulo ``modulus`` (int64 arrays)."""
    total = np.concatenate([np.ravel(a) for a in arrays]).astype(np.int64)
    if modulus & (modulus - 1) == 0:  # SecAgg+'s ranges: every mask summed in place
        wrapped = total.view(np.uint64)
        for seed, add in seeds:
            add_mask_into(wrapped, seed, modulus, subtract=not add)
        np.bitwise_and(wrapped, np.uint64(modulus - 1), out=wrapped)
    else:  # masks drawn array by array, as the generator's vectors fix for such ranges
        shapes = [a.shape for a in arrays]
        for seed, add in seeds:
            mask = np.concatenate(
                [m.ravel() for m in secure_pseudo_rand_gen(seed, modulus, shapes)]
            )
            total = (total + mask if add else total - mask) % modulus
    return _split(total, [a.shape for a in arrays])


def _split(flat: NDArray, shapes: list[tuple[int, ...]]) -> list[NDArray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def _unmask(r: ClientRound, configs: ConfigRecord) -> dict[str, ConfigRecordValues]:
    active = cast(list[int], configs[Key.ACTIVE_NODE_ID_LIST])
    dead = cast(list[int], configs[Key.DEAD_NODE_ID_LIST])
    if len(active) < r.threshold:
        raise ValueError("Available neighbours number smaller than threshold")
    # The mask-seed share of every client still in, the key share of every client gone.
    shares = [r.rd_seed_shares[node] for node in active] + [r.sk1_shares[node] for node in dead]
    r.rd_seed_shares, r.sk1_shares = {}, {}  # the round is over
    return {Key.NODE_ID_LIST: active + dead, Key.SHARE_LIST: shares}
