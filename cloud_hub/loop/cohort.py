"""Where a retraining cohort's training data comes from.

The product trains where the data is: Flower's Deployment Engine
(:mod:`cloud_hub.loop.device_training`). The hub starts a SuperLink, sends each cohort
device a signed ``TrainCommand``, and every device's SuperNode trains on its own sample
store (``edge_agent.fl``); raw samples never leave the device and the hub never opens a
sample store. That is ``LoopConfig.training_engine = "deployment"``, the default.

``training_engine = "inprocess"`` runs the same ServerApp, ClientApp and SecAgg+ mod on
Flower's in-process grid (``run_federated``) in the hub's process, fed by a
:class:`CohortData` the caller supplies. Simulations and tests use it (their "devices" are
arrays or sample stores on one machine, see ``simulations.demo.sample_stores``); nothing in
the product implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.fl import LocalDataSource

__all__ = ["CohortData"]


class CohortData(Protocol):
    """Labelled training data of the given devices (devices without enough are omitted)."""

    def sources(
        self, device_ids: Sequence[str], *, limit: int, minimum: int
    ) -> dict[str, LocalDataSource]: ...
