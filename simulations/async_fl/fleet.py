"""A virtual fleet on the in-process Grid: one asynchronous ClientApp node per device.

Every device is a real Flower node running :func:`shared.fl.async_client.build_async_client_app`
(real torch training, held updates in files under a temporary folder, the SecAgg+ mod);
the hub side is a real :class:`cloud_hub.fl.async_run.AsyncBufferedRun`. Only time is
virtual: the simulation decides *when* (on its clock) each order, upload and exchange
happens; the messages themselves run at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from numpy.typing import NDArray

from cloud_hub.fl.inprocess_grid import InProcessGrid
from shared.data import generate_sensor_data
from shared.fl import ArrayDataSource, InMemoryPartitions
from shared.fl.async_client import AsyncClientSpec, build_async_client_app
from shared.fl.training import LocalTrainingLimits, evaluate_model, get_weights, set_weights

__all__ = ["Fleet", "FleetData", "open_fleet"]


@dataclass(frozen=True)
class FleetData:
    """Which model, how many samples per device, the hub's validation set size."""

    model_name: str = "sensor-mlp"
    samples_per_device: int = 40
    validation_samples: int = 1_000
    local_epochs: int = 1
    learning_rate: float = 0.05
    seed: int = 3


@dataclass
class Fleet:
    """The grid, its node ids by device index, the initial model and an evaluator."""

    grid: InProcessGrid
    nodes: list[int]
    initial: list[NDArray]
    _model: object
    _x: NDArray
    _y: NDArray

    def accuracy(self, weights: list[NDArray]) -> float:
        set_weights(self._model, weights)  # type: ignore[arg-type]
        return evaluate_model(self._model, self._x, self._y)[1]  # type: ignore[arg-type]


@contextmanager
def open_fleet(devices: int, data: FleetData) -> Iterator[Fleet]:
    """``devices`` nodes with ``data.samples_per_device`` samples each (IID sensor data)."""
    from shared.models import build_model

    sources = tuple(
        ArrayDataSource(
            *generate_sensor_data(data.samples_per_device, seed=data.seed, sample_seed=10_000 + i)
        )
        for i in range(devices)
    )
    x_val, y_val = generate_sensor_data(data.validation_samples, seed=data.seed, sample_seed=1)
    with tempfile.TemporaryDirectory(prefix="fedfleet-async-") as tmp:
        spec = AsyncClientSpec(
            model_name=data.model_name,
            data=InMemoryPartitions(sources),
            held_root=Path(tmp),
            limits=LocalTrainingLimits(
                batch_size=16, max_local_epochs=data.local_epochs, learning_rate=data.learning_rate
            ),
            seed=data.seed,
        )
        grid = InProcessGrid(build_async_client_app(spec), devices, seed=data.seed)
        # Messages take their run identity from this process-wide record (as run_simulation sets it).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = grid.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        model = build_model(data.model_name, seed=0)
        try:
            yield Fleet(
                grid=grid,
                nodes=list(grid.get_node_ids()),
                initial=get_weights(model),
                _model=model,
                _x=np.asarray(x_val),
                _y=np.asarray(y_val),
            )
        finally:
            grid.close()
