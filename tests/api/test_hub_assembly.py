"""The hub process's one composition root (``cloud_hub.hub.build_hub``): which parts a hub
gets, how they share the registry, and that device reports reach it through one reader."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.config import HubConfig
from cloud_hub.delivery import RegistryDevices
from cloud_hub.hub import build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.registry import devices
from cloud_hub.rollout.engine import RolloutService
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Hello, new_id
from shared.net import free_port
from shared.topics import TopicScheme


def test_without_a_key_store_the_hub_runs_registry_commands_only(tmp_path: Path) -> None:
    config = HubConfig(data_dir=tmp_path / "hub", enable_ingest=False, offline_after_s=0)
    with build_hub(config) as hub:
        assert hub.engine is None and hub.delivery is None and hub.publisher is None
        assert hub.trust_publisher is None and hub.ingest is None and hub.bundles is None
        assert hub.context.registry is hub.registry
        assert hub.context.rollouts is not None
        assert not isinstance(hub.context.rollouts, RolloutService)  # a replica's commands
        with TestClient(hub.app) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/ui/").status_code == 200  # the dashboard is mounted
    hub.stop()  # a second stop is harmless


def test_an_unreachable_broker_turns_the_engine_off_instead_of_failing(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "hub" / "keys")
    config = HubConfig(
        data_dir=tmp_path / "hub",
        mqtt=BrokerEndpoint(port=free_port()),  # nobody listens
        enable_ingest=False,
        offline_after_s=0,
    )
    with build_hub(config) as hub:
        assert hub.bundles is not None  # the key store is there
        assert hub.engine is None and hub.delivery is None and hub.trust_publisher is None


def test_a_started_hub_marks_devices_silent_too_long_offline(tmp_path: Path) -> None:
    config = HubConfig(data_dir=tmp_path / "hub", enable_ingest=False, offline_after_s=10)
    with build_hub(config) as hub:
        long_ago = time.time() - 3600
        with hub.registry.session() as s:  # its last will never arrived
            hello = Hello("dev-1", "x86-cpu", "0.1.0", [], 10**9, 10**9, ts=long_ago)
            devices.record_hellos(s, [hello], now=long_ago)
            devices.set_online(s, {"dev-1": True})

        def online() -> bool:
            with hub.registry.session() as s:
                device = devices.find_device(s, "dev-1")
            return device is not None and device.online

        deadline = time.monotonic() + 30  # it looks every offline_after_s / 4
        while online() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not online()


@pytest.mark.integration
def test_the_hub_reads_device_reports_once_into_the_registry_its_publisher_reads(
    tmp_path: Path,
) -> None:
    """Real Mosquitto on 127.0.0.1:1883, a unique prefix: a device's hello reaches the
    registry through the ingest, and the rollout publisher sees the device there."""
    KeyStore.init(tmp_path / "hub" / "keys")
    scheme = TopicScheme(f"t-{new_id()[:10]}")
    config = HubConfig(
        data_dir=tmp_path / "hub",
        mqtt=BrokerEndpoint(port=1883),
        topic_prefix=scheme.prefix,
        offline_after_s=0,
    )
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{scheme.prefix}-dev")
    with build_hub(config) as hub:
        assert hub.engine is not None and hub.engine.delivery is hub.delivery
        assert hub.context.rollouts is hub.engine and hub.trust_publisher is not None
        publisher = hub.publisher
        assert publisher is not None and not publisher.config.reads_device_reports
        assert isinstance(publisher.directory, RegistryDevices)
        assert publisher.directory.registry is hub.registry
        try:
            device.connect("127.0.0.1", 1883)
            device.loop_start()
            hello = Hello("dev-1", "x86-cpu", "0.1.0", ["onnxruntime"], 10**9, 10**9)
            device.publish(scheme.device("dev-1", "hello"), hello.encode(), qos=1).wait_for_publish(
                10
            )
            assert not publisher.wait_for_devices(["dev-1"], timeout=30), hub.ingest
            assert publisher.devices()["dev-1"].device_class == "x86-cpu"
        finally:
            device.loop_stop()
            device.disconnect()
