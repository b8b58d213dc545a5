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

from cloud_hub.broker_client import (
    ConnectionHooks,
    HubRole,
    connect_client,
    create_client,
    one_shot_client_id,
)
from cloud_hub.delivery.config import PublisherConfig
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
        client_id = config.client_id or one_shot_client_id(HubRole.PUBLISH)
        self._client = create_client(
            config.broker,
            client_id=client_id,
            reconnect_delay_s=(1, 2),
            hooks=ConnectionHooks(
                connected=self._connected_to,
                refused=self._refused,
                dropped=self._dropped,
                subscribed=self._subscribed_to,
                message=lambda msg: self._handler(msg.topic, bytes(msg.payload), bool(msg.retain)),
                published=self._published,
            ),
        )
        # our own window bounds what is in flight; paho's inflight limit must not be lower
        self._client.max_inflight_messages_set(config.max_inflight)

    # -- connection hooks (paho's network thread) --------------------------------------------
    def _connected_to(self, client: mqtt.Client) -> None:
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

    def _refused(self, reason: str) -> None:
        with self._cond:
            self._connect_error = reason
            self._cond.notify_all()

    def _dropped(self, reason: str) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._closed:
            log.warning("hub lost its broker connection (%s); reconnecting", reason)

    def _subscribed_to(self, failed: list[str]) -> None:
        with self._cond:
            if failed:
                self._connect_error = f"subscription refused: {', '.join(failed)}"
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _published(self, mid: int) -> None:
        with self._cond:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:  # acknowledged before publish() returned to our thread
                self._acked_early.add(mid)
            self._cond.notify_all()

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
