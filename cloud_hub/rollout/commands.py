"""Rollout commands: create, start, pause, resume, abort, rollback, resolve — registry writes
that need no rollout engine in this process.

Every command is a transaction over the registry (the rollout's ``revision`` guards
concurrent writers), so a ``serve --no-engine`` replica behind a load balancer answers them
like the hub that runs the engine: the engine, wherever it runs, picks the change up on its
next tick (:class:`~cloud_hub.rollout.engine.RolloutService` is these commands plus the
loop that delivers them).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence

from cloud_hub.errors import RolloutError
from cloud_hub.registry import Session, catalog, rollouts
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry.database import Registry
from cloud_hub.registry.errors import ConflictError
from cloud_hub.registry.records import StageSpec as StoredStage
from cloud_hub.rollout import _store as store
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.history import HistoryEntry, rollout_history
from cloud_hub.rollout.observe import device_states
from cloud_hub.rollout.planner import TargetableDevice, plan_stages
from cloud_hub.rollout.state import RolloutAction, RolloutState, apply_action, stage_name
from cloud_hub.rollout.status import RolloutStatus, rollout_status

__all__ = ["RolloutCommands"]

log = logging.getLogger("cloud_hub.rollout.engine")

S = RolloutState
HUB_ACTOR = "hub"  # a command made in the hub process, not through the API


def _refuse_held(s: Session, rollout_id: str, device_ids: Sequence[str]) -> None:
    """Refuse (409) to start a rollout whose targets include devices an unfinished rollout
    holds. A draft may be prepared meanwhile: it holds nobody, and its status warns."""
    note = store.held_note(store.held_devices(s, device_ids, exclude=rollout_id))
    if note:
        raise RolloutError(f"{note}; let them finish, or abort / resolve them first")


class RolloutCommands:
    """The operator's rollout commands over the registry (no delivery, no signing key).

    ``on_change`` is called after a command changed a rollout (the engine in this process,
    if any, ticks at once instead of at its next interval).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def create(
        self,
        config: RolloutConfig,
        *,
        previous_bundle_id: str | None = None,
        created_by: str = "",
        rollout_id: str | None = None,
    ) -> RolloutStatus:
        """Store a new rollout in ``draft``. The previous bundle (the rollback target)
        defaults to the newest registered bundle of the same model and device class with a
        lower version."""
        now = self.clock()
        if config.seed is None:  # recorded, so the draw can be replayed and audited
            config = dataclasses.replace(config, seed=secrets.randbelow(2**31))
        rid = store.validate_rollout_id(rollout_id or f"r-{uuid.uuid4().hex[:12]}")
        with self.registry.session() as s:
            bundle = catalog.find_bundle(s, config.bundle_id)
            if bundle is None:
                raise RolloutError(f"bundle {config.bundle_id!r} is not registered")
            if bundle.device_class != config.target.device_class:
                raise RolloutError(
                    f"bundle {bundle.bundle_id!r} is built for device class "
                    f"{bundle.device_class!r}, the rollout targets {config.target.device_class!r}"
                )
            if previous_bundle_id is not None:
                prev = catalog.find_bundle(s, previous_bundle_id)
                if prev is None:
                    raise RolloutError(f"previous bundle {previous_bundle_id!r} is not registered")
                if prev.model_name != bundle.model_name or prev.version >= bundle.version:
                    raise RolloutError(
                        f"previous bundle {previous_bundle_id!r} is not an older version of "
                        f"{bundle.model_name!r}"
                    )
            else:
                older = [
                    b
                    for b in catalog.list_bundles(
                        s,
                        model_name=bundle.model_name,
                        device_class=bundle.device_class,
                        limit=1000,
                    ).items
                    if b.version < bundle.version and b.kind == "full"
                ]
                if older:
                    previous_bundle_id = max(older, key=lambda b: b.version).bundle_id
            stages = [
                StoredStage(
                    name=stage_name(i),
                    percent=spec.percent,
                    device_ids=list(spec.device_ids) if spec.device_ids or spec.count else None,
                    labels=dict(spec.labels) if spec.labels else None,
                )
                for i, spec in enumerate(config.stages)
            ]
            try:
                record = rollouts.create_rollout(
                    s,
                    rollout_id=rid,
                    bundle_id=config.bundle_id,
                    device_class=config.target.device_class,
                    stages=stages,
                    previous_bundle_id=previous_bundle_id,
                    target_labels=dict(config.target.labels),
                    config=config.to_dict(),
                    name=config.name,
                    created_by=created_by,
                    state=S.DRAFT.value,
                    now=now,
                )
            except ConflictError as exc:
                raise RolloutError(str(exc)) from exc
            log.info("rollout %s created for bundle %s", rid, config.bundle_id)
            return rollout_status(s, record)

    def start(self, rollout_id: str, *, by: str = HUB_ACTOR) -> RolloutStatus:
        """Draw the stage membership (seeded, recorded) and enter the canary."""
        now = self.clock()
        with self.registry.session() as s:
            record, cfg, phase = store.load(s, rollout_id)
            new = apply_action(phase, RolloutAction.START, n_stages=cfg.n_stages)
            ids = device_repo.select_device_ids(
                s, device_class=cfg.target.device_class, labels=cfg.target.labels
            )
            states = device_states(s, ids)
            infos = [
                TargetableDevice(d, st.device_class or "", st.labels)
                for d, st in states.items()
                if cfg.target.matches(st.device_class or "", st.labels, d)
            ]
            if not infos:
                raise RolloutError(f"rollout {rollout_id}: the target matches no registered device")
            _refuse_held(s, rollout_id, [i.device_id for i in infos])
            plan = plan_stages(cfg, infos)
            rollouts.add_targets(
                s,
                rollout_id,
                {d: i for i, members in enumerate(plan.stages) for d in members},
                now=now,
            )
            for i, members in enumerate(plan.stages):
                rollouts.update_stage(s, rollout_id, i, device_ids=list(members))
            rollouts.update_stage(s, rollout_id, 0, state="active", started_at=now)
            record = store.write_phase(s, record, new, now=now, by=by, started_at=now, reason="")
            log.info(
                "rollout %s started: %s",
                rollout_id,
                ", ".join(f"{stage_name(i)}={len(m)}" for i, m in enumerate(plan.stages)),
            )
            status = rollout_status(s, record)
        self._changed()
        return status

    def pause(self, rollout_id: str, *, reason: str = "", by: str = HUB_ACTOR) -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.PAUSE, reason or "paused by operator", by)

    def resume(self, rollout_id: str, *, by: str = HUB_ACTOR) -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.RESUME, "", by)

    def abort(self, rollout_id: str, *, reason: str = "", by: str = HUB_ACTOR) -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.ABORT, reason or "aborted by operator", by)

    def rollback(self, rollout_id: str, *, reason: str = "", by: str = HUB_ACTOR) -> RolloutStatus:
        """Roll every device that received the bundle back to what it ran before (after a
        failed rollback: try again the devices that did not go back)."""
        why = reason or "rollback requested by operator"
        return self._operator(rollout_id, RolloutAction.ROLLBACK, why, by)

    def resolve(self, rollout_id: str, *, reason: str = "", by: str = HUB_ACTOR) -> RolloutStatus:
        """Close a rollout whose rollback failed: the operator has taken care of the devices
        it could not bring back (they are released for other rollouts)."""
        why = reason or "resolved by operator"
        return self._operator(rollout_id, RolloutAction.RESOLVE, why, by)

    def history(self, rollout_id: str) -> list[HistoryEntry]:
        """The rollout's moves, oldest first: who moved it where, and why."""
        with self.registry.session() as s:
            store.load(s, rollout_id)  # RolloutError if unknown
            return rollout_history(s, rollout_id)

    def status(self, rollout_id: str) -> RolloutStatus:
        with self.registry.session() as s:
            record, _cfg, _phase = store.load(s, rollout_id)
            return rollout_status(s, record)

    def list(self, *, states: Sequence[str] | None = None, limit: int = 100) -> list[RolloutStatus]:
        with self.registry.session() as s:
            page = rollouts.list_rollouts(s, states=states, limit=limit)
            return [rollout_status(s, r) for r in page.items]

    def _operator(
        self, rollout_id: str, action: RolloutAction, reason: str, by: str
    ) -> RolloutStatus:
        now = self.clock()
        with self.registry.session() as s:
            record, cfg, phase = store.load(s, rollout_id)
            new = apply_action(phase, action, n_stages=cfg.n_stages)
            changes: dict[str, object] = {"reason": reason}
            if action in (RolloutAction.ABORT, RolloutAction.ROLLBACK):
                store.stop_pending(s, rollout_id, now=now)
            if action is RolloutAction.ROLLBACK:
                store.mark_for_rollback(s, rollout_id, None, now=now)
                changes["finished_at"] = None
            if action is RolloutAction.ABORT and phase.state is S.ROLLING_BACK:
                store.abandon_rollback(s, rollout_id, now=now, reason=reason)
            elif action is RolloutAction.ABORT and phase.stage >= 0:
                rollouts.update_stage(s, rollout_id, phase.stage, state="stopped", finished_at=now)
            record = store.write_phase(s, record, new, now=now, by=by, **changes)
            log.info("rollout %s: %s -> %s (%s)", rollout_id, phase.name, new.name, reason)
            status = rollout_status(s, record)
        self._changed()
        return status
