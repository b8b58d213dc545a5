"""A multi-host fleet lab on one machine: one network namespace per host (hub, broker,
devices) on a private bridge, the real programs inside, link faults per device."""

from simulations.lab.fleet import FleetLab, LabConfig, LabError, LabLeftoversError
from simulations.lab.plan import LabHost, LabPlan, LabPlanError

__all__ = [
    "FleetLab",
    "LabConfig",
    "LabError",
    "LabHost",
    "LabLeftoversError",
    "LabPlan",
    "LabPlanError",
]
