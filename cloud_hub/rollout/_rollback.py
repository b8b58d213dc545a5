"""The rollback step of an engine tick (private to :mod:`cloud_hub.rollout.engine`).

Each device goes back to what *it* ran before the rollout — recorded on its target when the
rollout first offered it the new bundle, by bundle id, version and model content hash, so a
version that reached the device as a delta is found as well as one that came in full — else
to the rollout's ``previous_bundle_id``. Orders are signed per group of devices that run the
same bundle and go back to the same one, and bound to those devices and to that bundle (R5).

A target ends ``rolled_back`` (the device said so, or reports the bundle it goes back to),
``rollback_failed`` (the device refused or failed the order, or gave no answer within the
offline timeout; the device's reason is kept) or ``stranded`` (nothing to go back to). A
refusal of an order bound to a bundle the device no longer runs is answered, not final: the
order is re-bound to what it runs, or the target waits for the status that names it
(:func:`refusal_answer`). Once
no target is open the rollout is ``rolled_back``, or ``rollback_failed`` with the devices and
their reasons in its ``reason``: the operator retries (``rollback``) or ``resolve``s it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloud_hub.registry import Registry, Session, catalog
from cloud_hub.registry.records import RolloutRecord, TargetRecord
from cloud_hub.rollout import _store as store
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.delivery import RollbackSigner, RolloutDelivery
from cloud_hub.rollout.observe import DeviceState, deployment_events, device_states, install_views
from cloud_hub.rollout.state import RolloutAction, RolloutState, apply_action
from cloud_hub.rollout.targets import (
    ROLLBACK_FAILURE_EVENTS,
    UNRECOVERED_STATES,
    InstallView,
    TargetState,
    TargetStep,
    next_target_state,
    rolled_back,
)
from shared.bundle import MAX_ORDER_DEVICES, stale_rollback_binding
from shared.messages import EventKind

if TYPE_CHECKING:
    from cloud_hub.rollout.engine import EngineConfig

__all__ = ["BackTo", "RefusalAnswer", "RollbackStep", "back_to", "model_sha256", "refusal_answer"]

log = logging.getLogger("cloud_hub.rollout.engine")

S = RolloutState
T = TargetState
TS = TargetStep
_REASONS_SHOWN = 5


@dataclass(frozen=True)
class BackTo:
    """Where one device goes back to."""

    bundle_id: str
    version: int
    sha256: str  # the model artifact's; "" if unknown


def back_to(row: TargetRecord, fallback: BackTo | None) -> BackTo | None:
    """The device's own previous bundle if recorded, else the rollout's (pure)."""
    if row.from_bundle_id and row.from_version is not None:
        return BackTo(row.from_bundle_id, row.from_version, row.from_sha256 or "")
    return fallback


def model_sha256(s: Session, bundle_id: str, *, model: str, version: int, device_class: str) -> str:
    """The model artifact's sha256 of ``bundle_id``; for a bundle the catalog does not know (a
    delta built for one device), that of the one full bundle of the same model and version."""
    record = catalog.find_bundle(s, bundle_id)
    if record is None:
        record = catalog.find_full_bundle(
            s, model_name=model, device_class=device_class, version=version
        )
    if record is None:
        return ""
    for artifact in record.manifest.get("artifacts", []):
        if isinstance(artifact, dict) and artifact.get("role") == "model":
            return str(artifact.get("sha256", ""))
    return ""


def _refusal(events: Sequence[Any], since: float | None) -> str | None:
    """The reason of the latest refusal/failure of a rollback order sent at ``since``."""
    for ev in reversed(events):
        if ev.kind in ROLLBACK_FAILURE_EVENTS and (since is None or ev.received_at >= since):
            return f"{ev.kind}: {ev.detail}".strip(": ")
    return None


@dataclass
class RollbackStep:
    registry: Registry
    delivery: RolloutDelivery
    signer: RollbackSigner
    config: EngineConfig
    clock: Callable[[], float]

    def run(self, record: RolloutRecord, cfg: RolloutConfig) -> None:
        """Resolve what devices reported, finish the rollback when nothing is open, and send
        signed orders to the targets that are due."""
        now = self.clock()
        rid = record.rollout_id
        with self.registry.session() as s:
            current, _cfg, phase = store.load(s, rid)
            rows = store.target_rows(s, rid, [T.ROLLBACK_PENDING, T.ROLLBACK_SENT])
            if not rows and phase.state is S.ROLLED_BACK:
                return
            devs = device_states(s, [r.device_id for r in rows])
            _version, prev_version, model = store.versions(s, current)
            fallback = None
            if current.previous_bundle_id and prev_version is not None:
                sha = model_sha256(
                    s,
                    current.previous_bundle_id,
                    model=model,
                    version=prev_version,
                    device_class=current.device_class,
                )
                fallback = BackTo(current.previous_bundle_id, prev_version, sha)
            rows, views, rebind = self._resolve(s, current, rows, devs, fallback, now=now, cfg=cfg)
            due = [
                r
                for r in rows
                if r.device_id in rebind or _rollback_due(r, devs, views.get(r.device_id))
            ]
            if due:
                store.step_targets(
                    s,
                    rid,
                    [r.device_id for r in due],
                    TS.ROLLBACK_RESENT,
                    now=now,
                    bump_attempts=True,
                    last_attempt_at=now,
                )
            elif phase.state is S.ROLLING_BACK and not rows:
                self._finish(s, current, cfg, now=now)
            groups: dict[tuple[BackTo, str], list[str]] = {}
            models: dict[str, str] = {}  # the model each target bundle holds
            for r in due:
                target = back_to(r, fallback)
                running = devs[r.device_id].installed_bundle_id
                assert target is not None and running is not None  # _resolve kept only these
                groups.setdefault((target, running), []).append(r.device_id)
                if target.bundle_id not in models:  # another model, if the rollout switched it
                    known = catalog.find_bundle(s, target.bundle_id)
                    models[target.bundle_id] = known.model_name if known else model
        for (target, running), ids in groups.items():
            for i in range(0, len(ids), MAX_ORDER_DEVICES):
                batch = ids[i : i + MAX_ORDER_DEVICES]
                self._send(current, models[target.bundle_id], target, running, batch, now)

    def _resolve(
        self,
        s: Session,
        record: RolloutRecord,
        rows: list[TargetRecord],
        devs: Mapping[str, DeviceState],
        fallback: BackTo | None,
        *,
        now: float,
        cfg: RolloutConfig,
    ) -> tuple[list[TargetRecord], dict[str, InstallView], set[str]]:
        """Settle the targets whose outcome is known; return those still open, what each
        device reported for the rollout's offers, and the devices that refused an order bound
        to a bundle they no longer run (sent again, bound to what they run now)."""
        rid = record.rollout_id
        offers = {r.device_id: r.deployment_id for r in rows}
        views = install_views(s, store.deploy_prefix(rid), dict(devs), offers)
        confirmed = set(deployment_events(s, store.rollback_prefix(rid), [EventKind.ROLLED_BACK]))
        refused = deployment_events(s, store.rollback_prefix(rid), sorted(ROLLBACK_FAILURE_EVENTS))
        open_rows = []
        rebind: set[str] = set()
        for r in rows:
            target = back_to(r, fallback)
            dev = devs.get(r.device_id)
            waited = now - max(r.last_attempt_at or 0.0, record.updated_at)
            if target is None:
                outcome = (TS.STRANDED, "no previous bundle to roll back to")
            elif r.device_id in views and rolled_back(
                views[r.device_id],
                previous_bundle_id=target.bundle_id,
                since=r.last_attempt_at,
                rollback_event_seen=r.device_id in confirmed,
            ):
                outcome = (TS.BACK, "")
            elif r.state == T.ROLLBACK_SENT.value and (
                reason := _refusal(refused.get(r.device_id, []), r.last_attempt_at)
            ):
                answer = refusal_answer(
                    reason,
                    dev,
                    attempts_left=r.attempts < self.config.max_attempts,
                    waited_out=waited >= cfg.offline_timeout_s,
                )
                if answer is RefusalAnswer.REBIND:
                    rebind.add(r.device_id)  # it committed after the order was built
                if answer is not RefusalAnswer.FAIL:
                    open_rows.append(r)
                    continue
                outcome = (TS.ROLLBACK_FAILED, reason)
            elif dev is not None and dev.online and not dev.installed_bundle_id:
                outcome = (TS.ROLLBACK_FAILED, "the device reports no installed model")
            elif waited >= cfg.offline_timeout_s:
                where = "online" if dev is not None and dev.online else "offline"
                outcome = (TS.ROLLBACK_FAILED, f"not back after {waited:.0f} s ({where})")
            else:
                open_rows.append(r)
                continue
            step, detail = outcome
            state = next_target_state(T(r.state), step)
            finished = now if state is not T.STRANDED else None
            store.set_targets(
                s,
                rid,
                [r.device_id],
                now=now,
                state=state.value,
                finished_at=finished,
                detail=detail,
            )
        return open_rows, views, rebind

    def _finish(self, s: Session, record: RolloutRecord, cfg: RolloutConfig, *, now: float) -> None:
        """No target is open: ``rolled_back``, or ``rollback_failed`` naming the devices."""
        rid = record.rollout_id
        _current, _cfg, phase = store.load(s, rid)
        unrecovered = store.target_rows(s, rid, sorted(UNRECOVERED_STATES))
        if not unrecovered:
            new = apply_action(phase, RolloutAction.ROLLBACK_COMPLETE, n_stages=cfg.n_stages)
            store.write_phase(s, record, new, now=now, reason=record.reason)
            log.info("rollout %s: rolled back", rid)
            return
        shown = "; ".join(f"{r.device_id}: {r.detail}" for r in unrecovered[:_REASONS_SHOWN])
        more = len(unrecovered) - _REASONS_SHOWN
        note = f"{len(unrecovered)} device(s) not rolled back: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
        new = apply_action(phase, RolloutAction.ROLLBACK_INCOMPLETE, n_stages=cfg.n_stages)
        reason = f"{record.reason} | {note}" if record.reason else note
        store.write_phase(s, record, new, now=now, reason=reason)
        log.warning("rollout %s: rollback failed: %s", rid, note)

    def _send(
        self,
        record: RolloutRecord,
        model: str,
        target: BackTo,
        running: str,
        device_ids: list[str],
        now: float,
    ) -> None:
        rid = record.rollout_id
        dep_id = store.new_deployment_id(store.rollback_prefix(rid))

        def send() -> None:
            order = self.signer.sign_rollback_order(
                model_name=model,
                device_class=record.device_class,
                to_version=target.version,
                to_bundle_id=target.bundle_id,
                to_sha256=target.sha256,
                device_ids=device_ids,
                from_bundle_id=running,
                valid_hours=self.config.rollback_valid_hours,
                now=datetime.fromtimestamp(now, tz=timezone.utc),
            )
            self.delivery.rollback(order, device_ids, deployment_id=dep_id)

        if store.send_then_mark(
            self.registry,
            rid,
            device_ids,
            TS.ROLLBACK_PUBLISHED,
            send=send,
            clock=self.clock,
            what="rollback",
        ):
            log.info(
                "rollout %s: rollback order to v%d sent to %d device(s)",
                rid,
                target.version,
                len(device_ids),
            )


class RefusalAnswer(enum.Enum):
    """What the hub does with a device's refusal of a rollback order."""

    REBIND = "rebind"  # send it again, bound to the bundle the device runs now
    AWAIT_STATUS = "await_status"  # keep the target open until the device's status arrives
    FAIL = "fail"  # the target ends rollback_failed with the device's reason


def refusal_answer(
    reason: str, dev: DeviceState | None, *, attempts_left: bool, waited_out: bool
) -> RefusalAnswer:
    """Answer a refusal (pure). A device refuses an order bound to a bundle it no longer runs
    when it committed the rollout's bundle after the order was built: if the registry knows
    the bundle it runs now, the order is re-bound to it; if the registry still names the one
    the order was bound to, the device's next status (sent on every commit) is awaited, for
    at most the offline timeout. Any other refusal, or no attempt left, fails the target."""
    binding = stale_rollback_binding(reason)
    if binding is None or dev is None or not dev.installed_bundle_id or not attempts_left:
        return RefusalAnswer.FAIL
    ordered, running = binding
    now_runs = dev.installed_bundle_id
    if now_runs.startswith(running) and not now_runs.startswith(ordered):
        return RefusalAnswer.REBIND
    if now_runs.startswith(ordered) and not waited_out:
        return RefusalAnswer.AWAIT_STATUS
    return RefusalAnswer.FAIL


def _rollback_due(
    row: TargetRecord, devs: Mapping[str, DeviceState], view: InstallView | None = None
) -> bool:
    """Online, its status no older than its commit of the rollout's bundle, and either not
    sent yet or reconnected since it was sent.

    An order is bound to the bundle the device runs (R5). A device that committed the
    rollout's bundle while the rollout was stopped has reported the commit, but its status
    may still name the bundle before: an order built from that status would be refused
    ("this device runs ..."), so the device waits for its next status (sent on every commit).
    """
    dev = devs.get(row.device_id)
    if dev is None or not dev.online or not dev.installed_bundle_id:
        return False  # retried when it returns
    committed = view.committed_ts if view is not None else None
    if committed is not None and (dev.status_ts is None or dev.status_ts < committed):
        return False  # the status still names the bundle before the commit
    if row.state == T.ROLLBACK_PENDING.value:
        return True
    hello = dev.hello_ts
    return hello is not None and row.last_attempt_at is not None and hello > row.last_attempt_at
