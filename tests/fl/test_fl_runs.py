"""End-to-end runs on the in-process engine: strategies, DP, model store, client limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cloud_hub.errors import HubConfigError, RegistryError
from cloud_hub.fl import (
    DifferentialPrivacyConfig,
    FederatedRunConfig,
    ModelStore,
    SecAggConfig,
    StrategyConfig,
    run_federated,
)
from shared.fl.training import LocalTrainingLimits, train_model
from shared.models import build_model


def _cfg(**changes: object) -> FederatedRunConfig:
    base: dict[str, object] = dict(
        model_name="sensor-mlp",
        num_clients=5,
        num_rounds=3,
        local_epochs=2,
        batch_size=16,
        engine="inprocess",
    )
    base.update(changes)
    return FederatedRunConfig(**base)  # type: ignore[arg-type]


def test_secagg_run_learns_and_is_stored_with_lineage(tmp_path, sensor_cohort) -> None:
    sources, validation = sensor_cohort
    store = ModelStore(tmp_path / "models")
    result = run_federated(
        _cfg(num_rounds=4), sources, validation, model_store=store, run_id="run-1"
    )
    assert [r.round for r in result.rounds] == [0, 1, 2, 3, 4]
    assert result.final_accuracy > result.rounds[0].accuracy + 0.2
    record = store.get("run-1")
    assert record.lineage["secagg"]["enabled"] is True
    assert record.lineage["secagg"]["reconstruction_threshold"] == 3
    assert record.lineage["strategy"] == "fedavg" and record.lineage["rounds"] == 4
    assert record.lineage["clients"] == 5 and record.lineage["data_fingerprint"].startswith(
        "sha256:"
    )
    assert record.metrics["accuracy"] == pytest.approx(result.final_accuracy)
    # The compression step's path: registry model + stored state_dict reproduce the accuracy.
    model = build_model(record.model_name)
    model.load_state_dict(store.load_state_dict("run-1"))
    with torch.no_grad():
        predicted = model(torch.from_numpy(validation[0])).argmax(1).numpy()
    assert np.mean(predicted == validation[1]) == pytest.approx(result.final_accuracy)
    assert (
        json.loads((tmp_path / "models" / "run-1" / "candidate.json").read_text())["run_id"]
        == "run-1"
    )
    with pytest.raises(RegistryError, match="already exists"):
        run_federated(_cfg(num_rounds=1), sources, validation, model_store=store, run_id="run-1")
    with pytest.raises(HubConfigError, match="invalid run id"):
        run_federated(_cfg(num_rounds=1), sources, validation, model_store=store, run_id="../x")


@pytest.mark.parametrize(
    "cfg",
    [
        _cfg(strategy=StrategyConfig(name="fedprox", proximal_mu=0.1)),
        _cfg(strategy=StrategyConfig(name="fedadam", server_learning_rate=0.05)),
        _cfg(strategy=StrategyConfig(name="fedtrimmedavg"), secagg=SecAggConfig(enabled=False)),
        _cfg(
            strategy=StrategyConfig(name="krum", num_malicious_clients=1),
            secagg=SecAggConfig(enabled=False),
        ),
        _cfg(dp=DifferentialPrivacyConfig(enabled=True, noise_multiplier=0.01, clipping_norm=50.0)),
    ],
    ids=["fedprox-secagg", "fedadam-secagg", "trimmedavg-plain", "krum-plain", "dp-secagg"],
)
def test_strategies_train(cfg: FederatedRunConfig, sensor_cohort) -> None:
    sources, validation = sensor_cohort
    result = run_federated(cfg, sources, validation)
    assert all(r.status == "ok" for r in result.rounds)
    assert result.final_accuracy > 0.5, [r.accuracy for r in result.rounds]


def test_initial_state_is_used_and_checked(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    first = run_federated(_cfg(num_rounds=2), sources, validation)
    model = build_model("sensor-mlp")
    from shared.fl.training import set_weights

    set_weights(model, first.weights)
    again = run_federated(_cfg(num_rounds=1), sources, validation, initial_state=model.state_dict())
    assert again.rounds[0].accuracy == pytest.approx(first.final_accuracy)
    with pytest.raises(HubConfigError, match="does not fit"):
        run_federated(
            _cfg(), sources, validation, initial_state=build_model("digits-cnn").state_dict()
        )


def test_cohort_size_must_match(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    with pytest.raises(HubConfigError, match="num_clients is 6 but 5"):
        run_federated(_cfg(num_clients=6), sources, validation)


def test_local_training_respects_epochs_and_time_budget() -> None:
    from shared.data import generate_sensor_data

    x, y = generate_sensor_data(400, seed=1)
    model = build_model("sensor-mlp", seed=0)
    report = train_model(model, x, y, LocalTrainingLimits(batch_size=10, max_local_epochs=3))
    assert report.epochs_done == 3 and report.steps == 120 and not report.stopped_by_budget
    budget = train_model(
        model, x, y, LocalTrainingLimits(batch_size=1, max_local_epochs=1000, time_budget_s=0.05)
    )
    # 1000 epochs of 400 single-sample steps would take minutes; the budget stops it at once
    # (the bound is loose because the shared test machine can stall a step for a while).
    assert budget.stopped_by_budget and budget.epochs_done < 1000
    assert budget.duration_s < 10.0 and budget.steps < 400 * 1000


def test_client_caps_what_the_hub_asks_for() -> None:
    from shared.data import generate_sensor_data
    from shared.fl import ArrayDataSource
    from shared.fl.client import LocalTrainingClient

    client = LocalTrainingClient(
        "sensor-mlp",
        ArrayDataSource(*generate_sensor_data(50, seed=1)),
        LocalTrainingLimits(batch_size=8, max_local_epochs=2),
    )
    limits = client._limits_for({"local-epochs": 50, "batch-size": 512})
    assert limits.max_local_epochs == 2 and limits.batch_size == 8
    _, n, metrics = client.fit(client.get_parameters({}), {"local-epochs": 50})
    assert n == 50 and metrics["epochs"] == 2
