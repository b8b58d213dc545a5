"""The retraining pipeline's parts as plain functions: the champion rule, which of the cohort
trains, the Flower run config; and the pipeline's public names where callers import them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cloud_hub.errors import HubError
from cloud_hub.loop.champion import candidate_shortfall
from cloud_hub.loop.cohort_training import federated_run_config, trainable_clients
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.policy import RetrainPolicy


class _Samples:
    """Cohort data where each device has the labelled samples given (the real protocol)."""

    def __init__(self, labelled: dict[str, int]) -> None:
        self.labelled = labelled
        self.asked: dict[str, int] = {}

    def sources(self, device_ids: Sequence[str], *, limit: int, minimum: int) -> dict[str, Any]:
        self.asked = {"limit": limit, "minimum": minimum}
        return {d: f"data of {d}" for d in device_ids if self.labelled.get(d, 0) >= minimum}


def test_a_candidate_must_beat_the_champion_by_the_margin() -> None:
    assert candidate_shortfall(0.75, 0.5, 3, 0.25) == ""  # exactly the margin: accepted
    assert candidate_shortfall(0.74, 0.5, 3, 0.25) == (
        "candidate accuracy 0.7400 does not beat champion v3 0.5000 (+0.25)"
    )
    assert candidate_shortfall(0.1, None, None, 0.25) == ""  # no champion weights to face


def test_in_process_only_devices_with_enough_samples_train() -> None:
    config = LoopConfig(
        training_engine="inprocess",
        policy=RetrainPolicy(min_devices=2),
        secagg=False,  # SecAgg+ needs cohorts of 3; the rule is the same
        min_samples_per_device=20,
        max_samples_per_device=400,
    )
    data = _Samples({"c": 30, "a": 20, "b": 19})
    clients, sources = trainable_clients(config, ["c", "b", "a"], data)
    assert clients == ["a", "c"] and sorted(sources) == ["a", "c"]
    assert data.asked == {"limit": 400, "minimum": 20}
    with pytest.raises(HubError, match=r"only 1 of the cohort's 2 devices can train .* need 2"):
        trainable_clients(config, ["a", "b"], data)
    with pytest.raises(HubError, match="needs the cohort's data"):
        trainable_clients(config, ["a", "c"], None)


def test_on_the_devices_every_cohort_device_is_ordered_and_the_hub_reads_no_data() -> None:
    config = LoopConfig(training_engine="deployment", policy=RetrainPolicy(min_devices=3))
    assert trainable_clients(config, ["z", "x", "y"], None) == (["x", "y", "z"], {})
    with pytest.raises(HubError, match="only 2 of the cohort's 2"):
        trainable_clients(config, ["z", "x"], None)


def test_the_run_config_takes_every_client_and_the_loops_settings() -> None:
    config = LoopConfig(num_rounds=4, local_epochs=3, learning_rate=0.1, secagg=False, seed=7)
    fl = federated_run_config(config, 5)
    assert (fl.num_clients, fl.min_fit_clients, fl.num_rounds, fl.local_epochs) == (5, 5, 4, 3)
    assert (fl.learning_rate, fl.secagg.enabled, fl.seed) == (0.1, False, 7)


def test_the_pipelines_public_names_stay_importable_from_the_pipeline() -> None:
    from cloud_hub.loop import champion, pipeline, release

    assert set(pipeline.__all__) == {
        "Champion",
        "RetrainOutcome",
        "RetrainPipeline",
        "RolloutStarter",
    }
    assert pipeline.Champion is champion.Champion
    assert pipeline.RolloutStarter is release.RolloutStarter
    assert pipeline.torch_accuracy is champion.torch_accuracy
