"""FleetPublisher against the real Mosquitto on 127.0.0.1:1883 (unique prefix per test),
with scripted device peers: fan-out once, repairs of exactly the missing chunks, late joiners,
garbage on the hub's topics, rollback commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.errors import DeliveryError, HubConfigError
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import MalformedBundleError
from shared.messages import new_id

from .ota_support import ScriptedDevice, make_bundle

pytestmark = pytest.mark.integration
PORT = 1883


@pytest.fixture()
def prefix() -> str:
    return f"t-{new_id()[:10]}"


@pytest.fixture()
def publisher(prefix: str) -> Iterator[FleetPublisher]:
    cfg = PublisherConfig(
        broker=BrokerEndpoint(port=PORT), prefix=prefix, chunk_size=16 * 1024, start_grace_s=3.0
    )
    with FleetPublisher(cfg) as pub:
        yield pub


def test_fanout_once_and_repairs_exactly_the_missing_chunks(
    tmp_path: Path, prefix: str, publisher: FleetPublisher
) -> None:
    fx = make_bundle(tmp_path, size=300_000)
    devices = [
        ScriptedDevice("d0", port=PORT, prefix=prefix, keys=fx.keys),
        ScriptedDevice("d1", port=PORT, prefix=prefix, keys=fx.keys, drop=frozenset({2, 5})),
        ScriptedDevice("late", port=PORT, prefix=prefix, keys=fx.keys, ignore_fanout=True),
    ]
    try:
        dep = publisher.deploy(fx.data, [d.device_id for d in devices], deployment_id="dep-1")
        result = dep.wait(timeout=30)
    finally:
        for d in devices:
            d.close()
    count = -(-len(fx.data) // (16 * 1024))
    assert result.all_committed, result.summary()
    assert result.chunks_published == count  # each chunk once, however many devices
    assert devices[0].fanout_chunks == count and devices[0].repair_chunks == 0
    assert devices[1].requests[0] == [2, 5] and devices[1].repair_chunks == 2
    assert devices[2].repair_chunks == count and devices[2].fanout_chunks == 0
    assert result.repairs_sent == 2 + count
    assert all(p.state is DeliveryState.COMMITTED for p in result.devices.values())


def test_garbage_on_hub_topics_is_dropped_and_counted(
    tmp_path: Path, prefix: str, publisher: FleetPublisher
) -> None:
    fx = make_bundle(tmp_path, size=50_000)
    spam = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    spam.connect("127.0.0.1", PORT)
    spam.loop_start()
    topics = publisher.topics
    payloads = [b"", b"\xff\x00garbage", b'{"type":"event","v":"9.0"}', b"[1,2]", b"{" * 5000]
    for p in payloads:
        for ch in ("events", "chunk-req", "hello", "status"):
            spam.publish(topics.device("x1", ch), p, qos=1).wait_for_publish(5)
    # a well-formed message whose device_id does not match its topic (spoofing)
    from shared.messages import ChunkRequest

    forged = ChunkRequest(device_id="victim", bundle_id=fx.bundle_id, indices=[0])
    spam.publish(topics.device("x1", "chunk-req"), forged.encode(), qos=1).wait_for_publish(5)
    spam.disconnect()
    spam.loop_stop()
    dev = ScriptedDevice("d0", port=PORT, prefix=prefix, keys=fx.keys)
    try:
        result = publisher.deploy(fx.data, ["d0"]).wait(timeout=20)
    finally:
        dev.close()
    assert result.all_committed
    assert publisher.rejected_messages == len(payloads) * 4 + 1


def test_rollback_command_and_progress(
    tmp_path: Path, prefix: str, publisher: FleetPublisher
) -> None:
    fx = make_bundle(tmp_path, size=10_000)
    order = fx.keys.sign_rollback_order(
        model_name="digits",
        device_class="x86-cpu",
        to_version=1,
        to_bundle_id=fx.bundle_id,
        device_ids=["d0"],
        from_bundle_id="f" * 64,
    )
    dev = ScriptedDevice("d0", port=PORT, prefix=prefix, keys=fx.keys)
    try:
        result = publisher.rollback(["d0"], order, fx.keys.keyring_envelope()).wait(timeout=10)
    finally:
        dev.close()
    assert result.devices["d0"].state is DeliveryState.ROLLED_BACK


def test_offline_device_times_out_without_blocking(tmp_path: Path, prefix: str) -> None:
    fx = make_bundle(tmp_path, size=10_000)
    cfg = PublisherConfig(broker=BrokerEndpoint(port=PORT), prefix=prefix, start_grace_s=0.3)
    with FleetPublisher(cfg) as pub:
        result = pub.deploy(fx.data, ["nobody"]).wait(timeout=0.5)
    assert not result.done and result.unfinished == ["nobody"]
    assert result.devices["nobody"].state is DeliveryState.PENDING


def test_errors_are_translated(tmp_path: Path, prefix: str, publisher: FleetPublisher) -> None:
    from shared.net import free_port

    with pytest.raises(DeliveryError):
        FleetPublisher(
            PublisherConfig(broker=BrokerEndpoint(port=free_port()), connect_timeout_s=1)
        ).connect()
    with pytest.raises(MalformedBundleError):
        publisher.deploy(b"not a bundle at all", ["d0"])
    with pytest.raises(HubConfigError):
        publisher.deploy(make_bundle(tmp_path / "b", size=10).data, ["bad/id"])
    with pytest.raises(HubConfigError):
        PublisherConfig(chunk_size=0)


def test_cli_publish_to_devices(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cloud_hub.cli import main as hub_main

    fx = make_bundle(tmp_path, size=100_000)
    path = tmp_path / "b.ffb"
    path.write_bytes(fx.data)
    devs = [ScriptedDevice(f"c{i}", port=PORT, prefix=prefix, keys=fx.keys) for i in range(2)]
    try:
        rc = hub_main(
            [
                "publish",
                str(path),
                "--dir",
                str(fx.keys.directory),
                "--devices",
                "c0,c1",
                "--prefix",
                prefix,
                "--mqtt-url",
                f"mqtt://127.0.0.1:{PORT}",
                "--chunk-size",
                "16384",
                "--wait",
                "20",
            ]
        )
    finally:
        for d in devs:
            d.close()
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices"] == {"c0": "committed", "c1": "committed"}
    assert summary["chunks_published"] == -(-len(fx.data) // 16384)
    # the bundle's class must match --class
    keys_dir = str(fx.keys.directory)
    assert (
        hub_main(["publish", str(path), "--dir", keys_dir, "--class", "rpi4", "--prefix", prefix])
        == 2
    )


def test_deploy_is_safe_to_repeat(tmp_path: Path, prefix: str, publisher: FleetPublisher) -> None:
    fx = make_bundle(tmp_path, size=40_000)
    other = make_bundle(tmp_path / "o", size=40_000)
    devs = [ScriptedDevice(d, port=PORT, prefix=prefix, keys=fx.keys) for d in ("r0", "r1")]
    try:
        first = publisher.deploy(fx.data, ["r0"], deployment_id="dep-r")
        again = publisher.deploy(fx.data, ["r0", "r1"], deployment_id="dep-r")  # retry + a wave
        result = again.wait(timeout=20)
    finally:
        for d in devs:
            d.close()
    assert first.deployment_id == again.deployment_id
    assert result.all_committed and sorted(result.devices) == ["r0", "r1"]
    with pytest.raises(HubConfigError, match="another bundle"):
        publisher.deploy(other.data, ["r0"], deployment_id="dep-r")


def test_cli_publish_by_class_from_registry(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import time

    from cloud_hub.cli import main as hub_main
    from cloud_hub.registry import devices, open_registry

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    registry = open_registry(url)
    with registry.session() as s:
        for name in ("g0", "g1"):
            devices.register_device(s, name, device_class="x86-cpu", now=time.time())
        devices.register_device(s, "other", device_class="rpi4", now=time.time())
    registry.close()
    fx = make_bundle(tmp_path, size=30_000)
    path = tmp_path / "b.ffb"
    path.write_bytes(fx.data)
    devs = [ScriptedDevice(d, port=PORT, prefix=prefix, keys=fx.keys) for d in ("g0", "g1")]
    try:
        rc = hub_main(
            [
                "publish",
                str(path),
                "--dir",
                str(fx.keys.directory),
                "--class",
                "x86-cpu",
                "--registry-url",
                url,
                "--prefix",
                prefix,
                "--wait",
                "20",
            ]
        )
    finally:
        for d in devs:
            d.close()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert json.loads(out.strip().splitlines()[-1])["devices"] == {
        "g0": "committed",
        "g1": "committed",
    }
