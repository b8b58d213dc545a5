"""Fleet-wide reads for the dashboard: counts over every device, a change marker, and per
device the inputs of its health verdict, its newest drift and the rollouts that target it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, case, cast, func, select
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import to_record
from cloud_hub.registry.records import (
    DeviceRolloutEntry,
    DeviceVitals,
    DriftRecord,
    FleetSummary,
)
from cloud_hub.registry.tables import (
    Bundle,
    Device,
    DriftRow,
    EventRow,
    Rollout,
    RolloutTarget,
    TrainingRun,
)

__all__ = [
    "change_marker",
    "device_rollout_entries",
    "device_vitals",
    "fleet_summary",
    "newest_drift_per_version",
]


def fleet_summary(session: Session) -> FleetSummary:
    """Counts by class and by installed model version, and GPU→CPU fallbacks."""
    total = session.scalar(select(func.count()).select_from(Device)) or 0
    online = session.scalar(select(func.count()).where(Device.online.is_(True))) or 0
    by_class = {
        str(c or "unknown"): int(n)
        for c, n in session.execute(
            select(Device.device_class, func.count()).group_by(Device.device_class)
        )
    }
    by_version = {
        (f"{m} v{v}" if m else "none"): int(n)
        for m, v, n in session.execute(
            select(Device.installed_model, Device.installed_version, func.count()).group_by(
                Device.installed_model, Device.installed_version
            )
        )
    }
    fallback = (
        session.scalar(
            select(func.count()).where(
                Device.provider.like("%CPU%"), cast(Device.runtimes, String).like("%cuda%")
            )
        )
        or 0
    )
    return FleetSummary(total, online, by_class, by_version, int(fallback))


def change_marker(session: Session) -> dict[str, Any]:
    """A small value that changes whenever anything the dashboard shows changes."""
    return {
        "devices": list(
            session.execute(
                select(
                    func.count(),
                    func.sum(case((Device.online.is_(True), 1), else_=0)),
                    func.max(Device.last_seen),
                    func.sum(func.coalesce(Device.installed_version, 0)),
                ).select_from(Device)
            ).one()
        ),
        "rollouts": list(
            session.execute(
                select(func.count(), func.max(Rollout.updated_at)).select_from(Rollout)
            ).one()
        ),
        "events": list(
            session.execute(
                select(func.count(), func.max(EventRow.received_at)).select_from(EventRow)
            ).one()
        ),
        "drift": list(session.execute(select(func.count()).select_from(DriftRow)).one()),
        "runs": list(
            session.execute(
                select(func.count(), func.max(TrainingRun.updated_at)).select_from(TrainingRun)
            ).one()
        ),
    }


def device_vitals(session: Session, device_ids: Sequence[str]) -> list[DeviceVitals]:
    """The vitals of those of ``device_ids`` the registry knows (one query; unordered)."""
    rows = session.execute(
        select(
            Device.device_id,
            Device.hello_ts,
            Device.status_ts,
            Device.online,
            Device.healthy,
            Device.ota_state,
            Device.installed_model,
            Device.installed_version,
        ).where(Device.device_id.in_(list(device_ids)))
    ).all()
    return [to_record(DeviceVitals, r) for r in rows]


def newest_drift_per_version(session: Session, device_ids: Sequence[str]) -> list[DriftRecord]:
    """For each of ``device_ids``, its newest drift report of each model version."""
    if not device_ids:
        return []
    newest = (
        select(DriftRow.device_id, DriftRow.model_version, func.max(DriftRow.id).label("id"))
        .where(DriftRow.device_id.in_(list(device_ids)))
        .group_by(DriftRow.device_id, DriftRow.model_version)
        .subquery()
    )
    rows = session.execute(select(DriftRow).join(newest, DriftRow.id == newest.c.id)).scalars()
    return [to_record(DriftRecord, r) for r in rows]


def device_rollout_entries(session: Session, device_ids: Sequence[str]) -> list[DeviceRolloutEntry]:
    """Every rollout target of ``device_ids``, oldest rollout first."""
    if not device_ids:
        return []
    rows = session.execute(
        select(
            RolloutTarget.device_id,
            RolloutTarget.state,
            RolloutTarget.stage_index,
            Rollout.rollout_id,
            Rollout.name,
            Rollout.state,
            Bundle.model_name,
            Bundle.version,
        )
        .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
        .outerjoin(Bundle, Bundle.bundle_id == Rollout.bundle_id)
        .where(RolloutTarget.device_id.in_(list(device_ids)))
        .order_by(Rollout.created_at)
    ).all()
    return [DeviceRolloutEntry(*row) for row in rows]
