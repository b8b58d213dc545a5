"""What the fleet page shows beside each device: one health verdict, the drift of the model it
runs, and the rollout it is in.

:func:`health_verdict` is pure and decides the one pill an operator reads, so the page never
shows "healthy" beside a failed install, on a device that never connected, or on one whose
model drifts. :func:`device_overview` gathers its inputs with three registry reads for a
page of devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud_hub.registry import Session, fleet_views
from cloud_hub.registry.records import DeviceRolloutEntry, DriftRecord
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
    rows = fleet_views.device_vitals(session, ids)
    running = {r.device_id: (r.installed_model, r.installed_version) for r in rows}
    wanted = [d for d, (_, v) in running.items() if v is not None]
    drift = _newest_drift(running, fleet_views.newest_drift_per_version(session, wanted))
    rollout = _newest_rollout(fleet_views.device_rollout_entries(session, list(running)))
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
    running: dict[str, tuple[str | None, int | None]], reports: Sequence[DriftRecord]
) -> dict[str, dict[str, Any]]:
    """Per device, the newest drift report of the model version it runs (pure)."""
    out: dict[str, dict[str, Any]] = {}
    for report in reports:
        model, version = running[report.device_id]
        if report.model_version != version or (model and report.model_name != model):
            continue
        out[report.device_id] = {
            "score": report.drift_score,
            "drifted": report.drifted,
            "model_version": report.model_version,
            "ts": report.ts,
        }
    return out


def _newest_rollout(entries: Sequence[DeviceRolloutEntry]) -> dict[str, dict[str, Any]]:
    """Per device, the newest rollout that targeted it: still holding it (``active``) or not
    (pure; ``entries`` oldest rollout first)."""
    holding = {s.value for s in HOLDING_STATES}
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        out[e.device_id] = {  # ordered by creation: the newest wins
            "rollout_id": e.rollout_id,
            "name": e.rollout_name or e.rollout_id,
            "state": e.rollout_state,
            "active": e.rollout_state in holding,
            "target_state": e.target_state,
            "stage": e.stage_index + 1,  # operators count stages from 1
            "bundle": f"{e.model_name} v{e.version}" if e.model_name else None,
        }
    return out
