"""Training runs that cannot silently go wrong (in-process grid, real Flower SecAgg+):

- the run config names the mask generator; a fedfleet client that cannot run it refuses;
- a client that masks with Flower's own generator (what a stock Flower client with
  ``secaggplus_mod`` does) makes the unmasked aggregate fail the hub's sanity check: the run
  fails, the previous model is kept and no candidate is stored;
- a round below its minimum of results fails; a run without a successful round stores
  nothing, whatever the failure policy;
- SecAgg+ has one switch (the hub's training config), which the run config only carries;
- the lineage records the generator that ran and the ones the clients reported.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.quantization import quantize

from cloud_hub.errors import HubConfigError, TrainingError
from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.fl.superlink_app import check_client_switches
from cloud_hub.fl.workflow import (
    AggregateSanityError,
    NoUpdatesError,
    SecureRoundAbortedError,
    check_secure_aggregate,
)
from shared.fl import client as client_module
from shared.fl.config_keys import NodeConfigKey, RunConfigKey
from shared.fl.mods import DropoutSchedule, MaskGeneratorRefusedError, hardened_secaggplus_mod
from shared.fl.secure_prg import MASK_GENERATOR


def _flowers_own_secaggplus_mod() -> Any:
    """Flower's ``secaggplus_mod`` in a module of its own, bound to Flower's generator.

    A stock client runs it in its own process, where nothing swaps Flower's generator; in this
    process the hub's round swaps the attributes of Flower's module, so the stock client gets
    a fresh copy of that module (loaded here, outside any round) that keeps Flower's own.
    """
    flower = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    spec = importlib.util.spec_from_file_location("stock_secaggplus_mod", flower.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pseudo_rand_gen.__module__ == "flwr.common.secure_aggregation.secaggplus_utils"
    return module.secaggplus_mod


STOCK_SECAGGPLUS_MOD = _flowers_own_secaggplus_mod()


def _config(**changes: Any) -> FederatedRunConfig:
    base: dict[str, Any] = dict(
        model_name="sensor-mlp",
        num_clients=5,
        num_rounds=1,
        local_epochs=1,
        batch_size=16,
        engine="inprocess",
        secagg=SecAggConfig(reconstruction_threshold=3),
    )
    base.update(changes)
    return FederatedRunConfig(**base)


def _with_stock_clients(monkeypatch: pytest.MonkeyPatch, partitions: tuple[int, ...]) -> None:
    """Clients in ``partitions`` mask like a stock Flower client; the others are fedfleet's."""

    def build(spec: client_module.ClientAppSpec) -> ClientApp:
        def secagg(message: Message, context: Context, call_next: Any) -> Message:
            if context.node_config[NodeConfigKey.PARTITION_ID] in partitions:
                return STOCK_SECAGGPLUS_MOD(message, context, call_next)  # type: ignore[no-any-return]
            return hardened_secaggplus_mod(message, context, call_next)

        return ClientApp(client_fn=spec.client_fn, mods=[secagg])

    monkeypatch.setattr(client_module, "build_client_app", build)


def _stored(store: ModelStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_a_client_masking_with_flowers_generator_fails_the_run_by_the_sanity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sensor_cohort
) -> None:
    sources, validation = sensor_cohort
    _with_stock_clients(monkeypatch, partitions=(0,))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(AggregateSanityError) as failed:
        run_federated(_config(num_rounds=2), sources, validation, model_store=store)
    message = str(failed.value)
    assert "round 1: aggregate failed the sanity check: masks did not cancel?" in message
    assert f"a client that does not run mask generator {MASK_GENERATOR}" in message
    assert f"4 x {MASK_GENERATOR}, 1 x unreported" in message  # who masked how
    assert _stored(store) == []  # no candidate of noise


def test_the_sanity_check_fails_the_run_even_under_the_skip_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sensor_cohort
) -> None:
    sources, validation = sensor_cohort
    _with_stock_clients(monkeypatch, partitions=(0, 1, 2, 3, 4))  # all stock: same failure
    store = ModelStore(tmp_path / "models")
    with pytest.raises(AggregateSanityError, match="5 x unreported"):
        run_federated(
            _config(num_rounds=2, on_round_failure="skip"), sources, validation, model_store=store
        )
    assert _stored(store) == []


def test_a_secagg_run_records_the_generator_that_ran(tmp_path: Path, sensor_cohort) -> None:
    sources, validation = sensor_cohort
    store = ModelStore(tmp_path / "models")
    result = run_federated(_config(), sources, validation, model_store=store)
    assert [r.status for r in result.rounds] == ["ok", "ok"]
    for lineage in (result.summary()["lineage"], result.candidate.lineage):  # type: ignore[union-attr]
        assert lineage["secagg"]["mask_generator"] == MASK_GENERATOR  # unmasked with
        assert lineage["secagg"]["client_mask_generators"] == [MASK_GENERATOR]  # reported
        assert lineage["secagg"]["mask_generator_required"] == MASK_GENERATOR
    plain = run_federated(_config(secagg=SecAggConfig(enabled=False)), sources, validation)
    assert plain.summary()["lineage"]["secagg"]["mask_generator"] is None  # none ran


def test_a_client_refuses_a_run_naming_another_mask_generator(
    monkeypatch: pytest.MonkeyPatch, sensor_cohort
) -> None:
    sources, validation = sensor_cohort
    asked = {**_config().client_run_config(), RunConfigKey.MASK_GENERATOR: "flower-mt19937"}
    monkeypatch.setattr(FederatedRunConfig, "client_run_config", lambda self: asked)
    with pytest.raises(SecureRoundAbortedError) as failed:
        run_federated(_config(), sources, validation)
    message = str(failed.value)
    assert "aborted at stage 'setup': 0 of 5" in message
    assert "this run requires SecAgg+ mask generator 'flower-mt19937'" in message
    assert f"this client masks with {MASK_GENERATOR!r} only" in message


def test_the_client_check_names_the_required_generator() -> None:
    context = Context(
        run_id=1,
        node_id=2,
        node_config={},
        state=RecordDict(),
        run_config={RunConfigKey.MASK_GENERATOR: "xorshift"},
    )
    with pytest.raises(
        MaskGeneratorRefusedError, match="requires SecAgg\\+ mask generator 'xorshift'"
    ):
        hardened_secaggplus_mod(None, context, lambda m, c: m)  # type: ignore[arg-type]


def test_a_round_without_results_is_failed_and_a_run_without_a_good_round_stores_nothing(
    tmp_path: Path, sensor_cohort
) -> None:
    sources, validation = sensor_cohort
    store = ModelStore(tmp_path / "models")
    everyone = DropoutSchedule(partitions=(0, 1, 2, 3, 4))
    plain = _config(num_rounds=2, secagg=SecAggConfig(enabled=False), on_round_failure="skip")
    with pytest.raises(TrainingError, match="no round succeeded") as failed:
        run_federated(plain, sources, validation, model_store=store, dropout=everyone)
    assert "['failed', 'failed']" in str(failed.value)
    assert _stored(store) == []  # the untrained model is no candidate


def test_a_round_below_its_minimum_of_results_fails(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    two_of_five = DropoutSchedule(partitions=(0, 1, 2), rounds=(1,))
    plain = _config(secagg=SecAggConfig(enabled=False), min_fit_clients=3)
    with pytest.raises(
        NoUpdatesError, match="2 client updates aggregated, below the round's minimum of 3"
    ):
        run_federated(plain, sources, validation, dropout=two_of_five)
    skipping = plain.with_overrides(num_rounds=2, on_round_failure="skip")
    result = run_federated(skipping, sources, validation, dropout=two_of_five)
    assert [r.status for r in result.rounds] == ["ok", "failed", "ok"]
    assert result.rounds[1].loss == pytest.approx(result.rounds[0].loss)  # round 1 not applied


def test_the_training_config_is_the_one_secagg_switch() -> None:
    on = _config()
    check_client_switches(on.client_run_config(), on)
    check_client_switches({}, on)  # a client's defaults: SecAgg+ on, fedfleet's generator
    with pytest.raises(HubConfigError, match="secure-aggregation=False disagrees"):
        check_client_switches({RunConfigKey.SECURE_AGGREGATION: False}, on)
    off = _config(secagg=SecAggConfig(enabled=False))
    with pytest.raises(HubConfigError, match="secure-aggregation=True disagrees"):
        check_client_switches({}, off)
    with pytest.raises(HubConfigError, match="mask-generator='flower-mt19937' disagrees"):
        check_client_switches({RunConfigKey.MASK_GENERATOR: "flower-mt19937"}, on)


# -- the sanity check itself (pure) ----------------------------------------------------------

Q, CLIP, MAX_WEIGHT = 1 << 22, 8.0, 10_000.0


def _unmasked(updates: list[list[np.ndarray]], examples: list[int], garbage: bool = False):
    """What Flower's unmask stage computes from the clients' quantized updates."""
    ratios = [round(n / MAX_WEIGHT * Q) for n in examples]
    quantized = [
        quantize([r / Q * a for a in update], CLIP, Q)
        for r, update in zip(ratios, updates, strict=True)
    ]
    sums = [sum(parts) for parts in zip(*quantized, strict=True)]
    total = sum(ratios)
    if garbage:  # masks that did not cancel: uniform sums and total modulo 2**32
        rng = np.random.default_rng(0)
        sums = [rng.integers(0, 1 << 32, size=s.shape) for s in sums]
        total = int(rng.integers(1, 1 << 32))
    n = len(updates)
    return [(s * (2 * CLIP / Q) - CLIP - (n - 1) * CLIP) * (Q / total) for s in sums]


def _updates(rng: np.random.Generator, clients: int) -> list[list[np.ndarray]]:
    return [[rng.normal(0, 0.3, (64, 12)), rng.normal(0, 20.0, (3,))] for _ in range(clients)]


def test_honest_sums_pass_the_sanity_check_and_noise_does_not() -> None:
    rng = np.random.default_rng(1)
    examples = [80, 60, 10_000, 1]
    updates = _updates(rng, len(examples))  # some values beyond the clipping range too
    check: dict[str, Any] = dict(clipping_range=CLIP, quantization_range=Q, max_weight=MAX_WEIGHT)
    honest = _unmasked(updates, examples)
    check_secure_aggregate(honest, examples, **check)
    with pytest.raises(AggregateSanityError, match="values are not a sum of 4 quantized updates"):
        check_secure_aggregate(_unmasked(updates, examples, garbage=True), examples, **check)
    with pytest.raises(AggregateSanityError, match="non-finite"):
        check_secure_aggregate([honest[0], np.array([np.inf])], examples, **check)
    shifted = [honest[0] + 1e-3, honest[1]]  # off the quantization grid
    with pytest.raises(AggregateSanityError):
        check_secure_aggregate(shifted, examples, **check)


def test_a_deployment_run_told_otherwise_than_its_config_fails_before_round_1(
    tmp_path: Path,
) -> None:
    import json

    from cloud_hub.fl import superlink_app

    (tmp_path / "train.toml").write_text(
        '[training]\nmodel_name = "sensor-mlp"\nnum_clients = 3\nmin_fit_clients = 3\n'
    )  # SecAgg+ on (the default)
    run_config: dict[str, Any] = {
        RunConfigKey.CONFIG_PATH: str(tmp_path / "train.toml"),
        RunConfigKey.VALIDATION_PATH: str(tmp_path / "validation.npz"),
        RunConfigKey.RESULTS_DIR: str(tmp_path / "results"),
        RunConfigKey.SECURE_AGGREGATION: False,  # the clients would send plain updates
    }
    context = Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(HubConfigError, match="disagrees with the hub's training config"):
        superlink_app.main(None, context)  # type: ignore[arg-type]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["status"] == "failed" and "secure-aggregation=False" in summary["error"]


def test_the_generator_in_use_is_read_from_what_flower_would_call() -> None:
    from shared.fl.secure_prg import (
        CLIENT_MODULE,
        FLOWER_MASK_GENERATOR,
        SERVER_MODULE,
        mask_generator_in_use,
        secure_mask_generator,
    )

    assert mask_generator_in_use(SERVER_MODULE) == FLOWER_MASK_GENERATOR  # no round running
    with secure_mask_generator():
        assert mask_generator_in_use(SERVER_MODULE) == MASK_GENERATOR
        assert mask_generator_in_use(CLIENT_MODULE) == MASK_GENERATOR
    assert mask_generator_in_use(CLIENT_MODULE) == FLOWER_MASK_GENERATOR
