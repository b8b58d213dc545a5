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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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


_PUBLISH, _PUBACK = 0x30, 0x40  # MQTT control packet types (the first byte's high nibble)


class StreamClient(mqtt.Client):
    """A paho client for a connection that receives a stream of QoS 1 messages (the ingest).

    Stock paho reads a packet with three or more ``recv`` calls (type, length, body), goes
    round its select loop once per packet, decodes every MQTT 5 property set into objects,
    wakes its loop through a socket pair for every acknowledgement and sends each 4-byte
    PUBACK with its own ``send``. This client reads the socket in :attr:`READ_CHUNK`
    pieces and handles every whole packet in them per loop round, decodes a PUBLISH's
    properties only when it has some (``message.properties`` is ``None`` otherwise), queues
    acknowledgements made on its own network thread without the wake-up (the loop writes
    what is queued before it waits again) and sends consecutive PUBACKs in one write. Every
    packet but a QoS 0/1 PUBLISH goes to paho's own handlers; sessions, TLS, reconnects,
    keepalive and callbacks are paho's.

    It overrides paho 2.2's private ``loop_read`` path, ``_sock_close``, ``_packet_queue``
    and ``_packet_write`` (paho is pinned; ``tests/registry/test_stream_client.py`` runs it
    against Mosquitto).
    """

    READ_CHUNK = 65536
    CHUNKS_PER_ROUND = 4  # then the loop writes acknowledgements and keeps the connection alive

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unread = bytearray()  # received bytes not yet a whole packet

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read up to :attr:`CHUNKS_PER_ROUND` chunks; handle every whole packet in them."""
        for _ in range(self.CHUNKS_PER_ROUND):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            try:
                chunk = self._sock_recv(self.READ_CHUNK)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not chunk:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            self._unread += chunk
            rc = self._handle_unread()
            if rc:
                return self._loop_rc_handle(rc)
            if len(chunk) < self.READ_CHUNK:
                break  # the socket is drained; select says when more comes
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_unread(self) -> MQTTErrorCode:
        """Handle the whole packets at the start of ``_unread``; keep a partial one."""
        buf, pos, rc = self._unread, 0, MQTTErrorCode.MQTT_ERR_SUCCESS
        while self._sock is not None:
            try:
                framed = _frame(buf, pos)
            except MalformedPacket:
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                break
            if framed is None:
                break
            body_at, end = framed
            rc = self._handle_packet(buf[pos], bytes(buf[body_at:end]))
            pos = end
            if rc:
                break
        del buf[:pos]
        return rc

    def _handle_packet(self, command: int, body: bytes) -> MQTTErrorCode:
        try:
            if command & 0xF0 == _PUBLISH and command & 0x06 in (0, 2):  # QoS 0 or 1
                return self._handle_stream_publish(command, body)
            self._in_packet["command"] = command
            self._in_packet["remaining_length"] = len(body)
            self._in_packet["packet"] = bytearray(body)
            return self._packet_handle()
        except (MalformedPacket, IndexError, ValueError) as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet["command"] = 0
            self._in_packet["packet"] = bytearray()

    def _handle_stream_publish(self, command: int, body: bytes) -> MQTTErrorCode:
        qos = (command & 0x06) >> 1
        at = 2 + int.from_bytes(body[:2], "big")
        topic = body[2:at]
        mid = 0
        if qos:
            mid = int.from_bytes(body[at : at + 2], "big")
            at += 2
        properties = None
        if self._protocol == mqtt.MQTTv5:
            size, props_at = _varint(body, at)
            if size:
                properties = Properties(PacketTypes.PUBLISH)
                properties.unpack(body[at:])
            at = props_at + size
        if at > len(body) or (qos and not mid) or not (topic or properties):
            raise MalformedPacket("malformed PUBLISH")
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.qos, message.retain = qos, bool(command & 0x01)
        message.dup = bool(command & 0x08)
        message.properties = properties
        message.payload = body[at:]
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_close(self) -> None:
        self._unread.clear()  # bytes of the old connection are void
        super()._sock_close()

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: mqtt.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        thread = self._thread
        if thread is None or thread.ident != threading.get_ident():
            return super()._packet_queue(command, packet, mid, qos, info)
        # on the network thread: the loop writes the queue before it waits again
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet  # other threads only append: the left end is this thread's
        if len(out) > 1 and _unsent_puback(out[0]) and _unsent_puback(out[1]):
            acks = []
            while out and _unsent_puback(out[0]):
                acks.append(out.popleft()["packet"])
            joined = b"".join(acks)
            out.appendleft(
                {
                    "command": _PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(joined),
                    "packet": joined,
                    "info": None,
                }
            )
        return super()._packet_write()


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``at``: its value and where what follows starts."""
    value = 0
    for shift in range(0, 28, 7):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def _frame(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """The packet starting at ``pos``: where its body starts and ends, ``None`` while it is
    incomplete (raises ``MalformedPacket`` for a length field over 4 bytes)."""
    length, at = 0, pos + 1
    for shift in range(0, 28, 7):
        if at >= len(buf):
            return None
        byte = buf[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (at, at + length) if at + length <= len(buf) else None
    raise MalformedPacket("remaining length longer than 4 bytes")


def _unsent_puback(packet: Mapping[str, Any]) -> bool:
    command = packet["command"]
    return isinstance(command, int) and command & 0xF0 == _PUBACK and packet["pos"] == 0


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
