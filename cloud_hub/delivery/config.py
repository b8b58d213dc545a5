"""Configuration of the fleet publisher: one frozen, validated, keyword-only dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from cloud_hub.errors import HubConfigError
from shared.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from shared.topics import TopicScheme

__all__ = ["PublisherConfig", "parse_mqtt_url"]


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` or ``mqtts://host:port`` → (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts", "tcp") or not parsed.hostname:
        raise HubConfigError(f"MQTT URL must look like mqtt://host:port, got {url!r}")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise HubConfigError(f"bad port in MQTT URL {url!r}") from exc
    return parsed.hostname, port, tls


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """How the hub publishes to the fleet.

    ``max_inflight`` bounds QoS1 publishes not yet acknowledged by the broker (memory and
    broker queues stay bounded); ``start_grace_s`` is how long ``deploy`` waits for the
    targeted devices to report ``download_started`` (i.e. to be subscribed to the fan-out
    topic) before the chunks fly — devices that join later ask for what they missed.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "fedfleet"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # "" = system CAs; None = no TLS
    mqtt_protocol: str = "5"  # or "3.1.1" (brokers such as amqtt)
    tls_cert: str | None = None  # client certificate for mutual TLS (the hub's own)
    tls_key: str | None = None
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

    def __post_init__(self) -> None:
        TopicScheme(self.prefix)  # validates
        if not 1 <= self.port <= 65535:
            raise HubConfigError(f"port must be 1..65535, got {self.port}")
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
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise HubConfigError(f"{name} must be > 0")
        if self.start_grace_s < 0:
            raise HubConfigError("start_grace_s must be >= 0")
        if self.max_inflight > 65_000:
            raise HubConfigError("max_inflight must be <= 65000 (MQTT packet ids)")

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> PublisherConfig:
        host, port, tls = parse_mqtt_url(url)
        if tls and "tls_ca" not in kwargs:
            kwargs["tls_ca"] = ""  # system CAs
        return cls(host=host, port=port, **kwargs)  # type: ignore[arg-type]

    @property
    def topics(self) -> TopicScheme:
        return TopicScheme(self.prefix)
