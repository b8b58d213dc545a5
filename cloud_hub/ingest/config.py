"""Limits of the MQTT ingest (validated)."""

from __future__ import annotations

from dataclasses import dataclass

from cloud_hub.errors import HubConfigError

__all__ = ["IngestConfig"]


@dataclass(frozen=True)
class IngestConfig:
    """Bounds that keep the ingest fair and its memory finite under floods.

    - ``per_device_queue``: messages buffered per device before its own oldest telemetry
      (or the new message) is dropped; one device can never fill memory for the others.
    - ``telemetry_rate_per_s`` / ``telemetry_burst``: token bucket per device for telemetry
      only (hello/status/events/drift are never rate-limited, only bounded).
    - ``max_devices``: how many distinct devices may have messages queued at once.
    - ``batch_max`` / ``flush_interval_s``: one DB transaction per batch, started
      ``flush_interval_s`` after the previous one started or after the first message
      arrived, whichever is later (at once when ``batch_max`` messages are queued): under
      load the writer commits back to back, a quiet fleet costs at most one transaction
      per interval.
    - ``max_metrics``: numeric gauges kept per telemetry message.
    - ``workers``: processes that ingest the telemetry stream through MQTT shared
      subscriptions, each with its own connection and commits (PostgreSQL only; SQLite keeps
      one process). ``-1``: two where the machine has two or more CPUs; ``0``: none, the
      hub's one connection reads everything.
    """

    per_device_queue: int = 256
    telemetry_rate_per_s: float = 20.0
    telemetry_burst: float = 60.0
    max_devices: int = 100_000
    batch_max: int = 5000
    flush_interval_s: float = 0.1
    max_metrics: int = 64
    retry_backoff_s: float = 1.0
    workers: int = -1

    def __post_init__(self) -> None:
        checks = {
            "per_device_queue": 1 <= self.per_device_queue <= 100_000,
            "telemetry_rate_per_s": 0 < self.telemetry_rate_per_s <= 100_000,
            "telemetry_burst": 1 <= self.telemetry_burst <= 1_000_000,
            "max_devices": 1 <= self.max_devices <= 10_000_000,
            "batch_max": 1 <= self.batch_max <= 1_000_000,
            "flush_interval_s": 0 < self.flush_interval_s <= 60,
            "max_metrics": 1 <= self.max_metrics <= 1024,
            "retry_backoff_s": 0 < self.retry_backoff_s <= 300,
            "workers": -1 <= self.workers <= 64,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise HubConfigError(f"ingest config out of range: {', '.join(bad)}")
