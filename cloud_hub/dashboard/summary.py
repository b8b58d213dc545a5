"""Fleet-wide aggregates for the dashboard (read by the registry's fleet views)."""

from __future__ import annotations

from cloud_hub.registry.fleet_views import change_marker, fleet_summary
from cloud_hub.registry.records import FleetSummary

__all__ = ["FleetSummary", "change_marker", "fleet_summary"]
