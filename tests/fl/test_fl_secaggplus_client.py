"""fedfleet's SecAgg+ client speaks Flower's protocol: same bytes where Flower's are fixed,
exact aggregates with Flower's server workflow, next to Flower's own client, with dropouts,
and with its state read back from the context alone (a new process per message)."""

from __future__ import annotations

import copy
import importlib
import os
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated
from shared.fl import client as client_module
from shared.fl import secagg_client_state
from shared.fl.config_keys import NodeConfigKey
from shared.fl.mods import DropoutSchedule, hardened_secaggplus_mod
from shared.fl.secagg_client_state import STATE_RECORD, ClientRound, load_round, save_round
from shared.fl.secagg_masking import FLOWER_COLLECT_MASKED_VECTORS
from shared.fl.secaggplus_client import _collect_masked_vectors
from shared.fl.secure_prg import CLIENT_MODULE, secure_mask_generator

flower_client_module = importlib.import_module(CLIENT_MODULE)
arithmetic = importlib.import_module("flwr.common.secure_aggregation.ndarrays_arithmetic")
server_module = importlib.import_module(
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
)


# -- the masking stage: byte for byte Flower's ---------------------------------------------
def _keys() -> dict[str, Any]:
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    return {"sk1": sk1, "pk1": pk1, "sk2": sk2, "pk2": pk2}


def _states_after_share_keys(nid: int, neighbours: list[int], mod_range: int) -> tuple[Any, ...]:
    """Flower's state, ours with the same content, and the collect-stage configs."""
    keys = {node: _keys() for node in [nid, *neighbours]}
    pem = {n: (public_key_to_bytes(k["pk1"]), public_key_to_bytes(k["pk2"])) for n, k in keys.items()}  # fmt: skip
    own = keys[nid]
    fields: dict[str, Any] = dict(
        nid=nid, sample_num=len(neighbours) + 1, share_num=len(neighbours) + 1, threshold=2,
        clipping_range=8.0, target_range=1 << 22, mod_range=mod_range, max_weight=10_000.0,
        sk1=private_key_to_bytes(own["sk1"]), pk1=pem[nid][0],
        sk2=private_key_to_bytes(own["sk2"]), pk2=pem[nid][1], rd_seed=os.urandom(32),
    )  # fmt: skip
    ss2 = {j: generate_shared_key(own["sk2"], keys[j]["pk2"]) for j in neighbours}
    flowers = flower_client_module.SecAggPlusState(
        **fields, rd_seed_share_dict={}, sk1_share_dict={}, ss2_dict=ss2,
        public_keys_dict=dict(pem),
    )  # fmt: skip
    ours = ClientRound(stage=Stage.COLLECT_MASKED_VECTORS, **fields, ss2=ss2, public_keys=dict(pem))
    ciphertexts = [
        encrypt(ss2[j], share_keys_plaintext_concat(j, nid, os.urandom(52), os.urandom(324)))
        for j in neighbours
    ]
    return flowers, ours, {Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: list(neighbours)}


def _update(mixed: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    shapes = ((16, 1, 3, 3), (16,), (10, 64), (), (10,))
    arrays = [rng.normal(0, 2, shape).astype(np.float32) for shape in shapes]
    if mixed:  # arrays of another dtype: quantized array by array
        arrays[1] = arrays[1].astype(np.float64)
    return arrays


@pytest.mark.parametrize(("mod_range", "mixed"), [(1 << 32, False), (1 << 24, True), (10**6 + 3, False)])  # fmt: skip
def test_masked_vectors_are_byte_for_byte_flowers(mod_range: int, mixed: bool) -> None:
    # neighbours on both sides of the client's id: masks added and subtracted
    flowers, ours, configs = _states_after_share_keys(50, [7, 31, 64, 90], mod_range)
    arrays = _update(mixed)
    fitted = compat.fitres_to_recorddict(
        FitRes(Status(code=Code.OK, message=""), ndarrays_to_parameters(arrays), 42, {}), False
    )
    np.random.seed(3)  # Flower's stochastic rounding draws from numpy's global generator
    with secure_mask_generator():
        expected = FLOWER_COLLECT_MASKED_VECTORS(
            flowers, copy.deepcopy(configs), 42, ndarrays_to_parameters(arrays)
        )
    np.random.seed(3)
    got = _collect_masked_vectors(ours, copy.deepcopy(configs), fitted)
    assert got[Key.MASKED_PARAMETERS] == expected[Key.MASKED_PARAMETERS]
    assert ours.rd_seed_shares == flowers.rd_seed_share_dict
    assert ours.sk1_shares == flowers.sk1_share_dict
    assert ours.sk1 == ours.rd_seed == b"" and not ours.ss2  # secrets dropped after use


# -- the round state -----------------------------------------------------------------------
def test_round_state_is_one_bytes_record_that_reads_back_without_the_process() -> None:
    _, ours, _ = _states_after_share_keys(3, [1, 8], 1 << 32)
    ours.rd_seed_shares, ours.sk1_shares = {1: b"a" * 52, 3: b"b" * 52}, {8: b"c" * 324}
    state = RecordDict()
    save_round(state, ours)
    assert list(state.config_records) == [STATE_RECORD]
    assert [type(v) for v in state.config_records[STATE_RECORD].values()] == [bytes]
    copied = RecordDict()  # what a new ClientApp process receives: the record, no objects
    copied.config_records[STATE_RECORD] = copy.deepcopy(state.config_records[STATE_RECORD])
    secagg_client_state._kept.clear()
    back = load_round(copied)
    assert back is not ours
    assert {k: v for k, v in vars(back).items() if k != "parsed"} == {
        k: v for k, v in vars(ours).items() if k != "parsed"
    }
    assert list(back.public_keys) == list(ours.public_keys)  # the order the shares follow


def test_an_object_is_handed_out_once() -> None:
    state = RecordDict()
    ours = ClientRound(stage=Stage.SETUP, nid=4, threshold=2)
    save_round(state, ours)
    assert load_round(state) is ours
    again = load_round(state)  # e.g. the stage that took it failed: the record is read back
    assert again is not ours and again.nid == 4 and again.threshold == 2


def test_unknown_or_damaged_state_is_refused() -> None:
    state = RecordDict()
    save_round(state, ClientRound(nid=9))
    blob = cast(bytes, state.config_records[STATE_RECORD]["round"])
    secagg_client_state._kept.clear()
    for damaged in (b"something else" + bytes(40), blob[:-1], blob + b"\x00"):
        state.config_records[STATE_RECORD]["round"] = damaged
        with pytest.raises(ValueError, match="round state"):
            load_round(state)


def test_no_state_starts_a_fresh_round() -> None:
    assert load_round(RecordDict()) == ClientRound()


# -- whole rounds against Flower's server workflow -----------------------------------------
def _config(**changes: object) -> FederatedRunConfig:
    base: dict[str, Any] = dict(
        model_name="sensor-mlp", num_clients=5, num_rounds=1, local_epochs=1, batch_size=16,
        engine="inprocess", secagg=SecAggConfig(num_shares=1.0, reconstruction_threshold=3),
    )  # fmt: skip
    base.update(changes)
    return FederatedRunConfig(**base)


def flowers_client(message: Message, context: Context, call_next: Any) -> Message:
    """Flower's own ``secaggplus_mod`` (with the generator the hub unmasks with)."""
    with secure_mask_generator():
        return secaggplus_mod(message, context, call_next)  # type: ignore[no-any-return]


class _Sums:
    """The clients' quantized updates and the hub's unmasked sum, as Flower hands them on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clients: list[list[np.ndarray]] = []
        self.server: list[list[np.ndarray]] = []
        combine, extract = arithmetic.factor_combine, server_module.factor_extract

        def spy_combine(factor, parameters):  # type: ignore[no-untyped-def]
            out = combine(factor, parameters)
            self.clients.append([np.array(a, dtype=np.int64) for a in out])
            return out

        def spy_extract(parameters):  # type: ignore[no-untyped-def]
            self.server.append([np.array(a, dtype=np.int64) for a in parameters])
            return extract(parameters)

        monkeypatch.setattr(arithmetic, "factor_combine", spy_combine)  # fedfleet's client
        monkeypatch.setattr(flower_client_module, "factor_combine", spy_combine)  # Flower's
        monkeypatch.setattr(server_module, "factor_extract", spy_extract)

    def assert_exact(self, clients: int, modulus: int = 1 << 32) -> None:
        assert len(self.clients) == clients and len(self.server) == 1
        expected = [sum(v) % modulus for v in zip(*self.clients, strict=True)]
        for got, want in zip(self.server[0], expected, strict=True):
            np.testing.assert_array_equal(got, want)


def _mixed_cohort(monkeypatch: pytest.MonkeyPatch, flower_partitions: tuple[int, ...]) -> None:
    def build(spec: client_module.ClientAppSpec) -> ClientApp:
        def secagg(message: Message, context: Context, call_next: Any) -> Message:
            if context.node_config[NodeConfigKey.PARTITION_ID] in flower_partitions:
                return flowers_client(message, context, call_next)
            return hardened_secaggplus_mod(message, context, call_next)

        mods: list[Mod] = [secagg] if spec.dropout is None else [spec.dropout.mod, secagg]
        return ClientApp(client_fn=spec.client_fn, mods=mods)

    monkeypatch.setattr(client_module, "build_client_app", build)


@pytest.mark.parametrize("dropped", [(), (0, 3)])
def test_next_to_flowers_client_the_aggregate_is_exact(
    monkeypatch: pytest.MonkeyPatch, sensor_cohort: Any, dropped: tuple[int, ...]
) -> None:
    # Partitions 1 and 3 run Flower's client: shares, ciphertexts and keys cross both ways,
    # and with dropouts the hub reconstructs a fedfleet client's and a Flower client's key.
    sums = _Sums(monkeypatch)
    _mixed_cohort(monkeypatch, flower_partitions=(1, 3))
    dropout = DropoutSchedule(partitions=dropped) if dropped else None
    result = run_federated(_config(), *sensor_cohort, dropout=dropout)
    assert result.rounds[-1].status == "ok" and result.rounds[-1].clients == 5 - len(dropped)
    sums.assert_exact(5 - len(dropped))


@pytest.mark.parametrize("dropped", [(), (1, 4)])
def test_state_read_back_from_the_context_alone_gives_the_same_rounds(
    monkeypatch: pytest.MonkeyPatch, sensor_cohort: Any, dropped: tuple[int, ...]
) -> None:
    # No object kept between stages: every stage parses the record (a process per message).
    monkeypatch.setattr(secagg_client_state, "_MAX_KEPT", 0)
    sums = _Sums(monkeypatch)
    dropout = DropoutSchedule(partitions=dropped) if dropped else None
    result = run_federated(_config(num_rounds=2), *sensor_cohort, dropout=dropout)
    assert [r.status for r in result.rounds] == ["ok", "ok", "ok"]
    assert not secagg_client_state._kept
    assert len(sums.server) == 2
    sums.server = sums.server[1:]
    sums.clients = sums.clients[5 - len(dropped) :]
    sums.assert_exact(5 - len(dropped))


def test_a_client_state_left_by_a_broken_round_restarts_at_setup(
    monkeypatch: pytest.MonkeyPatch, sensor_cohort: Any
) -> None:
    # Round 1 breaks after the key exchange for everyone below the threshold; round 2 starts
    # from the setup stage on the same contexts and completes exactly.
    sums = _Sums(monkeypatch)
    dropout = DropoutSchedule(partitions=(0, 1, 2), stage="collect_masked_vectors", rounds=(1,))
    result = run_federated(
        _config(num_rounds=2, on_round_failure="skip"), *sensor_cohort, dropout=dropout
    )
    assert [r.status for r in result.rounds] == ["ok", "failed", "ok"]
    sums.server = sums.server[-1:]
    sums.clients = sums.clients[-5:]
    sums.assert_exact(5)
