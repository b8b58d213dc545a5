"""The steps of one engine tick for one rollout (private to :mod:`cloud_hub.rollout.engine`).

Each step is its own transaction. Steps that publish first commit an intent, then publish
outside any transaction, then confirm — so a crash anywhere leaves either nothing done or an
intent that the next tick (of this or a restarted hub) completes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloud_hub.registry import Registry, Session, rollouts
from cloud_hub.registry import devices as device_repo
from cloud_hub.registry import rollout_targets as target_repo
from cloud_hub.registry.records import RolloutRecord, TargetRecord
from cloud_hub.rollout import _store as store
from cloud_hub.rollout._rollback import RollbackStep, model_sha256
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.delivery import RollbackSigner, RolloutDelivery, Shipment
from cloud_hub.rollout.gates import GateVerdict, evaluate_gate
from cloud_hub.rollout.observe import (
    DeviceState,
    baseline_for,
    device_states,
    gate_reports,
    install_views,
)
from cloud_hub.rollout.planner import stage_for_newcomer
from cloud_hub.rollout.state import (
    RolloutAction,
    RolloutPhase,
    RolloutState,
    apply_action,
    stage_name,
)
from cloud_hub.rollout.targets import (
    TargetState,
    TargetStep,
    next_target_state,
    resolve_install,
    step_sources,
)
from shared.bundle import MAX_ORDER_DEVICES

if TYPE_CHECKING:
    from cloud_hub.rollout.engine import EngineConfig

__all__ = ["RolloutSteps"]

log = logging.getLogger("cloud_hub.rollout.engine")

S = RolloutState
T = TargetState
TS = TargetStep


@dataclass
class RolloutSteps:
    registry: Registry
    delivery: RolloutDelivery
    signer: RollbackSigner
    config: EngineConfig
    clock: Callable[[], float]
    wake: Callable[[], None]

    def tick_one(self, rollout_id: str) -> None:
        with self.registry.session() as s:
            record, cfg, phase = store.load(s, rollout_id)
        if phase.state in (S.CANARY, S.WAVE, S.PAUSED, S.DONE):
            self.adopt_newcomers(record, cfg, phase)
            self.refresh_outcomes(record)
        if phase.state in (S.CANARY, S.WAVE, S.DONE):
            self.deploy_due(record)
        if phase.state in (S.CANARY, S.WAVE):
            self.judge(record, cfg)
        if phase.state in (S.ROLLING_BACK, S.ROLLED_BACK):
            self.roll_back(record, cfg)

    def adopt_newcomers(
        self, record: RolloutRecord, cfg: RolloutConfig, phase: RolloutPhase
    ) -> None:
        """Continuous deployment: devices that joined the target get a stage."""
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            if phase.state is S.DONE and _superseded(s, record):
                return
            ids = device_repo.select_device_ids(
                s, device_class=cfg.target.device_class, labels=cfg.target.labels
            )
            known = set(target_repo.target_device_ids(s, rid))
            listed = cfg.target.device_ids
            fresh = [d for d in ids if d not in known and (not listed or d in listed)]
            held = store.held_devices(s, fresh, exclude=rid)
            fresh = [d for d in fresh if d not in held]  # they join once released
            if not fresh:
                return
            states = device_states(s, fresh)
            placement = {
                d: stage_for_newcomer(cfg, phase, d, states[d].labels if d in states else {})
                for d in fresh
            }
            added = rollouts.add_targets(s, rid, placement, now=now)
            if added:
                log.info("rollout %s: %d device(s) joined the target", rid, added)

    def refresh_outcomes(self, record: RolloutRecord) -> None:
        """Turn what devices reported into target outcomes; re-offer to devices that
        reconnected without one."""
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            rows = store.target_rows(s, rid, [T.DEPLOYING, T.SENT, T.SUCCEEDED, T.FAILED])
            if not rows:
                return
            devs = device_states(s, [r.device_id for r in rows])
            offers = {r.device_id: r.deployment_id for r in rows}
            views = install_views(s, store.deploy_prefix(rid), devs, offers)
            for row in rows:
                change = (
                    resolve_install(T(row.state), views[row.device_id], bundle_id=record.bundle_id)
                    if row.device_id in views
                    else None
                )
                if change is not None:
                    state, finished, detail = change
                    step = TS.INSTALLED if state is T.SUCCEEDED else TS.INSTALL_FAILED
                    state = next_target_state(T(row.state), step)
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
                if came_back:
                    state = next_target_state(T(row.state), TS.CAME_BACK)
                    rollouts.update_target(s, rid, row.device_id, now=now, state=state.value)

    def deploy_due(self, record: RolloutRecord) -> None:
        """Offer the bundle to the online targets whose stage has come (and re-offer open
        intents); offline ones wait until they return."""
        now = self.clock()
        rid = record.rollout_id
        limit = self.config.max_attempts
        with self.registry.session() as s:
            _current, _cfg, phase = store.load(s, rid)
            if phase.state not in (S.CANARY, S.WAVE, S.DONE):
                return
            rows = store.target_rows(s, rid, step_sources(TS.OFFER), max_stage=phase.stage)
            devs = device_states(s, [r.device_id for r in rows])
            online = [r for r in rows if (d := devs.get(r.device_id)) is not None and d.online]
            exhausted = [r.device_id for r in online if r.attempts >= limit]
            store.step_targets(
                s,
                rid,
                exhausted,
                TS.GAVE_UP,
                now=now,
                finished_at=now,
                detail=f"no outcome after {limit} offers",
            )
            due = [r.device_id for r in online if r.attempts < limit]
            if not due:
                return
            self._record_previous(s, record, [r for r in online if r.attempts < limit], devs)
            switches = _model_switches(s, record, due, devs)
            dep_id = store.new_deployment_id(store.deploy_prefix(rid))
            store.step_targets(  # the intent, committed before anything is published
                s,
                rid,
                due,
                TS.OFFER,
                now=now,
                bump_attempts=True,
                deployment_id=dep_id,
                last_attempt_at=now,
            )

        def send() -> Shipment | None:
            orders = self._switch_orders(record, switches, now=now)
            return self.delivery.deploy(record.bundle_id, due, deployment_id=dep_id, orders=orders)

        def record_bytes(s: Session, shipment: Shipment | None) -> None:
            if shipment is not None:  # persisted: every hub process reports the same totals
                target_repo.record_shipment(
                    s, rid, shipment.sent, full_size=shipment.full_size, now=self.clock()
                )

        if store.send_then_mark(
            self.registry,
            rid,
            due,
            TS.PUBLISHED,
            send=send,
            clock=self.clock,
            what="deploy",
            then=record_bytes,
        ):
            log.info("rollout %s: offered %s to %d device(s)", rid, record.bundle_id, len(due))

    def _record_previous(
        self,
        s: Session,
        record: RolloutRecord,
        rows: list[TargetRecord],
        devs: dict[str, DeviceState],
    ) -> None:
        """Remember, at the first offer, what each device runs: its rollback target (by
        bundle id, version and model content hash, whichever bundle delivered it)."""
        version, _prev, model = store.versions(s, record)
        now = self.clock()
        for row in rows:
            dev = devs[row.device_id]
            ran, ran_version = dev.installed_bundle_id, dev.installed_version
            if row.from_bundle_id or not ran or ran_version is None:
                continue
            ran_model = dev.installed_model or model
            if ran == record.bundle_id or (ran_model == model and ran_version >= version):
                continue  # already on (or past) the new version: nothing earlier is known
            sha = model_sha256(
                s, ran, model=ran_model, version=ran_version, device_class=record.device_class
            )
            rollouts.update_target(
                s,
                record.rollout_id,
                row.device_id,
                now=now,
                from_bundle_id=ran,
                from_version=ran_version,
                from_sha256=sha or None,
            )

    def _switch_orders(
        self, record: RolloutRecord, switches: _Switches | None, *, now: float
    ) -> dict[str, dict[str, Any]]:
        """R5: devices that run another model take this bundle only with a signed order bound
        to them and to what they run (one per group running the same bundle)."""
        if switches is None:
            return {}
        orders: dict[str, dict[str, Any]] = {}
        for running, ids in switches.groups.items():
            for i in range(0, len(ids), MAX_ORDER_DEVICES):
                batch = ids[i : i + MAX_ORDER_DEVICES]
                order = self.signer.sign_rollback_order(
                    model_name=switches.model,
                    device_class=record.device_class,
                    to_version=switches.version,
                    to_bundle_id=record.bundle_id,
                    to_sha256=switches.sha256,
                    device_ids=batch,
                    from_bundle_id=running,
                    valid_hours=self.config.rollback_valid_hours,
                    now=datetime.fromtimestamp(now, tz=timezone.utc),
                )
                orders.update(dict.fromkeys(batch, order))
        return orders

    def judge(self, record: RolloutRecord, cfg: RolloutConfig) -> None:
        """Evaluate the current stage's gate; promote, or stop and roll the stage back."""
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            current, _cfg, phase = store.load(s, rid)
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
            version, prev_version, _model = store.versions(s, current)
            reports = gate_reports(
                s,
                [(t.device_id, T(t.state), t.finished_at) for t in targets],
                devs,
                version=version,
                since=started,
            )
            all_ids = target_repo.target_device_ids(s, rid)
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
                store.write_phase(s, current, new, now=now, reason="")
                log.info("rollout %s: %s passed -> %s", rid, stage_name(phase.stage), new.name)
            else:
                new = apply_action(phase, RolloutAction.GATE_FAILED, n_stages=cfg.n_stages)
                rollouts.update_stage(
                    s, rid, phase.stage, state="failed", finished_at=now, gate_results=[entry]
                )
                store.stop_pending(s, rid, now=now)
                store.mark_for_rollback(s, rid, phase.stage, now=now)
                reason = f"{stage_name(phase.stage)}: {result.reason}"
                store.write_phase(s, current, new, now=now, reason=reason)
                log.warning("rollout %s: rolling back: %s", rid, reason)
        self.wake()

    def roll_back(self, record: RolloutRecord, cfg: RolloutConfig) -> None:
        """Send signed rollback orders to the marked targets, confirm them from what devices
        report, and finish the rollback (see :mod:`cloud_hub.rollout._rollback`)."""
        RollbackStep(self.registry, self.delivery, self.signer, self.config, self.clock).run(
            record, cfg
        )


@dataclass(frozen=True)
class _Switches:
    """Devices that run another model than the rollout's, by the bundle they run."""

    model: str
    version: int
    sha256: str
    groups: dict[str, list[str]]


def _model_switches(
    s: Session, record: RolloutRecord, due: list[str], devs: dict[str, DeviceState]
) -> _Switches | None:
    version, _prev, model = store.versions(s, record)
    groups: dict[str, list[str]] = {}
    for d in due:
        dev = devs[d]
        if dev.installed_model and dev.installed_model != model and dev.installed_bundle_id:
            groups.setdefault(dev.installed_bundle_id, []).append(d)
    if not groups:
        return None
    sha = model_sha256(
        s, record.bundle_id, model=model, version=version, device_class=record.device_class
    )
    return _Switches(model, version, sha, groups)


def _superseded(s: Session, record: RolloutRecord) -> bool:
    """A done rollout stops adopting devices once a newer rollout for its class started."""
    return rollouts.newer_rollout_started(
        s,
        device_class=record.device_class,
        created_after=record.created_at,
        draft_state=S.DRAFT.value,
    )
