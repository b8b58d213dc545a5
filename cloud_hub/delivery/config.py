"""Configuration of the fleet publisher: one frozen, validated, keyword-only dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cloud_hub.errors import HubConfigError
from shared.broker_endpoint import BrokerEndpoint
from shared.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from shared.errors import ConfigError
from shared.topics import TopicScheme

__all__ = ["PublisherConfig", "PublisherTuning"]


@dataclass(frozen=True, kw_only=True)
class PublisherTuning:
    """Overrides of a hub process's publisher settings (``None``: keep the default); the
    fleet simulation uses small chunks and short grace periods."""

    chunk_size: int | None = None
    start_grace_s: float | None = None
    publish_timeout_s: float | None = None

    def apply(self, config: PublisherConfig) -> PublisherConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(config, **changes)


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """How the hub publishes to the fleet.

    ``max_inflight`` bounds QoS1 publishes not yet acknowledged by the broker (memory and
    broker queues stay bounded); ``start_grace_s`` is how long ``deploy`` waits for the
    targeted devices to report ``download_started`` (i.e. to be subscribed to the fan-out
    topic) before the chunks fly — devices that join later ask for what they missed.
    """

    broker: BrokerEndpoint = field(default_factory=BrokerEndpoint)
    prefix: str = "fedfleet"
    client_id: str = ""  # default: IDENTITY:publish:RANDOM (cloud_hub.broker_client)
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_inflight: int = 32
    publish_timeout_s: float = 60.0
    start_grace_s: float = 5.0
    repair_rate_bytes_s: float = 64 * 1024 * 1024
    max_repair_indices: int = 4096
    max_pending_repairs: int = 10_000
    max_cached_bundles: int = 4
    max_bundle_bytes: int = 2 * 1024**3
    max_devices: int = 100_000
    max_deployments: int = 10_000  # tracked in memory; the oldest finished ones are dropped
    # False inside a hub process whose ingest reads the device reports (hello, status,
    # events) and hands them over (FleetPublisher.observe): each is delivered to the hub once
    reads_device_reports: bool = True
    # R8: full-bundle fallbacks (a device that cannot apply a delta): a bounded worker pool,
    # at most this many devices waiting, one fallback per device and delta per interval
    max_fallback_workers: int = 2
    max_pending_fallbacks: int = 1000
    fallback_interval_s: float = 300.0

    def __post_init__(self) -> None:
        TopicScheme(self.prefix)  # validates
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise HubConfigError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
        positive = (
            "keepalive_s",
            "connect_timeout_s",
            "max_inflight",
            "publish_timeout_s",
            "repair_rate_bytes_s",
            "max_repair_indices",
            "max_pending_repairs",
            "max_cached_bundles",
            "max_bundle_bytes",
            "max_devices",
            "max_deployments",
            "max_fallback_workers",
            "max_pending_fallbacks",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise HubConfigError(f"{name} must be > 0")
        if self.start_grace_s < 0:
            raise HubConfigError("start_grace_s must be >= 0")
        if self.fallback_interval_s < 0:
            raise HubConfigError("fallback_interval_s must be >= 0")
        if self.max_inflight > 65_000:
            raise HubConfigError("max_inflight must be <= 65000 (MQTT packet ids)")

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> PublisherConfig:
        """``PublisherConfig(broker=BrokerEndpoint.from_url(url), **kwargs)``."""
        try:
            broker = BrokerEndpoint.from_url(url)
        except ConfigError as exc:
            raise HubConfigError(str(exc)) from exc
        return cls(broker=broker, **kwargs)  # type: ignore[arg-type]

    @property
    def topics(self) -> TopicScheme:
        return TopicScheme(self.prefix)
