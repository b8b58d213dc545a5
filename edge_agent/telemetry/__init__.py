"""Device telemetry: jtop -> NVML -> psutil gauges plus inference counters and warnings."""

from edge_agent.telemetry.collector import (
    TelemetryCollector,
    TelemetryConfig,
    TelemetrySnapshot,
    default_sources,
)
from edge_agent.telemetry.sources import JtopSource, MetricSource, NvmlSource, PsutilSource

__all__ = [
    "JtopSource",
    "MetricSource",
    "NvmlSource",
    "PsutilSource",
    "TelemetryCollector",
    "TelemetryConfig",
    "TelemetrySnapshot",
    "default_sources",
]
