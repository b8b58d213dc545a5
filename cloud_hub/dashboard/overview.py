"""What the fleet page shows beside each device: one health verdict, the drift of the model it
runs, and the rollout it is in.

:func:`health_verdict` is pure and decides the one pill an operator reads, so the page never
shows "healthy" beside a failed install, on a device that never connected, or on one whose
model drifts. :func:`device_overview` gathers its inputs with three queries for a page of
devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub.registry.tables import Bundle, Device, DriftRow, Rollout, RolloutTarget
from cloud_hub.rollout.state import HOLDING_STATES
from shared.install_phase import InstallPhase

__all__ = ["DeviceOverview", "HealthVerdict", "device_overview", "health_verdict"]

MAX_DEVICES = 200  # one page of the fleet table
_FAILED_TARGETS = frozenset({"failed", "rollback_failed", "stranded"})
_BUSY_PHASES = frozenset(
    p.value
    for p in (
        InstallPhase.DOWNLOADING,
        InstallPhase.VERIFYING,
        InstallPhase.INSTALLING,
        InstallPhase.HEALTH_CHECK,
        InstallPhase.ROLLING_BACK,
    )
)


@dataclass(frozen=True)
class HealthVerdict:
    """``state``: never_connected, offline, failed, unhealthy, drifting, updating or healthy
    (the first that applies, in that order); ``reason``: one line saying why."""

    state: str
    reason: str


@dataclass(frozen=True)
class DeviceOverview:
    device_id: str
    health: HealthVerdict
    drift: dict[str, Any] | None  # newest report for the model version the device runs
    rollout: dict[str, Any] | None  # the newest rollout that targeted the device


def health_verdict(
    *,
    connected: bool,
    online: bool,
    healthy: bool,
    ota_state: str,
    drifted: bool | None,
    rollout_target_state: str | None,
) -> HealthVerdict:
    """The one health pill of a device (see :class:`HealthVerdict`)."""
    if not connected:
        return HealthVerdict("never_connected", "enrolled, has not said hello yet")
    if not online:
        return HealthVerdict("offline", "not connected: health unknown")
    if ota_state == InstallPhase.FAILED.value:
        return HealthVerdict("failed", "its last install failed")
    if rollout_target_state in _FAILED_TARGETS:
        return HealthVerdict("failed", f"rollout target {rollout_target_state}")
    if not healthy:
        return HealthVerdict("unhealthy", "the device reports itself unhealthy")
    if drifted:
        return HealthVerdict("drifting", "its inputs drift from the model's reference")
    if ota_state in _BUSY_PHASES:
        return HealthVerdict("updating", f"install in progress: {ota_state}")
    return HealthVerdict("healthy", "online, serving, no drift reported")


def device_overview(session: Session, device_ids: Sequence[str]) -> list[DeviceOverview]:
    """The overview of each of ``device_ids`` that exists (at most :data:`MAX_DEVICES`)."""
    ids = list(dict.fromkeys(device_ids))[:MAX_DEVICES]
    if not ids:
        return []
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
        ).where(Device.device_id.in_(ids))
    ).all()
    drift = _newest_drift(
        session, {r.device_id: (r.installed_model, r.installed_version) for r in rows}
    )
    rollout = _newest_rollout(session, [r.device_id for r in rows])
    out = []
    for r in sorted(rows, key=lambda r: r.device_id):
        d, ro = drift.get(r.device_id), rollout.get(r.device_id)
        verdict = health_verdict(
            connected=r.hello_ts is not None or r.status_ts is not None,
            online=bool(r.online),
            healthy=bool(r.healthy),
            ota_state=r.ota_state or "idle",
            drifted=d["drifted"] if d else None,
            rollout_target_state=ro["target_state"] if ro and ro["active"] else None,
        )
        out.append(DeviceOverview(r.device_id, verdict, d, ro))
    return out


def _newest_drift(
    session: Session, running: dict[str, tuple[str | None, int | None]]
) -> dict[str, dict[str, Any]]:
    """Per device, the newest drift report of the model version it runs."""
    wanted = [d for d, (_, v) in running.items() if v is not None]
    if not wanted:
        return {}
    newest = (
        select(DriftRow.device_id, DriftRow.model_version, func.max(DriftRow.id).label("id"))
        .where(DriftRow.device_id.in_(wanted))
        .group_by(DriftRow.device_id, DriftRow.model_version)
        .subquery()
    )
    rows = session.execute(select(DriftRow).join(newest, DriftRow.id == newest.c.id)).scalars()
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        model, version = running[row.device_id]
        if row.model_version != version or (model and row.model_name != model):
            continue
        out[row.device_id] = {
            "score": row.drift_score,
            "drifted": row.drifted,
            "model_version": row.model_version,
            "ts": row.ts,
        }
    return out


def _newest_rollout(session: Session, device_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per device, the newest rollout that targeted it: still holding it (``active``) or not."""
    if not device_ids:
        return {}
    holding = {s.value for s in HOLDING_STATES}
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
        .where(RolloutTarget.device_id.in_(device_ids))
        .order_by(Rollout.created_at)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for device_id, target_state, stage, rid, name, state, model, version in rows:
        out[device_id] = {  # ordered by creation: the newest wins
            "rollout_id": rid,
            "name": name or rid,
            "state": state,
            "active": state in holding,
            "target_state": target_state,
            "stage": stage + 1,  # operators count stages from 1
            "bundle": f"{model} v{version}" if model else None,
        }
    return out
