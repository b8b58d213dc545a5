"""Collect one telemetry snapshot: device gauges plus the server's inference counters.

Sources are tried in order (default jtop -> NVML -> psutil). A source that cannot open or
read is skipped, and *why* is carried in every snapshot (``source_errors``) so the hub sees
e.g. "jtop: JtopException: service not active" instead of silently missing GPU metrics.
Once a GPU-capable source works, later GPU sources are not opened. psutil always supplies
whatever host metric the earlier sources did not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import AgentConfigError
from edge_agent.runtime.base import RuntimeReport
from edge_agent.serving.observers import ObserverStats
from edge_agent.serving.server import ServerStats
from edge_agent.telemetry.sources import JtopSource, MetricSource, NvmlSource, PsutilSource
from shared import messages

__all__ = ["TelemetryCollector", "TelemetryConfig", "TelemetrySnapshot", "default_sources"]

log = logging.getLogger(__name__)
_KNOWN_SOURCES = ("jtop", "nvml", "psutil")


@dataclass(frozen=True)
class TelemetryConfig:
    """Which sources to try, in order, and how often the agent should report."""

    interval_s: float = 30.0
    sources: tuple[str, ...] = _KNOWN_SOURCES
    disk_path: Path = Path("/")

    def __post_init__(self) -> None:
        if not 1.0 <= self.interval_s <= 86_400.0:
            raise AgentConfigError("telemetry interval_s must be in [1 s, 1 day]")
        unknown = [s for s in self.sources if s not in _KNOWN_SOURCES]
        if unknown or not self.sources:
            raise AgentConfigError(f"unknown telemetry sources {unknown}; known: {_KNOWN_SOURCES}")


@dataclass(frozen=True)
class TelemetrySnapshot:
    """One report's worth of gauges and the provenance of each."""

    metrics: dict[str, float]
    sources: tuple[str, ...]  # the sources that contributed
    source_errors: tuple[str, ...]  # "name: ErrorType: message" for each failed source
    warnings: tuple[str, ...] = ()  # runtime fallbacks and other operator-visible issues
    runtime: str | None = None
    provider: str | None = None
    model_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_message(self, *, device_id: str, seq: int) -> messages.Telemetry:
        """The wire message published on the device's ``telemetry`` topic."""
        return messages.Telemetry(
            device_id=device_id,
            seq=seq,
            metrics=dict(self.metrics),
            runtime=self.runtime,
            provider=self.provider,
            warnings=list(self.warnings),
            model_version=self.model_version,
            extra={"sources": list(self.sources), "source_errors": list(self.source_errors)},
        )


def default_sources(config: TelemetryConfig) -> list[MetricSource]:
    """The real sources named in ``config.sources``, in order."""
    made: list[MetricSource] = []
    for name in config.sources:
        if name == "jtop":
            made.append(JtopSource())
        elif name == "nvml":
            made.append(NvmlSource())
        else:
            made.append(PsutilSource(config.disk_path))
    return made


def _describe(source: MetricSource, exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line: jtop's messages span several
    return f"{source.name}: {type(exc).__name__}: {text}"


class TelemetryCollector:
    """Opens its sources once; ``collect`` is cheap and never raises for a source failure."""

    def __init__(
        self,
        config: TelemetryConfig | None = None,
        *,
        sources: Sequence[MetricSource] | None = None,
    ) -> None:
        self.config = config or TelemetryConfig()
        candidates = list(sources) if sources is not None else default_sources(self.config)
        self._open: list[MetricSource] = []
        self._errors: list[str] = []
        have_gpu = False
        for source in candidates:
            if source.provides_gpu and have_gpu:
                continue
            try:
                source.open()
            except Exception as exc:  # each library raises its own tree; all mean "skip it"
                self._errors.append(_describe(source, exc))
                log.info("telemetry source unavailable: %s", self._errors[-1])
                continue
            self._open.append(source)
            have_gpu = have_gpu or source.provides_gpu

    @property
    def active_sources(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._open)

    @property
    def source_errors(self) -> tuple[str, ...]:
        return tuple(self._errors)

    def collect(
        self,
        *,
        server: ServerStats | None = None,
        runtime: RuntimeReport | None = None,
        observers: ObserverStats | None = None,
    ) -> TelemetrySnapshot:
        metrics: dict[str, float] = {}
        used: list[str] = []
        errors = list(self._errors)
        for source in self._open:
            try:
                values = source.read()
            except Exception as exc:  # a sensor hiccup must not lose the whole report
                errors.append(_describe(source, exc))
                continue
            used.append(source.name)
            for key, value in values.items():
                metrics.setdefault(key, value)  # earlier (more specific) sources win
        if server is not None:
            metrics["inference_count"] = float(server.inference_count)
            metrics["request_count"] = float(server.request_count)
            metrics["error_count"] = float(server.error_count)
            metrics["input_error_count"] = float(server.input_error_count)
            if server.p50_ms is not None and server.p95_ms is not None:
                metrics["p50_ms"] = server.p50_ms
                metrics["p95_ms"] = server.p95_ms
        if observers is not None:
            metrics["observer_dropped"] = float(observers.dropped)
            metrics["drift_windows"] = float(observers.drift_windows)
            metrics["drift_alarms"] = float(observers.drift_alarms)
            metrics["feedback_count"] = float(observers.feedback_count)
            metrics["feedback_correct"] = float(observers.feedback_correct)
        warnings: tuple[str, ...] = ()
        extra: dict[str, Any] = {}
        if runtime is not None:
            warnings = runtime.warnings
            metrics["runtime_gpu"] = 1.0 if runtime.is_gpu else 0.0
            if runtime.engine_build_seconds is not None:
                metrics["engine_build_s"] = runtime.engine_build_seconds
            extra["device"] = runtime.device
        return TelemetrySnapshot(
            metrics=metrics,
            sources=tuple(used),
            source_errors=tuple(errors),
            warnings=warnings,
            runtime=None if runtime is None else runtime.backend,
            provider=None if runtime is None else runtime.provider,
            model_version=None if server is None else server.model_version,
            extra=extra,
        )

    def close(self) -> None:
        for source in self._open:
            try:
                source.close()
            except Exception as exc:
                log.debug("closing %s: %s", source.name, exc)
        self._open = []
