"""The hub's settings as command-line flags and environment variables: one table.

Each :class:`HubOption` names a :class:`cloud_hub.config.HubConfig` key, the flag that sets
it and the environment variable read at this CLI boundary only (nothing deeper reads the
environment). A flag beats its environment variable, which beats the ``--config`` file,
which beats the default. ``cloud-hub config-reference`` prints the same table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.config import HubConfig
from cloud_hub.errors import HubConfigError

__all__ = [
    "BROKER_KEYS",
    "HUB_OPTIONS",
    "REGISTRY_KEYS",
    "HubOption",
    "add_hub_options",
    "add_key_store_options",
    "hub_config_from_args",
    "key_store_dir",
]


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise HubConfigError(f"expected true or false, got {value!r}")


def _port(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise HubConfigError(f"expected a port number, got {value!r}") from exc


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise HubConfigError(f"expected seconds, got {value!r}") from exc


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


@dataclass(frozen=True)
class HubOption:
    """One hub setting: its config key, flag, environment variable and how to parse it."""

    key: str  # HubConfig.with_overrides key (``mqtt_*`` for the broker endpoint)
    flag: str
    env: str
    help: str
    parse: Callable[[str], Any] = str
    switch: bool = False  # a flag without a value (``--tls``)
    aliases: tuple[str, ...] = ()  # older spellings, still accepted


HUB_OPTIONS: tuple[HubOption, ...] = (
    HubOption("data_dir", "--data-dir", "FEDFLEET_DATA_DIR", "hub data directory", Path),
    HubOption("db_url", "--db", "FEDFLEET_DB_URL", "registry URL (sqlite:///PATH or "
              "postgresql+psycopg://...); default DATA_DIR/hub.db", aliases=("--db-url",)),
    HubOption("keys_dir", "--keys-dir", "FEDFLEET_KEYS_DIR",
              "key store directory (default DATA_DIR/keys)", Path),
    HubOption("mqtt_url", "--mqtt-url", "FEDFLEET_MQTT_URL",
              "the hub's broker, mqtt://host:1883 or mqtts://host:8884"),
    HubOption("mqtt_ca_file", "--mqtt-ca-file", "FEDFLEET_MQTT_CA_FILE",
              "CA that verifies the broker (mqtts://; broker-config: ca.crt)"),
    HubOption("mqtt_cert_file", "--mqtt-cert-file", "FEDFLEET_MQTT_CERT_FILE",
              "the hub's MQTT client certificate (broker-config: hub.crt)"),
    HubOption("mqtt_key_file", "--mqtt-key-file", "FEDFLEET_MQTT_KEY_FILE",
              "its private key (broker-config: hub.key)"),
    HubOption("mqtt_protocol", "--mqtt-protocol", "FEDFLEET_MQTT_PROTOCOL",
              'MQTT protocol version, "5" or "3.1.1"'),
    HubOption("device_mqtt_url", "--device-mqtt-url", "FEDFLEET_DEVICE_MQTT_URL",
              "the broker URL enrolling devices are given (default: the hub's own)"),
    HubOption("instance_id", "--instance-id", "FEDFLEET_INSTANCE_ID",
              "this hub process in MQTT client ids (default DATA_DIR/instance-id); "
              "replicas sharing a data directory need different ones"),
    HubOption("topic_prefix", "--prefix", "FEDFLEET_TOPIC_PREFIX", "MQTT topic prefix"),
    HubOption("api_host", "--host", "FEDFLEET_API_HOST", "API bind address"),
    HubOption("api_port", "--port", "FEDFLEET_API_PORT", "API port", _port),
    HubOption("api_tls", "--tls", "FEDFLEET_API_TLS",
              "serve the API over HTTPS with a certificate from the hub CA", _flag, True),
    HubOption("api_tls_hostnames", "--tls-hostname", "FEDFLEET_API_TLS_HOSTNAMES",
              "names in the HTTPS certificate (comma-separated)", _names),
    HubOption("offline_after_s", "--offline-after", "FEDFLEET_OFFLINE_AFTER_S",
              "seconds of silence before a device is marked offline (0: never)", _seconds),
)  # fmt: skip
_BY_KEY = {o.key: o for o in HUB_OPTIONS}
# What every command that opens the registry takes; ``serve`` takes them all.
REGISTRY_KEYS = ("data_dir", "db_url")
# How a command other than ``serve`` reaches the hub's broker (``cloud-hub publish``).
BROKER_KEYS = (
    "mqtt_url",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
    "mqtt_protocol",
    "topic_prefix",
)


def add_hub_options(parser: argparse.ArgumentParser, keys: Iterable[str] | None = None) -> None:
    """``--config`` and the flags of ``keys`` (default: all of :data:`HUB_OPTIONS`)."""
    if "--config" not in parser._option_string_actions:  # several groups may be added
        parser.add_argument("--config", help="hub config file (TOML; docs/configuration.md)")
    for key in keys if keys is not None else _BY_KEY:
        option = _BY_KEY[key]
        text = f"{option.help} [env {option.env}]"
        flags = (option.flag, *option.aliases)
        if option.switch:
            parser.add_argument(*flags, dest=option.key, action="store_true", default=None,
                                help=text)  # fmt: skip
        else:
            parser.add_argument(*flags, dest=option.key, default=None, help=text)


def hub_config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> HubConfig:
    """The ``--config`` file, then the environment, then the flags."""
    env = os.environ if environ is None else environ
    path = getattr(args, "config", None)
    config = HubConfig.from_file(path) if path else HubConfig()
    from_env: dict[str, Any] = {}
    from_flags: dict[str, Any] = {}
    for option in HUB_OPTIONS:
        raw = env.get(option.env)
        if raw is not None and raw != "":
            from_env[option.key] = _parsed(option, raw, option.env)
        given = getattr(args, option.key, None)
        if given is not None:
            from_flags[option.key] = given if option.switch else _parsed(option, given, option.flag)
    return config.with_overrides(**from_env).with_overrides(**from_flags)


def _parsed(option: HubOption, raw: str, where: str) -> Any:
    try:
        return option.parse(raw)
    except HubConfigError as exc:
        raise HubConfigError(f"{where}: {exc}") from exc


class _DeprecatedKeysDir(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        print(f"warning: {option} is deprecated; use --keys-dir", file=sys.stderr)
        namespace.keys_dir = values


def add_key_store_options(parser: argparse.ArgumentParser) -> None:
    """Where the key store is, named as ``serve`` names it: ``--data-dir`` (keys in
    DATA_DIR/keys) or ``--keys-dir``; ``--dir`` is a deprecated alias of ``--keys-dir``."""
    add_hub_options(parser, ("data_dir", "keys_dir"))
    parser.add_argument("--dir", action=_DeprecatedKeysDir, help="deprecated: --keys-dir")


def key_store_dir(args: argparse.Namespace) -> Path:
    """The key store directory the key-store options name (default hub-data/keys)."""
    return hub_config_from_args(args).keys_path
