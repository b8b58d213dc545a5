"""The local fleet's sample stores as a cohort's training data, for the in-process grid.

Only a simulation can do this: every device of the demo, the benchmarks and the tests lives
on this machine, so their ``samples.db`` files can be read directly. The product never does
(its retraining runs on the devices over Flower's Deployment Engine,
``cloud_hub.loop.device_training``); this is the :class:`~cloud_hub.loop.cohort.CohortData`
of ``LoopConfig.training_engine = "inprocess"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import TrainingError
from shared.fl import ArrayDataSource, LocalDataSource
from shared.fl.sample_db import read_labelled_samples

__all__ = ["DeviceSampleStores"]


@dataclass(frozen=True)
class DeviceSampleStores:
    """Each device's ``samples.db`` (the agent's sample store), by device id."""

    stores: Mapping[str, Path]

    @classmethod
    def under(cls, root: Path, pattern: str = "*/state/samples.db") -> DeviceSampleStores:
        """Every ``ROOT/<device_id>/state/samples.db`` (the local fleet's layout)."""
        return cls({p.parent.parent.name: p for p in sorted(Path(root).glob(pattern))})

    def load(self, device_id: str, *, limit: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        path = self.stores.get(device_id)
        if path is None:
            return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        return read_labelled_samples(path, limit=limit)

    def sources(
        self, device_ids: Sequence[str], *, limit: int, minimum: int
    ) -> dict[str, LocalDataSource]:
        out: dict[str, LocalDataSource] = {}
        for device_id in device_ids:
            try:
                x, y = self.load(device_id, limit=limit)
            except Exception as exc:  # a broken store leaves that device out, loudly
                raise TrainingError(f"cannot read samples of {device_id}: {exc}") from exc
            if len(y) >= minimum:
                out[device_id] = ArrayDataSource(x, y)
        return out
