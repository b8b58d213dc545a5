"""What a lab's devices hold after a scenario, read from their state folders and the hub's
registry: the model each one serves, reports still waiting in its outbox, and the install
events the hub received per deployment."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select

from cloud_hub.registry import open_registry
from cloud_hub.registry.tables import EventRow
from simulations.fleet.outcome import _outbox_left, _smoke
from simulations.lab.fleet import FleetLab

__all__ = ["LabDeviceOutcome", "collect_outcomes"]


@dataclass(frozen=True)
class LabDeviceOutcome:
    device_id: str
    active_version: int | None
    smoke_ok: bool
    smoke_detail: str
    outbox_left: int  # reports the broker has not acknowledged yet
    terminal_events: tuple[str, ...]  # kinds of terminal events the hub holds for it

    @property
    def serves_committed(self) -> bool:
        return self.smoke_ok and self.terminal_events == ("committed",)


def collect_outcomes(lab: FleetLab, deployment_id: str | None = None) -> list[LabDeviceOutcome]:
    """One outcome per device; ``terminal_events`` counts only ``deployment_id``'s events
    when given."""
    registry = open_registry(f"sqlite:///{lab.hub_data / 'hub.db'}")
    try:
        with registry.session() as s:
            query = select(EventRow.device_id, EventRow.kind)
            if deployment_id is not None:
                query = query.where(EventRow.deployment_id == deployment_id)
            kinds = Counter((d, k) for d, k in s.execute(query))
    finally:
        registry.close()
    terminal = ("committed", "rolled_back", "failed")
    result = []
    for host in lab.plan.devices:
        state = lab.device_dir(host) / "var" / "lib" / "fedfleet-agent"
        ok, detail, version = _smoke(state)
        result.append(
            LabDeviceOutcome(
                device_id=host.name,
                active_version=version,
                smoke_ok=ok,
                smoke_detail=detail,
                outbox_left=_outbox_left(state),
                terminal_events=tuple(
                    k for k in terminal for _ in range(kinds.get((host.name, k), 0))
                ),
            )
        )
    return result
