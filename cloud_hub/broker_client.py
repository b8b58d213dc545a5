"""The one place the hub builds and connects paho clients, and names its connections.

Every hub connection (ingest, rollout publisher, ``cloud-hub publish``, training orders)
is made here from a :class:`~shared.broker_endpoint.BrokerEndpoint`: protocol version,
TLS with the hub's own client certificate, credentials, persistent or clean session.

Client ids are ``IDENTITY:ROLE:INSTANCE`` (#15): the hub's MQTT identity, what the
connection does, and which hub process it is. Two hubs, or ``serve --no-engine`` replicas,
on one broker therefore never take each other's id, while a restarted hub gets its own
persistent session back. The ``:`` is not allowed in device ids, so no device's client id
(which the broker sets to its certificate identity, R3) can equal a hub connection's.

paho errors are translated into ``DeliveryError`` here.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker_stream import StreamClient
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER, load_hub_identity
from cloud_hub.errors import DeliveryError, HubConfigError
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError
from shared.files import atomic_write

if TYPE_CHECKING:  # cloud_hub.config imports the ingest, which imports this module
    from cloud_hub.config import HubConfig

__all__ = [
    "ConnectionHooks",
    "HubRole",
    "StreamClient",
    "connect_client",
    "create_client",
    "hub_client_id",
    "hub_client_id_for",
    "hub_identity_name",
    "new_instance_id",
    "one_shot_client_id",
    "resolve_instance_id",
]

_INSTANCE_FILE = "instance-id"


def _valid_instance(instance: str) -> str:
    from cloud_hub.config import validate_instance_id  # see TYPE_CHECKING above

    return validate_instance_id(instance)


log = logging.getLogger(__name__)


class HubRole(str, Enum):
    """What a hub connection is for (the middle part of its client id)."""

    INGEST = "ingest"
    ROLLOUT = "rollout"
    PUBLISH = "publish"
    TRAINING = "training"


def hub_client_id(identity: str, role: HubRole, instance: str) -> str:
    """``IDENTITY:ROLE:INSTANCE``: unique per hub process and connection (#15)."""
    return f"{identity}:{role.value}:{_valid_instance(instance)}"


def new_instance_id() -> str:
    """A fresh random instance id (one-shot connections such as ``cloud-hub publish``)."""
    return secrets.token_hex(6)


def one_shot_client_id(role: HubRole) -> str:
    """A client id for a ``role`` connection made without the hub's data directory: the
    default hub identity and a fresh instance id."""
    return hub_client_id(DEFAULT_HUB_USER, role, new_instance_id())


def resolve_instance_id(data_dir: str | os.PathLike[str], configured: str = "") -> str:
    """The configured instance id, else the one persisted in ``DATA_DIR/instance-id``
    (created on first use), so a restarted hub resumes its own persistent sessions."""
    if configured:
        return _valid_instance(configured)
    path = Path(data_dir) / _INSTANCE_FILE
    try:
        return _valid_instance(path.read_text().strip())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise HubConfigError(f"cannot read {path}: {exc}") from exc
    instance = new_instance_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{instance}\n".encode())
    return instance


def hub_identity_name(data_dir: str | os.PathLike[str]) -> str:
    """The hub's MQTT identity (``broker-config --hub-user``), or the default."""
    identity = load_hub_identity(data_dir)
    return identity.name if identity is not None else DEFAULT_HUB_USER


def hub_client_id_for(config: HubConfig, role: HubRole) -> str:
    """The client id of this hub process's ``role`` connection."""
    instance = resolve_instance_id(config.data_dir, config.instance_id)
    return hub_client_id(hub_identity_name(config.data_dir), role, instance)


@dataclass(frozen=True, kw_only=True)
class ConnectionHooks:
    """What a hub connection hears from paho, on paho's network thread (keep them short).

    paho's callback signatures and reason codes stay here; the hooks get plain values."""

    connected: Callable[[mqtt.Client], None]  # CONNACK success (subscribe again here)
    refused: Callable[[str], None]  # CONNACK failure, with the broker's reason
    dropped: Callable[[str], None]  # the connection went away (paho reconnects)
    subscribed: Callable[[list[str]], None]  # the refused subscriptions (empty: all granted)
    message: Callable[[mqtt.MQTTMessage], None]
    # every message of one socket read at once, in order, instead of ``message`` one by one
    # (a :class:`StreamClient` only, see ``create_client(stream=True)``)
    messages: Callable[[list[mqtt.MQTTMessage]], None] | None = None
    published: Callable[[int], None] | None = None  # a QoS 1 publish was acknowledged
    # a QoS 1 publish the broker refused (MQTT 5 PUBACK reason, e.g. the ACL); without it a
    # refused publish is reported to ``published`` like any other acknowledgement
    publish_refused: Callable[[int, str], None] | None = None


def _install(client: mqtt.Client, hooks: ConnectionHooks) -> None:
    def on_connect(
        c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            hooks.refused(str(rc))
        else:
            hooks.connected(c)

    def on_disconnect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        hooks.dropped(str(rc))

    def on_subscribe(
        _c: mqtt.Client, _u: object, _mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        hooks.subscribed([str(r) for r in rcs if r.is_failure])

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            hooks.message(msg)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("message handler failed on %s", msg.topic)

    batch = hooks.messages
    if batch is not None and isinstance(client, StreamClient):

        def on_messages(messages: list[mqtt.MQTTMessage]) -> None:
            try:
                batch(messages)
            except Exception:  # a handler bug must not kill paho's network thread
                log.exception("message handler failed on %d message(s)", len(messages))

        client.on_messages = on_messages
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    published, publish_refused = hooks.published, hooks.publish_refused
    if published is not None or publish_refused is not None:

        def on_publish(
            _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
        ) -> None:
            if publish_refused is not None and rc.is_failure:
                publish_refused(mid, str(rc))
            elif published is not None:
                published(mid)

        client.on_publish = on_publish


def create_client(
    endpoint: BrokerEndpoint,
    *,
    client_id: str,
    hooks: ConnectionHooks,
    persistent: bool = False,
    manual_ack: bool = False,
    reconnect_delay_s: tuple[int, int] = (1, 5),
    stream: bool = False,
) -> mqtt.Client:
    """A paho 2.x client for ``endpoint`` with ``hooks`` installed (not connected yet).

    ``persistent``: the broker keeps the session (subscriptions, queued QoS 1 messages)
    while this client is away; MQTT 3.1.1 sets that here, MQTT 5 in :func:`connect_client`.
    ``stream``: a :class:`StreamClient`, for a connection that mostly receives.
    """
    v5 = endpoint.protocol == "5"
    client = (StreamClient if stream else mqtt.Client)(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=reconnect_delay_s[0], max_delay=reconnect_delay_s[1])
    try:
        endpoint.configure_client(client)
    except ConfigError as exc:
        raise DeliveryError(str(exc)) from exc
    _install(client, hooks)
    return client


def connect_client(
    client: mqtt.Client,
    endpoint: BrokerEndpoint,
    *,
    keepalive_s: int,
    persistent: bool = False,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
) -> None:
    """Start connecting (``loop_start`` is the caller's); raises ``DeliveryError``."""
    try:
        if endpoint.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = session_expiry_s
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            client.connect(
                endpoint.host,
                endpoint.port,
                keepalive=keepalive_s,
                clean_start=not persistent,
                properties=props,
            )
        else:
            client.connect(endpoint.host, endpoint.port, keepalive=keepalive_s)
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"cannot connect to MQTT broker {endpoint.url}: {exc}") from exc
