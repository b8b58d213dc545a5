"""R8: a device's ``ChunkRequest(full=True)`` cannot make the hub re-publish whole bundles.

Before: any device asking for the full bundle of a delta started a thread that re-published
the whole full bundle on the fan-out topic — no target check, no dedup, no rate limit (40
requests of 181 bytes → 160 MiB published). Now the hub serves only devices the delta was
offered to, one fallback per (device, delta) at a time, from a bounded worker pool, and not
again within ``fallback_interval_s``.

Everything is real: Mosquitto with the generated mTLS configuration and ACL (so a device can
only speak for itself), the hub's ``FleetPublisher`` on the hub listener with the hub's
certificate, and devices connected with their own certificates. A hub-side sniffer counts the
bytes that reach the broker's chunk topics.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloud_hub.delivery import FleetPublisher, PublisherConfig
from cloud_hub.errors import HubConfigError
from shared.broker_endpoint import BrokerEndpoint
from shared.bundle import bundle_id_of, parse_bundle
from shared.messages import ChunkRequest, DeployCommand, decode_message
from tests.agent_ota.agent_ota_helpers import (
    make_authority,
    make_bundle,
    onnx_model_bytes,
    wait_for,
)
from tests.security._support_freshness import (
    HUB_USER,
    MqttPeer,
    TrustBroker,
    device_peer,
    running_broker,
)

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
FLOOD = 40


class ChunkSniffer:
    """The hub's view of the broker: bytes published on every chunk topic, per topic."""

    def __init__(self, broker: TrustBroker) -> None:
        files = broker.files
        self.peer = MqttPeer(
            broker.hub_port,
            client_id=f"{HUB_USER}:r08-sniffer:{uuid.uuid4().hex[:8]}",
            ca=files.ca_cert,
            cert=files.hub_cert,
            key=files.hub_key,
            scheme=broker.scheme,
        )
        self.bytes: dict[str, int] = {}
        self.commands: dict[str, list[DeployCommand]] = {}
        self._lock = threading.Lock()
        root = broker.scheme.root
        self.peer.client.on_message = self._on_message
        for topic in (
            f"{root}/bundles/+/chunks",
            f"{root}/devices/+/chunks",
            f"{root}/devices/+/cmd",
        ):
            self.peer.client.subscribe(topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            if msg.topic.endswith("/cmd"):
                cmd = decode_message(bytes(msg.payload), expected=(DeployCommand,))
                assert isinstance(cmd, DeployCommand)
                self.commands.setdefault(msg.topic.split("/")[-2], []).append(cmd)
            else:
                self.bytes[msg.topic] = self.bytes.get(msg.topic, 0) + len(msg.payload)

    def published(self, topic: str) -> int:
        with self._lock:
            return self.bytes.get(topic, 0)

    def offers(self, device_id: str) -> list[DeployCommand]:
        with self._lock:
            return list(self.commands.get(device_id, []))


def _publisher(broker: TrustBroker) -> FleetPublisher:
    files = broker.files
    config = PublisherConfig(
        broker=BrokerEndpoint(
            port=broker.hub_port,
            tls=True,
            ca_file=str(files.ca_cert),
            cert_file=str(files.hub_cert),
            key_file=str(files.hub_key),
        ),
        prefix=broker.scheme.prefix,
        chunk_size=16 * 1024,
        start_grace_s=0.2,
    )
    return FleetPublisher(config)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("r08")
    auth = make_authority()
    delta = make_bundle(auth, version=2, model=onnx_model_bytes(16, 16, seed=2))
    full = make_bundle(auth, version=2, model=onnx_model_bytes(256, 256, seed=3))  # 256 KiB
    with running_broker(tmp) as broker:
        sniffer = ChunkSniffer(broker)
        target = device_peer(broker, tmp, "cam-target")
        outsider = device_peer(broker, tmp, "cam-outsider")
        with _publisher(broker) as pub:
            dep = pub.deploy(delta, ["cam-target"], full_bundle=full)
            yield {
                "broker": broker,
                "pub": pub,
                "sniffer": sniffer,
                "target": target,
                "outsider": outsider,
                "delta_id": dep.bundle_id,
                "full": full,
                "full_id": bundle_id_of(parse_bundle(full).manifest_envelope),
                "deployment_id": dep.deployment_id,
            }
        for peer in (sniffer.peer, target, outsider):
            peer.close()


def _ask_full(peer: MqttPeer, broker: TrustBroker, device_id: str, bundle_id: str) -> Any:
    request = ChunkRequest(device_id=device_id, bundle_id=bundle_id, indices=[], full=True)
    return peer.publish(broker.scheme.device(device_id, "chunk-req"), request.encode())


def _logged(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(p in r.getMessage() for p in parts)]


def test_flood_from_a_device_that_is_not_a_target_is_refused(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud_hub.delivery")
    broker, sniffer = world["broker"], world["sniffer"]
    full_topic = broker.scheme.bundle_chunks(world["full_id"])
    own_chunks = broker.scheme.device("cam-outsider", "chunks")
    for _ in range(FLOOD):
        rc = _ask_full(world["outsider"], broker, "cam-outsider", world["delta_id"])
        assert not rc.is_failure  # its own topic: the broker lets it through ...
    # ... and the ACL stops it from speaking for the target
    forged = _ask_full(world["outsider"], broker, "cam-target", world["delta_id"])
    assert forged.value == NOT_AUTHORIZED
    refusals = world["pub"].refusals
    assert wait_for(lambda: refusals.counts.get("chunks-not-target") == FLOOD, 20)
    # one line for the first, the rest counted (no 40 lines)
    assert len(_logged(caplog, "cam-outsider", "not a target")) == 1
    assert sniffer.published(full_topic) == 0 and sniffer.published(own_chunks) == 0
    assert sniffer.offers("cam-outsider") == []


def test_flood_from_a_target_sends_the_full_bundle_once(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud_hub.delivery")
    broker, sniffer, pub = world["broker"], world["sniffer"], world["pub"]
    full, full_id = world["full"], world["full_id"]
    full_topic = broker.scheme.bundle_chunks(full_id)
    for _ in range(FLOOD):
        assert not _ask_full(world["target"], broker, "cam-target", world["delta_id"]).is_failure
    fallback_id = f"{world['deployment_id']}-full"

    def sent_once() -> bool:
        return sniffer.published(full_topic) >= len(full)

    assert wait_for(sent_once, 30), sniffer.bytes
    # every other request was coalesced with the first or refused as too soon
    assert wait_for(
        lambda: (
            sum(
                pub.refusals.counts.get(k, 0)
                for k in ("fallback-coalesced", "fallback-rate_limited")
            )
            == FLOOD - 1
        ),
        20,
    ), pub.refusals.counts
    published = sniffer.published(full_topic)
    frames = -(-len(full) // (16 * 1024))
    assert published <= len(full) + frames * 512, (published, len(full))  # once, not 40x
    offers = [c for c in sniffer.offers("cam-target") if c.bundle_id == full_id]
    assert [c.deployment_id for c in offers] == [fallback_id]
    assert pub.deployment(fallback_id).device_ids == ["cam-target"]
    assert _logged(caplog, "cam-target", "refused the full bundle")  # the reason is logged

    # a later request, within the interval, is refused too — coalesced while the first copy
    # is still in flight, rate-limited once it is done: still one copy on the broker
    def refused() -> int:
        return sum(
            pub.refusals.counts.get(k, 0) for k in ("fallback-coalesced", "fallback-rate_limited")
        )

    assert not _ask_full(world["target"], broker, "cam-target", world["delta_id"]).is_failure
    assert wait_for(lambda: refused() == FLOOD, 10), pub.refusals.counts
    assert sniffer.published(full_topic) == published


def test_legitimate_repair_of_the_full_bundle_still_works(world: dict[str, Any]) -> None:
    """The target lost two chunks of the full bundle it was sent: it gets exactly those."""
    broker, sniffer, pub = world["broker"], world["sniffer"], world["pub"]
    full_id = world["full_id"]
    # the target asks for the full bundle (refused as too soon if the test above ran)
    _ask_full(world["target"], broker, "cam-target", world["delta_id"])

    def fallback_sent() -> bool:
        try:
            return pub.deployment(f"{world['deployment_id']}-full").device_ids == ["cam-target"]
        except HubConfigError:
            return False

    assert wait_for(fallback_sent, 30)
    repair_topic = broker.scheme.device("cam-target", "chunks")
    before = sniffer.published(repair_topic)
    request = ChunkRequest(device_id="cam-target", bundle_id=full_id, indices=[0, 3])
    rc = world["target"].publish(broker.scheme.device("cam-target", "chunk-req"), request.encode())
    assert not rc.is_failure
    assert wait_for(lambda: sniffer.published(repair_topic) - before >= 2 * 16 * 1024, 20)
    assert sniffer.published(repair_topic) - before < 3 * 16 * 1024
    # the outsider asking for the same chunks gets nothing
    outsider_topic = broker.scheme.device("cam-outsider", "chunks")
    request = ChunkRequest(device_id="cam-outsider", bundle_id=full_id, indices=[0, 3])
    refused = pub.refusals.counts.get("chunks-not-target", 0)
    world["outsider"].publish(broker.scheme.device("cam-outsider", "chunk-req"), request.encode())
    assert wait_for(lambda: pub.refusals.counts.get("chunks-not-target", 0) > refused, 10)
    assert sniffer.published(outsider_topic) == 0


def test_every_refusal_is_counted_but_the_log_stays_short(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage on the hub's device topics: one line per reason, then a summary."""
    caplog.set_level(logging.WARNING, logger="cloud_hub.delivery")
    broker, pub = world["broker"], world["pub"]
    before = pub.rejected_messages
    topic = broker.scheme.device("cam-outsider", "chunk-req")
    for i in range(200):
        world["outsider"].client.publish(topic, b"garbage %d" % i, qos=1)
    assert wait_for(lambda: pub.rejected_messages - before >= 200, 20)
    lines = _logged(caplog, "dropped a message on")
    assert 1 <= len(lines) <= 2, lines
