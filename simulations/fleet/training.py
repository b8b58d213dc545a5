"""The training plane of a fleet scenario: a federated run (Flower, SecAgg+ by default) over a
cohort of the simulated devices, whose model then ships in the scenario's rollout.

It runs in a background thread while the delivery plane provisions v1, through the hub's own
``cloud_hub.fl.run_federated``; each client trains on its device's local sensor data (the
same generator the device's inputs come from). The result carries the weights (for the ONNX
graph of :func:`simulations.fleet.hub.sensor_mlp_onnx`), the training data's drift
reference, and the lineage the bundle records.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.data.sensors import generate_sensor_data

__all__ = ["TrainedModel", "TrainingJob"]

PROBLEM_SEED = 0


@dataclass(frozen=True)
class TrainedModel:
    weights: list[NDArray[Any]] = field(repr=False)
    reference_x: NDArray[np.float32] = field(repr=False)
    lineage: dict[str, Any]
    metrics: dict[str, Any]


class TrainingJob:
    """``start()`` a federated run over ``device_ids``; ``result()`` waits for it."""

    def __init__(
        self,
        device_ids: Sequence[str],
        *,
        rounds: int,
        samples: int,
        secagg: bool,
        seed: int,
    ) -> None:
        self.device_ids = list(device_ids)
        self.rounds = rounds
        self.samples = samples
        self.secagg = secagg
        self.seed = seed
        self._thread = threading.Thread(target=self._run, name="sim-training", daemon=True)
        self._result: TrainedModel | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def result(self, timeout: float) -> TrainedModel:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"federated training not finished in {timeout:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"federated training failed: {self._error}") from self._error
        assert self._result is not None
        return self._result

    def local_data(self, device_id: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The device's own sensor samples (seeded by its id)."""
        return generate_sensor_data(
            self.samples, seed=PROBLEM_SEED, sample_seed=zlib.crc32(device_id.encode())
        )

    def _run(self) -> None:
        try:
            self._result = self._train()
        except BaseException as exc:  # surfaced by result()
            self._error = exc

    def _train(self) -> TrainedModel:
        from cloud_hub.fl.config import FederatedRunConfig, SecAggConfig
        from cloud_hub.fl.run import run_federated
        from shared.fl.data_source import ArrayDataSource

        parts = [self.local_data(d) for d in self.device_ids]
        n = len(parts)
        config = FederatedRunConfig(
            model_name="sensor-mlp",
            num_clients=n,
            num_rounds=self.rounds,
            min_fit_clients=n,
            local_epochs=1,
            engine="inprocess",
            secagg=SecAggConfig(enabled=self.secagg),
            seed=self.seed,
        )
        validation = generate_sensor_data(1000, seed=PROBLEM_SEED, sample_seed=self.seed + 1)
        result = run_federated(config, [ArrayDataSource(x, y) for x, y in parts], validation)
        return TrainedModel(
            weights=[np.asarray(w) for w in result.weights],
            reference_x=np.concatenate([x for x, _ in parts]),
            lineage={
                "flower_run": result.run_id,
                "rounds": self.rounds,
                "clients": n,
                "secagg": self.secagg,
                "data_fingerprint": result.data_fingerprint,
            },
            metrics={
                "accuracy": result.final_accuracy,
                "accuracy_per_round": [r.accuracy for r in result.rounds],
                "train_wall_s": round(result.wall_s, 2),
            },
        )
