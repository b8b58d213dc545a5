"""The device-side inference stack, assembled: runtime + server + observers + API + telemetry.

The agent's main loop owns one ``InferenceStack``: ``install`` loads a committed model
(backend selection, drift reference) and hot-swaps it in; ``telemetry`` and
``drain_drift_reports`` give it what to publish. ``python -m edge_agent.serving`` runs the
stack alone (for ``edge-agent infer --url`` users, benchmarks and tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.drift.detector import DriftConfig, DriftDetector, DriftWindowReport
from edge_agent.runtime._memory import release_free_memory
from edge_agent.runtime.base import ModelArtifacts, RuntimeReport
from edge_agent.runtime.capabilities import DeviceCapabilities, detect_capabilities
from edge_agent.runtime.selection import RuntimeConfig, RuntimeProfile, select_backend
from edge_agent.samples.store import SampleStore, SampleStoreConfig
from edge_agent.serving.http_api import HttpApiConfig, LocalApi
from edge_agent.serving.observers import ObserverConfig, PredictionObservers
from edge_agent.serving.server import ModelServer, ServingConfig
from edge_agent.telemetry.collector import TelemetryCollector, TelemetryConfig, TelemetrySnapshot
from shared.drift_reference import ReferenceStats
from shared.messages import TelemetryMetric

__all__ = ["InferenceStack", "InferenceStackConfig"]


@dataclass(frozen=True)
class InferenceStackConfig:
    """Every component's config in one place (each validates its own limits)."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    observers: ObserverConfig = field(default_factory=ObserverConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    api: HttpApiConfig | None = field(default_factory=HttpApiConfig)  # None: no local API
    samples: SampleStoreConfig | None = None  # None: no sample store (feedback refused)


class InferenceStack:
    """Owns the components; ``start``/``stop`` the threads, ``install`` models."""

    def __init__(
        self,
        config: InferenceStackConfig | None = None,
        *,
        capabilities: DeviceCapabilities | None = None,
    ) -> None:
        self.config = config or InferenceStackConfig()
        self.capabilities = capabilities or detect_capabilities()
        self.store = SampleStore(self.config.samples) if self.config.samples else None
        self.observers = PredictionObservers(self.config.observers, store=self.store)
        self.server = ModelServer(self.config.serving, observers=self.observers)
        self.api = LocalApi(self.server, self.config.api) if self.config.api else None
        self.telemetry_collector = TelemetryCollector(self.config.telemetry)

    def start(self) -> None:
        self.observers.start()
        if self.api is not None:
            self.api.start()

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self.observers.stop()
        self.server.close()
        self.telemetry_collector.close()
        if self.store is not None:
            self.store.close()

    def install(
        self,
        artifacts: ModelArtifacts,
        *,
        profile: RuntimeProfile | None = None,
        reference: ReferenceStats | None = None,
    ) -> RuntimeReport:
        """Load ``artifacts`` and make them the active model (in-flight requests finish)."""
        loaded = select_backend(
            artifacts, profile, capabilities=self.capabilities, config=self.config.runtime
        )
        detector = (
            None
            if reference is None
            else DriftDetector(reference, self.config.drift, model_version=artifacts.version)
        )
        self.observers.set_drift_detector(detector)
        self.server.swap(loaded)
        return loaded.report

    def telemetry(self) -> TelemetrySnapshot:
        server = self.server.stats()
        snapshot = self.telemetry_collector.collect(
            server=server,
            runtime=self.server.report,
            observers=self.observers.stats(server.model_version),
        )
        if self.store is not None:  # the hub's training eligibility counts new labels
            labelled = self.store.stats().labelled
            snapshot.metrics[TelemetryMetric.LABELLED_SAMPLES] = float(labelled)
        return snapshot

    def release_memory(self) -> None:
        """Return freed heap to the OS (call from the agent's periodic tick)."""
        release_free_memory()

    def drain_drift_reports(self) -> list[DriftWindowReport]:
        return self.observers.drain_drift_reports()

    @property
    def api_url(self) -> str | None:
        return None if self.api is None else self.api.url

    @staticmethod
    def default_sample_store(state_dir: Path) -> SampleStoreConfig:
        return SampleStoreConfig(path=state_dir / "samples.db")
