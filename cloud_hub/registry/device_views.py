"""What devices are and what they reported, read for the rollout engine: their state by id,
the int8 target their hardware implies, and the events of a deployment or of one kind."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import to_record
from cloud_hub.registry.records import DeviceState, EventRecord
from cloud_hub.registry.tables import Device, EventRow

__all__ = ["deployment_events", "device_states", "device_targets", "events_since"]

_BATCH = 500


def device_states(session: Session, device_ids: Sequence[str]) -> dict[str, DeviceState]:
    """``{device_id: DeviceState}`` of those of ``device_ids`` the registry knows."""
    out: dict[str, DeviceState] = {}
    ids = list(dict.fromkeys(device_ids))
    for i in range(0, len(ids), _BATCH):
        for row in session.scalars(select(Device).where(Device.device_id.in_(ids[i : i + _BATCH]))):
            out[row.device_id] = to_record(
                DeviceState,
                row,
                labels={str(k): str(v) for k, v in (row.labels or {}).items()},
                online=bool(row.online),
                last_seen=float(row.last_seen),
            )
    return out


def device_targets(session: Session, device_ids: Sequence[str]) -> dict[str, str | None]:
    """``{device_id: int8 target or None}`` of those of ``device_ids`` the registry knows."""
    found: dict[str, str | None] = {}
    ids = list(device_ids)
    for i in range(0, len(ids), _BATCH):
        rows = session.execute(
            select(Device.device_id, Device.target).where(Device.device_id.in_(ids[i : i + _BATCH]))
        )
        found.update({d: t for d, t in rows})
    return found


def deployment_events(
    session: Session, deployment_prefix: str, kinds: Sequence[str]
) -> dict[str, list[EventRecord]]:
    """Events of ``kinds`` of the deployments whose id starts with ``deployment_prefix``, by
    device, oldest first."""
    out: dict[str, list[EventRecord]] = {}
    rows = session.scalars(
        select(EventRow)
        .where(
            EventRow.deployment_id.startswith(deployment_prefix, autoescape=True),
            EventRow.kind.in_(list(kinds)),
        )
        .order_by(EventRow.ts, EventRow.id)
    )
    for row in rows:
        out.setdefault(row.device_id, []).append(to_record(EventRecord, row))
    return out


def events_since(
    session: Session, device_ids: Sequence[str], kind: str, *, since: float
) -> list[EventRecord]:
    """Events of ``kind`` that ``device_ids`` reported (device clock) since ``since``."""
    out: list[EventRecord] = []
    ids = list(device_ids)
    for i in range(0, len(ids), _BATCH):
        rows = session.scalars(
            select(EventRow).where(
                EventRow.device_id.in_(ids[i : i + _BATCH]),
                EventRow.kind == kind,
                EventRow.ts >= since,
            )
        )
        out.extend(to_record(EventRecord, r) for r in rows)
    return out
