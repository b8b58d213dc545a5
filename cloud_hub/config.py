"""Configuration of a hub process (``cloud-hub serve``): one validated frozen dataclass.

Read from a TOML file (every key optional)::

    data_dir = "/var/lib/fedfleet-hub"
    db_url = "postgresql+psycopg://hub@db:5432/hub"   # default: sqlite in data_dir
    mqtt_url = "mqtt://127.0.0.1:1883"   # mqtts:// for TLS; then optionally
    # mqtt_ca_file / mqtt_cert_file / mqtt_key_file (mutual TLS: `cloud-hub broker-config`
    # prints them), mqtt_protocol = "5" | "3.1.1"
    instance_id = "hub-a"                # default: DATA_DIR/instance-id (made once)
    topic_prefix = "fedfleet"
    api_host = "127.0.0.1"
    api_port = 8080

    [ingest]
    per_device_queue = 256
    telemetry_rate_per_s = 20.0

Command-line flags override the file (:meth:`HubConfig.with_overrides`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubConfigError
from cloud_hub.ingest.config import IngestConfig
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["HubConfig", "MqttEndpoint", "parse_mqtt_url", "validate_instance_id"]

DEFAULT_DATA_DIR = Path("hub-data")
_ENDPOINT_KEYS = ("ca_file", "cert_file", "key_file", "protocol")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_instance_id(instance: str) -> str:
    """A hub instance id: part of the hub's MQTT client ids (#15)."""
    if not isinstance(instance, str) or not _INSTANCE_RE.fullmatch(instance):
        raise HubConfigError(f"invalid hub instance id {instance!r}: use 1-64 of [A-Za-z0-9._-]")
    return instance


# The hub's broker endpoint is the shared type (the agent parses the same one).
MqttEndpoint = BrokerEndpoint


def parse_mqtt_url(url: str) -> BrokerEndpoint:
    """``mqtt[s]://[user[:password]@]host[:port]`` → the broker endpoint."""
    try:
        return BrokerEndpoint.from_url(url)
    except ConfigError as exc:
        raise HubConfigError(str(exc)) from exc


@dataclass(frozen=True)
class HubConfig:
    """Everything a hub process needs to know; validated on construction."""

    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str = ""  # empty: sqlite:///{data_dir}/hub.db
    mqtt: BrokerEndpoint = field(default_factory=BrokerEndpoint)
    topic_prefix: str = "fedfleet"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    keys_dir: Path | None = None  # default: {data_dir}/keys
    # Which hub process this is (#15): part of every MQTT client id, so hubs and replicas
    # sharing a broker keep their own sessions. Empty: DATA_DIR/instance-id (made once).
    instance_id: str = ""
    ingest: IngestConfig = field(default_factory=IngestConfig)
    enable_ingest: bool = True
    offline_after_s: float = 900.0  # silent this long → marked offline (0 = never)
    # What enrolling devices are told to connect to (default: the hub's own broker URL).
    device_mqtt_url: str = ""
    # Serve the API over HTTPS with a server certificate from the hub CA (``edge-agent
    # install`` requires HTTPS); the names are the certificate's subject alternative names.
    api_tls: bool = False
    api_tls_hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")

    def __post_init__(self) -> None:
        if not 0 <= self.api_port < 65536:
            raise HubConfigError(f"api_port {self.api_port} out of range")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "#+"):
            raise HubConfigError(f"invalid topic_prefix {self.topic_prefix!r}")
        if self.db_url and not self.db_url.startswith(("sqlite", "postgresql")):
            raise HubConfigError("db_url must be sqlite:///PATH or postgresql+psycopg://...")
        if self.offline_after_s != 0 and not 10 <= self.offline_after_s <= 30 * 86400:
            raise HubConfigError("offline_after_s must be 0 (off) or within [10, 2592000]")
        if self.instance_id:
            validate_instance_id(self.instance_id)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def keys_path(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    def with_overrides(self, **changes: Any) -> HubConfig:
        """A copy with the non-``None`` ``changes`` applied (``mqtt_url`` accepted)."""
        values = {k: v for k, v in changes.items() if v is not None}
        mqtt = values.pop("mqtt", self.mqtt)
        if "mqtt_url" in values:
            mqtt = parse_mqtt_url(values.pop("mqtt_url"))
        endpoint_changes = {
            name: values.pop(f"mqtt_{name}") for name in _ENDPOINT_KEYS if f"mqtt_{name}" in values
        }
        try:
            values["mqtt"] = mqtt.replace(**endpoint_changes) if endpoint_changes else mqtt
        except ConfigError as exc:
            raise HubConfigError(f"bad mqtt setting: {exc}") from exc
        for key in ("data_dir", "keys_dir"):
            if key in values:
                values[key] = Path(values[key])
        if "api_tls_hostnames" in values:
            values["api_tls_hostnames"] = tuple(str(h) for h in values["api_tls_hostnames"])
        try:
            return dataclasses.replace(self, **values)
        except TypeError as exc:
            raise HubConfigError(f"unknown hub setting: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HubConfig:
        data = dict(data)
        ingest = data.pop("ingest", None)
        config = cls().with_overrides(**data)
        if ingest is not None:
            if not isinstance(ingest, dict):
                raise HubConfigError("[ingest] must be a table")
            try:
                config = dataclasses.replace(config, ingest=IngestConfig(**ingest))
            except TypeError as exc:
                raise HubConfigError(f"unknown ingest setting: {exc}") from exc
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> HubConfig:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise HubConfigError(f"cannot read hub config {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise HubConfigError(f"hub config {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data)
