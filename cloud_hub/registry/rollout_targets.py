"""Rollout targets in bulk: the rollout engine's moves and reads over many devices at once,
and the bundle bytes shipped to each target.

The rollout package decides which states a move goes from and to (its transition table);
these functions take those states as plain strings and only store and read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import to_record
from cloud_hub.registry.records import TargetRecord
from cloud_hub.registry.tables import Rollout, RolloutTarget

__all__ = [
    "count_targets_by_stage",
    "device_holders",
    "move_targets",
    "record_shipment",
    "shipment_totals",
    "target_device_ids",
    "targets_in_states",
]

_BATCH = 500


def move_targets(
    session: Session,
    rollout_id: str,
    device_ids: Iterable[str],
    *,
    now: float,
    only_states: Collection[str] | None = None,
    bump_attempts: bool = False,
    **values: object,
) -> None:
    """Set ``values`` on the targets of ``device_ids`` (only those still in ``only_states``
    if given), counting one more attempt with ``bump_attempts``."""
    ids = list(device_ids)
    for i in range(0, len(ids), _BATCH):
        conds = [
            RolloutTarget.rollout_id == rollout_id,
            RolloutTarget.device_id.in_(ids[i : i + _BATCH]),
        ]
        if only_states is not None:
            conds.append(RolloutTarget.state.in_(list(only_states)))
        extra: dict[str, object] = {}
        if bump_attempts:
            extra["attempts"] = RolloutTarget.attempts + 1
        session.execute(
            update(RolloutTarget)
            .where(*conds)
            .values(**values, **extra, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def targets_in_states(
    session: Session,
    rollout_id: str,
    states: Collection[str],
    *,
    max_stage: int | None = None,
) -> list[TargetRecord]:
    """The targets of a rollout in ``states`` (of stages up to ``max_stage``), by device."""
    conds = [RolloutTarget.rollout_id == rollout_id, RolloutTarget.state.in_(list(states))]
    if max_stage is not None:
        conds.append(RolloutTarget.stage_index <= max_stage)
    rows = session.scalars(select(RolloutTarget).where(*conds).order_by(RolloutTarget.device_id))
    return [to_record(TargetRecord, r) for r in rows]


def target_device_ids(session: Session, rollout_id: str) -> list[str]:
    """Every device the rollout targets (sorted)."""
    return list(
        session.scalars(
            select(RolloutTarget.device_id)
            .where(RolloutTarget.rollout_id == rollout_id)
            .order_by(RolloutTarget.device_id)
        )
    )


def device_holders(
    session: Session,
    device_ids: Iterable[str],
    *,
    released_target_states: Collection[str],
    holding_rollout_states: Collection[str],
    exclude: str | None = None,
) -> dict[str, tuple[str, str]]:
    """``{device_id: (rollout_id, rollout state)}``: for each device, the oldest rollout in
    ``holding_rollout_states`` (other than ``exclude``) whose target of it is not in
    ``released_target_states``."""
    held: dict[str, tuple[str, str]] = {}
    ids = list(dict.fromkeys(device_ids))
    conds: list[ColumnElement[bool]] = [
        RolloutTarget.state.not_in(list(released_target_states)),
        Rollout.state.in_(list(holding_rollout_states)),
        Rollout.rollout_id != (exclude or ""),
    ]
    for i in range(0, len(ids), _BATCH):
        rows = session.execute(
            select(RolloutTarget.device_id, Rollout.rollout_id, Rollout.state)
            .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
            .where(RolloutTarget.device_id.in_(ids[i : i + _BATCH]), *conds)
            .order_by(Rollout.created_at)
        )
        for device_id, rollout_id, state in rows:
            held.setdefault(device_id, (rollout_id, state))
    return held


def count_targets_by_stage(session: Session, rollout_id: str) -> dict[int, dict[str, int]]:
    """``{stage index: {target state: count}}`` of one rollout."""
    rows = session.execute(
        select(RolloutTarget.stage_index, RolloutTarget.state, func.count())
        .where(RolloutTarget.rollout_id == rollout_id)
        .group_by(RolloutTarget.stage_index, RolloutTarget.state)
    )
    per_stage: dict[int, dict[str, int]] = {}
    for index, state, n in rows:
        per_stage.setdefault(int(index), {})[state] = int(n)
    return per_stage


def record_shipment(
    session: Session,
    rollout_id: str,
    sent: Mapping[str, int],
    *,
    full_size: int,
    now: float,
) -> None:
    """Add the bundle bytes ``sent`` to each target device (and ``full_size`` each to what
    full bundles would have cost)."""
    for device_id, size in sent.items():
        session.execute(
            update(RolloutTarget)
            .where(RolloutTarget.rollout_id == rollout_id, RolloutTarget.device_id == device_id)
            .values(
                bytes_sent=RolloutTarget.bytes_sent + int(size),
                bytes_full=RolloutTarget.bytes_full + int(full_size),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )


def shipment_totals(session: Session, rollout_id: str) -> dict[str, Any] | None:
    """``{"bytes_shipped", "bytes_full", "devices": {device: bytes}}`` of a rollout, or
    ``None`` before any bundle was sent."""
    rows = session.execute(
        select(RolloutTarget.device_id, RolloutTarget.bytes_sent, RolloutTarget.bytes_full).where(
            RolloutTarget.rollout_id == rollout_id, RolloutTarget.bytes_full > 0
        )
    ).all()
    if not rows:
        return None
    return {
        "bytes_shipped": sum(int(sent) for _d, sent, _f in rows),
        "bytes_full": sum(int(full) for _d, _s, full in rows),
        "devices": {d: int(sent) for d, sent, _f in sorted(rows)},
    }
