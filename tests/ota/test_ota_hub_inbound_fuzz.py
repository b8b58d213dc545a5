"""Garbage, truncated and oversized payloads on every topic the hub subscribes to: the hub's
inbound handler never raises, counts a rejection, and still tracks real events afterwards.
(Property-based; runs the handler directly, no broker.)"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.delivery.handle import DeploymentState
from cloud_hub.delivery.progress import DeviceProgress
from shared.messages import ChunkRequest, Event, Hello, Status, new_id

CHANNELS = ["events", "chunk-req", "hello", "status"]
VALID = [
    Event(device_id="d1", event_id="e", kind="committed", deployment_id="dep").encode(),
    ChunkRequest(device_id="d1", bundle_id="b", indices=[1, 2]).encode(),
    Hello(
        device_id="d1",
        device_class="c",
        agent_version="1",
        runtimes=[],
        free_disk_bytes=1,
        free_mem_bytes=1,
    ).encode(),
    Status(device_id="d1", online=True).encode(),
]


def _publisher() -> FleetPublisher:
    # never connected: only the pure inbound path is exercised
    return FleetPublisher(PublisherConfig(prefix="fuzz"))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "oversized"]))
    base = draw(st.sampled_from(VALID))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return base[: draw(st.integers(min_value=0, max_value=len(base) - 1))]
    if kind == "mutated":
        data = bytearray(base)
        pos = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data[pos] ^= draw(st.integers(min_value=1, max_value=255))
        return bytes(data)
    return b'{"type":"event","v":"1.0","pad":"' + b"x" * (300 * 1024) + b'"}'


@given(st.sampled_from(CHANNELS), payloads(), st.sampled_from(["d1", "x", "bad+id"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_hub_inbound_never_raises(channel: str, payload: bytes, device: str) -> None:
    pub = _publisher()
    topic = f"fuzz/v1/devices/{device}/{channel}"
    before = pub.rejected_messages
    pub._on_message(topic, payload, False)  # must not raise
    assert pub.rejected_messages in (before, before + 1)


def test_hub_keeps_tracking_after_garbage() -> None:
    pub = _publisher()
    state = DeploymentState(
        deployment_id="dep", bundle_id="b", devices={"d1": DeviceProgress("d1")}, started_at=0.0
    )
    pub._deployments["dep"] = state
    for junk in (b"", b"\x00" * 10, b"{}", b'{"type":"event","v":"1.0"}', b"[" * 10_000):
        for ch in CHANNELS:
            pub._on_message(f"fuzz/v1/devices/d1/{ch}", junk, False)
    assert pub.rejected_messages == 5 * 4
    # an event whose device_id does not match its topic is refused (no spoofing)
    spoof = Event(device_id="d1", event_id=new_id(), kind="failed", deployment_id="dep")
    pub._on_message("fuzz/v1/devices/d2/events", spoof.encode(), False)
    assert state.devices["d1"].state is DeliveryState.PENDING
    real = Event(device_id="d1", event_id=new_id(), kind="committed", deployment_id="dep")
    pub._on_message("fuzz/v1/devices/d1/events", real.encode(), False)
    assert state.devices["d1"].state is DeliveryState.COMMITTED
