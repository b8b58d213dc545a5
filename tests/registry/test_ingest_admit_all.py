"""The ingest admits all the messages of one socket read at once (:func:`admit_all`): the
outcomes, counters, held acknowledgements and queue order are those of admitting them one
by one, and a StreamClient hands the messages of a read over in order, several at a time."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker_stream import StreamClient
from cloud_hub.ingest import Admission, IngestConfig, Rejected
from cloud_hub.ingest.admission import Admitted, Received, admit, admit_all
from cloud_hub.ingest.state import IngestState
from shared.messages import Event, Hello, Telemetry
from shared.topics import TopicScheme

SCHEME = TopicScheme("admit-all-test")
T0 = 1_800_000_000.0
CONFIG = IngestConfig(per_device_queue=3, telemetry_rate_per_s=1, telemetry_burst=4)


def _mixed() -> list[Received]:
    """Telemetry over its rate and redelivered, garbage, a full queue, must-keep events."""
    out: list[Received] = []
    for i in range(6):  # burst 4: the last two are over the rate
        tele = Telemetry(device_id="t1", seq=i, metrics={"cpu": 1.0}, ts=T0)
        out.append(Received(SCHEME.device("t1", "telemetry"), tele.encode()))
    again = Telemetry(device_id="t2", seq=1, metrics={"cpu": 1.0}, ts=T0).encode()
    out += [Received(SCHEME.device("t2", "telemetry"), again)] * 2  # the second: redelivered
    out.append(Received(SCHEME.device("g1", "events"), b"{garbage"))
    out.append(Received("not/a/device/topic", b"{}"))
    hello = Hello(
        device_id="h1",
        device_class="x",
        agent_version="1",
        runtimes=[],
        free_disk_bytes=1,
        free_mem_bytes=1,
        ts=T0,
    )
    out.append(Received(SCHEME.device("h1", "hello"), hello.encode()))
    for i in range(5):  # queue of 3, no telemetry to evict: the last two overflow
        event = Event(device_id="e1", event_id=f"ev{i}", kind="k", ts=T0)
        out.append(Received(SCHEME.device("e1", "events"), event.encode(), hold=lambda: None))
    return out


def _summary(state: IngestState, admitted: list[Admitted]) -> object:
    outcomes = [a.outcome.kind if isinstance(a.outcome, Rejected) else a.outcome for a in admitted]
    drained = [(d, type(m.message).__name__) for d, m in state.queue.drain(100)]
    return (
        outcomes,
        [a.held for a in admitted],
        dict(state.counts),
        dict(state.dropped),
        dict(state.rejected),
        len(state.held_acks),
        drained,
    )


def test_admitting_a_read_at_once_equals_admitting_it_message_by_message() -> None:
    received = _mixed()
    one_by_one = IngestState.for_config(CONFIG)
    singly = [
        admit(one_by_one, SCHEME, r.topic, r.payload, now=T0, hold=r.hold, batch_max=100)
        for r in received
    ]
    at_once = IngestState.for_config(CONFIG)
    together = admit_all(at_once, SCHEME, received, now=T0, batch_max=100)
    expected = _summary(one_by_one, singly)
    assert _summary(at_once, together) == expected
    outcomes = expected[0]  # type: ignore[index]
    accepted, evicted, over = Admission.ACCEPTED, Admission.EVICTED_OLDEST, Admission.RATE_LIMITED
    assert outcomes[:8] == [accepted] * 3 + [evicted] + [over] * 2 + [accepted, None]
    assert outcomes[8:11] == ["malformed", "bad_topic", Admission.ACCEPTED]
    assert outcomes[11:] == [Admission.ACCEPTED] * 3 + [Admission.OVERFLOW] * 2


def test_a_read_wakes_the_writer_once_the_queue_has_something() -> None:
    state = IngestState.for_config(CONFIG)
    woken = threading.Event()

    def writer() -> None:
        with state.lock:
            while not len(state.queue):
                if not state.lock.wait(5):
                    return
        woken.set()

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.1)
    admit_all(state, SCHEME, _mixed()[:3], now=T0, batch_max=100)
    thread.join(5)
    assert woken.is_set()
    assert state.queued_since > 0


BROKER_WINDOW = 500  # messages in flight to a subscriber of the shared broker at a time


@pytest.mark.integration
def test_stream_client_hands_over_each_read_in_order() -> None:
    base = f"stream-batch-{uuid.uuid4().hex[:8]}"
    reads: list[list[bytes]] = []
    subscribed = threading.Event()
    sub = StreamClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"batch-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    sub.on_messages = lambda messages: reads.append([bytes(m.payload) for m in messages])
    sub.on_connect = lambda c, *_a: c.subscribe(f"{base}/#", qos=1)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", 1883)
    sub.loop_start()
    pub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    pub.max_inflight_messages_set(1000)
    try:
        assert subscribed.wait(10)
        pub.connect("127.0.0.1", 1883)
        pub.loop_start()
        sent = [b"%05d" % i for i in range(3000)]
        # in windows the broker's per-client queue holds (Mosquitto's default is 1,000 and
        # drops past it when a subscriber falls behind, as a loaded machine's can)
        for start in range(0, len(sent), BROKER_WINDOW):
            window = sent[start : start + BROKER_WINDOW]
            infos = [pub.publish(f"{base}/d/telemetry", p, qos=1) for p in window]
            for info in infos:
                info.wait_for_publish(20)
            deadline = time.monotonic() + 20
            while sum(map(len, reads)) < start + len(window) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert [p for read in reads for p in read] == sent
        assert max(map(len, reads)) > 1  # several messages per read
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
