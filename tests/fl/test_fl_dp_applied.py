"""Differential privacy is applied, measured in the aggregate itself (not inferred from accuracy).

Central DP with client-side fixed clipping: every client clips its update to ``clipping_norm``
C (``fixedclipping_mod``), the hub adds Gaussian noise of standard deviation
``noise_multiplier`` * C / clients to the sum it receives through SecAgg+. One round from a
known starting model shows both:

- clipping: with no noise, the aggregate update (new - start) has norm <= C although the
  same round without DP moves the model much further;
- noise: with a large noise multiplier the clipped updates are negligible next to the noise,
  so the update's per-parameter standard deviation is the configured noise scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.fl import DifferentialPrivacyConfig, FederatedRunConfig, run_federated
from shared.fl.training import get_weights
from shared.models import build_model

CLIENTS = 5


def _update_of_one_round(sensor_cohort, dp: DifferentialPrivacyConfig) -> np.ndarray:
    sources, validation = sensor_cohort
    start = build_model("sensor-mlp", seed=7)
    config = FederatedRunConfig(
        model_name="sensor-mlp",
        num_clients=CLIENTS,
        num_rounds=1,
        local_epochs=2,
        batch_size=16,
        engine="inprocess",
        dp=dp,
    )
    result = run_federated(config, sources, validation, initial_state=start.state_dict())
    assert all(r.status == "ok" for r in result.rounds)
    before = np.concatenate([w.ravel() for w in get_weights(start)])
    after = np.concatenate([w.ravel() for w in result.weights])
    return after.astype(np.float64) - before.astype(np.float64)


def test_clipping_bounds_the_aggregate_update(sensor_cohort) -> None:
    clip = 0.05
    plain = _update_of_one_round(sensor_cohort, DifferentialPrivacyConfig(enabled=False))
    clipped = _update_of_one_round(
        sensor_cohort,
        DifferentialPrivacyConfig(enabled=True, noise_multiplier=0.0, clipping_norm=clip),
    )
    assert np.linalg.norm(plain) > 10 * clip  # without DP the round moves the model far
    # the mean of updates clipped to C has norm <= C (SecAgg+ quantization adds a hair)
    assert np.linalg.norm(clipped) <= clip * 1.05
    assert np.linalg.norm(clipped) > clip * 0.2  # clipped, not zeroed


def test_noise_has_the_configured_scale(sensor_cohort) -> None:
    clip, sigma = 0.01, 50.0
    update = _update_of_one_round(
        sensor_cohort,
        DifferentialPrivacyConfig(enabled=True, noise_multiplier=sigma, clipping_norm=clip),
    )
    expected_std = sigma * clip / CLIENTS  # 0.1 per parameter
    assert update.size > 1000  # enough parameters for a tight estimate
    assert float(np.std(update)) == pytest.approx(expected_std, rel=0.1)
    assert abs(float(np.mean(update))) < expected_std * 0.1  # centred noise
