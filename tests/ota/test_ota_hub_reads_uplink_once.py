"""Inside a hub process the device reports reach the hub once: the ingest subscribes to
events, hello and status, and hands them to the rollout publisher, which subscribes to chunk
requests only (real Mosquitto on 127.0.0.1:1883, a unique prefix, scripted device peers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.config import HubConfig
from cloud_hub.delivery import FleetPublisher
from cloud_hub.hub import build_hub
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import new_id

from .ota_support import ScriptedDevice, make_bundle

pytestmark = pytest.mark.integration
PORT = 1883


def test_the_hub_publisher_follows_deployments_through_the_ingest(tmp_path: Path) -> None:
    prefix = f"t-{new_id()[:10]}"
    fx = make_bundle(tmp_path, size=600_000)  # three chunks: chunk 1 is dropped once
    server = build_hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            keys_dir=fx.keys.directory,
            mqtt=BrokerEndpoint(port=PORT),
            topic_prefix=prefix,
            offline_after_s=0,
        )
    )
    server.start()
    devices = [
        ScriptedDevice(f"d{i}", port=PORT, prefix=prefix, keys=fx.keys, drop=frozenset({1}))
        for i in range(2)
    ]
    try:
        fleet = server.publisher
        assert isinstance(fleet, FleetPublisher) and server.ingest is not None
        assert not fleet.config.reads_device_reports  # it subscribes to chunk requests only
        dep = fleet.deploy(fx.data, [d.device_id for d in devices], deployment_id="dep-once")
        result = dep.wait(timeout=60)
        # the commits reached the publisher through the ingest, repairs through its own topic
        assert result.all_committed, result.summary()
        assert all(d.requests == [[1]] for d in devices)
        assert server.ingest.stats().accepted >= 2 * 3  # started, downloaded.., committed
    finally:
        for d in devices:
            d.close()
        server.stop()
