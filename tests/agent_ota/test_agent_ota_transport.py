"""Outbox and MQTT link: reports survive a broker outage; a transfer survives a broker restart.

The outage tests run their own Mosquitto on a free loopback port (the shared broker on 1883
must stay up for everyone else) and stop/start it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from edge_agent.errors import TransportError
from edge_agent.transport import Outbox
from edge_agent.transport.outbox import Pending
from shared.messages import EventKind, Hello, Telemetry
from shared.net import free_port
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    make_authority,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    unique_prefix,
    wait_for,
    write_agent_config,
)


def test_outbox_fifo_remove_and_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ids = [box.put("t/a", f"m{i}".encode()) for i in range(5)]
    assert [e.payload for e in box.after(0, 10)] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [e.id for e in box.after(ids[2], 10)] == ids[3:]
    box.remove(ids[:2])
    box.remove(ids[:2])  # idempotent
    box.close()
    again = Outbox(tmp_path / "o.db")  # a restarted agent finds what was not acknowledged
    assert [e.payload for e in again.after(0, 10)] == [b"m2", b"m3", b"m4"]
    assert len(again) == 3


def test_outbox_coalesces_retained_and_is_bounded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_entries=4, durable=False)
    box.put("status", b"s1", retain=True)
    box.put("events", b"e1")
    box.put("status", b"s2", retain=True)
    assert [(e.topic, e.payload) for e in box.after(0, 10)] == [
        ("events", b"e1"),
        ("status", b"s2"),
    ]
    for i in range(5):
        box.put("telemetry", str(i).encode())
    assert len(box) == 4
    assert [e.payload for e in box.after(0, 10)][-1] == b"4"


def test_outbox_stores_a_batch_in_order_in_one_transaction(tmp_path: Path) -> None:
    """A reporter's messages go in one write: in order, retained ones coalesced within the
    batch too, bounded, and all or nothing."""
    box = Outbox(tmp_path / "o.db", max_entries=4, durable=False)
    last = box.put_many(
        [
            Pending("status", b"s1", retain=True),
            Pending("drift", b"d1"),
            Pending("status", b"s2", retain=True),
            Pending("drift", b"d2"),
        ]
    )
    entries = box.after(0, 10)
    assert [(e.topic, e.payload) for e in entries] == [
        ("drift", b"d1"),
        ("status", b"s2"),
        ("drift", b"d2"),
    ]
    assert last == entries[-1].id and box.put_many([]) == 0
    box.put_many([Pending("drift", f"x{i}".encode()) for i in range(3)])
    assert [e.payload for e in box.after(0, 10)] == [b"s2", b"d2", b"x0", b"x1", b"x2"][-4:]
    before = [e.payload for e in box.after(0, 10)]
    with pytest.raises(TransportError):  # a payload SQLite refuses: nothing of the batch stays
        box.put_many([Pending("drift", b"y0"), Pending("drift", object())])  # type: ignore[arg-type]
    assert [e.payload for e in box.after(0, 10)] == before


class PrivateBroker:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(self._up, 10), "private mosquitto did not start"

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto not installed")
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


class ResubscribingSender(BundleSender):
    """The test hub: resubscribes after the broker restarts (it has no persistence)."""

    def __init__(self, topics: TopicScheme, port: int) -> None:
        super().__init__(topics, port=port)
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.on_connect = self._resubscribe

    def _resubscribe(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        for channel in ("hello", "status", "events", "chunk-req", "telemetry"):
            client.subscribe(self.topics.all_devices(channel), qos=1)


def _agent(tmp_path: Path, broker: PrivateBroker, prefix: str, trust: Path) -> EdgeAgent:
    cfg = write_agent_config(
        tmp_path, device_id=f"dev-{prefix}", prefix=prefix, trust_path=trust, port=broker.port
    )
    return EdgeAgent(load_config(cfg))


@pytest.mark.integration
def test_reports_made_during_broker_outage_arrive_after_reconnect(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    hub = ResubscribingSender(topics, broker.port)
    agent = _agent(tmp_path, broker, prefix, auth.write_trust(tmp_path / "trust.json"))
    dev = agent.config.device_id
    seq = iter(range(10**6))
    lock = threading.Lock()
    produced: list[int] = []

    def telemetry() -> list[Telemetry]:
        with lock:
            n = next(seq)
            produced.append(n)
        return [Telemetry(device_id=dev, seq=n, metrics={"x": float(n)})]

    agent.add_reporter(0.05, telemetry)
    agent.start()
    try:
        assert wait_for(lambda: hub.of(dev, Hello), 15)
        assert wait_for(lambda: len(hub.of(dev, Telemetry)) >= 3, 10)
        broker.stop()
        time.sleep(2.0)  # reports keep being made while the broker is gone
        with lock:
            during = [n for n in produced if n > max(t.seq for t in hub.of(dev, Telemetry))]
        assert len(during) >= 3
        broker.start()
        assert wait_for(lambda: len(hub.of(dev, Hello)) >= 2, 20)  # hello on every connect
        time.sleep(0.5)
        with lock:
            upto = produced[-1]
        assert wait_for(
            lambda: {t.seq for t in hub.of(dev, Telemetry)} >= set(range(upto + 1)), 20
        ), sorted(set(range(upto + 1)) - {t.seq for t in hub.of(dev, Telemetry)})[:20]
    finally:
        agent.stop()
        hub.close()
    assert len(Outbox(tmp_path / dev / "outbox.sqlite3")) == 0


@pytest.mark.integration
def test_transfer_completes_across_broker_restart(tmp_path: Path, broker: PrivateBroker) -> None:
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    hub = ResubscribingSender(topics, broker.port)
    agent = _agent(tmp_path, broker, prefix, auth.write_trust(tmp_path / "trust.json"))
    dev = agent.config.device_id
    agent.start()
    try:
        assert wait_for(lambda: hub.of(dev, Hello), 15)
        offer = make_offer(
            make_bundle(auth, version=1, model=onnx_model_bytes(128, 64)), topics, chunk_size=2048
        )
        n = len(offer.frames)
        hub.deploy(offer, [dev], chunks=list(range(n // 2)))
        assert wait_for(lambda: agent.updater.transfer.download is not None, 5)
        broker.stop()
        hub.fanout(offer, list(range(n // 2, n)))  # published into the void
        time.sleep(0.5)
        broker.start()
        dep = offer.command.deployment_id
        assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 30), hub.kinds(dev, dep)
    finally:
        agent.stop()
        hub.close()


@pytest.mark.integration
def test_persistent_session_keeps_subscriptions_and_stale_ones_are_dropped(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.config import MqttSettings
    from edge_agent.transport import InboundMessage, MqttLink
    from tests.agent_ota.agent_ota_helpers import broker_available

    if not broker_available():
        pytest.skip("needs Mosquitto on 127.0.0.1:1883")
    prefix = unique_prefix()
    topic = f"{prefix}/v1/bundles/x/chunks"
    settings = MqttSettings(topic_prefix=prefix, reconnect_min_s=0.2, reconnect_max_s=1.0)
    client_id = f"sess-{prefix}"
    got: list[InboundMessage] = []

    def link(forget: bool) -> MqttLink:
        def on_message(m: InboundMessage) -> None:
            got.append(m)
            lk.ack(m)

        lk = MqttLink(
            settings=settings,
            client_id=client_id,
            outbox=Outbox(tmp_path / f"o{len(got)}{forget}.db"),
            on_message=on_message,
        )
        if forget:
            lk.forget_on_connect(topic)
        lk.start()
        assert lk.connected_event.wait(10)
        return lk

    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", 1883)
    pub.loop_start()
    try:
        first = link(False)
        first.subscribe(topic)
        time.sleep(0.3)
        first.stop()  # a process that never unsubscribed: the session keeps the subscription
        second = link(False)
        time.sleep(0.3)
        pub.publish(topic, b"kept", qos=1)
        assert wait_for(lambda: [m.payload for m in got] == [b"kept"], 5)
        second.stop()
        third = link(True)  # this run knows the topic is stale
        time.sleep(0.5)
        pub.publish(topic, b"dropped", qos=1)
        time.sleep(0.5)
        assert [m.payload for m in got] == [b"kept"]
        third.stop()
    finally:
        pub.loop_stop()
        pub.disconnect()
