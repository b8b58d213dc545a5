"""Simulation scenarios: a TOML file describing data, partitioning, faults and training.

Example (``simulations/digits_dirichlet_secagg.toml``)::

    [scenario]
    name = "digits-dirichlet-secagg"
    dataset = "digits"        # "digits" (scikit-learn's bundled 8x8) | "sensors" (generated)
    holdout = 0.2             # share of samples the hub keeps as its validation set
    dropout_rate = 0.0        # probability that a client vanishes mid-round (SecAgg+ stage)

    [partition]
    kind = "dirichlet"        # "iid" | "dirichlet" | "shards"
    alpha = 0.5

    [training]                # any FederatedRunConfig field
    num_clients = 20
    num_rounds = 20
    [training.secagg]
    enabled = true
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.partition import PartitionSpec, partition_arrays, split_holdout
from shared.fl import ArrayDataSource

__all__ = ["DATASETS", "Scenario", "load_scenario"]

DATASETS = ("digits", "sensors")
_MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Scenario:
    """A simulation: which data, how it is split, what fails, and how to train."""

    name: str
    training: FederatedRunConfig
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    dataset: str = "digits"
    holdout: float = 0.2
    samples: int = 6000  # sensors only
    drift_shift: float = 0.0  # sensors only: covariate shift of the clients' data
    dropout_rate: float = 0.0
    dropout_stage: str = "collect_masked_vectors"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise HubConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if not 0 < self.holdout < 1:
            raise HubConfigError("holdout must be in (0, 1)")
        if not 10 <= self.samples <= 10_000_000:
            raise HubConfigError("samples must be in [10, 10000000]")
        if not 0 <= self.dropout_rate < 1:
            raise HubConfigError("dropout_rate must be in [0, 1)")
        wanted = {"digits": "digits-cnn", "sensors": "sensor-mlp"}[self.dataset]
        if self.training.model_name != wanted:
            raise HubConfigError(
                f"dataset {self.dataset!r} trains model {wanted!r}, not {self.training.model_name!r}"
            )

    def dropout_schedule(self) -> Any:
        from shared.fl.mods import DropoutSchedule

        if self.dropout_rate <= 0:
            return None
        stage = self.dropout_stage if self.training.secagg.enabled else "collect_masked_vectors"
        return DropoutSchedule(rate=self.dropout_rate, seed=self.seed, stage=stage)

    def build_data(self) -> tuple[list[ArrayDataSource], tuple[NDArray, NDArray]]:
        """``(one data source per client, the hub's validation set)``."""
        if self.dataset == "digits":
            from shared.data import load_digits_dataset

            x, y = load_digits_dataset()
            train, holdout = split_holdout(x, y, self.holdout, seed=self.seed)
        else:
            from shared.data import SensorDriftSpec, generate_sensor_data

            n_hold = max(int(self.samples * self.holdout), 1)
            drift = SensorDriftSpec(shift=self.drift_shift) if self.drift_shift else None
            train = generate_sensor_data(
                self.samples - n_hold, seed=self.seed, drift=drift, sample_seed=self.seed + 1
            )
            holdout = generate_sensor_data(n_hold, seed=self.seed, sample_seed=self.seed + 2)
        sources = partition_arrays(train[0], train[1], self.training.num_clients, self.partition)
        return sources, holdout

    def with_training(self, **changes: Any) -> Scenario:
        from dataclasses import replace

        return replace(self, training=self.training.with_overrides(**changes))


def load_scenario(path: Path) -> Scenario:
    """Parse and validate a scenario file; every problem is a ``HubConfigError``."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise HubConfigError(f"scenario file {path} is larger than {_MAX_FILE_BYTES} bytes")
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HubConfigError(f"no scenario file at {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HubConfigError(f"cannot read scenario {path}: {exc}") from exc
    unknown = sorted(set(data) - {"scenario", "partition", "training"})
    if unknown:
        raise HubConfigError(f"{path}: unknown sections {', '.join(unknown)}")
    head = dict(data.get("scenario", {}))
    known = {f.name for f in fields(Scenario)} - {"training", "partition"}
    bad = sorted(set(head) - known)
    if bad:
        raise HubConfigError(f"{path}: unknown scenario settings {', '.join(bad)}")
    head.setdefault("name", path.stem)
    part = dict(data.get("partition", {}))
    try:
        partition = PartitionSpec(**part)
    except TypeError as exc:
        raise HubConfigError(f"{path}: bad partition settings: {exc}") from None
    training_table = dict(data.get("training", {}))
    if head.get("dataset") == "sensors":
        training_table.setdefault("model_name", "sensor-mlp")
    training = FederatedRunConfig.from_mapping(training_table)
    try:
        return Scenario(training=training, partition=partition, **head)
    except TypeError as exc:
        raise HubConfigError(f"{path}: bad scenario settings: {exc}") from None
