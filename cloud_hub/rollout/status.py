"""Read-only views of a rollout for the REST API, the CLI and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud_hub.registry import Session, catalog, device_views
from cloud_hub.registry import rollout_targets as target_repo
from cloud_hub.registry.devices import select_device_ids
from cloud_hub.registry.records import RolloutRecord
from cloud_hub.rollout.compat import target_warnings
from cloud_hub.rollout.state import RolloutPhase, RolloutState

__all__ = ["RolloutStatus", "StageStatus", "phase_of", "rollout_status"]


def phase_of(record: RolloutRecord) -> RolloutPhase:
    """The state-machine position stored in a rollout record."""
    state = RolloutState(record.state)
    return RolloutPhase(state, -1 if state is RolloutState.DRAFT else record.current_stage)


@dataclass(frozen=True)
class StageStatus:
    index: int
    name: str
    state: str
    started_at: float | None
    finished_at: float | None
    devices: tuple[str, ...]
    targets: dict[str, int]  # target state -> count
    gate: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "devices": list(self.devices),
            "targets": dict(self.targets),
            "gate": self.gate,
        }


@dataclass(frozen=True)
class RolloutStatus:
    rollout_id: str
    name: str
    state: str
    phase: str
    stage: int
    bundle_id: str
    previous_bundle_id: str | None
    reason: str
    created_by: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    revision: int
    config: dict[str, Any]
    stages: tuple[StageStatus, ...] = ()
    targets: dict[str, int] = field(default_factory=dict)
    # before start: target devices the artifact was not built for (compat.py)
    warnings: tuple[str, ...] = ()
    # bytes devices were sent vs what full bundles would cost; None before the first offer
    delivery: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        body = {
            "rollout_id": self.rollout_id,
            "name": self.name,
            "state": self.state,
            "phase": self.phase,
            "stage": self.stage,
            "bundle_id": self.bundle_id,
            "previous_bundle_id": self.previous_bundle_id,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "revision": self.revision,
            "config": self.config,
            "stages": [s.to_dict() for s in self.stages],
            "targets": dict(self.targets),
            "warnings": list(self.warnings),
        }
        if self.delivery is not None:
            body["delivery"] = dict(self.delivery)
        return body


def rollout_status(session: Session, record: RolloutRecord) -> RolloutStatus:
    per_stage = target_repo.count_targets_by_stage(session, record.rollout_id)
    totals: dict[str, int] = {}
    for counts in per_stage.values():
        for state, n in counts.items():
            totals[state] = totals.get(state, 0) + n
    phase = phase_of(record)
    stages = tuple(
        StageStatus(
            index=s.index,
            name=s.name,
            state=s.state,
            started_at=s.started_at,
            finished_at=s.finished_at,
            devices=tuple(s.device_ids or ()),
            targets=per_stage.get(s.index, {}),
            gate=s.gate_results[-1] if s.gate_results else None,
        )
        for s in record.stages
    )
    return RolloutStatus(
        rollout_id=record.rollout_id,
        name=record.name,
        state=record.state,
        phase=phase.name,
        stage=phase.stage,
        bundle_id=record.bundle_id,
        previous_bundle_id=record.previous_bundle_id,
        reason=record.reason,
        created_by=record.created_by,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        revision=record.revision,
        config=dict(record.config),
        stages=stages,
        targets=totals,
        warnings=_draft_warnings(session, record) if record.state == "draft" else (),
        delivery=target_repo.shipment_totals(session, record.rollout_id),
    )


def _draft_warnings(session: Session, record: RolloutRecord) -> tuple[str, ...]:
    """What would stop or spoil a start: target devices held by an unfinished rollout, and
    devices the bundle's artifact was not built for."""
    from cloud_hub.rollout._store import held_devices, held_note  # _store builds on status

    ids = select_device_ids(
        session, device_class=record.device_class, labels=record.target_labels or {}
    )
    held = held_note(held_devices(session, ids, exclude=record.rollout_id))
    warnings = (f"{held}: start is refused until they are released",) if held else ()
    bundle = catalog.find_bundle(session, record.bundle_id)
    built_for = (bundle.manifest or {}).get("targets") if bundle is not None else None
    if not isinstance(built_for, list) or not built_for:
        return warnings
    found = device_views.device_targets(session, ids)
    return warnings + target_warnings([str(t) for t in built_for], found)
