"""The rollout engine: the I/O shell around the pure state table, planner and gates.

:class:`RolloutService` is what the REST API, the CLI and the closed loop call. All state
lives in the registry (rollouts, stages, per-device targets), so any number of restarts —
including ``kill -9`` between any two statements — resume every rollout where it was:

- every step is a transaction over the registry; a transition is written with the
  rollout's ``revision`` (optimistic concurrency), so two engines never both advance it;
- an intent is written before a command is published (target ``deploying`` /
  ``rollback_pending``) and confirmed after (``sent`` / ``rollback_sent``); after a crash the
  intents still open are published again, which devices handle idempotently;
- outcomes are derived from what devices reported (status, events, telemetry), never from
  what the engine believes it did.

:meth:`RolloutService.tick` advances every live rollout one step: adopt devices that joined
the target (continuous deployment), resolve install outcomes, deploy to the due devices of
the current stage that are online (offline ones are retried when they return), judge the
stage's gate and promote, or roll the stage back with a signed rollback order.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub.errors import HubConfigError, HubError, RolloutError
from cloud_hub.registry import catalog, rollouts
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry.database import Registry
from cloud_hub.registry.errors import ConflictError
from cloud_hub.registry.records import StageSpec as StoredStage
from cloud_hub.registry.tables import Rollout
from cloud_hub.rollout import _store as store
from cloud_hub.rollout._steps import RolloutSteps
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.delivery import RollbackSigner, RolloutDelivery
from cloud_hub.rollout.observe import (
    device_states,
)
from cloud_hub.rollout.planner import DeviceInfo, plan_stages
from cloud_hub.rollout.state import (
    RolloutAction,
    RolloutState,
    apply_action,
    stage_name,
)
from cloud_hub.rollout.status import RolloutStatus, rollout_status
from cloud_hub.rollout.targets import (
    TargetState,
)
from shared.errors import FedfleetError

__all__ = ["EngineConfig", "RolloutService"]

log = logging.getLogger(__name__)

S = RolloutState
T = TargetState
_LIVE = (S.CANARY, S.WAVE, S.PAUSED, S.DONE, S.ROLLING_BACK, S.ROLLED_BACK)


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits. ``tick_interval_s`` is how often :meth:`RolloutService.run` ticks."""

    tick_interval_s: float = 1.0
    max_attempts: int = 5
    rollback_valid_hours: float = 24.0
    max_live_rollouts: int = 1000

    def __post_init__(self) -> None:
        if not 0.01 <= self.tick_interval_s <= 3600:
            raise HubConfigError("engine tick_interval_s must be within [0.01, 3600]")
        if not 1 <= self.max_attempts <= 100:
            raise HubConfigError("engine max_attempts must be within [1, 100]")
        if not 0 < self.rollback_valid_hours <= 720:
            raise HubConfigError("engine rollback_valid_hours must be within (0, 720]")
        if not 1 <= self.max_live_rollouts <= 100_000:
            raise HubConfigError("engine max_live_rollouts must be within [1, 100000]")


def _refuse_held(s: Session, rollout_id: str, device_ids: Sequence[str]) -> None:
    """Refuse (409) to start a rollout whose targets include devices an unfinished rollout
    holds. A draft may be prepared meanwhile: it holds nobody, and its status warns."""
    note = store.held_note(store.held_devices(s, device_ids, exclude=rollout_id))
    if note:
        raise RolloutError(f"{note}; let them finish, or abort / resolve them first")


class RolloutService:
    """Create, drive and observe staged rollouts stored in the registry."""

    def __init__(
        self,
        registry: Registry,
        delivery: RolloutDelivery,
        signer: RollbackSigner,
        *,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.delivery = delivery
        self.signer = signer
        self.config = config or EngineConfig()
        self.clock = clock
        self._wake = threading.Event()
        self._steps = RolloutSteps(
            registry, delivery, signer, self.config, clock, wake=self._wake.set
        )

    # ---- operator API -------------------------------------------------------------------

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

    def start(self, rollout_id: str) -> RolloutStatus:
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
                DeviceInfo(d, st.device_class or "", st.labels)
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
            record = store.write_phase(s, record, new, now=now, started_at=now, reason="")
            log.info(
                "rollout %s started: %s",
                rollout_id,
                ", ".join(f"{stage_name(i)}={len(m)}" for i, m in enumerate(plan.stages)),
            )
            status = rollout_status(s, record)
        self._wake.set()
        return status

    def pause(self, rollout_id: str, *, reason: str = "") -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.PAUSE, reason or "paused by operator")

    def resume(self, rollout_id: str) -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.RESUME, "")

    def abort(self, rollout_id: str, *, reason: str = "") -> RolloutStatus:
        return self._operator(rollout_id, RolloutAction.ABORT, reason or "aborted by operator")

    def rollback(self, rollout_id: str, *, reason: str = "") -> RolloutStatus:
        """Roll every device that received the bundle back to what it ran before (after a
        failed rollback: try again the devices that did not go back)."""
        return self._operator(
            rollout_id, RolloutAction.ROLLBACK, reason or "rollback requested by operator"
        )

    def resolve(self, rollout_id: str, *, reason: str = "") -> RolloutStatus:
        """Close a rollout whose rollback failed: the operator has taken care of the devices
        it could not bring back (they are released for other rollouts)."""
        return self._operator(rollout_id, RolloutAction.RESOLVE, reason or "resolved by operator")

    def status(self, rollout_id: str) -> RolloutStatus:
        with self.registry.session() as s:
            record, _cfg, _phase = store.load(s, rollout_id)
            return rollout_status(s, record)

    def list(self, *, states: Sequence[str] | None = None, limit: int = 100) -> list[RolloutStatus]:
        with self.registry.session() as s:
            page = rollouts.list_rollouts(s, states=states, limit=limit)
            return [rollout_status(s, r) for r in page.items]

    # ---- the loop -----------------------------------------------------------------------

    def tick(self) -> int:
        """Advance every live rollout one step; returns how many were looked at."""
        with self.registry.session() as s:
            ids = list(
                s.scalars(
                    select(Rollout.rollout_id)
                    .where(Rollout.state.in_([st.value for st in _LIVE]))
                    .order_by(Rollout.created_at.desc())  # newest first: never starved
                    .limit(self.config.max_live_rollouts)
                )
            )
        for rid in ids:
            try:
                self._steps.tick_one(rid)
            except ConflictError:
                log.debug("rollout %s changed concurrently; next tick", rid)
            except (HubError, FedfleetError) as exc:
                log.warning("rollout %s: tick failed: %s", rid, exc)
        return len(ids)

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set (also woken early by :meth:`start`)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive one bad tick (e.g. the DB restarting)
                log.exception("rollout tick failed")
            self._wake.wait(self.config.tick_interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Tick as soon as possible (e.g. after an ingest batch)."""
        self._wake.set()

    # ---- internals ----------------------------------------------------------------------

    def _operator(self, rollout_id: str, action: RolloutAction, reason: str) -> RolloutStatus:
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
            record = store.write_phase(s, record, new, now=now, **changes)
            log.info("rollout %s: %s -> %s (%s)", rollout_id, phase.name, new.name, reason)
            status = rollout_status(s, record)
        self._wake.set()
        return status
