"""Where a federated client's training data comes from.

A device trains on its own sample store; simulations train on in-memory or on-disk
partitions. Both sit behind :class:`LocalDataSource`, a one-method protocol returning
``(x, y)`` numpy arrays, so the edge agent's sample store plugs in without touching the
training code. Raw samples never leave the process that loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from shared.errors import ConfigError
from shared.fl.config_keys import NodeConfigKey

__all__ = [
    "ArrayDataSource",
    "DataResolver",
    "InMemoryPartitions",
    "LocalDataSource",
    "NodeConfigDataPath",
    "NpzDataSource",
    "PartitionDirectory",
    "PartitionFiles",
    "save_partition",
]


@runtime_checkable
class LocalDataSource(Protocol):
    """Labelled samples held by one client."""

    def load(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Return ``(x, y)``: features (N, ...) as float32 and integer labels (N,)."""
        ...


def _checked(x: NDArray, y: NDArray) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"bad sample arrays: x{tuple(x.shape)} vs y{tuple(y.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ArrayDataSource:
    """An in-memory data source (simulations, tests)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __post_init__(self) -> None:
        x, y = _checked(self.x, self.y)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def load(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return self.x, self.y


@dataclass(frozen=True)
class NpzDataSource:
    """Samples in an ``.npz`` file with arrays ``x`` and ``y``, read on demand.

    Cheap to pickle (just a path), which matters when the Simulation Engine ships the
    ClientApp to its workers with every message.
    """

    path: Path
    _cache: dict[str, NDArray] = field(default_factory=dict, compare=False, repr=False)

    def load(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if not self._cache:
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self._cache["x"], self._cache["y"] = data["x"], data["y"]
            except (OSError, KeyError, ValueError) as exc:
                raise ConfigError(f"cannot read samples from {self.path}: {exc}") from exc
        return _checked(self._cache["x"], self._cache["y"])


def save_partition(path: Path, source: LocalDataSource) -> NpzDataSource:
    """Write a source's samples to ``path`` (npz) and return a source reading them back."""
    x, y = source.load()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return NpzDataSource(path)


@dataclass(frozen=True)
class PartitionDirectory:
    """A folder of ``partition-<i>.npz`` files, one per simulated client."""

    root: Path

    def path_of(self, partition_id: int) -> Path:
        return self.root / f"partition-{partition_id}.npz"

    def source(self, partition_id: int) -> NpzDataSource:
        path = self.path_of(partition_id)
        if not path.is_file():
            raise ConfigError(f"no data for partition {partition_id} in {self.root}")
        return NpzDataSource(path)

    @classmethod
    def write(cls, root: Path, sources: list[LocalDataSource]) -> PartitionDirectory:
        """Store every source as one partition file under ``root``."""
        directory = cls(root)
        for index, source in enumerate(sources):
            save_partition(directory.path_of(index), source)
        return directory


class _HasNodeConfig(Protocol):
    """What resolvers read from a Flower ``Context`` (kept structural: no Flower import)."""

    @property
    def node_config(self) -> Mapping[str, Any]: ...


DataResolver = Callable[[Any], LocalDataSource]
"""Finds a client's data from its Flower ``Context`` (node config / partition id).

The edge agent plugs its sample store in here: any picklable callable taking the
``Context`` and returning a :class:`LocalDataSource`.
"""


def _partition_id(context: _HasNodeConfig) -> int:
    try:
        return int(context.node_config[NodeConfigKey.PARTITION_ID])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"node config has no integer {NodeConfigKey.PARTITION_ID!r}") from exc


@dataclass(frozen=True)
class PartitionFiles:
    """Data of simulated client ``partition-id`` from a :class:`PartitionDirectory`."""

    directory: PartitionDirectory

    def __call__(self, context: _HasNodeConfig) -> LocalDataSource:
        return self.directory.source(_partition_id(context))


@dataclass(frozen=True, eq=False)
class InMemoryPartitions:
    """Data of simulated client ``partition-id`` from a list held in memory (in-process runs)."""

    sources: tuple[LocalDataSource, ...]

    def __call__(self, context: _HasNodeConfig) -> LocalDataSource:
        index = _partition_id(context)
        if not 0 <= index < len(self.sources):
            raise ConfigError(f"partition-id {index} out of range [0, {len(self.sources)})")
        return self.sources[index]


@dataclass(frozen=True)
class NodeConfigDataPath:
    """A SuperNode's data: the ``.npz`` named by its node config key ``data-path``."""

    key: str = NodeConfigKey.DATA_PATH

    def __call__(self, context: _HasNodeConfig) -> LocalDataSource:
        value = context.node_config.get(self.key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"node config has no {self.key!r}")
        return NpzDataSource(Path(value))
