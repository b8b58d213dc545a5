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

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud_hub.errors import HubConfigError, HubError, RolloutError
from cloud_hub.registry import catalog, rollouts
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry.database import Registry
from cloud_hub.registry.errors import ConflictError, NotFoundError
from cloud_hub.registry.records import RolloutRecord
from cloud_hub.registry.records import StageSpec as StoredStage
from cloud_hub.registry.tables import Rollout, RolloutTarget
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.delivery import RollbackSigner, RolloutDelivery
from cloud_hub.rollout.gates import GateVerdict, evaluate_gate
from cloud_hub.rollout.observe import (
    baseline_for,
    deployment_events,
    device_states,
    gate_reports,
    install_views,
)
from cloud_hub.rollout.planner import DeviceInfo, plan_stages, stage_for_newcomer
from cloud_hub.rollout.state import (
    RolloutAction,
    RolloutPhase,
    RolloutState,
    apply_action,
    stage_name,
)
from cloud_hub.rollout.status import RolloutStatus, phase_of, rollout_status
from cloud_hub.rollout.targets import (
    DEPLOYED_STATES,
    TargetState,
    resolve_install,
    rolled_back,
)
from shared.errors import FedfleetError
from shared.messages import EventKind

__all__ = ["EngineConfig", "RolloutService", "rollback_deployment_id"]

log = logging.getLogger(__name__)

S = RolloutState
T = TargetState
_LIVE = (S.CANARY, S.WAVE, S.PAUSED, S.DONE, S.ROLLING_BACK, S.ROLLED_BACK)


def rollback_deployment_id(rollout_id: str) -> str:
    """The deployment id rollback commands of a rollout carry (``deploy`` uses the rollout id)."""
    return f"{rollout_id}.rb"


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


def _set_targets(
    session: Session,
    rollout_id: str,
    device_ids: Iterable[str],
    *,
    now: float,
    only_states: Sequence[TargetState] | None = None,
    bump_attempts: bool = False,
    **values: object,
) -> None:
    """Bulk update of targets (optionally only those still in ``only_states``)."""
    ids = list(device_ids)
    for i in range(0, len(ids), 500):
        conds = [
            RolloutTarget.rollout_id == rollout_id,
            RolloutTarget.device_id.in_(ids[i : i + 500]),
        ]
        if only_states is not None:
            conds.append(RolloutTarget.state.in_([s.value for s in only_states]))
        extra: dict[str, object] = {}
        if bump_attempts:
            extra["attempts"] = RolloutTarget.attempts + 1
        session.execute(
            update(RolloutTarget)
            .where(*conds)
            .values(**values, **extra, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def _target_rows(
    session: Session,
    rollout_id: str,
    states: Sequence[TargetState],
    *,
    max_stage: int | None = None,
) -> list[RolloutTarget]:
    conds = [
        RolloutTarget.rollout_id == rollout_id,
        RolloutTarget.state.in_([s.value for s in states]),
    ]
    if max_stage is not None:
        conds.append(RolloutTarget.stage_index <= max_stage)
    return list(
        session.scalars(select(RolloutTarget).where(*conds).order_by(RolloutTarget.device_id))
    )


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
        rid = rollout_id or f"r-{uuid.uuid4().hex[:12]}"
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
            record, cfg, phase = self._load(s, rollout_id)
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
            record = self._write_phase(s, record, new, now=now, started_at=now, reason="")
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
        """Roll every device that received the bundle back to the previous version."""
        return self._operator(
            rollout_id, RolloutAction.ROLLBACK, reason or "rollback requested by operator"
        )

    def status(self, rollout_id: str) -> RolloutStatus:
        with self.registry.session() as s:
            record, _cfg, _phase = self._load(s, rollout_id)
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
                    .order_by(Rollout.created_at)
                    .limit(self.config.max_live_rollouts)
                )
            )
        for rid in ids:
            try:
                self._tick_one(rid)
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

    def _load(
        self, s: Session, rollout_id: str
    ) -> tuple[RolloutRecord, RolloutConfig, RolloutPhase]:
        try:
            record = rollouts.get_rollout(s, rollout_id)
        except NotFoundError as exc:
            raise RolloutError(f"rollout {rollout_id!r} not found") from exc
        return record, RolloutConfig.from_dict(record.config), phase_of(record)

    def _write_phase(
        self,
        s: Session,
        record: RolloutRecord,
        phase: RolloutPhase,
        *,
        now: float,
        **changes: object,
    ) -> RolloutRecord:
        if phase.state in (S.DONE, S.ABORTED, S.ROLLED_BACK):
            changes.setdefault("finished_at", now)
        return rollouts.update_rollout(
            s,
            record.rollout_id,
            now=now,
            expected_revision=record.revision,
            state=phase.state.value,
            current_stage=max(phase.stage, 0),
            **changes,
        )

    def _operator(self, rollout_id: str, action: RolloutAction, reason: str) -> RolloutStatus:
        now = self.clock()
        with self.registry.session() as s:
            record, cfg, phase = self._load(s, rollout_id)
            new = apply_action(phase, action, n_stages=cfg.n_stages)
            changes: dict[str, object] = {"reason": reason}
            if action in (RolloutAction.ABORT, RolloutAction.ROLLBACK):
                self._stop_pending(s, rollout_id, now=now)
            if action is RolloutAction.ROLLBACK:
                self._mark_for_rollback(s, rollout_id, None, now=now)
                changes["finished_at"] = None
            if action is RolloutAction.ABORT and phase.stage >= 0:
                rollouts.update_stage(s, rollout_id, phase.stage, state="stopped", finished_at=now)
            record = self._write_phase(s, record, new, now=now, **changes)
            log.info("rollout %s: %s -> %s (%s)", rollout_id, phase.name, new.name, reason)
            status = rollout_status(s, record)
        self._wake.set()
        return status

    def _stop_pending(self, s: Session, rollout_id: str, *, now: float) -> None:
        rows = _target_rows(s, rollout_id, [T.PENDING])
        _set_targets(
            s,
            rollout_id,
            [r.device_id for r in rows],
            now=now,
            only_states=[T.PENDING],
            state=T.SKIPPED.value,
            detail="rollout stopped before this device's turn",
        )

    def _mark_for_rollback(
        self, s: Session, rollout_id: str, stage: int | None, *, now: float
    ) -> None:
        rows = _target_rows(s, rollout_id, sorted(DEPLOYED_STATES))
        ids = [r.device_id for r in rows if stage is None or r.stage_index == stage]
        _set_targets(
            s,
            rollout_id,
            ids,
            now=now,
            only_states=sorted(DEPLOYED_STATES),
            state=T.ROLLBACK_PENDING.value,
            attempts=0,
            last_attempt_at=None,
        )

    def _tick_one(self, rollout_id: str) -> None:
        with self.registry.session() as s:
            record, cfg, phase = self._load(s, rollout_id)
        if phase.state in (S.CANARY, S.WAVE, S.PAUSED, S.DONE):
            self._adopt_newcomers(record, cfg, phase)
            self._refresh_outcomes(record)
        if phase.state in (S.CANARY, S.WAVE, S.DONE):
            self._deploy_due(record)
        if phase.state in (S.CANARY, S.WAVE):
            self._judge(record, cfg)
        if phase.state in (S.ROLLING_BACK, S.ROLLED_BACK):
            self._roll_back(record, cfg)

    def _adopt_newcomers(
        self, record: RolloutRecord, cfg: RolloutConfig, phase: RolloutPhase
    ) -> None:
        """Continuous deployment: devices that joined the target get a stage."""
        now = self.clock()
        with self.registry.session() as s:
            if phase.state is S.DONE and self._superseded(s, record):
                return
            ids = device_repo.select_device_ids(
                s, device_class=cfg.target.device_class, labels=cfg.target.labels
            )
            known = set(
                s.scalars(
                    select(RolloutTarget.device_id).where(
                        RolloutTarget.rollout_id == record.rollout_id
                    )
                )
            )
            fresh = [
                d
                for d in ids
                if d not in known and (not cfg.target.device_ids or d in cfg.target.device_ids)
            ]
            if not fresh:
                return
            states = device_states(s, fresh)
            placement = {
                d: stage_for_newcomer(cfg, phase, d, states[d].labels if d in states else {})
                for d in fresh
            }
            added = rollouts.add_targets(s, record.rollout_id, placement, now=now)
            if added:
                log.info("rollout %s: %d device(s) joined the target", record.rollout_id, added)

    def _superseded(self, s: Session, record: RolloutRecord) -> bool:
        """A done rollout stops adopting devices once a newer rollout for its class started."""
        newer = s.scalar(
            select(Rollout.rollout_id)
            .where(
                Rollout.device_class == record.device_class,
                Rollout.created_at > record.created_at,
                Rollout.state != S.DRAFT.value,
            )
            .limit(1)
        )
        return newer is not None

    def _refresh_outcomes(self, record: RolloutRecord) -> None:
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            rows = _target_rows(s, rid, [T.DEPLOYING, T.SENT, T.SUCCEEDED])
            if not rows:
                return
            devs = device_states(s, [r.device_id for r in rows])
            views = install_views(s, rid, devs)
            for row in rows:
                view = views.get(row.device_id)
                if view is None:
                    continue
                change = resolve_install(T(row.state), view, bundle_id=record.bundle_id)
                if change is not None:
                    state, finished, detail = change
                    rollouts.update_target(
                        s,
                        rid,
                        row.device_id,
                        now=now,
                        state=state.value,
                        finished_at=finished or now,
                        detail=detail,
                    )
                    continue
                dev = devs.get(row.device_id)
                came_back = (
                    row.state == T.SENT.value
                    and dev is not None
                    and dev.online
                    and dev.hello_ts is not None
                    and row.last_attempt_at is not None
                    and dev.hello_ts > row.last_attempt_at
                )
                if came_back and row.attempts < self.config.max_attempts:
                    # it reconnected without an outcome: offer the bundle again
                    rollouts.update_target(s, rid, row.device_id, now=now, state=T.DEPLOYING.value)

    def _deploy_due(self, record: RolloutRecord) -> None:
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            _current, _cfg, phase = self._load(s, rid)
            if phase.state not in (S.CANARY, S.WAVE, S.DONE):
                return
            rows = _target_rows(s, rid, [T.PENDING, T.DEPLOYING], max_stage=phase.stage)
            devs = device_states(s, [r.device_id for r in rows])
            due = [
                r.device_id for r in rows if (d := devs.get(r.device_id)) is not None and d.online
            ]
            exhausted = [
                r.device_id
                for r in rows
                if r.device_id in due and r.attempts >= self.config.max_attempts
            ]
            if exhausted:
                _set_targets(
                    s,
                    rid,
                    exhausted,
                    now=now,
                    state=T.FAILED.value,
                    finished_at=now,
                    detail=f"no outcome after {self.config.max_attempts} deliveries",
                )
                due = [d for d in due if d not in set(exhausted)]
            if not due:
                return
            _set_targets(  # the intent, committed before anything is published
                s,
                rid,
                due,
                now=now,
                bump_attempts=True,
                state=T.DEPLOYING.value,
                deployment_id=rid,
                last_attempt_at=now,
            )
        try:
            self.delivery.deploy(record.bundle_id, due, deployment_id=rid)
        except (HubError, FedfleetError) as exc:
            log.warning("rollout %s: deploy to %d device(s) failed: %s", rid, len(due), exc)
            return
        with self.registry.session() as s:
            _set_targets(
                s, rid, due, now=self.clock(), only_states=[T.DEPLOYING], state=T.SENT.value
            )
        log.info("rollout %s: deployed %s to %d device(s)", rid, record.bundle_id, len(due))

    def _versions(self, s: Session, record: RolloutRecord) -> tuple[int, int | None, str]:
        bundle = catalog.get_bundle(s, record.bundle_id)
        prev = (
            catalog.find_bundle(s, record.previous_bundle_id) if record.previous_bundle_id else None
        )
        return bundle.version, prev.version if prev is not None else None, bundle.model_name

    def _judge(self, record: RolloutRecord, cfg: RolloutConfig) -> None:
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            current, _cfg, phase = self._load(s, rid)
            if phase.state not in (S.CANARY, S.WAVE):
                return
            stage = current.stages[phase.stage]
            started = stage.started_at or current.started_at or now
            targets = [
                t
                for t in rollouts.list_targets(s, rid, stage_index=phase.stage)
                if t.state != T.SKIPPED.value
            ]
            devs = device_states(s, [t.device_id for t in targets])
            version, prev_version, _model = self._versions(s, current)
            reports = gate_reports(
                s,
                [(t.device_id, T(t.state), t.finished_at) for t in targets],
                devs,
                version=version,
                since=started,
            )
            all_ids = list(
                s.scalars(select(RolloutTarget.device_id).where(RolloutTarget.rollout_id == rid))
            )
            baseline = baseline_for(
                s, all_ids, version=prev_version, since=started - max(cfg.gate_window_s, 60.0)
            )
            result = evaluate_gate(
                reports,
                baseline,
                thresholds=cfg.gates,
                abort=cfg.abort,
                stage_started=started,
                now=now,
                window_s=cfg.gate_window_s,
                offline_timeout_s=cfg.offline_timeout_s,
            )
            entry = {**result.to_dict(), "stage": stage_name(phase.stage), "ts": now}
            if result.verdict is GateVerdict.WAIT:
                rollouts.update_stage(s, rid, phase.stage, gate_results=[entry])
                return
            if result.verdict is GateVerdict.PASS:
                new = apply_action(phase, RolloutAction.PROMOTE, n_stages=cfg.n_stages)
                rollouts.update_stage(
                    s, rid, phase.stage, state="passed", finished_at=now, gate_results=[entry]
                )
                if new.state is not S.DONE:
                    rollouts.update_stage(s, rid, new.stage, state="active", started_at=now)
                self._write_phase(s, current, new, now=now, reason="")
                log.info(
                    "rollout %s: %s passed its gate -> %s", rid, stage_name(phase.stage), new.name
                )
                return
            new = apply_action(phase, RolloutAction.GATE_FAILED, n_stages=cfg.n_stages)
            rollouts.update_stage(
                s, rid, phase.stage, state="failed", finished_at=now, gate_results=[entry]
            )
            self._stop_pending(s, rid, now=now)
            self._mark_for_rollback(s, rid, phase.stage, now=now)
            reason = f"{stage_name(phase.stage)}: {result.reason}"
            self._write_phase(s, current, new, now=now, reason=reason)
            log.warning("rollout %s: gate failed, rolling back: %s", rid, reason)
        self._wake.set()

    def _roll_back(self, record: RolloutRecord, cfg: RolloutConfig) -> None:
        now = self.clock()
        rid = record.rollout_id
        rb_id = rollback_deployment_id(rid)
        prev = record.previous_bundle_id
        with self.registry.session() as s:
            current, _cfg, phase = self._load(s, rid)
            rows = _target_rows(s, rid, [T.ROLLBACK_PENDING, T.ROLLBACK_SENT])
            devs = device_states(s, [r.device_id for r in rows])
            views = install_views(s, rid, devs)
            confirmed = set(deployment_events(s, rb_id, [EventKind.ROLLED_BACK]))
            _version, prev_version, model = self._versions(s, current)
            if prev is None or prev_version is None:
                _set_targets(
                    s,
                    rid,
                    [r.device_id for r in rows],
                    now=now,
                    state=T.STRANDED.value,
                    detail="no previous bundle to roll back to",
                )
                rows = []
            done = [
                r.device_id
                for r in rows
                if prev is not None
                and r.device_id in views
                and rolled_back(
                    views[r.device_id],
                    previous_bundle_id=prev,
                    rollback_event_seen=r.device_id in confirmed,
                )
            ]
            _set_targets(
                s, rid, done, now=now, state=T.ROLLED_BACK.value, finished_at=now, detail=""
            )
            remaining = [r for r in rows if r.device_id not in set(done)]
            due = []
            for r in remaining:
                dev = devs.get(r.device_id)
                if dev is None or not dev.online:
                    continue  # retried when it returns
                again = (
                    r.state == T.ROLLBACK_SENT.value
                    and dev.hello_ts is not None
                    and r.last_attempt_at is not None
                    and dev.hello_ts > r.last_attempt_at
                )
                if r.state == T.ROLLBACK_PENDING.value or again:
                    due.append(r.device_id)
            if due:
                _set_targets(
                    s,
                    rid,
                    due,
                    now=now,
                    bump_attempts=True,
                    state=T.ROLLBACK_PENDING.value,
                    last_attempt_at=now,
                )
            if phase.state is S.ROLLING_BACK and not due:
                started = current.updated_at
                overdue = now - started >= cfg.offline_timeout_s
                if not remaining or overdue:
                    new = apply_action(
                        phase, RolloutAction.ROLLBACK_COMPLETE, n_stages=cfg.n_stages
                    )
                    note = f"; {len(remaining)} device(s) not confirmed back" if remaining else ""
                    self._write_phase(s, current, new, now=now, reason=current.reason + note)
                    log.info("rollout %s: rolled back%s", rid, note)
        if not due or prev is None or prev_version is None:
            return
        try:
            order = self.signer.sign_rollback_order(
                model_name=model,
                device_class=record.device_class,
                to_version=prev_version,
                to_bundle_id=prev,
                valid_hours=self.config.rollback_valid_hours,
                now=datetime.fromtimestamp(now, tz=timezone.utc),
            )
            self.delivery.rollback(order, due, deployment_id=rb_id)
        except (HubError, FedfleetError) as exc:
            log.warning("rollout %s: rollback to %d device(s) failed: %s", rid, len(due), exc)
            return
        with self.registry.session() as s:
            _set_targets(
                s,
                rid,
                due,
                now=self.clock(),
                only_states=[T.ROLLBACK_PENDING],
                state=T.ROLLBACK_SENT.value,
            )
        log.info("rollout %s: rollback order sent to %d device(s)", rid, len(due))
