"""Training the retraining cohort: which of its devices can train, the Flower run config, and
the synchronous paths on both engines.

``SyncTraining.on_devices``: Flower + SecAgg+ on the devices over the Deployment Engine
(:class:`~cloud_hub.loop.device_training.DeploymentTraining`; the devices check their own
data, the hub never reads it). ``SyncTraining.in_process``: the same ServerApp, ClientApp and
SecAgg+ on the in-process grid, fed by the caller's :class:`~cloud_hub.loop.cohort.CohortData`.
Both start from the champion's weights when the hub has them. A class in asynchronous mode
trains in FedBuff buffers instead (:mod:`cloud_hub.loop.async_training`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud_hub.errors import HubError
from cloud_hub.loop.async_training import Trained
from cloud_hub.loop.cohort import CohortData
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining

if TYPE_CHECKING:
    from cloud_hub.fl.config import FederatedRunConfig
    from cloud_hub.fl.model_store import ModelStore
    from cloud_hub.loop.pipeline import RetrainPipeline

__all__ = ["SyncTraining", "federated_run_config", "trainable_clients"]


def trainable_clients(
    config: LoopConfig, cohort: Sequence[str], cohort_data: CohortData | None
) -> tuple[list[str], dict[str, Any]]:
    """The cohort's devices that train (sorted) and, in process, their data sources.

    In process, only devices with at least ``min_samples_per_device`` labelled samples train;
    on the devices, every cohort device is ordered and checks its own data. ``HubError`` when
    fewer than the policy's ``min_devices`` remain.
    """
    sources: dict[str, Any] = {}
    if config.training_engine == "inprocess":
        if cohort_data is None:
            raise HubError("training_engine 'inprocess' needs the cohort's data (CohortData)")
        sources = cohort_data.sources(
            cohort, limit=config.max_samples_per_device, minimum=config.min_samples_per_device
        )
        clients = sorted(sources)
    else:  # the devices check their own data; the hub never reads it
        clients = sorted(cohort)
    need = config.policy.min_devices
    if len(clients) < need:
        raise HubError(
            f"only {len(clients)} of the cohort's {len(cohort)} devices can train "
            f"(>= {config.min_samples_per_device} labelled samples); need {need}"
        )
    return clients, sources


def federated_run_config(config: LoopConfig, num_clients: int) -> FederatedRunConfig:
    """The loop's settings as a ``FederatedRunConfig`` for ``num_clients`` (every one fits)."""
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig

    return FederatedRunConfig(
        model_name=config.model_name,
        num_clients=num_clients,
        num_rounds=config.num_rounds,
        min_fit_clients=num_clients,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        secagg=SecAggConfig(enabled=config.secagg),
        engine="inprocess",
        seed=config.seed,
    )


@dataclass(frozen=True)
class SyncTraining:
    """The pipeline's parts a synchronous run needs (read from the pipeline at call time)."""

    config: LoopConfig
    validation: tuple[Any, Any]
    model_store: ModelStore
    deployment: DeploymentTraining | None

    @classmethod
    def of(cls, pipeline: RetrainPipeline) -> SyncTraining:
        return cls(
            config=pipeline.config,
            validation=pipeline.validation,
            model_store=pipeline.model_store,
            deployment=pipeline.deployment,
        )

    def on_devices(
        self,
        run_id: str,
        clients: list[str],
        fl_config: FederatedRunConfig,
        champion_state: dict[str, Any] | None,
    ) -> Trained:
        """SecAgg+ rounds on the devices over the Deployment Engine; the global model lands
        in the model store under ``run_id``."""
        if self.deployment is None:
            raise HubError("training_engine 'deployment' needs a DeploymentTraining")
        started = time.perf_counter()
        summary = self.deployment.train(
            run_id,
            clients,
            fl_config,
            self.validation,
            self.model_store.root,
            max_samples=self.config.max_samples_per_device,
            initial_state=champion_state,
        )
        return Trained(
            clients=tuple(clients),
            summary=summary,
            rounds=list(summary.get("rounds", [])),
            wall_s=time.perf_counter() - started,
            data_fingerprint="on-device",
            fl_lineage=summary.get("lineage") or fl_config.lineage(),  # what ran
        )

    def in_process(
        self,
        run_id: str,
        clients: list[str],
        sources: dict[str, Any],
        fl_config: FederatedRunConfig,
        champion_state: dict[str, Any] | None,
    ) -> Trained:
        """SecAgg+ rounds on the in-process grid, one client per device's data source."""
        from cloud_hub.fl import run_federated

        result = run_federated(
            fl_config,
            [sources[c] for c in clients],
            self.validation,
            initial_state=champion_state,
            model_store=self.model_store,
            run_id=run_id,
        )
        return Trained(
            clients=tuple(clients),
            summary=result.summary(),
            rounds=[r.to_dict() for r in result.rounds],
            wall_s=result.wall_s,
            data_fingerprint=result.data_fingerprint,
            fl_lineage=result.lineage(),  # what ran (the mask generator the hub unmasked with)
        )
