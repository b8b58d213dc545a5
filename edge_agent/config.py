"""The agent's configuration: one frozen dataclass loaded from a TOML file and validated.

Example::

    device_id = "cam-017"
    device_class = "x86-cpu"
    state_dir = "/var/lib/fedfleet-agent"      # relative paths are relative to this file
    trust_root = "trust_root.json"             # the pinned TrustRoot (JSON)
    labels = { site = "lab" }

    [mqtt]
    url = "mqtt://127.0.0.1:1883"              # or host = ... / port = ...; mqtts:// for TLS
    topic_prefix = "fedfleet"
    # client_id, keepalive_s, session_expiry_s, reconnect_min_s, reconnect_max_s,
    # username, password

    [mqtt.tls]                                 # optional
    ca = "ca.pem"
    cert = "device.pem"
    key = "device.key"

    [timeouts]                                 # seconds per OTA step
    download_s = 900
    verify_s = 120
    install_s = 120
    health_s = 60
    chunk_retry_s = 2.0

    [limits]
    max_bundle_bytes = 1073741824
    max_message_bytes = 262144
    max_chunk_bytes = 16777216
    max_chunk_count = 65536                    # chunks per download (received map, requests)
    max_outbox_entries = 100000
    max_request_indices = 4096
    max_resumes = 5
    max_repairs = 2
    max_inbox_bytes = 67108864
    fsync_chunks = true

    [training]                                 # optional (federated training, R4)
    superlink_ca = "ca.pem"                    # default: mqtt.tls.ca, the hub CA pinned at
                                               # enrollment (verifies the hub's SuperLink)
    require_secure_aggregation = false         # true: refuse any round without SecAgg+

Nothing here reads the environment; the CLI passes the file path. :func:`render_config` is
the one writer of this file (the installer and the local harness both use it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_agent.errors import AgentConfigError
from shared import toml_text
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError, FedfleetError
from shared.signing import TrustRoot
from shared.topics import TopicScheme, validate_device_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = [
    "AgentConfig",
    "AgentLimits",
    "MqttSettings",
    "OtaTimeouts",
    "TlsSettings",
    "TrainingSettings",
    "load_config",
    "parse_config",
    "render_config",
]


@dataclass(frozen=True)
class TlsSettings:
    """Client TLS: CA bundle to verify the broker, optional client certificate and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise AgentConfigError("mqtt.tls needs both cert and key, or neither")


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "fedfleet"
    client_id: str | None = None  # defaults to "{device_id}@{topic_prefix}"
    keepalive_s: int = 30
    session_expiry_s: int = 3600  # QoS1 messages queue at the broker while briefly offline
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 15.0
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    # "5" (default) or "3.1.1" for brokers that speak only 3.1.1 (e.g. amqtt in the demo);
    # 3.1.1 keeps the persistent session (clean_session=False) but has no session expiry.
    protocol: str = "5"

    def __post_init__(self) -> None:
        self.endpoint  # noqa: B018 - validates host, port, protocol, TLS files, credentials
        if not 5 <= self.keepalive_s <= 3600:
            raise AgentConfigError("mqtt.keepalive_s must be 5..3600")
        if not 0 <= self.session_expiry_s <= 7 * 24 * 3600:
            raise AgentConfigError("mqtt.session_expiry_s must be 0..604800")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s <= 600:
            raise AgentConfigError("need 0 < mqtt.reconnect_min_s <= reconnect_max_s <= 600")
        try:
            TopicScheme(self.topic_prefix)
        except ConfigError as exc:
            raise AgentConfigError(str(exc)) from exc

    @property
    def topics(self) -> TopicScheme:
        return TopicScheme(self.topic_prefix)

    @property
    def endpoint(self) -> BrokerEndpoint:
        """The broker as the endpoint type the hub uses too (``shared.broker_endpoint``)."""
        tls = self.tls
        try:
            return BrokerEndpoint(
                host=self.host,
                port=self.port,
                tls=tls is not None,
                ca_file=None if tls is None or tls.ca is None else str(tls.ca),
                cert_file=None if tls is None or tls.cert is None else str(tls.cert),
                key_file=None if tls is None or tls.key is None else str(tls.key),
                username=self.username,
                password=self.password,
                protocol=self.protocol,
            )
        except ConfigError as exc:
            raise AgentConfigError(f"mqtt: {exc}") from exc


@dataclass(frozen=True)
class OtaTimeouts:
    """Upper bound of each install step; a step past its bound ends the deployment."""

    download_s: float = 900.0
    verify_s: float = 120.0
    install_s: float = 120.0
    health_s: float = 60.0
    rollback_s: float = 60.0
    chunk_retry_s: float = 2.0  # no new chunk for this long -> ask for the missing ones

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 < value <= 7 * 24 * 3600:
                raise AgentConfigError(f"timeouts.{f.name} must be > 0 (got {value})")


@dataclass(frozen=True)
class AgentLimits:
    """Limits on every untrusted input and on local resources."""

    max_bundle_bytes: int = 1024**3
    max_message_bytes: int = 256 * 1024
    max_chunk_bytes: int = 16 * 1024 * 1024
    # R7: an unsigned chunk_size of 1 would make millions of map entries and requests
    max_chunk_count: int = 65_536
    max_outbox_entries: int = 100_000
    max_request_indices: int = 4096
    max_resumes: int = 5  # restarts of one deployment before it is rolled back
    max_repairs: int = 2  # re-fetches of chunks found corrupt by verification
    max_inbox_messages: int = 10_000
    max_inbox_bytes: int = 64 * 1024 * 1024  # chunks buffered ahead of the disk writer
    fsync_chunks: bool = True  # download synced at its commit point (before install)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if value < 1:
                raise AgentConfigError(f"limits.{f.name} must be >= 1 (got {value})")


@dataclass(frozen=True)
class TrainingSettings:
    """Federated training on this device (R4): whom to trust, what to insist on."""

    superlink_ca: Path | None = None  # None: the MQTT CA (the hub CA pinned at enrollment)
    require_secure_aggregation: bool = False  # a device class that never trains without SecAgg+


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    device_class: str
    state_dir: Path
    trust_root: Path
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    labels: dict[str, str] = field(default_factory=dict)
    timeouts: OtaTimeouts = field(default_factory=OtaTimeouts)
    limits: AgentLimits = field(default_factory=AgentLimits)
    status_interval_s: float = 60.0
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def superlink_ca(self) -> Path | None:
        """The CA that verifies the hub's SuperLink (R4): ``[training] superlink_ca``, else
        the hub CA pinned at enrollment (``mqtt.tls.ca``)."""
        if self.training.superlink_ca is not None:
            return self.training.superlink_ca
        return self.mqtt.tls.ca if self.mqtt.tls is not None else None

    def __post_init__(self) -> None:
        try:
            validate_device_id(self.device_id)
        except ConfigError as exc:
            raise AgentConfigError(f"device_id: {exc}") from exc
        if not self.device_class or len(self.device_class) > 64:
            raise AgentConfigError("device_class must be 1..64 characters")
        if not 1 <= self.status_interval_s <= 86400:
            raise AgentConfigError("status_interval_s must be 1..86400")

    @property
    def client_id(self) -> str:
        """The MQTT client id (the broker keys the persistent session by it). Defaults to
        ``device@prefix`` so fleets under different prefixes on one broker never take over
        each other's sessions; ACLs should match the user name, not the client id."""
        return self.mqtt.client_id or f"{self.device_id}@{self.mqtt.topic_prefix}"

    def load_trust_root(self) -> TrustRoot:
        """Read the pinned trust root (JSON written by ``TrustRoot.to_dict``)."""
        try:
            data = json.loads(self.trust_root.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AgentConfigError(f"cannot read trust root {self.trust_root}: {exc}") from exc
        if not isinstance(data, dict):
            raise AgentConfigError(f"trust root {self.trust_root} is not a JSON object")
        try:
            root = TrustRoot.from_dict(data)
            root.publics()  # key ids must match their keys
        except (FedfleetError, ValueError) as exc:
            raise AgentConfigError(f"trust root {self.trust_root}: {exc}") from exc
        return root


_TOP_KEYS = {
    "device_id",
    "device_class",
    "state_dir",
    "trust_root",
    "labels",
    "mqtt",
    "timeouts",
    "limits",
    "status_interval_s",
    "training",
}
_MQTT_KEYS = {f.name for f in fields(MqttSettings)} | {"url"}


def _path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise AgentConfigError(f"{where} must be a non-empty path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise AgentConfigError(f"[{key}] must be a table")
    return dict(value)


def _numbers(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise AgentConfigError(f"[{where}] unknown keys: {sorted(unknown)}")
    for k, v in table.items():
        default = getattr(cls(), k)
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise AgentConfigError(f"{where}.{k} must be true/false")
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise AgentConfigError(f"{where}.{k} must be a number")
        elif isinstance(default, int) and not isinstance(v, int):
            raise AgentConfigError(f"{where}.{k} must be an integer")
    return cls(**table)


def _mqtt(table: dict[str, Any], base: Path) -> MqttSettings:
    unknown = set(table) - _MQTT_KEYS
    if unknown:
        raise AgentConfigError(f"[mqtt] unknown keys: {sorted(unknown)}")
    tls_raw = table.pop("tls", None)
    url = table.pop("url", None)
    tls: TlsSettings | None = None
    if url is not None:
        if not isinstance(url, str):
            raise AgentConfigError("mqtt.url must be a string")
        try:
            endpoint = BrokerEndpoint.from_url(url)  # the one MQTT URL parser (hub and agent)
        except ConfigError as exc:
            raise AgentConfigError(f"mqtt.url: {exc}") from exc
        for key in ("host", "port", "username", "password", "protocol"):
            if getattr(endpoint, key) is not None:
                table.setdefault(key, getattr(endpoint, key))
        if endpoint.tls:
            files = {"ca": endpoint.ca_file, "cert": endpoint.cert_file, "key": endpoint.key_file}
            tls = TlsSettings(
                **{k: _path(v, base, f"mqtt.url {k}") for k, v in files.items() if v is not None}
            )
    if tls_raw is not None:
        if url is not None and tls is None:  # #15: TLS files beside an explicit mqtt:// URL
            raise AgentConfigError(
                f"mqtt.url {url!r} is plain TCP but [mqtt.tls] is set: use mqtts:// for a "
                "TLS broker, or remove [mqtt.tls] for a plain one"
            )
        if not isinstance(tls_raw, dict) or set(tls_raw) - {"ca", "cert", "key"}:
            raise AgentConfigError("[mqtt.tls] takes only ca, cert, key")
        tls = TlsSettings(
            **{k: _path(v, base, f"mqtt.tls.{k}") for k, v in tls_raw.items()},
        )
    for key, typ in (
        ("host", str),
        ("topic_prefix", str),
        ("client_id", str),
        ("username", str),
        ("password", str),
        ("protocol", str),
    ):
        if key in table and not isinstance(table[key], typ):
            raise AgentConfigError(f"mqtt.{key} must be a string")
    for key in ("port", "keepalive_s", "session_expiry_s"):
        if key in table and (isinstance(table[key], bool) or not isinstance(table[key], int)):
            raise AgentConfigError(f"mqtt.{key} must be an integer")
    for key in ("reconnect_min_s", "reconnect_max_s"):
        if key in table and (
            isinstance(table[key], bool) or not isinstance(table[key], int | float)
        ):
            raise AgentConfigError(f"mqtt.{key} must be a number")
    return MqttSettings(**table, tls=tls)


def _training(table: dict[str, Any], base: Path) -> TrainingSettings:
    unknown = set(table) - {"superlink_ca", "require_secure_aggregation"}
    if unknown:
        raise AgentConfigError(f"[training] unknown keys: {sorted(unknown)}")
    required = table.get("require_secure_aggregation", False)
    if not isinstance(required, bool):
        raise AgentConfigError("training.require_secure_aggregation must be true/false")
    ca = table.get("superlink_ca")
    return TrainingSettings(
        superlink_ca=None if ca is None else _path(ca, base, "training.superlink_ca"),
        require_secure_aggregation=required,
    )


def parse_config(raw: Mapping[str, Any], *, base_dir: Path) -> AgentConfig:
    """Validate a parsed TOML document; relative paths are resolved against ``base_dir``."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise AgentConfigError(f"unknown config keys: {sorted(unknown)}")
    for key in ("device_id", "device_class", "state_dir", "trust_root"):
        if key not in raw:
            raise AgentConfigError(f"config needs {key!r}")
    if not isinstance(raw["device_id"], str) or not isinstance(raw["device_class"], str):
        raise AgentConfigError("device_id and device_class must be strings")
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise AgentConfigError("labels must be a table of strings")
    status_interval = raw.get("status_interval_s", 60.0)
    if isinstance(status_interval, bool) or not isinstance(status_interval, int | float):
        raise AgentConfigError("status_interval_s must be a number")
    return AgentConfig(
        device_id=raw["device_id"],
        device_class=raw["device_class"],
        state_dir=_path(raw["state_dir"], base_dir, "state_dir"),
        trust_root=_path(raw["trust_root"], base_dir, "trust_root"),
        mqtt=_mqtt(_table(raw, "mqtt"), base_dir),
        labels=dict(labels),
        timeouts=_numbers(OtaTimeouts, _table(raw, "timeouts"), "timeouts"),
        limits=_numbers(AgentLimits, _table(raw, "limits"), "limits"),
        status_interval_s=float(status_interval),
        training=_training(_table(raw, "training"), base_dir),
    )


def render_config(document: Mapping[str, Any], *, header: Sequence[str] = ()) -> str:
    """The agent's config file (TOML) for ``document``: the one writer of ``config.toml``.

    ``document`` has the file's shape (what :func:`parse_config` reads: top-level keys, then
    tables such as ``mqtt`` with ``mqtt.tls``). The installer (``edge-agent install``) and the
    local harness both write through here, and a document :func:`parse_config` refuses is
    refused here (``AgentConfigError``), before anything is written. ``header`` lines become
    leading comments.
    """
    # relative paths stay relative in the file: the reader resolves them against its folder
    parse_config(document, base_dir=Path("."))
    try:
        return toml_text.dumps(document, header=header)
    except ConfigError as exc:
        raise AgentConfigError(f"cannot write the agent config: {exc}") from exc


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate a TOML config file; raises ``AgentConfigError``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AgentConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"config {path} is not valid TOML: {exc}") from exc
    return parse_config(raw, base_dir=path.resolve().parent)
