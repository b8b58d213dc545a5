"""Where the fleet publisher reads which devices exist and are online: inside a hub the
registry (the ingest's one device table; the publisher keeps none of its own), alone the
hellos and statuses it hears itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.delivery import FleetPublisher, HeardDevices, PublisherConfig, RegistryDevices
from cloud_hub.registry import Registry, devices, open_registry
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Hello, InstalledModel, Status, new_id

from .ota_support import make_bundle

T0 = 1_800_000_000.0


def _hello(device_id: str, version: int | None = None) -> Hello:
    installed = InstalledModel("digits", version, f"b-{version}") if version else None
    return Hello(device_id, "x86-cpu", "0.1.0", ["onnxruntime"], 10**9, 10**9, installed, ts=T0)


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    yield reg
    reg.close()


def _store(registry: Registry, online: dict[str, bool], version: int | None = None) -> None:
    with registry.session() as s:
        devices.record_hellos(s, [_hello(d, version) for d in online], now=T0)
        devices.set_online(s, online)


def test_inside_a_hub_the_publisher_sees_the_registry_and_keeps_no_table(
    registry: Registry,
) -> None:
    publisher = FleetPublisher(PublisherConfig(prefix="dir"), devices=RegistryDevices(registry))
    try:
        _store(registry, {"dev-on": True, "dev-off": False}, version=3)
        seen = publisher.devices()
        assert set(seen) == {"dev-on", "dev-off"}
        assert seen["dev-on"].online and not seen["dev-off"].online
        assert seen["dev-on"].device_class == "x86-cpu" and seen["dev-on"].installed_version == 3
        # a report handed over by the ingest changes nothing here: the ingest writes the registry
        publisher.observe(_hello("dev-new"))
        publisher.observe(Status(device_id="dev-off", online=True))
        assert set(publisher.devices()) == {"dev-on", "dev-off"}
        assert publisher.wait_for_devices(["dev-on", "dev-off", "dev-new"], timeout=0.1) == [
            "dev-off",
            "dev-new",
        ]
        _store(registry, {"dev-off": True, "dev-new": True})  # the ingest's next batch
        assert publisher.wait_for_devices(["dev-on", "dev-off", "dev-new"], timeout=5) == []
    finally:
        publisher.close()


def test_the_registry_directory_reads_many_devices_in_a_few_queries(registry: Registry) -> None:
    ids = [f"dev-{i:04d}" for i in range(1200)]  # more than one page, more than one IN (...)
    _store(registry, dict.fromkeys(ids, True))
    directory = RegistryDevices(registry)
    assert set(directory.lookup()) == set(ids)
    assert set(directory.lookup([*ids[::2], "unknown"])) == set(ids[::2])
    _store(registry, dict.fromkeys(ids[:700], False))
    assert directory.offline([*ids[::2], "unknown"]) == set(ids[:700:2])


def test_alone_the_publisher_follows_the_reports_it_hears() -> None:
    publisher = FleetPublisher(PublisherConfig(prefix="dir"))
    try:
        assert isinstance(publisher.directory, HeardDevices)
        publisher.observe(_hello("dev-1", version=2))
        publisher.observe(Status(device_id="dev-1", online=False))
        seen = publisher.devices()["dev-1"]
        assert not seen.online and seen.device_class == "x86-cpu" and seen.installed_version == 2
        assert publisher.directory.offline(["dev-1", "dev-2"]) == {"dev-1"}
    finally:
        publisher.close()


@pytest.mark.integration
def test_a_deploy_does_not_wait_for_devices_the_registry_knows_offline(
    tmp_path: Path, registry: Registry
) -> None:
    """Real Mosquitto on 127.0.0.1:1883: the offer goes to a device the registry lists as
    offline; the chunks fly at once instead of after the (long) start grace period."""
    fx = make_bundle(tmp_path, size=20_000)
    _store(registry, {"dev-away": False})
    grace_s = 120.0
    config = PublisherConfig(
        broker=BrokerEndpoint(port=1883),
        prefix=f"t-{new_id()[:10]}",
        start_grace_s=grace_s,
        reads_device_reports=False,
    )
    with FleetPublisher(config, devices=RegistryDevices(registry)) as publisher:
        started = time.monotonic()
        dep = publisher.deploy(fx.data, ["dev-away"], deployment_id="dep-away")
        assert time.monotonic() - started < grace_s / 2
        assert dep.result().chunks_published >= 1
