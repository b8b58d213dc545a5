"""Where an MQTT broker is and how to authenticate to it: one value type for hub and agent.

Parsed from a URL (pure; no paho here, each side builds its own client from it)::

    mqtt://host:1883                         plain TCP
    mqtts://host:8883                        TLS, broker verified against the system CAs
    mqtts://user:secret@host:8883            with MQTT user name and password
    mqtts://host:8884?ca=ca.crt&cert=hub.crt&key=hub.key&protocol=3.1.1

TLS files and the protocol version may also be passed as keyword arguments to
:meth:`BrokerEndpoint.from_url` (e.g. from config keys or command-line flags); keyword
arguments win over the query string. :attr:`BrokerEndpoint.url` never contains secrets, so
it is what logs and status pages show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from shared.errors import ConfigError

__all__ = ["MQTT_PROTOCOLS", "BrokerEndpoint", "MqttClientSettings"]

MQTT_PROTOCOLS = ("5", "3.1.1")
_TLS_SCHEMES = {"mqtts": True, "ssl": True, "mqtt": False, "tcp": False}
_QUERY_KEYS = {"ca": "ca_file", "cert": "cert_file", "key": "key_file", "protocol": "protocol"}
MAX_URL_CHARS = 2048


@dataclass(frozen=True, kw_only=True)
class BrokerEndpoint:
    """One broker endpoint, validated on construction.

    ``ca_file`` is the CA bundle that verifies the broker (``None`` with TLS: the system
    CAs); ``cert_file``/``key_file`` are this client's certificate for mutual TLS.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    protocol: str = "5"  # or "3.1.1" (brokers such as amqtt)

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "/ \n\r"):
            raise ConfigError(f"invalid MQTT broker host {self.host!r}")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ConfigError(f"MQTT broker port {self.port} out of range 1..65535")
        if self.protocol not in MQTT_PROTOCOLS:
            raise ConfigError(f'MQTT protocol must be "5" or "3.1.1", not {self.protocol!r}')
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("an MQTT client certificate and its key go together")
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if not self.tls and any(f is not None for f in tls_files):
            raise ConfigError(f"TLS files given for a plain-TCP broker; use mqtts://{self.host}")
        if self.password is not None and self.username is None:
            raise ConfigError("an MQTT password needs a user name")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        protocol: str | None = None,
    ) -> BrokerEndpoint:
        """Parse ``mqtt[s]://[user[:password]@]host[:port][?ca=&cert=&key=&protocol=]``."""
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise ConfigError("MQTT URL must be a string of at most 2048 characters")
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in _TLS_SCHEMES:
            raise ConfigError(f"MQTT URL {url!r}: the scheme must be mqtt:// or mqtts://")
        tls = _TLS_SCHEMES[parts.scheme]
        try:
            port = parts.port if parts.port is not None else (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"MQTT URL {url!r}: bad port") from exc
        if parts.path not in ("", "/") or parts.fragment:
            raise ConfigError(f"MQTT URL {url!r}: no path or fragment allowed")
        options = _query_options(parts.query, url)
        given = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        given["protocol"] = protocol
        options.update({k: v for k, v in given.items() if v is not None})
        return cls(
            host=parts.hostname or "",
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=None if parts.password is None else unquote(parts.password),
            **options,
        )

    def replace(self, **changes: object) -> BrokerEndpoint:
        """A validated copy with ``changes`` (field names) applied."""
        try:
            return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"unknown MQTT endpoint setting: {exc}") from exc

    @property
    def url(self) -> str:
        """``mqtt[s]://host:port``: no credentials, safe to log."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def mutual_tls(self) -> bool:
        return self.cert_file is not None

    def configure_client(self, client: MqttClientSettings) -> None:
        """Hand the credentials and TLS files to an MQTT client before it connects.

        The one place either side's client (the hub's factory, the agent's transport) learns
        them; ``client`` is anything with paho's ``username_pw_set`` and ``tls_set``, so this
        module stays free of paho. Unreadable or invalid TLS files raise ``ConfigError``.
        """
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"MQTT TLS files for {self.url}: {exc}") from exc


class MqttClientSettings(Protocol):
    """What :meth:`BrokerEndpoint.configure_client` calls (paho-mqtt's client has both)."""

    def username_pw_set(self, username: str | None, password: str | None = None) -> None: ...

    def tls_set(
        self, *, ca_certs: str | None, certfile: str | None, keyfile: str | None
    ) -> Any: ...


def _query_options(query: str, url: str) -> dict[str, str]:
    try:
        raw = parse_qs(query, keep_blank_values=False, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {url!r}: bad query string") from exc
    unknown = set(raw) - set(_QUERY_KEYS)
    if unknown:
        raise ConfigError(f"MQTT URL {url!r}: unknown options {sorted(unknown)}")
    out: dict[str, str] = {}
    for key, values in raw.items():
        if len(values) != 1:
            raise ConfigError(f"MQTT URL {url!r}: {key} given more than once")
        out[_QUERY_KEYS[key]] = values[0]
    return out
