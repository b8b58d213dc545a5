"""A thin paho-mqtt 2.x session for the hub: connect, subscribe, and QoS1 publishes with a
bounded window of unacknowledged messages. The client comes from
:mod:`cloud_hub.broker_client` (endpoint, TLS, protocol, client id).

paho errors are translated into ``DeliveryError`` here and in the client factory. Publishes made while
the connection is down stay queued in paho and are sent again after the automatic reconnect;
the window waits for their PUBACKs, so a broker restart slows a transfer down without losing
anything the broker acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker_client import (
    HubRole,
    connect_client,
    create_client,
    hub_client_id,
    new_instance_id,
)
from cloud_hub.delivery.config import PublisherConfig
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER
from cloud_hub.errors import DeliveryError

__all__ = ["MessageHandler", "MqttSession"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained


class MqttSession:
    """One MQTT connection. ``on_message`` runs on paho's network thread: keep it short."""

    def __init__(
        self,
        config: PublisherConfig,
        *,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
    ) -> None:
        self.config = config
        self._subscriptions = list(subscriptions)
        self._handler = on_message
        self._cond = threading.Condition()
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()
        self._connected = False
        self._ever_connected = False
        self._subscribed = False
        self._connect_error = ""
        self._closed = False
        self.reconnects = 0
        client_id = config.client_id or hub_client_id(
            DEFAULT_HUB_USER, HubRole.PUBLISH, new_instance_id()
        )
        self._client = create_client(config.broker, client_id=client_id)
        # our own window bounds what is in flight; paho's inflight limit must not be lower
        self._client.max_inflight_messages_set(config.max_inflight)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- paho callbacks (network thread) ----------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            with self._cond:
                self._connect_error = str(reason)
                self._cond.notify_all()
            return
        # a fresh session (e.g. the broker restarted): subscribe again every time
        if self._subscriptions:
            client.subscribe([(t, 1) for t in self._subscriptions])
        with self._cond:
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._connected = True
            self._connect_error = ""
            if not self._subscriptions:
                self._subscribed = True
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._closed:
            log.warning("hub lost its broker connection (%s); reconnecting", reason)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        with self._cond:
            if failed:
                self._connect_error = f"subscription refused: {', '.join(failed)}"
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:  # acknowledged before publish() returned to our thread
                self._acked_early.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handler(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("message handler failed on %s", msg.topic)

    # -- API ---------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, start the network thread, and wait until subscriptions are acknowledged."""
        cfg = self.config
        connect_client(self._client, cfg.broker, keepalive_s=cfg.keepalive_s)
        self._client.loop_start()
        deadline = time.monotonic() + cfg.connect_timeout_s
        with self._cond:
            while not (self._connected and self._subscribed) and not self._connect_error:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            error, ok = self._connect_error, self._connected and self._subscribed
        if not ok:
            self.close()
            raise DeliveryError(
                f"broker {cfg.broker.url} refused or did not answer: {error or 'timeout'}"
            )

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS1 publish; blocks while ``max_inflight`` publishes await their PUBACK."""
        self._wait_window(self.config.max_inflight - 1)
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, TypeError) as exc:
            raise DeliveryError(f"cannot publish to {topic}: {exc}") from exc
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps QoS1 messages queued and sends them after reconnecting
            raise DeliveryError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._unacked.add(info.mid)

    def drain(self) -> None:
        """Wait until the broker acknowledged everything published so far."""
        self._wait_window(0)

    def _wait_window(self, limit: int) -> None:
        timeout = self.config.publish_timeout_s
        with self._cond:
            last_size, last_progress = len(self._unacked), time.monotonic()
            while len(self._unacked) > limit:
                if self._closed:
                    raise DeliveryError("publisher closed")
                now = time.monotonic()
                if len(self._unacked) < last_size:
                    last_size, last_progress = len(self._unacked), now
                elif now - last_progress > timeout:
                    raise DeliveryError(
                        f"broker acknowledged nothing for {timeout:.0f}s "
                        f"({len(self._unacked)} publishes pending; connected={self._connected})"
                    )
                self._cond.wait(0.5)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError, ValueError):  # already gone
            self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._cond.notify_all()
