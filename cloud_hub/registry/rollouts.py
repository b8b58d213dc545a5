"""Rollout repository: rollouts, their stages (waves) and per-device targets.

This module only stores; the state machine, gates and engine live in
:mod:`cloud_hub.rollout`, which decides what to write. ``update_rollout`` takes an
``expected_revision`` so two hub processes cannot both advance the same rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import insert_ignore, table_of, to_record
from cloud_hub.registry.errors import ConflictError, NotFoundError, RegistryInputError
from cloud_hub.registry.records import (
    Page,
    RolloutRecord,
    StageRecord,
    StageSpec,
    TargetRecord,
)
from cloud_hub.registry.tables import Rollout, RolloutStage, RolloutTarget

__all__ = [
    "add_targets",
    "count_rollouts_by_state",
    "count_stages_by_state",
    "count_targets_by_state",
    "create_rollout",
    "find_rollout",
    "get_rollout",
    "get_target",
    "list_rollouts",
    "list_stages",
    "list_targets",
    "live_rollout_ids",
    "newer_rollout_started",
    "targets_of_device",
    "update_rollout",
    "update_stage",
    "update_target",
]

_ROLLOUT_FIELDS = {
    "name",
    "previous_bundle_id",
    "state",
    "config",
    "current_stage",
    "reason",
    "started_at",
    "finished_at",
    "target_labels",
}
_STAGE_FIELDS = {"state", "gate_results", "started_at", "finished_at", "device_ids"}
_TARGET_FIELDS = {
    "state",
    "attempts",
    "deployment_id",
    "detail",
    "last_attempt_at",
    "finished_at",
    "stage_index",
    "from_bundle_id",
    "from_version",
    "from_sha256",
}


def _stage(row: RolloutStage) -> StageRecord:
    return to_record(StageRecord, row, gate_results=list(row.gate_results or []))


def _rollout(session: Session, row: Rollout) -> RolloutRecord:
    return to_record(RolloutRecord, row, stages=list_stages(session, row.rollout_id))


def create_rollout(
    session: Session,
    *,
    rollout_id: str,
    bundle_id: str,
    device_class: str,
    stages: Sequence[StageSpec],
    previous_bundle_id: str | None = None,
    target_labels: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    name: str = "",
    created_by: str = "",
    state: str = "draft",
    now: float,
) -> RolloutRecord:
    if session.get(Rollout, rollout_id) is not None:
        raise ConflictError(f"rollout {rollout_id!r} exists")
    if not stages:
        raise RegistryInputError("a rollout needs at least one stage")
    for spec in stages:
        chosen = [x is not None for x in (spec.percent, spec.device_ids, spec.labels)]
        if sum(chosen) != 1:
            raise RegistryInputError(
                f"stage {spec.name!r}: give exactly one of percent, device_ids, labels"
            )
        if spec.percent is not None and not 0 < spec.percent <= 100:
            raise RegistryInputError(f"stage {spec.name!r}: percent must be in (0, 100]")
    session.add(
        Rollout(
            rollout_id=rollout_id,
            name=name,
            bundle_id=bundle_id,
            previous_bundle_id=previous_bundle_id,
            device_class=device_class,
            target_labels=dict(target_labels or {}),
            state=state,
            config=dict(config or {}),
            current_stage=0,
            reason="",
            created_by=created_by,
            revision=0,
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()
    for index, spec in enumerate(stages):
        session.add(
            RolloutStage(
                rollout_id=rollout_id,
                index=index,
                name=spec.name,
                percent=spec.percent,
                device_ids=list(spec.device_ids) if spec.device_ids is not None else None,
                labels=dict(spec.labels) if spec.labels is not None else None,
                state="pending",
                gate_results=[],
            )
        )
    session.flush()
    return get_rollout(session, rollout_id)


def find_rollout(session: Session, rollout_id: str) -> RolloutRecord | None:
    row = session.get(Rollout, rollout_id)
    return _rollout(session, row) if row is not None else None


def get_rollout(session: Session, rollout_id: str) -> RolloutRecord:
    record = find_rollout(session, rollout_id)
    if record is None:
        raise NotFoundError(f"rollout {rollout_id!r} not found")
    return record


def list_rollouts(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    bundle_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[RolloutRecord]:
    conds: list[ColumnElement[bool]] = []
    if states is not None:
        conds.append(Rollout.state.in_(list(states)))
    if bundle_id is not None:
        conds.append(Rollout.bundle_id == bundle_id)
    total = session.scalar(select(func.count()).select_from(Rollout).where(*conds)) or 0
    rows = session.scalars(
        select(Rollout)
        .where(*conds)
        .order_by(Rollout.created_at.desc(), Rollout.rollout_id)
        .limit(limit)
        .offset(offset)
    )
    return Page(items=[_rollout(session, r) for r in rows], total=total, limit=limit, offset=offset)


def update_rollout(
    session: Session,
    rollout_id: str,
    *,
    now: float,
    expected_revision: int | None = None,
    **changes: Any,
) -> RolloutRecord:
    """Change fields of a rollout and bump its revision.

    With ``expected_revision`` the write only happens if nobody else changed the rollout
    since it was read; otherwise ``ConflictError``.
    """
    unknown = set(changes) - _ROLLOUT_FIELDS
    if unknown:
        raise RegistryInputError(f"cannot update rollout fields {sorted(unknown)}")
    conds = [Rollout.rollout_id == rollout_id]
    if expected_revision is not None:
        conds.append(Rollout.revision == expected_revision)
    result = session.execute(
        update(Rollout)
        .where(*conds)
        .values(**changes, updated_at=now, revision=Rollout.revision + 1)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        if session.get(Rollout, rollout_id) is None:
            raise NotFoundError(f"rollout {rollout_id!r} not found")
        raise ConflictError(f"rollout {rollout_id!r} was changed concurrently")
    session.expire_all()
    return get_rollout(session, rollout_id)


def count_rollouts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Rollout.state, func.count()).group_by(Rollout.state))
    return {state: int(n) for state, n in rows}


def live_rollout_ids(session: Session, states: Sequence[str], *, limit: int) -> list[str]:
    """Ids of at most ``limit`` rollouts in ``states``, newest first."""
    return list(
        session.scalars(
            select(Rollout.rollout_id)
            .where(Rollout.state.in_(list(states)))
            .order_by(Rollout.created_at.desc())
            .limit(limit)
        )
    )


def newer_rollout_started(
    session: Session, *, device_class: str, created_after: float, draft_state: str = "draft"
) -> bool:
    """Whether a rollout for ``device_class`` created after ``created_after`` left draft."""
    newer = session.scalar(
        select(Rollout.rollout_id)
        .where(
            Rollout.device_class == device_class,
            Rollout.created_at > created_after,
            Rollout.state != draft_state,
        )
        .limit(1)
    )
    return newer is not None


def count_stages_by_state(session: Session) -> dict[str, int]:
    """Stages of every rollout by state (pending, active, passed, failed)."""
    rows = session.execute(select(RolloutStage.state, func.count()).group_by(RolloutStage.state))
    return {str(state): int(n) for state, n in rows}


def list_stages(session: Session, rollout_id: str) -> list[StageRecord]:
    rows = session.scalars(
        select(RolloutStage)
        .where(RolloutStage.rollout_id == rollout_id)
        .order_by(RolloutStage.index)
    )
    return [_stage(r) for r in rows]


def update_stage(session: Session, rollout_id: str, index: int, **changes: Any) -> StageRecord:
    unknown = set(changes) - _STAGE_FIELDS
    if unknown:
        raise RegistryInputError(f"cannot update stage fields {sorted(unknown)}")
    row = session.scalar(
        select(RolloutStage).where(
            RolloutStage.rollout_id == rollout_id, RolloutStage.index == index
        )
    )
    if row is None:
        raise NotFoundError(f"rollout {rollout_id!r} has no stage {index}")
    for key, value in changes.items():
        setattr(row, key, value)
    session.flush()
    return _stage(row)


def add_targets(
    session: Session, rollout_id: str, targets: Mapping[str, int], *, now: float
) -> int:
    """Add ``{device_id: stage_index}`` targets; devices already targeted are left alone.

    Returns how many targets are new.
    """
    if not targets:
        return 0
    known = set(
        session.scalars(
            select(RolloutTarget.device_id).where(
                RolloutTarget.rollout_id == rollout_id,
                RolloutTarget.device_id.in_(list(targets)),
            )
        )
    )
    rows = [
        {
            "rollout_id": rollout_id,
            "device_id": device_id,
            "stage_index": stage,
            "state": "pending",
            "attempts": 0,
            "detail": "",
            "created_at": now,
            "updated_at": now,
        }
        for device_id, stage in targets.items()
        if device_id not in known
    ]
    insert_ignore(
        session,
        table_of(RolloutTarget),
        rows,
        ["rollout_id", "device_id"],
    )
    return len(rows)


def list_targets(
    session: Session,
    rollout_id: str,
    *,
    stage_index: int | None = None,
    states: Sequence[str] | None = None,
) -> list[TargetRecord]:
    conds = [RolloutTarget.rollout_id == rollout_id]
    if stage_index is not None:
        conds.append(RolloutTarget.stage_index == stage_index)
    if states is not None:
        conds.append(RolloutTarget.state.in_(list(states)))
    rows = session.scalars(
        select(RolloutTarget)
        .where(*conds)
        .order_by(RolloutTarget.stage_index, RolloutTarget.device_id)
    )
    return [to_record(TargetRecord, r) for r in rows]


def get_target(session: Session, rollout_id: str, device_id: str) -> TargetRecord:
    row = _target_row(session, rollout_id, device_id)
    return to_record(TargetRecord, row)


def _target_row(session: Session, rollout_id: str, device_id: str) -> RolloutTarget:
    row = session.scalar(
        select(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout_id, RolloutTarget.device_id == device_id
        )
    )
    if row is None:
        raise NotFoundError(f"device {device_id!r} is not a target of rollout {rollout_id!r}")
    return row


def update_target(
    session: Session, rollout_id: str, device_id: str, *, now: float, **changes: Any
) -> TargetRecord:
    unknown = set(changes) - _TARGET_FIELDS
    if unknown:
        raise RegistryInputError(f"cannot update target fields {sorted(unknown)}")
    row = _target_row(session, rollout_id, device_id)
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = now
    session.flush()
    return to_record(TargetRecord, row)


def count_targets_by_state(
    session: Session, rollout_id: str, *, stage_index: int | None = None
) -> dict[str, int]:
    conds = [RolloutTarget.rollout_id == rollout_id]
    if stage_index is not None:
        conds.append(RolloutTarget.stage_index == stage_index)
    rows = session.execute(
        select(RolloutTarget.state, func.count()).where(*conds).group_by(RolloutTarget.state)
    )
    return {state: int(n) for state, n in rows}


def targets_of_device(session: Session, device_id: str) -> list[TargetRecord]:
    """Every rollout target of one device (newest rollout first)."""
    rows = session.scalars(
        select(RolloutTarget)
        .where(RolloutTarget.device_id == device_id)
        .order_by(RolloutTarget.created_at.desc())
    )
    return [to_record(TargetRecord, r) for r in rows]
