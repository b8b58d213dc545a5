"""Private registry helpers of the engine: bulk target moves in the rollout's vocabulary,
loading and writing the state-machine position, deployment ids, and publishing an order
whose intent is committed."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from cloud_hub.errors import HubConfigError, HubError, RolloutError
from cloud_hub.registry import Registry, Session, catalog, rollouts
from cloud_hub.registry import rollout_targets as target_repo
from cloud_hub.registry.errors import NotFoundError
from cloud_hub.registry.records import RolloutRecord, TargetRecord
from cloud_hub.rollout.config import RolloutConfig
from cloud_hub.rollout.history import ENGINE_ACTOR, HistoryEntry, record_move
from cloud_hub.rollout.state import HOLDING_STATES, RolloutPhase, RolloutState
from cloud_hub.rollout.status import phase_of
from cloud_hub.rollout.targets import (
    RELEASED_STATES,
    TargetState,
    TargetStep,
    step_sources,
    step_target,
)
from shared.errors import FedfleetError

__all__ = [
    "abandon_rollback",
    "deploy_prefix",
    "held_devices",
    "load",
    "mark_for_rollback",
    "new_deployment_id",
    "rollback_prefix",
    "send_then_mark",
    "set_targets",
    "stop_pending",
    "target_rows",
    "validate_rollout_id",
    "versions",
    "write_phase",
]

log = logging.getLogger("cloud_hub.rollout.engine")

_ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_Sent = TypeVar("_Sent")


def validate_rollout_id(rollout_id: str) -> str:
    """Rollout ids prefix deployment ids (``{id}.d…``), so they carry no dots."""
    if not _ROLLOUT_ID_RE.fullmatch(rollout_id):
        raise HubConfigError(f"invalid rollout id {rollout_id!r}: use 1-64 of [A-Za-z0-9_-]")
    return rollout_id


def deploy_prefix(rollout_id: str) -> str:
    """Every deploy command of a rollout has a deployment id starting with this."""
    return f"{rollout_id}.d"


def rollback_prefix(rollout_id: str) -> str:
    """Every rollback command of a rollout has a deployment id starting with this."""
    return f"{rollout_id}.r"


def new_deployment_id(prefix: str) -> str:
    """A fresh id per publish: devices ignore a repeated id, and a re-offer must be seen."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def load(s: Session, rollout_id: str) -> tuple[RolloutRecord, RolloutConfig, RolloutPhase]:
    try:
        record = rollouts.get_rollout(s, rollout_id)
    except NotFoundError as exc:
        raise RolloutError(f"rollout {rollout_id!r} not found") from exc
    return record, RolloutConfig.from_dict(record.config), phase_of(record)


def write_phase(
    s: Session,
    record: RolloutRecord,
    phase: RolloutPhase,
    *,
    now: float,
    by: str = ENGINE_ACTOR,
    **changes: object,
) -> RolloutRecord:
    """Store the new position, only if nobody changed the rollout since ``record`` was read,
    and add the move to the rollout's history (:func:`rollout_history`) with who made it."""
    if phase.state in (RolloutState.DONE, RolloutState.ABORTED, RolloutState.ROLLED_BACK):
        changes.setdefault("finished_at", now)
    before = phase_of(record).name
    updated = rollouts.update_rollout(
        s,
        record.rollout_id,
        now=now,
        expected_revision=record.revision,
        state=phase.state.value,
        current_stage=max(phase.stage, 0),
        **changes,
    )
    said = updated.reason if updated.reason != record.reason else ""  # only what is new
    record_move(s, record.rollout_id, HistoryEntry(now, by, before, phase.name, said))
    return updated


def versions(s: Session, record: RolloutRecord) -> tuple[int, int | None, str]:
    """``(new version, previous version or None, model name)``."""
    bundle = catalog.get_bundle(s, record.bundle_id)
    prev = catalog.find_bundle(s, record.previous_bundle_id) if record.previous_bundle_id else None
    return bundle.version, prev.version if prev is not None else None, bundle.model_name


def set_targets(
    s: Session,
    rollout_id: str,
    device_ids: Iterable[str],
    *,
    now: float,
    only_states: Sequence[TargetState] | None = None,
    bump_attempts: bool = False,
    **values: object,
) -> None:
    """Bulk update of targets (optionally only those still in ``only_states``)."""
    target_repo.move_targets(
        s,
        rollout_id,
        device_ids,
        now=now,
        only_states=[st.value for st in only_states] if only_states is not None else None,
        bump_attempts=bump_attempts,
        **values,
    )


def step_targets(
    s: Session,
    rollout_id: str,
    device_ids: Iterable[str],
    step: TargetStep,
    *,
    now: float,
    bump_attempts: bool = False,
    **values: object,
) -> None:
    """Move the targets of ``device_ids`` by ``step`` of the target table: only those still in
    a state it leaves from change, to the state it leads to (with ``values``)."""
    set_targets(
        s,
        rollout_id,
        device_ids,
        now=now,
        only_states=step_sources(step),
        bump_attempts=bump_attempts,
        state=step_target(step).value,
        **values,
    )


def target_rows(
    s: Session,
    rollout_id: str,
    states: Sequence[TargetState],
    *,
    max_stage: int | None = None,
) -> list[TargetRecord]:
    return target_repo.targets_in_states(
        s, rollout_id, [st.value for st in states], max_stage=max_stage
    )


def send_then_mark(
    registry: Registry,
    rollout_id: str,
    device_ids: Sequence[str],
    step: TargetStep,
    *,
    send: Callable[[], _Sent],
    clock: Callable[[], float],
    what: str,
    then: Callable[[Session, _Sent], None] | None = None,
) -> bool:
    """Send an order whose intent is committed (outside any transaction), then move its
    targets by the publish ``step`` and run ``then`` with what ``send`` returned, in one
    transaction. A failed send is logged (``what`` names the order) and leaves the intent for
    the next tick: ``False``."""
    try:
        sent = send()
    except (HubError, FedfleetError) as exc:
        log.warning(
            "rollout %s: %s to %d device(s) failed: %s", rollout_id, what, len(device_ids), exc
        )
        return False
    with registry.session() as s:
        step_targets(s, rollout_id, device_ids, step, now=clock())
        if then is not None:
            then(s, sent)
    return True


def stop_pending(s: Session, rollout_id: str, *, now: float) -> None:
    """Targets not yet offered will never be: ``skipped``."""
    rows = target_rows(s, rollout_id, step_sources(TargetStep.SKIP))
    step_targets(
        s,
        rollout_id,
        [r.device_id for r in rows],
        TargetStep.SKIP,
        now=now,
        detail="rollout stopped before this device's turn",
    )


def held_devices(
    s: Session, device_ids: Sequence[str], *, exclude: str | None = None
) -> dict[str, tuple[str, str]]:
    """``{device_id: (rollout_id, state)}`` for the devices an unfinished rollout (other than
    ``exclude``) still holds: a rollout in progress, rolling back or with a failed rollback."""
    return target_repo.device_holders(
        s,
        device_ids,
        released_target_states=[st.value for st in RELEASED_STATES],
        holding_rollout_states=[st.value for st in HOLDING_STATES],
        exclude=exclude,
    )


def held_note(held: dict[str, tuple[str, str]]) -> str:
    """One line naming the held devices (the first five) and the rollouts holding them."""
    if not held:
        return ""
    shown = ", ".join(f"{d} ({r}: {st})" for d, (r, st) in sorted(held.items())[:5])
    more = f" and {len(held) - 5} more" if len(held) > 5 else ""
    return f"{len(held)} target device(s) are held by unfinished rollouts: {shown}{more}"


def abandon_rollback(s: Session, rollout_id: str, *, now: float, reason: str) -> None:
    """The operator aborted a rollback: targets not yet back will not be (``rollback_failed``)."""
    rows = target_rows(s, rollout_id, step_sources(TargetStep.ROLLBACK_FAILED))
    step_targets(
        s,
        rollout_id,
        [r.device_id for r in rows],
        TargetStep.ROLLBACK_FAILED,
        now=now,
        finished_at=now,
        detail=f"rollback aborted: {reason}",
    )


def mark_for_rollback(s: Session, rollout_id: str, stage: int | None, *, now: float) -> None:
    """Record the intent to roll back every target of ``stage`` (all stages if ``None``) that
    may have received the bundle, or that an earlier rollback could not bring back."""
    deployed = step_sources(TargetStep.ORDER_ROLLBACK)  # DEPLOYED_ and UNRECOVERED_STATES
    rows = target_rows(s, rollout_id, deployed)
    ids = [r.device_id for r in rows if stage is None or r.stage_index == stage]
    step_targets(s, rollout_id, ids, TargetStep.ORDER_ROLLBACK, now=now, attempts=0)
