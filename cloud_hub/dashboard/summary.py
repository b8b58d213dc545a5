"""Fleet-wide aggregates for the dashboard (read-only queries over the registry tables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, case, cast, func, select
from sqlalchemy.orm import Session

from cloud_hub.registry.tables import Device, DriftRow, EventRow, Rollout, TrainingRun

__all__ = ["FleetSummary", "change_marker", "fleet_summary"]


@dataclass(frozen=True)
class FleetSummary:
    total: int
    online: int
    by_class: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)
    cpu_fallback: int = 0


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
