"""Over-the-air model updates: persisted install state machine, A/B slots, verification.

See :mod:`edge_agent.ota.machine` for the lifecycle and :class:`OtaUpdater` for the shell.
"""

from edge_agent.ota.health import HealthCheck, OnnxSmokeCheck
from edge_agent.ota.machine import Deployment, Phase, Trigger
from edge_agent.ota.slots import InstalledSlot, SlotMeta, SlotStore
from edge_agent.ota.updater import OtaStatus, OtaUpdater

__all__ = [
    "Deployment",
    "HealthCheck",
    "InstalledSlot",
    "OnnxSmokeCheck",
    "OtaStatus",
    "OtaUpdater",
    "Phase",
    "SlotMeta",
    "SlotStore",
    "Trigger",
]
