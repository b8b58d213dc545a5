"""One retraining run, end to end, every step recorded in the registry.

Steps (the training run's ``state`` says where it is; ``detail`` why it stopped), and the
module each one's work lives in (this module runs them in order and records the run)::

    training      Flower run with SecAgg+, the cohort as clients: by default on the devices
                  over the Deployment Engine (``device_training``); on the in-process grid
                  from the champion's weights when ``training_engine = "inprocess"``
                  (``cohort_training``); a class in asynchronous mode trains in FedBuff
                  buffers (SecAgg+ each) instead, ordering only the devices the eligibility
                  rules find fit (``async_training``)
    evaluating    candidate vs champion on the hub's validation set (a worse one is
                  refused; ``champion``)
    compressing   compress_for_profile for the class's build profile (gate may refuse;
                  ``release``, as are the next two)
    bundling      signed full bundle (+ delta bundles against the versions devices run)
    awaiting_approval | rolling_out     canary rollout created (started unless approval needed)
    refused | failed                    terminal, with the reason

The model version carries its lineage (training run, parent version, cohort, data
fingerprint, federated config) and the bundle manifest repeats it, so a version can be
rebuilt from what the registry holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubError
from cloud_hub.keys import KeyStore
from cloud_hub.loop.async_training import AsyncTraining, Trained
from cloud_hub.loop.champion import (
    Arrays,
    Champion,
    candidate_shortfall,
    champion_weights,
    find_champion,
    torch_accuracy,
)
from cloud_hub.loop.cohort import CohortData
from cloud_hub.loop.cohort_training import SyncTraining, federated_run_config, trainable_clients
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining
from cloud_hub.loop.release import Release, RolloutStarter, ShippedBundles
from cloud_hub.loop.run_states import RunState, RunStep, next_run_state
from cloud_hub.registry import Registry, admin
from shared.errors import FedfleetError

__all__ = ["Champion", "RetrainOutcome", "RetrainPipeline", "RolloutStarter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainOutcome:
    run_id: str
    state: str
    device_class: str
    version: int | None = None
    detail: str = ""
    candidate_accuracy: float | None = None
    champion_accuracy: float | None = None
    bundle_id: str | None = None
    bundle_bytes: int = 0
    delta_bundles: dict[str, int] = field(default_factory=dict)  # delta bundle id -> bytes
    rollout_id: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    """A trained candidate, judged against the champion on the hub's validation set."""

    run_id: str
    device_class: str
    trained: Trained
    champion: Champion | None
    state: dict[str, Any]  # the candidate's weights
    accuracy: float
    champion_accuracy: float | None
    shortfall: str  # why it does not beat the champion; "" when it does

    @property
    def parent_version(self) -> int | None:
        return _version_of(self.champion)


def _version_of(champion: Champion | None) -> int | None:
    return None if champion is None else champion.version


class RetrainPipeline:
    """Runs retraining runs for one model (see the module docstring)."""

    def __init__(
        self,
        *,
        registry: Registry,
        keys: KeyStore,
        rollouts: RolloutStarter | None,
        cohort_data: CohortData | None = None,
        validation: Arrays,
        calibration: Arrays,
        config: LoopConfig,
        deployment: DeploymentTraining | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from cloud_hub.fl import ModelStore

        self.registry = registry
        self.keys = keys
        self.rollouts = rollouts
        self.cohort_data = cohort_data
        self.validation = validation
        self.calibration = calibration
        self.config = config
        self.deployment = deployment
        self.clock = clock
        self.model_store = ModelStore(Path(config.work_dir) / "models")

    def champion(self, device_class: str) -> Champion | None:
        """The (version, bundle) most of the class's devices have installed."""
        return find_champion(self.registry, self.config.model_name, device_class)

    # -- the run's record -------------------------------------------------------------------
    def _record(self, run_id: str, **changes: Any) -> None:
        """Record facts of the run; its state moves only by :meth:`_advance`."""
        with self.registry.session() as s:
            admin.update_training_run(s, run_id, now=self.clock(), **changes)

    def _advance(self, run_id: str, step: RunStep, **changes: Any) -> RunState:
        """Move the run one step through :data:`cloud_hub.loop.run_states.TRANSITIONS`."""
        with self.registry.session() as s:
            state = next_run_state(admin.get_training_run(s, run_id).state, step)
            admin.update_training_run(s, run_id, now=self.clock(), state=state.value, **changes)
        return state

    def _fail(self, run_id: str, detail: str) -> None:
        try:
            self._advance(run_id, RunStep.FAIL, detail=detail[:2000], finished_at=self.clock())
        except HubError as exc:  # e.g. the rollout was already started: the run stands
            log.warning("training run %s not marked failed: %s", run_id, exc)

    # -- the run ----------------------------------------------------------------------------
    def run(
        self, device_class: str, cohort: Sequence[str], *, trigger: str, reason: str = ""
    ) -> RetrainOutcome:
        """Run every step; never raises for a failed step (the outcome and registry say)."""
        cfg = self.config
        run_id = (
            f"rt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:6]}"
        )
        record: dict[str, Any] = {
            "device_class": device_class,
            "cohort": list(cohort),
            "reason": reason,
            "num_rounds": cfg.num_rounds,
            "local_epochs": cfg.local_epochs,
            "secagg": cfg.secagg,
            "engine": cfg.training_engine,
            "mode": cfg.mode_of(device_class),
        }
        with self.registry.session() as s:
            admin.create_training_run(
                s,
                run_id=run_id,
                model_name=cfg.model_name,
                state=next_run_state(RunState.PENDING, RunStep.START).value,
                trigger=trigger,
                config=record,
                now=self.clock(),
            )
        timings: dict[str, float] = {}
        try:
            return self._run(run_id, device_class, list(cohort), record, timings)
        except (HubError, FedfleetError, OSError, ValueError, RuntimeError) as exc:
            log.warning("training run %s failed: %s", run_id, exc)
            self._fail(run_id, str(exc))
            return RetrainOutcome(
                run_id, RunState.FAILED.value, device_class, detail=str(exc), timings_s=timings
            )

    def _run(
        self,
        run_id: str,
        device_class: str,
        cohort: list[str],
        record: dict[str, Any],
        timings: dict[str, float],
    ) -> RetrainOutcome:
        started = time.perf_counter()
        champion = self.champion(device_class)
        champion_state = champion_weights(self.model_store, champion)
        trained = self._train(run_id, cohort, champion_state, record, champion)
        record = {
            **record,
            "clients": list(trained.clients),
            "parent_version": _version_of(champion),
        }
        timings["train"] = time.perf_counter() - started
        self._advance(run_id, RunStep.TRAINED, metrics={"fl": trained.summary})
        candidate = self._evaluate(run_id, device_class, trained, champion, champion_state)
        metrics = self._evaluation_metrics(candidate, record)
        if candidate.shortfall:
            return self._refuse(candidate, metrics, timings)
        return self._release(candidate, record, metrics, timings)

    # -- steps ------------------------------------------------------------------------------
    def _train(
        self,
        run_id: str,
        cohort: list[str],
        champion_state: dict[str, Any] | None,
        record: dict[str, Any],
        champion: Champion | None,
    ) -> Trained:
        """Federated training with SecAgg+ on the configured engine and mode; the candidate
        lands in the model store."""
        cfg = self.config
        clients, sources = trainable_clients(cfg, cohort, self.cohort_data)
        self._record(
            run_id,
            config={
                **record,
                "clients": clients,
                "engine": cfg.training_engine,
                "parent_version": _version_of(champion),
            },
        )
        fl_config = federated_run_config(cfg, len(clients))
        on_devices = cfg.training_engine == "deployment"
        if record.get("mode") == "async":
            asynchronous = AsyncTraining.of(self)
            if on_devices:
                return asynchronous.on_devices(run_id, clients, fl_config, record, champion_state)
            return asynchronous.in_process(run_id, clients, sources, champion_state)
        synchronous = SyncTraining.of(self)
        if on_devices:
            return synchronous.on_devices(run_id, clients, fl_config, champion_state)
        return synchronous.in_process(run_id, clients, sources, fl_config, champion_state)

    def _evaluate(
        self,
        run_id: str,
        device_class: str,
        trained: Trained,
        champion: Champion | None,
        champion_state: dict[str, Any] | None,
    ) -> _Candidate:
        """Candidate vs champion on the hub's validation set."""
        name = self.config.model_name
        state = self.model_store.load_state_dict(run_id)
        accuracy = torch_accuracy(name, state, self.validation)
        champion_accuracy = (
            None
            if champion_state is None
            else torch_accuracy(name, champion_state, self.validation)
        )
        shortfall = candidate_shortfall(
            accuracy, champion_accuracy, _version_of(champion), self.config.min_improvement
        )
        return _Candidate(
            run_id=run_id,
            device_class=device_class,
            trained=trained,
            champion=champion,
            state=state,
            accuracy=accuracy,
            champion_accuracy=champion_accuracy,
            shortfall=shortfall,
        )

    def _evaluation_metrics(self, candidate: _Candidate, record: dict[str, Any]) -> dict[str, Any]:
        trained = candidate.trained
        metrics: dict[str, Any] = {
            "candidate_accuracy": candidate.accuracy,
            "champion_accuracy": candidate.champion_accuracy,
            "champion_version": candidate.parent_version,
            "rounds": trained.rounds,
            "fl_wall_s": trained.wall_s,
            "engine": self.config.training_engine,
            "mode": record.get("mode", "sync"),
        }
        # async: each buffer's devices, versions, staleness; who could take an order, why not
        for key in ("buffers", "eligibility"):
            if key in trained.summary:
                metrics[key] = trained.summary[key]
        return metrics

    def _refuse(
        self, candidate: _Candidate, metrics: dict[str, Any], timings: dict[str, float]
    ) -> RetrainOutcome:
        refused = self._advance(
            candidate.run_id,
            RunStep.REFUSED,
            metrics=metrics,
            detail=candidate.shortfall,
            finished_at=self.clock(),
        )
        return RetrainOutcome(
            candidate.run_id,
            refused.value,
            candidate.device_class,
            detail=candidate.shortfall,
            candidate_accuracy=candidate.accuracy,
            champion_accuracy=candidate.champion_accuracy,
            timings_s=timings,
        )

    def _release(
        self,
        candidate: _Candidate,
        record: dict[str, Any],
        metrics: dict[str, Any],
        timings: dict[str, float],
    ) -> RetrainOutcome:
        """Compress, add the model version, sign and register the bundles, roll out."""
        run_id, device_class = candidate.run_id, candidate.device_class
        release = Release.of(self)
        started = time.perf_counter()
        self._advance(run_id, RunStep.ACCEPTED, metrics=metrics)
        version = release.next_version(device_class)
        artifact = release.compress(
            run_id, device_class, candidate.state, candidate.champion_accuracy
        )
        metrics["compression"] = artifact.metrics.to_dict()
        timings["compress"] = time.perf_counter() - started
        lineage = {
            "training_run_id": run_id,
            "parent_version": candidate.parent_version,
            "trigger": record.get("reason", ""),
            "cohort": list(candidate.trained.clients),
            "data_fingerprint": candidate.trained.data_fingerprint,
            "federated": candidate.trained.fl_lineage,
            "profile": artifact.profile.name,
        }
        release.add_model_version(
            version,
            run_id=run_id,
            parent_version=candidate.parent_version,
            lineage=lineage,
            metrics={"validation_accuracy": candidate.accuracy, **artifact.metrics.to_dict()},
        )
        started = time.perf_counter()
        self._advance(run_id, RunStep.COMPRESSED, metrics=metrics, result_version=version)
        shipped = release.ship_bundles(
            device_class, version, artifact.directory, lineage, candidate.accuracy
        )
        timings["bundle"] = time.perf_counter() - started
        metrics["bundle"] = shipped.to_metrics()
        return self._roll_out(release, candidate, version, shipped, record, metrics, timings)

    def _roll_out(
        self,
        release: Release,
        candidate: _Candidate,
        version: int,
        shipped: ShippedBundles,
        record: dict[str, Any],
        metrics: dict[str, Any],
        timings: dict[str, float],
    ) -> RetrainOutcome:
        """A staged rollout of the bundle (started unless the policy wants approval); the
        run ends ``registered`` when the hub has no rollout service."""
        run_id, bundle_id = candidate.run_id, shipped.bundle_id
        rollout_id = None
        step = RunStep.REGISTERED
        if self.rollouts is not None:
            rollout_id = release.create_rollout(bundle_id, candidate.device_class, run_id)
            if self.config.policy.require_approval:
                step = RunStep.AWAITING
            else:
                self.rollouts.start(rollout_id)
                step = RunStep.ROLLOUT_STARTED
        final = self._advance(
            run_id,
            step,
            config={**record, "rollout_id": rollout_id, "bundle_id": bundle_id},
            metrics=metrics,
            detail=f"v{version} bundle {bundle_id}"
            + (f", rollout {rollout_id}" if rollout_id else ""),
            finished_at=self.clock() if step is not RunStep.AWAITING else None,
        )
        log.info(
            "training run %s: %s v%d (acc %.4f)", run_id, final.value, version, candidate.accuracy
        )
        return RetrainOutcome(
            run_id,
            final.value,
            candidate.device_class,
            version=version,
            candidate_accuracy=candidate.accuracy,
            champion_accuracy=candidate.champion_accuracy,
            bundle_id=bundle_id,
            bundle_bytes=shipped.bytes,
            delta_bundles=shipped.deltas,
            rollout_id=rollout_id,
            timings_s=timings,
        )
