"""Asynchronous (FedBuff) training for the retraining pipeline, on both engines.

``in_process``: buffers under SecAgg+ on the in-process grid (:func:`run_buffered`), orders
only to eligible devices, the order ledger in the registry. ``on_devices``: the asynchronous
FAB over the Deployment Engine; the eligibility gate judges the cohort before any order is
signed, and each ordered device enters the registry's ledger when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud_hub.errors import HubError
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining
from cloud_hub.registry import Registry

if TYPE_CHECKING:
    from cloud_hub.fl.model_store import ModelStore
    from cloud_hub.loop.pipeline import RetrainPipeline

__all__ = ["AsyncTraining", "Trained"]


@dataclass(frozen=True)
class Trained:
    """What a training path hands the pipeline: the clients, the run's summary and rounds, and
    the lineage of what ran."""

    clients: tuple[str, ...]
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    wall_s: float
    data_fingerprint: str
    fl_lineage: dict[str, Any]


@dataclass(frozen=True)
class AsyncTraining:
    """The pipeline's parts an asynchronous run needs (read from the pipeline at call time)."""

    registry: Registry
    config: LoopConfig
    validation: tuple[Any, Any]
    model_store: ModelStore
    deployment: DeploymentTraining | None
    clock: Callable[[], float]
    record: Callable[..., None]

    @classmethod
    def of(cls, pipeline: RetrainPipeline) -> AsyncTraining:
        return cls(
            registry=pipeline.registry,
            config=pipeline.config,
            validation=pipeline.validation,
            model_store=pipeline.model_store,
            deployment=pipeline.deployment,
            clock=pipeline.clock,
            record=pipeline._record,
        )

    def in_process(
        self,
        run_id: str,
        clients: list[str],
        sources: dict[str, Any],
        champion_state: dict[str, Any] | None,
    ) -> Trained:
        """FedBuff buffers under SecAgg+ (:func:`cloud_hub.fl.async_federated.run_buffered`):
        orders only to eligible devices, the order ledger in the registry."""
        from cloud_hub.fl.async_federated import run_buffered
        from cloud_hub.fl.fleet_conditions import RegistryEligibility
        from cloud_hub.fl.registry_ledger import RegistryOrderLedger

        cfg = self.config
        config = self.buffered_config()
        result = run_buffered(
            config,
            [sources[c] for c in clients],
            self.validation,
            run_id=run_id,
            initial_state=champion_state,
            model_store=self.model_store,
            device_names=clients,
            gate=RegistryEligibility(
                self.registry, cfg.async_eligibility, run_id=run_id, clock=self.clock
            ),
            ledger=RegistryOrderLedger(self.registry, run_id, clock=self.clock),
        )
        summary = result.summary()
        return Trained(
            clients=tuple(clients),
            summary=summary,
            rounds=list(summary["versions"]),
            wall_s=result.wall_s,
            data_fingerprint=result.data_fingerprint,
            fl_lineage=config.lineage(),
        )

    def buffered_config(self) -> Any:
        """The loop's asynchronous settings as a ``BufferedRunConfig`` (both engines)."""
        from cloud_hub.fl.async_federated import BufferedRunConfig
        from cloud_hub.fl.fedbuff import FedBuffConfig

        cfg = self.config
        return BufferedRunConfig(
            model_name=cfg.model_name,
            fedbuff=FedBuffConfig(
                buffer_size=cfg.async_buffer_size,
                server_lr=cfg.async_server_lr,
                max_staleness=cfg.async_max_staleness,
            ),
            buffers=cfg.async_buffers,
            local_epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed,
        )

    def on_devices(
        self,
        run_id: str,
        clients: list[str],
        fl_config: Any,
        record: dict[str, Any],
        champion_state: dict[str, Any] | None,
    ) -> Trained:
        """FedBuff buffers on the devices over the Deployment Engine: the eligibility gate
        judges the cohort before any order is signed, and only the devices it finds fit get
        one; each holds its update in its own state until a secure buffer folds it."""
        import dataclasses

        from cloud_hub.fl.fleet_conditions import RegistryEligibility

        cfg = self.config
        if self.deployment is None:
            raise HubError("training_engine 'deployment' needs a DeploymentTraining")
        gate = RegistryEligibility(
            self.registry, cfg.async_eligibility, run_id=run_id, clock=self.clock
        )
        report = gate(clients)
        eligible = sorted(report.eligible)
        self.record(run_id, metrics={"eligibility": [report.to_dict()]})
        if len(eligible) < cfg.async_buffer_size:
            raise HubError(
                f"only {len(eligible)} of {len(clients)} devices may take an asynchronous "
                f"order ({report.summary()}); a buffer needs {cfg.async_buffer_size}"
            )
        self.record(run_id, config={**record, "clients": eligible})
        config = self.buffered_config()
        started = time.perf_counter()
        summary = self.deployment.train(
            run_id,
            eligible,
            dataclasses.replace(
                fl_config, num_clients=len(eligible), min_fit_clients=len(eligible)
            ),
            self.validation,
            self.model_store.root,
            max_samples=cfg.max_samples_per_device,
            initial_state=champion_state,
            buffered={
                "devices": len(eligible),
                "buffer_size": config.fedbuff.buffer_size,
                "buffers": config.buffers,
                "server_lr": config.fedbuff.server_lr,
                "max_staleness": config.fedbuff.max_staleness,
                "seed": config.seed,
            },
        )
        summary = {**summary, "eligibility": [report.to_dict()]}
        self._record_device_orders(run_id, report)
        return Trained(
            clients=tuple(eligible),
            summary=summary,
            rounds=list(summary.get("versions", [])),
            wall_s=time.perf_counter() - started,
            data_fingerprint="on-device",
            fl_lineage={**config.lineage(), "engine": "deployment"},
        )

    def _record_device_orders(self, run_id: str, report: Any) -> None:
        """The SuperLink knows devices by node id only, so each ordered device's order enters
        the registry's ledger when the run ends, as trained ("held": which node's update went
        into which buffer stays on the devices), with the labelled samples it had when it was
        ordered: the next run counts its new samples from there."""
        from cloud_hub.registry import async_orders

        now = self.clock()
        with self.registry.session() as s:
            for verdict in report.verdicts:
                if verdict.eligible:
                    async_orders.issue_order(
                        s,
                        order_id=f"{run_id}/{verdict.device}",
                        run_id=run_id,
                        node_id=0,
                        base_version=0,
                        state="held",
                        now=now,
                        device_id=verdict.device,
                        labelled_samples=verdict.labelled_samples,
                    )
