"""Real SecAgg+ rounds (Flower's workflow and mod, in-process grid): exactness, generator
used, dropouts above and below the reconstruction threshold."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from cloud_hub.fl import FederatedRunConfig, SecAggConfig, SecureRoundAbortedError, run_federated
from shared.fl.mods import DropoutSchedule

# The packages re-export functions under the same names, so import the modules explicitly.
# fedfleet's client (shared.fl.secaggplus_client) calls Flower's factor_combine through its
# module, the server workflow through the name it imported.
arithmetic = importlib.import_module("flwr.common.secure_aggregation.ndarrays_arithmetic")
server_module = importlib.import_module(
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
)


def _config(**changes: object) -> FederatedRunConfig:
    base = dict(
        model_name="sensor-mlp",
        num_clients=5,
        num_rounds=1,
        local_epochs=1,
        batch_size=16,
        engine="inprocess",
        secagg=SecAggConfig(num_shares=1.0, reconstruction_threshold=3),
    )
    base.update(changes)
    return FederatedRunConfig(**base)  # type: ignore[arg-type]


class _Capture:
    """Records the clients' quantized vectors and the server's unmasked sum."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.client_vectors: list[list[np.ndarray]] = []
        self.server_sums: list[list[np.ndarray]] = []
        combine, extract = arithmetic.factor_combine, server_module.factor_extract

        def spy_combine(factor, parameters):  # type: ignore[no-untyped-def]
            out = combine(factor, parameters)
            self.client_vectors.append([np.array(a, dtype=np.int64) for a in out])
            return out

        def spy_extract(parameters):  # type: ignore[no-untyped-def]
            self.server_sums.append([np.array(a, dtype=np.int64) for a in parameters])
            return extract(parameters)

        monkeypatch.setattr(arithmetic, "factor_combine", spy_combine)
        monkeypatch.setattr(server_module, "factor_extract", spy_extract)


def _assert_exact(capture: _Capture, modulus: int) -> None:
    assert len(capture.server_sums) == 1
    expected = [sum(vectors) % modulus for vectors in zip(*capture.client_vectors, strict=True)]
    for got, want in zip(capture.server_sums[0], expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_aggregate_equals_the_plain_sum_of_quantized_updates(monkeypatch, sensor_cohort) -> None:
    capture = _Capture(monkeypatch)
    sources, validation = sensor_cohort
    result = run_federated(_config(), sources, validation)
    assert len(capture.client_vectors) == 5
    _assert_exact(capture, 1 << 32)
    assert result.rounds[-1].status == "ok"


def test_weak_generator_is_not_used_during_a_secure_round(monkeypatch, sensor_cohort) -> None:
    calls: list[object] = []
    real = np.random.RandomState

    def spy(*args: object, **kwargs: object) -> np.random.RandomState:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(np.random, "RandomState", spy)
    # The spy does see Flower's own generator (so it would catch a regression) ...
    server_module.pseudo_rand_gen(b"k" * 32, 1 << 32, [(2,)])
    assert len(calls) == 1
    calls.clear()
    # ... and sees nothing during a complete fedfleet SecAgg+ round.
    sources, validation = sensor_cohort
    run_federated(_config(), sources, validation)
    assert calls == []


def test_round_completes_when_dropouts_leave_the_threshold(monkeypatch, sensor_cohort) -> None:
    capture = _Capture(monkeypatch)
    sources, validation = sensor_cohort
    # Two of five clients vanish after sharing their keys; threshold 3 remain.
    dropout = DropoutSchedule(partitions=(1, 3), stage="collect_masked_vectors")
    result = run_federated(_config(), sources, validation, dropout=dropout)
    assert result.rounds[-1].status == "ok"
    assert len(capture.client_vectors) == 3  # only survivors uploaded
    assert result.rounds[-1].clients == 3
    _assert_exact(capture, 1 << 32)  # the dropped clients' masks were reconstructed away
    assert not all(np.array_equal(a, b) for a, b in zip(result.weights, _initial(), strict=True)), (
        "the round must have changed the model"
    )


def test_round_below_threshold_fails_clearly_and_keeps_the_model(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    dropout = DropoutSchedule(partitions=(0, 2, 4), stage="collect_masked_vectors", rounds=(2,))
    with pytest.raises(SecureRoundAbortedError) as caught:
        run_federated(_config(num_rounds=2), sources, validation, dropout=dropout)
    err = caught.value
    assert "round 2" in str(err) and "threshold 3" in str(err) and "2 of 5" in str(err)
    assert err.stage == "collect_masked_vectors"
    assert err.kept_round == 1  # type: ignore[attr-defined]
    # The kept model is round 1's global model: re-running round 1 alone reproduces it (up to
    # SecAgg+'s stochastic quantization).
    one_round = run_federated(_config(num_rounds=1), sources, validation)
    for kept, expected in zip(err.kept_weights, one_round.weights, strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(kept, expected, atol=2e-3)
    assert not all(np.array_equal(a, b) for a, b in zip(err.kept_weights, _initial(), strict=True))  # type: ignore[attr-defined]


def test_skip_policy_keeps_the_previous_global_model_and_continues(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    dropout = DropoutSchedule(partitions=(0, 2, 4), stage="collect_masked_vectors", rounds=(2,))
    result = run_federated(
        _config(num_rounds=3, on_round_failure="skip"), sources, validation, dropout=dropout
    )
    statuses = [r.status for r in result.rounds]
    assert statuses == ["ok", "ok", "failed", "ok"]  # round 0 is the initial model
    r1, r2 = result.rounds[1], result.rounds[2]
    assert r2.loss == pytest.approx(r1.loss) and r2.accuracy == r1.accuracy
    assert "reconstruction threshold" in r2.detail


def _initial() -> list[np.ndarray]:
    from shared.fl.training import get_weights
    from shared.models import build_model

    return get_weights(build_model("sensor-mlp", seed=0))
