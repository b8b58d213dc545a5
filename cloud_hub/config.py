"""Configuration of a hub process (``cloud-hub serve``): one validated frozen dataclass.

Read from a TOML file (every key optional)::

    data_dir = "/var/lib/fedfleet-hub"
    db_url = "postgresql+psycopg://hub@db:5432/hub"   # default: sqlite in data_dir
    mqtt_url = "mqtt://127.0.0.1:1883"   # mqtts:// for TLS; then optionally
    # mqtt_ca_file / mqtt_cert_file / mqtt_key_file (mutual TLS with the hub CA)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloud_hub.errors import HubConfigError
from cloud_hub.fleet.config import IngestConfig

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["HubConfig", "MqttEndpoint", "parse_mqtt_url"]

DEFAULT_DATA_DIR = Path("hub-data")
_TLS_FILES = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class MqttEndpoint:
    """Where the broker is: ``mqtt://host:port`` (or ``mqtts://`` for TLS)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # CA bundle for mqtts:// (None: the system CAs)
    cert_file: str | None = None  # client certificate for mutual TLS (cloud-hub enroll)
    key_file: str | None = None
    protocol: str = "5"  # MQTT protocol version: "5" or "3.1.1" (brokers such as amqtt)

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise HubConfigError("mqtt cert_file and key_file go together")
        if not self.host:
            raise HubConfigError("mqtt host must not be empty")
        if not 0 < self.port < 65536:
            raise HubConfigError(f"mqtt port {self.port} out of range")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise HubConfigError(f"mqtt url {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise HubConfigError(f"mqtt url {url!r}: bad port") from exc
    return MqttEndpoint(
        host=parts.hostname or "",
        port=port,
        tls=tls,
        username=parts.username,
        password=parts.password,
    )


@dataclass(frozen=True)
class HubConfig:
    """Everything a hub process needs to know; validated on construction."""

    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str = ""  # empty: sqlite:///{data_dir}/hub.db
    mqtt: MqttEndpoint = field(default_factory=MqttEndpoint)
    topic_prefix: str = "fedfleet"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    keys_dir: Path | None = None  # default: {data_dir}/keys
    ingest_client_id: str = "fedfleet-hub-ingest"
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
        if not self.ingest_client_id or len(self.ingest_client_id) > 128:
            raise HubConfigError("ingest_client_id must be 1-128 characters")

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
        tls_files = {
            name: values.pop(f"mqtt_{name}") for name in _TLS_FILES if f"mqtt_{name}" in values
        }
        try:
            values["mqtt"] = dataclasses.replace(mqtt, **tls_files) if tls_files else mqtt
        except TypeError as exc:
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
