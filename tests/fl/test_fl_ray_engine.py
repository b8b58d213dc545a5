"""Flower's Ray-backed Simulation Engine (``run_simulation``) with the same apps."""

from __future__ import annotations

import pytest

from cloud_hub.fl import FederatedRunConfig, run_federated


@pytest.mark.slow  # Ray start-up alone is 10-30 s on the shared 2-core machine
@pytest.mark.integration
def test_ray_engine_secagg_round_trip(sensor_cohort) -> None:
    sources, validation = sensor_cohort
    cfg = FederatedRunConfig(
        model_name="sensor-mlp",
        num_clients=5,
        num_rounds=2,
        local_epochs=2,
        batch_size=16,
        engine="ray",
    )
    result = run_federated(cfg, sources, validation, ray_cpus=2)
    assert result.engine == "ray"
    # The masks only cancel if the Ray workers (other processes) used the same hardened
    # generator as the hub; otherwise the aggregate is noise and accuracy collapses.
    assert result.final_accuracy > 0.6, [r.accuracy for r in result.rounds]
