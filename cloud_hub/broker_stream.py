"""The ingest's MQTT client: paho, reading a stream of QoS 1 messages in socket-sized bites.

See :class:`StreamClient`; :func:`cloud_hub.broker_client.create_client` builds it
(``stream=True``) like every other hub connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["StreamClient"]

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
    what is queued before it waits again) and sends consecutive PUBACKs in one write. With
    :attr:`on_messages` set, the messages of one read go to it in one call (in order, before
    any other packet that followed them). Every packet but a QoS 0/1 PUBLISH goes to paho's
    own handlers; sessions, TLS, reconnects, keepalive and callbacks are paho's.

    It overrides paho 2.2's private ``loop_read`` path, ``_sock_close``, ``_packet_queue``
    and ``_packet_write`` (paho is pinned; ``tests/registry/test_stream_client.py`` runs it
    against Mosquitto).
    """

    READ_CHUNK = 65536
    CHUNKS_PER_ROUND = 4  # then the loop writes acknowledgements and keeps the connection alive

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unread = bytearray()  # received bytes not yet a whole packet
        self._arrived: list[mqtt.MQTTMessage] = []  # PUBLISHes parsed, not yet handed over
        #: called with every QoS 0/1 message of one read, in order (``on_message`` otherwise)
        self.on_messages: Callable[[list[mqtt.MQTTMessage]], None] | None = None

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
        return self._hand_over() or rc

    def _hand_over(self) -> MQTTErrorCode:
        """Give the parsed messages to the application, then acknowledge them (unless it
        acknowledges itself: ``manual_ack``)."""
        arrived, self._arrived = self._arrived, []
        if not arrived:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        on_messages = self.on_messages
        if on_messages is not None:
            with self._in_callback_mutex:
                on_messages(arrived)
        else:
            for message in arrived:
                self._handle_on_message(message)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if not self._manual_ack:
            for message in arrived:
                if message.qos:
                    rc = self._send_puback(message.mid) or rc
        return rc

    def _handle_packet(self, command: int, body: bytes) -> MQTTErrorCode:
        publish = command & 0xF0 == _PUBLISH and command & 0x06 in (0, 2)  # QoS 0 or 1
        if not publish:
            rc = self._hand_over()  # what arrived before this packet goes first
            if rc:
                return rc
        try:
            if publish:
                self._arrived.append(self._parse_publish(command, body))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
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

    def _parse_publish(self, command: int, body: bytes) -> mqtt.MQTTMessage:
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
        return message

    def _sock_close(self) -> None:
        self._unread.clear()  # bytes of the old connection are void
        self._arrived.clear()
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
