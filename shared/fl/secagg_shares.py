"""Opening the SecAgg+ shares a client's neighbours sealed for it, with Flower's checks.

One function for both client paths: fedfleet's own client protocol
(:mod:`shared.fl.secaggplus_client`) and the masking stage it swaps into Flower's own
``secaggplus_mod`` (:mod:`shared.fl.secagg_masking`). It imports nothing from ``shared.fl``, so
either may use it without an import cycle through :mod:`shared.fl.secure_prg`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate

__all__ = ["NeighbourShares", "open_neighbour_shares"]

#: The ids that sent a share, and per sender the seed share and the secret-key share.
NeighbourShares = tuple[list[int], dict[int, bytes], dict[int, bytes]]


def open_neighbour_shares(
    nid: int, threshold: int, shared_keys: Mapping[int, bytes], configs: Any
) -> NeighbourShares:
    """Decrypt each neighbour's ciphertext in ``configs`` with the key shared with it; refuse
    too few neighbours, a ciphertext from another sender and one meant for another node."""
    ciphertexts = cast(list[bytes], configs[Key.CIPHERTEXT_LIST])
    sources = cast(list[int], configs[Key.SOURCE_LIST])
    if len(ciphertexts) + 1 < threshold:
        raise ValueError("Not enough available neighbour clients.")
    available: list[int] = []
    seed_shares: dict[int, bytes] = {}
    key_shares: dict[int, bytes] = {}
    for source, ciphertext in zip(sources, ciphertexts, strict=True):
        plaintext = decrypt(shared_keys[source], ciphertext)
        actual_source, destination, seed_share, key_share = share_keys_plaintext_separate(plaintext)
        available.append(source)
        if source != actual_source:
            raise ValueError(
                f"Node {nid}: received ciphertext from {actual_source} instead of {source}."
            )
        if destination != nid:
            raise ValueError(
                f"Node {nid}: received an encrypted message"
                f"for Node {destination} from Node {source}."
            )
        seed_shares[source] = seed_share
        key_shares[source] = key_share
    return available, seed_shares, key_shares
