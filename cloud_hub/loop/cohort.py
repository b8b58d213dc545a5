"""Where a retraining cohort's training data comes from.

The production path is Flower's Deployment Engine: the hub starts a SuperLink, sends each
cohort device a ``TrainCommand``, and every device's SuperNode trains on its own sample
store (``edge_agent.fl``) — raw samples never leave the device. The demo, the benchmark and
the tests run every device on this machine, and there the controller uses
``run_federated`` (Flower's own ServerApp/ClientApp with SecAgg+, in-process grid) fed by
each device's sample store read from its state directory. The Deployment Engine path
(SuperLink + one SuperNode per device) costs 15-20 s per SecAgg+ round on a 2-core machine
(``benchmarks/deploy.py``) against well under a second in-process, and its ServerApp
starts from fresh weights, not the champion's; it does not fit a short demo. Both paths
train the same ClientApp code (``shared.fl.client``) with the same hardened SecAgg+ mod. The device side of the Deployment Engine path exists
(``edge_agent.fl.train_command``: a ``TrainCommand`` starts a SuperNode on the device's
sample store; the demo's devices register it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import TrainingError
from shared.fl import ArrayDataSource, LocalDataSource
from shared.fl.sample_db import read_labelled_samples

__all__ = ["CohortData", "DeviceSampleStores"]


class CohortData(Protocol):
    """Labelled training data of the given devices (devices without enough are omitted)."""

    def sources(
        self, device_ids: Sequence[str], *, limit: int, minimum: int
    ) -> dict[str, LocalDataSource]: ...


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
