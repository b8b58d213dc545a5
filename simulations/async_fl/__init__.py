"""Availability-trace simulation: synchronous vs asynchronous buffered SecAgg+ on a virtual clock."""

from simulations.async_fl.clock import ClockConfig, ModeResult, run_async, run_sync
from simulations.async_fl.compare import Comparison, compare_modes, write_outputs
from simulations.async_fl.fleet import FleetData, open_fleet
from simulations.async_fl.trace import AvailabilityTrace, TraceSpec

__all__ = [
    "AvailabilityTrace",
    "ClockConfig",
    "Comparison",
    "FleetData",
    "ModeResult",
    "TraceSpec",
    "compare_modes",
    "open_fleet",
    "run_async",
    "run_sync",
    "write_outputs",
]
