"""Opening the shares neighbours sealed for a client (shared.fl.secagg_shares): Flower's
ciphertexts open to the shares they carry, and each of Flower's refusals holds."""

from __future__ import annotations

import base64
import os

import pytest
from flwr.app import ConfigRecord
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat

from shared.fl.secagg_shares import open_neighbour_shares

ME = 7
KEYS = {src: base64.urlsafe_b64encode(os.urandom(32)) for src in (1, 2, 3)}


def _sealed(entries: list[tuple[int, int, int]]) -> ConfigRecord:
    """(key of, claimed source, destination) per ciphertext."""
    ciphertexts = [
        encrypt(KEYS[key_of], share_keys_plaintext_concat(src, dst, b"seed%d" % src, b"sk%d" % src))
        for key_of, src, dst in entries
    ]
    return ConfigRecord(
        {Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: [key_of for key_of, _, _ in entries]}
    )


def test_each_neighbours_shares_open_with_the_key_shared_with_it() -> None:
    available, seeds, keys = open_neighbour_shares(
        ME, 3, KEYS, _sealed([(1, 1, ME), (2, 2, ME), (3, 3, ME)])
    )
    assert available == [1, 2, 3]
    assert seeds == {1: b"seed1", 2: b"seed2", 3: b"seed3"}
    assert keys == {1: b"sk1", 2: b"sk2", 3: b"sk3"}


@pytest.mark.parametrize(
    ("entries", "threshold", "refusal"),
    [
        ([(1, 1, ME)], 3, "Not enough available neighbour clients"),
        ([(1, 1, ME), (2, 3, ME)], 2, "received ciphertext from 3 instead of 2"),
        ([(1, 1, ME), (2, 2, 9)], 2, "for Node 9 from Node 2"),
    ],
)
def test_flowers_refusals(
    entries: list[tuple[int, int, int]], threshold: int, refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        open_neighbour_shares(ME, threshold, KEYS, _sealed(entries))
