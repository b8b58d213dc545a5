"""A SecAgg+ client's round state between stages: one bytes record, parsed only when needed.

Why: Flower 1.41's ``secaggplus_mod`` keeps its round state in ``context.state`` as a
``ConfigRecord`` of some twenty entries (every key, share and shared secret, dicts split into
key and value lists), rebuilt and type-checked entry by entry after every stage and parsed
back before the next, with the private keys re-read from PEM wherever they are used.

What: :class:`ClientRound` holds the same state as Python objects (parsed private keys
included). After each stage it is written to ``context.state`` as one bytes value
(:func:`save_round`: a version tag, a fresh random token, then length-prefixed fields), so a
ClientApp that runs in a new process per message (Flower's Deployment Engine) finds it there.
Within one process the object itself is also kept under its token: the next stage of the same
client (the in-process engine, a SuperNode running its ClientApp in its own process) takes it
back without parsing anything (:func:`load_round`). An object is handed out once: a stage that
fails part-way leaves no half-updated object behind, and the next message parses the record
of the last completed stage, as Flower's mod falls back to its last saved state.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from shared.fl import secagg_keys

__all__ = ["STATE_RECORD", "ClientRound", "load_round", "save_round"]

#: The ``context.state`` config record holding the round state (one bytes entry).
STATE_RECORD = "fedfleet.secaggplus_state"
_ENTRY = "round"
_VERSION = b"fedfleet-secagg+/1"
_TOKEN_BYTES = 16
_SCALARS = struct.Struct("<BQqqqdqqd")
_LENGTH = struct.Struct("<I")
_ENTRY_HEAD = struct.Struct("<QI")
_MAX_KEPT = 4096  # rounds kept as objects in this process (a bound, not a tuning knob)


@dataclass
class ClientRound:
    """One client's SecAgg+ state (Flower's ``SecAggPlusState``, same fields and meaning)."""

    stage: str = Stage.UNMASK
    nid: int = 0
    sample_num: int = 0
    share_num: int = 0
    threshold: int = 0
    clipping_range: float = 0.0
    target_range: int = 0
    mod_range: int = 0
    max_weight: float = 0.0
    sk1: bytes = b""  # PEM (PKCS#8): what its Shamir shares reconstruct on the hub
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    rd_seed: bytes = b""
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    ss2: dict[int, bytes] = field(default_factory=dict)
    rd_seed_shares: dict[int, bytes] = field(default_factory=dict)
    sk1_shares: dict[int, bytes] = field(default_factory=dict)
    parsed: dict[bytes, ec.EllipticCurvePrivateKey] = field(default_factory=dict, repr=False)

    def private_key(self, pem: bytes) -> ec.EllipticCurvePrivateKey:
        """``sk1`` or ``sk2`` as a key object (parsed once per process)."""
        key = self.parsed.get(pem)
        if key is None:
            key = secagg_keys.load_private_key(pem)
            self.parsed[pem] = key
        return key


_lock = threading.Lock()
_kept: OrderedDict[bytes, ClientRound] = OrderedDict()


def save_round(state: RecordDict, client_round: ClientRound) -> None:
    """Write ``client_round`` into ``state`` and keep the object for this process's next stage."""
    token = os.urandom(_TOKEN_BYTES)
    state.config_records[STATE_RECORD] = ConfigRecord({_ENTRY: _encode(token, client_round)})
    with _lock:
        _kept[token] = client_round
        while len(_kept) > _MAX_KEPT:
            _kept.popitem(last=False)


def load_round(state: RecordDict) -> ClientRound:
    """The round state saved last in ``state`` (a fresh one when there is none)."""
    record = state.config_records.get(STATE_RECORD)
    blob = record.get(_ENTRY) if record is not None else None
    if not isinstance(blob, bytes):
        return ClientRound()
    token = blob[len(_VERSION) : len(_VERSION) + _TOKEN_BYTES]
    with _lock:
        kept = _kept.pop(token, None)
    return kept if kept is not None else _decode(blob)


# -- the record's layout ---------------------------------------------------------------------
def _encode(token: bytes, r: ClientRound) -> bytes:
    parts = [_VERSION, token]
    scalars = (r.nid, r.sample_num, r.share_num, r.threshold, r.clipping_range)
    stage = Stage.all().index(r.stage)
    parts.append(_SCALARS.pack(stage, *scalars, r.target_range, r.mod_range, r.max_weight))
    for value in (r.sk1, r.pk1, r.sk2, r.pk2, r.rd_seed):
        parts += (_LENGTH.pack(len(value)), value)
    pairs = {nid: pk1 + pk2 for nid, (pk1, pk2) in r.public_keys.items()}
    splits = {nid: len(pk1) for nid, (pk1, _) in r.public_keys.items()}
    parts += _encode_map(pairs) + _encode_map({n: _LENGTH.pack(s) for n, s in splits.items()})
    for mapping in (r.ss2, r.rd_seed_shares, r.sk1_shares):
        parts += _encode_map(mapping)
    return b"".join(parts)


def _encode_map(mapping: dict[int, bytes]) -> list[bytes]:
    parts = [_LENGTH.pack(len(mapping))]
    for nid, value in mapping.items():
        parts += (_ENTRY_HEAD.pack(nid, len(value)), value)
    return parts


class _Reader:
    def __init__(self, blob: bytes) -> None:
        if not blob.startswith(_VERSION):
            raise ValueError("the SecAgg+ round state in the context has an unknown layout")
        self.blob, self.at = blob, len(_VERSION) + _TOKEN_BYTES

    def unpack(self, layout: struct.Struct) -> tuple[int | float, ...]:
        try:
            values = layout.unpack_from(self.blob, self.at)
        except struct.error:
            raise ValueError("the SecAgg+ round state in the context is truncated") from None
        self.at += layout.size
        return values

    def take(self, size: int) -> bytes:
        value = self.blob[self.at : self.at + size]
        if len(value) != size:
            raise ValueError("the SecAgg+ round state in the context is truncated")
        self.at += size
        return value

    def value(self) -> bytes:
        return self.take(int(self.unpack(_LENGTH)[0]))

    def mapping(self) -> dict[int, bytes]:
        out = {}
        for _ in range(int(self.unpack(_LENGTH)[0])):
            nid, size = self.unpack(_ENTRY_HEAD)
            out[int(nid)] = self.take(int(size))
        return out


def _decode(blob: bytes) -> ClientRound:
    reader = _Reader(blob)
    stage, nid, sample, shares, threshold, clip, target, mod, weight = reader.unpack(_SCALARS)
    r = ClientRound(
        stage=Stage.all()[int(stage)], nid=int(nid), sample_num=int(sample),
        share_num=int(shares), threshold=int(threshold), clipping_range=float(clip),
        target_range=int(target), mod_range=int(mod), max_weight=float(weight),
    )  # fmt: skip
    r.sk1, r.pk1, r.sk2, r.pk2, r.rd_seed = (reader.value() for _ in range(5))
    pairs, splits = reader.mapping(), reader.mapping()
    for node, pair in pairs.items():
        split = int(_LENGTH.unpack(splits[node])[0])
        r.public_keys[node] = (pair[:split], pair[split:])
    r.ss2, r.rd_seed_shares, r.sk1_shares = reader.mapping(), reader.mapping(), reader.mapping()
    if reader.at != len(blob):
        raise ValueError("the SecAgg+ round state in the context has trailing bytes")
    return r
