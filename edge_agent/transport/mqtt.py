"""A thin MQTT v5 link for the agent (paho-mqtt 2.x).

- Persistent session (``clean_start=False`` + session expiry): QoS 1 messages for the
  device queue at the broker while it is briefly offline, subscriptions survive.
- Last will: the retained offline status, published by the broker if the agent vanishes.
- Reconnects with exponential backoff (paho's loop thread). A broker that cannot be reached
  is logged at once with its endpoint and the error (paho itself stays silent), then again
  only when the error changes or a minute has passed.
- Outbound: everything goes through the :class:`Outbox`; a flusher thread publishes pending
  entries (a bounded window in flight) and deletes each one only once its PUBACK arrived.
- Inbound: manual acknowledgement — a message is acknowledged after the agent processed it,
  so a crash before that makes the broker deliver it again; it also bounds how far the
  broker runs ahead of a busy agent.

paho calls ``on_publish`` while holding its own lock, so the flusher never holds a lock of
ours while calling into paho and ``on_publish`` only sets an event.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttSettings
from edge_agent.errors import TransportError
from edge_agent.transport.outbox import Outbox, Pending
from shared.errors import ConfigError

__all__ = ["InboundMessage", "MqttLink"]

log = logging.getLogger(__name__)

_FRAME_OVERHEAD = 64 * 1024  # topic, properties and chunk header on top of the payload
_CONNECT_FAIL_REPEAT_S = 60.0  # the same connect error is logged again after this long


@dataclass(frozen=True)
class InboundMessage:
    """A received message; pass it back to :meth:`MqttLink.ack` once handled."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int  # connection it arrived on: acks are only valid on that connection


class MqttLink:
    def __init__(
        self,
        *,
        settings: MqttSettings,
        client_id: str,
        outbox: Outbox,
        on_message: Callable[[InboundMessage], None],
        on_connect: Callable[[], None] = lambda: None,
        will: tuple[str, bytes] | None = None,
        max_inbound_bytes: int = 16 * 1024 * 1024,
        window: int = 64,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self._on_message_cb = on_message
        self._on_connect_cb = on_connect
        self._window = window
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = False
        self._connected = False
        self._generation = 0
        self._desired: set[str] = set()
        self._stale: set[str] = set()  # may linger in the broker's session from a past run
        self._cursor = 0  # highest outbox id handed to paho on this connection
        self._inflight: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        self._flusher: threading.Thread | None = None
        self.connected_event = threading.Event()
        self._last_connect_error: tuple[str, float] | None = None

        endpoint = settings.endpoint  # the broker endpoint type the hub uses too
        self._v5 = endpoint.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,  # 3.1.1: a persistent session
            manual_ack=True,
        )
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(window)
        try:
            endpoint.configure_client(client)
        except ConfigError as exc:
            raise TransportError(f"TLS setup failed: {exc}") from exc
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        self._client = client
        self._endpoint = endpoint
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s
        # the broker drops (for us) anything larger instead of sending it
        props.MaximumPacketSize = max_inbound_bytes + _FRAME_OVERHEAD
        self._connect_props = props

    # ------------------------------------------------------------------ control
    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        """Connect in the background; reconnects forever until :meth:`stop`."""
        self._running = True
        if self._v5:
            self._client.connect_async(
                self._endpoint.host,
                self._endpoint.port,
                keepalive=self.settings.keepalive_s,
                clean_start=False,
                properties=self._connect_props,
            )
        else:
            self._client.connect_async(
                self._endpoint.host, self._endpoint.port, keepalive=self.settings.keepalive_s
            )
        self._client.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, name="mqtt-outbox", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the threads; pending reports stay on
        disk for the next start."""
        self._running = False
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (all acknowledged) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while len(self.outbox) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return len(self.outbox) == 0

    # ------------------------------------------------------------------ publish/subscribe
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a publish durably; it is sent when connected and kept until acknowledged."""
        self.publish_many([Pending(topic, payload, qos, retain)])

    def publish_many(self, items: Sequence[Pending]) -> None:
        """Queue several publishes durably, in order, in one outbox transaction."""
        if items:
            self.outbox.put_many(items)
            self._wake.set()

    def subscribe(self, topic: str) -> None:
        with self._lock:
            if topic in self._desired:
                return
            self._desired.add(topic)
        if self._connected:
            self._client.subscribe(topic, qos=1)

    def forget_on_connect(self, topic: str) -> None:
        """Unsubscribe ``topic`` on the next connect unless it is wanted by then: the
        persistent session may still hold a subscription a killed process did not drop."""
        with self._lock:
            self._stale.add(topic)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            if topic not in self._desired:
                return
            self._desired.discard(topic)
        if self._connected:
            self._client.unsubscribe(topic)

    def ack(self, message: InboundMessage) -> None:
        if message.qos > 0 and message.generation == self._generation and self._connected:
            self._client.ack(message.mid, message.qos)

    # ------------------------------------------------------------------ paho callbacks
    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning(
                "the MQTT broker at %s refused the connection: %s", self._endpoint.url, reason_code
            )
            return
        with self._lock:
            self._generation += 1
            self._connected = True
            self._cursor = 0
            self._inflight = []
            topics = sorted(self._desired)
            stale = sorted(self._stale - self._desired)
            self._stale.clear()
        if topics:
            client.subscribe([(t, 1) for t in topics])
        if stale and flags.session_present:
            client.unsubscribe(stale)
        self._last_connect_error = None
        log.info("connected to %s (session present: %s)", self._endpoint.url, flags.session_present)
        self.connected_event.set()
        self._wake.set()
        try:
            self._on_connect_cb()
        except Exception:
            log.exception("on_connect hook failed")

    def _handle_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the error is
        # the exception being handled (refused, unreachable, TLS handshake failure, ...).
        error = sys.exc_info()[1]
        text = f"{type(error).__name__}: {error}" if error is not None else "connect failed"
        now = time.monotonic()
        last = self._last_connect_error
        if last is not None and last[0] == text and now - last[1] < _CONNECT_FAIL_REPEAT_S:
            return
        self._last_connect_error = (text, now)
        log.warning(
            "cannot reach the MQTT broker at %s: %s; retrying (every %g-%g s)",
            self._endpoint.url,
            text,
            self.settings.reconnect_min_s,
            self.settings.reconnect_max_s,
        )

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        self.connected_event.clear()
        if self._running:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("dropped message with an undecodable topic")
            client.ack(msg.mid, msg.qos)
            return
        inbound = InboundMessage(
            topic=topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            mid=msg.mid,
            generation=self._generation,
        )
        try:
            self._on_message_cb(inbound)
        except Exception:  # never let a handler kill paho's network thread
            log.exception("inbound handler failed for %s", topic)
            self.ack(inbound)

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ outbox flusher
    def _flush_loop(self) -> None:
        while self._running:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._flush_once()
            except TransportError as exc:
                log.error("outbox: %s", exc)
            except Exception:
                log.exception("outbox flush failed")

    def _flush_once(self) -> None:
        with self._lock:
            generation = self._generation
            done = [eid for eid, info in self._inflight if info.is_published()]
            self._inflight = [(e, i) for e, i in self._inflight if not i.is_published()]
            room = self._window - len(self._inflight)
            cursor = self._cursor
        self.outbox.remove(done)
        if not self._connected or room <= 0:
            return
        for entry in self.outbox.after(cursor, room):
            if not self._connected or generation != self._generation:
                return
            info = self._client.publish(
                entry.topic, entry.payload, qos=entry.qos, retain=entry.retain
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # not connected any more: resent from the outbox on reconnect
            with self._lock:
                if generation != self._generation:
                    return
                if entry.qos == 0:
                    done_now = True
                else:
                    done_now = False
                    self._inflight.append((entry.id, info))
                self._cursor = max(self._cursor, entry.id)
            if done_now:
                self.outbox.remove([entry.id])
