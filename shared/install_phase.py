"""The install lifecycle's vocabulary, shared by the device and the hub.

A device's :class:`~shared.messages.Status` carries its current phase (``ota_state``); the
agent's transition table (``edge_agent.ota.machine``) moves between these phases; the hub's
delivery and rollout code read them. A deployment ends in exactly one terminal phase, and
the device reports it with the event kind of the same name
(:class:`shared.messages.EventKind`).
"""

from __future__ import annotations

import enum

__all__ = ["TERMINAL_INSTALL_PHASES", "InstallPhase", "is_terminal_phase"]


class InstallPhase(str, enum.Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


#: A deployment in one of these phases is over; the next offer starts a new one.
TERMINAL_INSTALL_PHASES = frozenset(
    {InstallPhase.COMMITTED, InstallPhase.ROLLED_BACK, InstallPhase.FAILED}
)


def is_terminal_phase(name: str) -> bool:
    """Whether a phase name as received on the wire (``Status.ota_state``) ends a deployment;
    an unknown name (a newer agent) is not terminal."""
    return name in {p.value for p in TERMINAL_INSTALL_PHASES}
