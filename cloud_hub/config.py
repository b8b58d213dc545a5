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

    [retraining]                         # the closed loop in `cloud-hub serve`
    device_classes = ["x86-cpu"]         # classes the controller watches
    validation_file = "/var/lib/fedfleet-hub/validation.npz"   # hub-held: arrays x, y
    superlink_host = "hub.example"       # where the devices reach the hub's SuperLink
    cooldown_s = 600.0
    max_runs_per_day = 6
    require_approval = false

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
from cloud_hub.loop.policy import RetrainPolicy
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "HubConfig",
    "MqttEndpoint",
    "RetrainingConfig",
    "parse_mqtt_url",
    "validate_instance_id",
]

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


#: Where the hub's SuperLink runs a run's ServerApp (``[retraining] serverapp``; the first is
#: the default): in a thread of the SuperLink process on its own LinkState
#: (:mod:`cloud_hub.fl.inprocess_serverapp`), or as its own process forked from a warm
#: SuperExec that talks to the SuperLink's runtime API over HTTP
#: (:mod:`cloud_hub.fl.warm_serverapp`).
SERVERAPP_MODES = ("inprocess", "forked")


@dataclass(frozen=True)
class RetrainingConfig:
    """The retraining controller of ``cloud-hub serve`` (the ``[retraining]`` table).

    It runs where the rollout engine runs (``serve --no-engine`` replicas never run it: one
    hub trains) unless ``enabled`` is false or ``serve --no-retraining``, and only once
    ``device_classes`` and ``validation_file`` are set. The devices train over Flower's
    Deployment Engine: a SuperLink on ``superlink_host`` with TLS from the hub CA. The policy
    keys are :class:`~cloud_hub.loop.policy.RetrainPolicy`'s.
    """

    enabled: bool = True
    device_classes: tuple[str, ...] = ()
    model_name: str = "sensor-mlp"
    validation_file: Path | None = None  # hub-held labelled set (.npz: x, y)
    calibration_file: Path | None = None  # default: the validation file
    superlink_host: str = "127.0.0.1"
    serverapp: str | None = None  # None: FEDFLEET_SUPERLINK_SERVERAPP, else in process
    train_timeout_s: float = 600.0
    num_rounds: int = 2
    tick_interval_s: float = 5.0
    rollout_gate_window_s: float = 2.0
    require_approval: bool = False
    cooldown_s: float = 600.0
    max_runs_per_day: int = 6
    drift_threshold: float = 0.25
    drift_fraction: float = 0.3
    drift_duration_s: float = 60.0
    schedule_interval_s: float | None = None
    min_devices: int = 3

    def __post_init__(self) -> None:
        checks = {
            "train_timeout_s": 1 <= self.train_timeout_s <= 86_400,
            "num_rounds": 1 <= self.num_rounds <= 100,
            "tick_interval_s": 0.1 <= self.tick_interval_s <= 3600,
            "rollout_gate_window_s": 0 <= self.rollout_gate_window_s <= 3600,
            "min_devices": self.min_devices >= 3,  # SecAgg+ needs three peers
            "superlink_host": bool(self.superlink_host),
            "model_name": bool(self.model_name),
            "serverapp": self.serverapp in (None, *SERVERAPP_MODES),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise HubConfigError(f"retraining config out of range: {', '.join(bad)}")
        self.policy()  # refuses a bad policy key

    @property
    def configured(self) -> bool:
        """Whether the controller has what it needs: classes to watch, a validation set."""
        return bool(self.device_classes) and self.validation_file is not None

    def policy(self) -> RetrainPolicy:
        return RetrainPolicy(
            drift_threshold=self.drift_threshold,
            drift_fraction=self.drift_fraction,
            drift_duration_s=self.drift_duration_s,
            accuracy_drop=None,  # the registry keeps no feedback accuracy per class yet
            schedule_interval_s=self.schedule_interval_s,
            cooldown_s=self.cooldown_s,
            max_runs_per_day=self.max_runs_per_day,
            require_approval=self.require_approval,
            min_devices=self.min_devices,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainingConfig:
        values = dict(data)
        for key in ("validation_file", "calibration_file"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if "device_classes" in values:
            classes = values["device_classes"]
            if isinstance(classes, str) or not isinstance(classes, list | tuple):
                raise HubConfigError("retraining.device_classes must be a list of class names")
            values["device_classes"] = tuple(str(c) for c in classes)
        try:
            return cls(**values)
        except TypeError as exc:
            raise HubConfigError(f"unknown retraining setting: {exc}") from exc


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
    # the closed loop: the retraining controller `serve` runs beside the rollout engine
    retraining: RetrainingConfig = field(default_factory=RetrainingConfig)

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
        retraining = data.pop("retraining", None)
        config = cls().with_overrides(**data)
        if ingest is not None:
            if not isinstance(ingest, dict):
                raise HubConfigError("[ingest] must be a table")
            try:
                config = dataclasses.replace(config, ingest=IngestConfig(**ingest))
            except TypeError as exc:
                raise HubConfigError(f"unknown ingest setting: {exc}") from exc
        if retraining is not None:
            if not isinstance(retraining, dict):
                raise HubConfigError("[retraining] must be a table")
            config = dataclasses.replace(config, retraining=RetrainingConfig.from_dict(retraining))
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
