"""Split local arrays across virtual clients with Flower Datasets' partitioners.

No download: the arrays become a ``datasets.Dataset`` of row indices and labels, a Flower
Datasets partitioner assigns the rows (IID, Dirichlet(alpha) label skew, pathological label
shards), and each partition is sliced back out of the numpy arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError
from shared.fl import ArrayDataSource, LocalDataSource

__all__ = ["PartitionSpec", "data_fingerprint", "partition_arrays", "split_holdout"]

KINDS = ("iid", "dirichlet", "shards")


@dataclass(frozen=True)
class PartitionSpec:
    """How samples are spread over clients."""

    kind: str = "iid"
    alpha: float = 0.5  # dirichlet: lower is more skewed
    classes_per_client: int = 2  # shards: each client sees this many labels
    min_partition_size: int = 5  # dirichlet: resample until every client has this many
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HubConfigError(f"unknown partitioner {self.kind!r}; known: {', '.join(KINDS)}")
        if self.alpha <= 0:
            raise HubConfigError(f"dirichlet alpha must be > 0, got {self.alpha}")
        if self.classes_per_client < 1:
            raise HubConfigError("classes_per_client must be >= 1")
        if self.min_partition_size < 0:
            raise HubConfigError("min_partition_size must be >= 0")


def _partitioner(spec: PartitionSpec, num_partitions: int, num_samples: int):  # type: ignore[no-untyped-def]
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if spec.kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if spec.kind == "dirichlet":
        floor = min(spec.min_partition_size, num_samples // (2 * num_partitions))
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=floor,
            self_balancing=True,
            seed=spec.seed,
        )
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=spec.classes_per_client,
        class_assignment_mode="first-deterministic",
        seed=spec.seed,
    )


def partition_arrays(
    x: NDArray, y: NDArray, num_partitions: int, spec: PartitionSpec
) -> list[ArrayDataSource]:
    """``num_partitions`` in-memory client datasets drawn from ``(x, y)``."""
    import datasets

    if num_partitions < 1:
        raise HubConfigError("num_partitions must be >= 1")
    if len(y) < num_partitions:
        raise HubConfigError(f"{len(y)} samples cannot be split over {num_partitions} clients")
    table = datasets.Dataset.from_dict({"idx": np.arange(len(y)), "label": y.astype(np.int64)})
    partitioner = _partitioner(spec, num_partitions, len(y))
    partitioner.dataset = table
    try:
        parts = [
            np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
            for i in range(num_partitions)
        ]
    except ValueError as exc:
        raise HubConfigError(f"cannot partition: {exc}") from exc
    return [ArrayDataSource(x[idx], y[idx]) for idx in parts]


def split_holdout(
    x: NDArray, y: NDArray, fraction: float, *, seed: int = 0
) -> tuple[tuple[NDArray, NDArray], tuple[NDArray, NDArray]]:
    """``(train, holdout)`` with a stratification-free seeded shuffle."""
    if not 0 < fraction < 1:
        raise HubConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    cut = round(len(y) * (1 - fraction))
    train, hold = order[:cut], order[cut:]
    return (x[train], y[train]), (x[hold], y[hold])


def data_fingerprint(sources: Sequence[LocalDataSource]) -> str:
    """sha256 over every client's samples, in order (what the model was trained on)."""
    digest = hashlib.sha256()
    for source in sources:
        xs, ys = source.load()
        digest.update(np.ascontiguousarray(xs).tobytes())
        digest.update(np.ascontiguousarray(ys).tobytes())
        digest.update(b"|")
    return "sha256:" + digest.hexdigest()
