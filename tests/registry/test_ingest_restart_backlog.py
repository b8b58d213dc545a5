"""A restarted hub resumes its persistent session behind a backlog: the broker delivers what
it queued for the ingest before it answers the SUBSCRIBE. The ingest must come up (a message
proves the session's subscriptions) and store every must-keep message, however long the
backlog takes, instead of giving up after its connect timeout (which made a hub restart
under a large fleet exit with an error)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.errors import DeliveryError
from cloud_hub.ingest import FleetIngest, IngestConfig, IngestConnection
from cloud_hub.registry import open_registry, reports
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Event
from shared.net import free_port
from shared.topics import TopicScheme
from simulations.harness.mosquitto import LocalMosquitto

BACKLOG = 400
SLOW_S = 0.01  # per message on the network thread: the backlog takes >= 4 s, the timeout 1 s


def _publish_backlog(port: int, scheme: TopicScheme) -> None:
    pub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [
        pub.publish(
            scheme.device(f"dev-{i % 20}", "events"),
            Event(device_id=f"dev-{i % 20}", event_id=f"down-{i}", kind="installed").encode(),
            qos=1,
        )
        for i in range(BACKLOG)
    ]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()


def test_ingest_comes_up_behind_a_backlog_longer_than_its_connect_timeout(
    tmp_path: Path,
) -> None:
    scheme = TopicScheme(f"ingest-backlog-{uuid.uuid4().hex[:8]}")
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    with LocalMosquitto() as broker:
        settings = IngestConnection(
            endpoint=BrokerEndpoint(port=broker.port),
            client_id=f"ingest-{uuid.uuid4().hex[:8]}",
            session_expiry_s=60,
            connect_timeout_s=1.0,
        )
        config = IngestConfig(flush_interval_s=0.05)
        first = FleetIngest(registry, scheme=scheme, mqtt_settings=settings, config=config)
        first.start()  # the persistent session and its subscriptions
        first.stop()
        _publish_backlog(broker.port, scheme)
        second = FleetIngest(registry, scheme=scheme, mqtt_settings=settings, config=config)
        second.add_observer(lambda _msg: time.sleep(SLOW_S))  # a slow, loaded hub
        second.start()
        try:
            deadline = time.monotonic() + 60
            while second.stats().events_new < BACKLOG and time.monotonic() < deadline:
                time.sleep(0.05)
            assert second.wait_idle(10)
            with registry.session() as s:
                assert reports.list_events(s).total == BACKLOG
        finally:
            second.stop()
    registry.close()


def test_ingest_still_gives_up_on_a_silent_broker() -> None:
    """No subscription granted and no message within the timeout: start fails as before."""
    port = free_port()
    registry = open_registry("sqlite://")
    ingest = FleetIngest(
        registry,
        scheme=TopicScheme("silent"),
        mqtt_settings=IngestConnection(
            endpoint=BrokerEndpoint(port=port), client_id="ingest-silent", connect_timeout_s=1.0
        ),
    )
    with pytest.raises(DeliveryError):
        ingest.start()
    registry.close()
