"""The ingest's MQTT client (:class:`cloud_hub.broker_stream.StreamClient`) against a real
Mosquitto (127.0.0.1:1883): it reads the socket in chunks and parses the packets itself, so
these check what paho would otherwise guarantee — every message whole and in order across
chunk boundaries (one larger than a chunk), properties when a message has some, both
protocol versions, and acknowledgements that reach the broker (a small receive maximum
stalls the stream without them; a persistent session gets back exactly the unacknowledged).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.broker_stream import StreamClient, _frame, _varint

pytestmark = pytest.mark.integration

HOST, PORT = "127.0.0.1", 1883


class Subscriber:
    """A StreamClient subscribed to ``topic/#`` that records what it receives."""

    def __init__(
        self,
        topic: str,
        *,
        protocol: int = mqtt.MQTTv5,
        manual_ack: bool = False,
        client_id: str = "",
        receive_maximum: int | None = None,
        persistent: bool = False,
    ) -> None:
        self.client = StreamClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"stream-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
            manual_ack=manual_ack,
            **({} if protocol == mqtt.MQTTv5 else {"clean_session": not persistent}),
        )
        self.messages: list[mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        self.client.on_connect = lambda c, *_a: c.subscribe(f"{topic}/#", qos=1)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300 if persistent else 0
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            self.client.connect(HOST, PORT, clean_start=not persistent, properties=props)
        else:
            self.client.connect(HOST, PORT)
        self.client.loop_start()
        assert self.subscribed.wait(10), "not subscribed"

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.messages) >= count, f"{len(self.messages)} of {count} arrived"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher() -> Iterator[mqtt.Client]:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.connect(HOST, PORT)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


BROKER_WINDOW = 500  # messages in flight to a subscriber of the shared broker at a time


def _topic() -> str:
    return f"stream-test-{uuid.uuid4().hex[:8]}"


def _publish_all(client: mqtt.Client, items: list[tuple[str, bytes]], **kw: object) -> None:
    infos = [client.publish(t, p, qos=1, **kw) for t, p in items]  # type: ignore[arg-type]
    for info in infos:
        info.wait_for_publish(20)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_every_message_arrives_whole_and_in_order_across_chunks(
    publisher: mqtt.Client, protocol: int
) -> None:
    base = _topic()
    sub = Subscriber(base, protocol=protocol)
    sizes = [0, 1, 127, 128, 16_383, 16_384, 3 * StreamClient.READ_CHUNK // 2]
    sizes += [100 + (i * 37) % 900 for i in range(2000)]  # many packets per chunk, split ones
    sent = [(f"{base}/d{i % 7}/telemetry", bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    try:
        # in windows the broker's per-client queue holds (Mosquitto's default is 1,000 and
        # drops past it when a subscriber falls behind, as a loaded machine's can)
        for start in range(0, len(sent), BROKER_WINDOW):
            _publish_all(publisher, sent[start : start + BROKER_WINDOW])
            sub.wait_for(min(start + BROKER_WINDOW, len(sent)))
        time.sleep(0.2)
        got = [(m.topic, bytes(m.payload)) for m in sub.messages]
        assert got == sent
        assert all(m.qos == 1 and not m.retain for m in sub.messages)
    finally:
        sub.close()


def test_properties_and_retained_flags_are_decoded(publisher: mqtt.Client) -> None:
    base = _topic()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("origin", "test")
    props.ContentType = "application/json"
    retained = f"{base}/d1/status"
    _publish_all(publisher, [(retained, b"retained")], retain=True)
    sub = Subscriber(base)
    try:
        _publish_all(publisher, [(f"{base}/d1/events", b"with properties")], properties=props)
        sub.wait_for(2)
        first, second = sub.messages[:2]
        assert (first.topic, first.payload, first.retain) == (retained, b"retained", True)
        assert second.payload == b"with properties"
        assert second.properties is not None
        assert second.properties.json() == {
            "UserProperty": [("origin", "test")],
            "ContentType": "application/json",
        }
    finally:
        sub.close()
        _publish_all(publisher, [(retained, b"")], retain=True)


def test_acknowledgements_reach_the_broker(publisher: mqtt.Client) -> None:
    """With at most 20 unacknowledged messages in flight, 1000 arrive only if the coalesced
    PUBACKs are written; a persistent session then has nothing left to redeliver."""
    base = _topic()
    client_id = f"stream-ack-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(base, client_id=client_id, receive_maximum=20, persistent=True)
    try:
        _publish_all(publisher, [(f"{base}/d/telemetry", b"%d" % i) for i in range(1000)])
        sub.wait_for(1000)
    finally:
        sub.close()
    again = Subscriber(base, client_id=client_id, persistent=True)
    try:
        time.sleep(1.0)
        assert again.messages == []
    finally:
        again.close()


def test_unacknowledged_messages_come_back_to_the_session(publisher: mqtt.Client) -> None:
    """Manual acknowledgement: what was received but never acknowledged is redelivered to
    the persistent session (the ingest's guarantee across a hub SIGKILL); what was
    acknowledged from another thread (the ingest's writer) is not."""
    base = _topic()
    client_id = f"stream-manual-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(base, client_id=client_id, manual_ack=True, persistent=True)
    acked = 0

    def ack_the_first_120() -> None:  # as they arrive, like the writer after each commit
        nonlocal acked
        deadline = time.monotonic() + 20
        while acked < 120 and time.monotonic() < deadline:
            for m in sub.messages[acked:120]:
                sub.client.ack(m.mid, 1)
                acked += 1
            time.sleep(0.01)

    acker = threading.Thread(target=ack_the_first_120)
    acker.start()
    try:
        _publish_all(publisher, [(f"{base}/d/events", b"%d" % i) for i in range(200)])
        acker.join()
        assert acked == 120
        sub.wait_for(121)  # the broker's in-flight window fills with unacknowledged ones
        time.sleep(0.5)
    finally:
        acker.join()
        sub.close()
    again = Subscriber(base, client_id=client_id, persistent=True)
    try:
        again.wait_for(80)
        time.sleep(0.5)
        assert sorted(int(m.payload) for m in again.messages) == list(range(120, 200))
    finally:
        again.close()


def test_packet_framing_is_read_from_the_buffer() -> None:
    assert _varint(b"\x00", 0) == (0, 1)
    assert _varint(b"\xff\x7f", 0) == (16_383, 2)
    assert _varint(b"x\x80\x80\x01", 1) == (16_384, 4)
    with pytest.raises(MalformedPacket):
        _varint(b"\xff\xff\xff\xff\x01", 0)
    packet = bytearray(b"\x30\x03abc\x40\x02\x00\x01")
    assert _frame(packet, 0) == (2, 5)
    assert _frame(packet, 5) == (7, 9)
    assert _frame(packet[:8], 5) is None  # body incomplete
    assert _frame(bytearray(b"\x30\x80"), 0) is None  # length incomplete
    with pytest.raises(MalformedPacket):
        _frame(bytearray(b"\x30\xff\xff\xff\xff\x01"), 0)
