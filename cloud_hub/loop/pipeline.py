"""One retraining run, end to end, every step recorded in the registry.

Steps (the training run's ``state`` says where it is; ``detail`` why it stopped)::

    training      Flower run with SecAgg+, the cohort as clients: by default on the devices
                  over the Deployment Engine (``device_training``); on the in-process grid
                  from the champion's weights when ``training_engine = "inprocess"``; a class
                  in asynchronous mode trains in FedBuff buffers (SecAgg+ each) instead,
                  ordering only the devices the eligibility rules find fit
    evaluating    candidate vs champion on the hub's validation set (a worse one is refused)
    compressing   compress_for_profile for the class's build profile (gate may refuse)
    bundling      signed full bundle (+ delta bundles against the versions devices run)
    awaiting_approval | rolling_out     canary rollout created (started unless approval needed)
    refused | failed                    terminal, with the reason

The model version carries its lineage (training run, parent version, cohort, data
fingerprint, federated config) and the bundle manifest repeats it, so a version can be
rebuilt from what the registry holds.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import GateRefusedError, HubError
from cloud_hub.keys import KeyStore
from cloud_hub.loop.async_training import AsyncTraining, Trained
from cloud_hub.loop.cohort import CohortData
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining
from cloud_hub.loop.run_states import RunState, RunStep, next_run_state
from cloud_hub.registry import Registry, admin, catalog
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry.bundle_index import register_bundle_bytes
from shared.errors import FedfleetError

__all__ = ["Champion", "RetrainOutcome", "RetrainPipeline", "RolloutStarter"]

log = logging.getLogger(__name__)

Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]


class RolloutStarter(Protocol):
    """The part of :class:`cloud_hub.rollout.engine.RolloutService` the loop uses."""

    def create(self, config: Any, *, created_by: str = "") -> Any: ...

    def start(self, rollout_id: str) -> Any: ...


@dataclass(frozen=True)
class Champion:
    """The version most devices of the class run, and its weights (if the hub trained it)."""

    version: int
    bundle_id: str
    training_run_id: str | None


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


def torch_accuracy(model_name: str, state: dict[str, Any], data: Arrays) -> float:
    import torch

    from shared.models import build_model

    model = build_model(model_name)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(data[0], dtype=np.float32)))
    return float((logits.argmax(1).numpy() == data[1]).mean())


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

    # -- registry reads ---------------------------------------------------------------------
    def champion(self, device_class: str) -> Champion | None:
        """The (version, bundle) most of the class's devices have installed."""
        with self.registry.session() as s:
            page = device_repo.list_devices(
                s, device_repo.DeviceQuery(device_class=device_class, limit=1000)
            )
            counts = collections.Counter(
                (d.installed_version, d.installed_bundle_id)
                for d in page.items
                if d.installed_model == self.config.model_name
                and d.installed_version is not None
                and d.installed_bundle_id
            )
            if not counts:
                return None
            (version, bundle_id), _n = counts.most_common(1)[0]
            try:
                run_id = catalog.get_model_version(
                    s, self.config.model_name, int(version)
                ).training_run_id
            except HubError:
                run_id = None
        return Champion(int(version), str(bundle_id), run_id)

    def _installed_bundles(self, device_class: str) -> set[str]:
        with self.registry.session() as s:
            page = device_repo.list_devices(
                s, device_repo.DeviceQuery(device_class=device_class, limit=1000)
            )
            return {d.installed_bundle_id for d in page.items if d.installed_bundle_id}

    def _next_version(self, device_class: str) -> int:
        from cloud_hub.bundles import default_store

        with self.registry.session() as s:
            versions = [v.version for v in catalog.list_model_versions(s, self.config.model_name)]
        stored = default_store(self.keys).latest_version(self.config.model_name, device_class)
        return max([0, stored, *versions]) + 1

    # -- the run ----------------------------------------------------------------------------
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

    def _fail(self, run_id: str, detail: str) -> None:
        try:
            self._advance(run_id, RunStep.FAIL, detail=detail[:2000], finished_at=self.clock())
        except HubError as exc:  # e.g. the rollout was already started: the run stands
            log.warning("training run %s not marked failed: %s", run_id, exc)

    def _run(
        self,
        run_id: str,
        device_class: str,
        cohort: list[str],
        record: dict[str, Any],
        timings: dict[str, float],
    ) -> RetrainOutcome:
        cfg = self.config
        t0 = time.perf_counter()
        champion = self.champion(device_class)
        champion_state = None
        if champion is not None and champion.training_run_id:
            try:
                champion_state = self.model_store.load_state_dict(champion.training_run_id)
            except HubError:
                champion_state = None
        trained = self._train(run_id, cohort, champion_state, record, champion)
        record = {
            **record,
            "clients": list(trained.clients),
            "parent_version": None if champion is None else champion.version,
        }
        timings["train"] = time.perf_counter() - t0

        # -- evaluate: candidate vs champion on the hub's validation set
        self._advance(run_id, RunStep.TRAINED, metrics={"fl": trained.summary})
        state = self.model_store.load_state_dict(run_id)
        cand_acc = torch_accuracy(cfg.model_name, state, self.validation)
        champ_acc = (
            None
            if champion_state is None
            else torch_accuracy(cfg.model_name, champion_state, self.validation)
        )
        metrics: dict[str, Any] = {
            "candidate_accuracy": cand_acc,
            "champion_accuracy": champ_acc,
            "champion_version": None if champion is None else champion.version,
            "rounds": trained.rounds,
            "fl_wall_s": trained.wall_s,
            "engine": cfg.training_engine,
            "mode": record.get("mode", "sync"),
        }
        if "buffers" in trained.summary:  # async: each buffer's devices, versions, staleness
            metrics["buffers"] = trained.summary["buffers"]
        if "eligibility" in trained.summary:  # async: who could take an order, why not
            metrics["eligibility"] = trained.summary["eligibility"]
        if champ_acc is not None and cand_acc < champ_acc + cfg.min_improvement:
            detail = (
                f"candidate accuracy {cand_acc:.4f} does not beat champion "
                f"v{champion.version if champion else '?'} {champ_acc:.4f} (+{cfg.min_improvement})"
            )
            refused = self._advance(
                run_id, RunStep.REFUSED, metrics=metrics, detail=detail, finished_at=self.clock()
            )
            return RetrainOutcome(
                run_id,
                refused.value,
                device_class,
                detail=detail,
                candidate_accuracy=cand_acc,
                champion_accuracy=champ_acc,
                timings_s=timings,
            )

        # -- compress for the class's build profile
        t1 = time.perf_counter()
        self._advance(run_id, RunStep.ACCEPTED, metrics=metrics)
        version = self._next_version(device_class)
        artifact = self._compress(run_id, device_class, state, champ_acc)
        metrics["compression"] = artifact.metrics.to_dict()
        timings["compress"] = time.perf_counter() - t1
        lineage = {
            "training_run_id": run_id,
            "parent_version": None if champion is None else champion.version,
            "trigger": record.get("reason", ""),
            "cohort": list(trained.clients),
            "data_fingerprint": trained.data_fingerprint,
            "federated": trained.fl_lineage,
            "profile": artifact.profile.name,
        }
        with self.registry.session() as s:
            catalog.add_model_version(
                s,
                cfg.model_name,
                version,
                parent_version=None if champion is None else champion.version,
                training_run_id=run_id,
                lineage=lineage,
                metrics={"validation_accuracy": cand_acc, **artifact.metrics.to_dict()},
                now=self.clock(),
            )

        # -- bundles: full + deltas against what devices run
        t2 = time.perf_counter()
        self._advance(run_id, RunStep.COMPRESSED, metrics=metrics, result_version=version)
        bundle_id, size = self._bundle(device_class, version, artifact.directory, lineage, cand_acc)
        deltas = self._deltas(device_class, bundle_id) if cfg.build_deltas else {}
        timings["bundle"] = time.perf_counter() - t2
        metrics["bundle"] = {"bundle_id": bundle_id, "bytes": size, "deltas": deltas}

        # -- rollout
        rollout_id = None
        step = RunStep.REGISTERED
        if self.rollouts is not None:
            rollout_id = self._create_rollout(bundle_id, device_class, run_id)
            if cfg.policy.require_approval:
                step = RunStep.AWAITING
            else:
                self.rollouts.start(rollout_id)
                step = RunStep.ROLLOUT_STARTED
        record = {**record, "rollout_id": rollout_id, "bundle_id": bundle_id}
        final = self._advance(
            run_id,
            step,
            config=record,
            metrics=metrics,
            detail=f"v{version} bundle {bundle_id}"
            + (f", rollout {rollout_id}" if rollout_id else ""),
            finished_at=self.clock() if step is not RunStep.AWAITING else None,
        )
        log.info("training run %s: %s v%d (acc %.4f)", run_id, final.value, version, cand_acc)
        return RetrainOutcome(
            run_id,
            final.value,
            device_class,
            version=version,
            candidate_accuracy=cand_acc,
            champion_accuracy=champ_acc,
            bundle_id=bundle_id,
            bundle_bytes=size,
            delta_bundles=deltas,
            rollout_id=rollout_id,
            timings_s=timings,
        )

    # -- steps ------------------------------------------------------------------------------
    def _train(
        self,
        run_id: str,
        cohort: list[str],
        champion_state: dict[str, Any] | None,
        record: dict[str, Any],
        champion: Champion | None,
    ) -> Trained:
        """Federated training with SecAgg+; the candidate lands in the model store."""
        from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated

        cfg = self.config
        need = cfg.policy.min_devices
        sources: dict[str, Any] = {}
        if cfg.training_engine == "inprocess":
            if self.cohort_data is None:
                raise HubError("training_engine 'inprocess' needs the cohort's data (CohortData)")
            sources = self.cohort_data.sources(
                cohort, limit=cfg.max_samples_per_device, minimum=cfg.min_samples_per_device
            )
            clients = sorted(sources)
        else:  # the devices check their own data; the hub never reads it
            clients = sorted(cohort)
        if len(clients) < need:
            raise HubError(
                f"only {len(clients)} of the cohort's {len(cohort)} devices can train "
                f"(>= {cfg.min_samples_per_device} labelled samples); need {need}"
            )
        self._record(
            run_id,
            config={
                **record,
                "clients": clients,
                "engine": cfg.training_engine,
                "parent_version": None if champion is None else champion.version,
            },
        )
        fl_config = FederatedRunConfig(
            model_name=cfg.model_name,
            num_clients=len(clients),
            num_rounds=cfg.num_rounds,
            min_fit_clients=len(clients),
            local_epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            secagg=SecAggConfig(enabled=cfg.secagg),
            engine="inprocess",
            seed=cfg.seed,
        )
        if record.get("mode") == "async" and cfg.training_engine == "deployment":
            return AsyncTraining.of(self).on_devices(
                run_id, clients, fl_config, record, champion_state
            )
        if record.get("mode") == "async":
            return AsyncTraining.of(self).in_process(run_id, clients, sources, champion_state)
        if cfg.training_engine == "deployment":
            if self.deployment is None:
                raise HubError("training_engine 'deployment' needs a DeploymentTraining")
            started = time.perf_counter()
            summary = self.deployment.train(
                run_id,
                clients,
                fl_config,
                self.validation,
                self.model_store.root,
                max_samples=cfg.max_samples_per_device,
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

    def _compress(
        self,
        run_id: str,
        device_class: str,
        state: dict[str, Any],
        champion_accuracy: float | None,
    ) -> Any:
        from cloud_hub.compress import compress_for_profile, load_profile

        profile = load_profile(device_class, profiles_dir=self.config.profiles_dir)
        try:
            artifact = compress_for_profile(
                self.config.model_name,
                state,
                profile,
                calib=self.calibration,
                # the int8-vs-fp32 gate is judged on the distribution the reference
                # statistics describe; candidate-vs-champion used the validation set
                eval=self.calibration,
                out_dir=Path(self.config.work_dir) / "compressed" / run_id,
            )
        except GateRefusedError as exc:
            raise HubError(f"compression gate refused the candidate: {exc}") from exc
        self._face_champion(artifact, champion_accuracy, profile.budgets.max_accuracy_drop_pts)
        return artifact

    def _face_champion(
        self, artifact: Any, champion_accuracy: float | None, margin_pts: float
    ) -> None:
        """The artifact faces the champion on the data the candidate beat it on (the hub's
        validation set): it may trail the champion's fp32 accuracy there by at most the
        profile's quantization budget."""
        from cloud_hub.compress.evaluate import accuracy, onnx_predictor, predict, tflite_predictor

        if champion_accuracy is None:
            return
        path = Path(artifact.artifact_path)
        fn = tflite_predictor(path) if path.suffix == ".tflite" else onnx_predictor(path)
        x, y = self.validation
        got = accuracy(predict(fn, np.ascontiguousarray(x, dtype=np.float32)), y)
        if got * 100.0 + 1e-9 < champion_accuracy * 100.0 - margin_pts:
            raise HubError(
                f"compression gate refused the candidate: artifact accuracy {got * 100:.2f}% "
                f"on the validation set < champion {champion_accuracy * 100:.2f}% "
                f"- {margin_pts:.2f} pts"
            )

    def _bundle(
        self,
        device_class: str,
        version: int,
        directory: Path,
        lineage: dict[str, Any],
        accuracy: float,
    ) -> tuple[str, int]:
        from cloud_hub.bundles import BundleSpec, build_bundle_from_dir, default_store

        store = default_store(self.keys)
        built = build_bundle_from_dir(
            self.keys,
            store,
            BundleSpec(
                model_name=self.config.model_name,
                device_class=device_class,
                version=version,
                lineage=lineage,
                metrics={"validation_accuracy": accuracy},
            ),
            directory=directory,
        )
        with self.registry.session() as s:
            register_bundle_bytes(
                s,
                built.data,
                trust=store.trust(),
                path=str(store.path_of(built.bundle_id)),
                now=self.clock(),
            )
        return built.bundle_id, len(built.data)

    def _deltas(self, device_class: str, bundle_id: str) -> dict[str, int]:
        """Delta bundles from each bundle devices of the class run to ``bundle_id``, from the
        bundle store's delta cache (built there, verified first: R1), registered as deltas."""
        from cloud_hub.bundles import default_store
        from cloud_hub.delta import DeltaCache

        store = default_store(self.keys)

        def indexed(candidate: str) -> bool:
            with self.registry.session() as s:
                return catalog.find_bundle(s, candidate) is not None

        cache = DeltaCache(store, indexed=indexed)
        target = cache.target(bundle_id)
        out: dict[str, int] = {}
        for base_id in sorted(self._installed_bundles(device_class) - {bundle_id}):
            data = cache.delta(bundle_id, base_id, target=target)
            if data is None:
                continue
            with self.registry.session() as s:
                record = register_bundle_bytes(
                    s,
                    data,
                    trust=store.trust(),
                    path=str(store.delta_path(bundle_id, base_id)),
                    base_bundle_id=base_id,
                    now=self.clock(),
                )
            out[record.bundle_id] = len(data)
        return out

    def _create_rollout(self, bundle_id: str, device_class: str, run_id: str) -> str:
        from cloud_hub.rollout import RolloutConfig

        assert self.rollouts is not None
        cfg = self.config
        config = RolloutConfig.from_dict(
            {
                "name": f"retrain {run_id}",
                "bundle_id": bundle_id,
                "target": {"device_class": device_class},
                "stages": [dict(s) for s in cfg.rollout_stages],
                "gates": dict(cfg.rollout_gates),
                "gate_window_s": cfg.rollout_gate_window_s,
                "offline_timeout_s": cfg.rollout_offline_timeout_s,
                "seed": cfg.seed,
            }
        )
        status = self.rollouts.create(config, created_by=f"loop:{run_id}")
        return str(status.rollout_id)
