"""An accepted candidate becomes a release: compressed for the class's build profile, a model
version in the catalog, a signed full bundle and its deltas in the bundle index, a staged
rollout.

Each step is one method of :class:`Release`; the pipeline (:mod:`cloud_hub.loop.pipeline`)
calls them in order and records the run's state between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloud_hub.errors import GateRefusedError, HubError
from cloud_hub.keys import KeyStore
from cloud_hub.loop.champion import Arrays, artifact_faces_champion
from cloud_hub.loop.config import LoopConfig
from cloud_hub.registry import Registry, catalog
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry.bundle_index import register_bundle_bytes

if TYPE_CHECKING:
    from cloud_hub.loop.pipeline import RetrainPipeline

__all__ = ["Release", "RolloutStarter", "ShippedBundles"]


class RolloutStarter(Protocol):
    """The part of :class:`cloud_hub.rollout.engine.RolloutService` the loop uses."""

    def create(self, config: Any, *, created_by: str = "") -> Any: ...

    def start(self, rollout_id: str) -> Any: ...


@dataclass(frozen=True)
class ShippedBundles:
    """The release's signed full bundle and the deltas built against what devices run."""

    bundle_id: str
    bytes: int
    deltas: dict[str, int] = field(default_factory=dict)  # delta bundle id -> bytes

    def to_metrics(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "bytes": self.bytes, "deltas": self.deltas}


@dataclass(frozen=True)
class Release:
    """The pipeline's parts a release needs (read from the pipeline at call time)."""

    registry: Registry
    keys: KeyStore
    config: LoopConfig
    validation: Arrays
    calibration: Arrays
    rollouts: RolloutStarter | None
    clock: Callable[[], float]

    @classmethod
    def of(cls, pipeline: RetrainPipeline) -> Release:
        return cls(
            registry=pipeline.registry,
            keys=pipeline.keys,
            config=pipeline.config,
            validation=pipeline.validation,
            calibration=pipeline.calibration,
            rollouts=pipeline.rollouts,
            clock=pipeline.clock,
        )

    def next_version(self, device_class: str) -> int:
        """One above every version the catalog or the bundle store knows for the model."""
        from cloud_hub.bundles import default_store

        with self.registry.session() as s:
            versions = [v.version for v in catalog.list_model_versions(s, self.config.model_name)]
        stored = default_store(self.keys).latest_version(self.config.model_name, device_class)
        return max([0, stored, *versions]) + 1

    def compress(
        self,
        run_id: str,
        device_class: str,
        state: dict[str, Any],
        champion_accuracy: float | None,
    ) -> Any:
        """The candidate compressed for the class's profile; ``HubError`` when the profile's
        gate or the champion rule (:func:`artifact_faces_champion`) refuses it."""
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
        artifact_faces_champion(
            artifact.artifact_path,
            champion_accuracy,
            profile.budgets.max_accuracy_drop_pts,
            self.validation,
        )
        return artifact

    def add_model_version(
        self,
        version: int,
        *,
        run_id: str,
        parent_version: int | None,
        lineage: dict[str, Any],
        metrics: dict[str, Any],
    ) -> None:
        """The new version in the catalog, with its lineage (what it was built from)."""
        with self.registry.session() as s:
            catalog.add_model_version(
                s,
                self.config.model_name,
                version,
                parent_version=parent_version,
                training_run_id=run_id,
                lineage=lineage,
                metrics=metrics,
                now=self.clock(),
            )

    def ship_bundles(
        self,
        device_class: str,
        version: int,
        directory: Path,
        lineage: dict[str, Any],
        accuracy: float,
    ) -> ShippedBundles:
        """The signed full bundle, and (when the loop builds deltas) a delta from each bundle
        the class's devices run, all registered in the bundle index."""
        bundle_id, size = self._full_bundle(device_class, version, directory, lineage, accuracy)
        deltas = self._deltas(device_class, bundle_id) if self.config.build_deltas else {}
        return ShippedBundles(bundle_id, size, deltas)

    def _full_bundle(
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

    def _installed_bundles(self, device_class: str) -> set[str]:
        with self.registry.session() as s:
            page = device_repo.list_devices(
                s, device_repo.DeviceQuery(device_class=device_class, limit=1000)
            )
            return {d.installed_bundle_id for d in page.items if d.installed_bundle_id}

    def create_rollout(self, bundle_id: str, device_class: str, run_id: str) -> str:
        """A staged rollout of ``bundle_id`` to the class, with the loop's stages and gates
        (created, not started)."""
        from cloud_hub.rollout import RolloutConfig

        if self.rollouts is None:
            raise HubError("no rollout service to create the release's rollout")
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
