"""#15: several hubs (or ``serve --no-engine`` replicas) share one broker without knocking
each other off: every hub connection's client id is IDENTITY:ROLE:INSTANCE.

Two real hub processes' worth of parts (``build_hub`` with its ingest) on the shared
Mosquitto, one topic prefix, one registry database.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker_client import HubRole, hub_client_id, hub_client_id_for
from cloud_hub.config import HubConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.hub import build_hub
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Telemetry

pytestmark = pytest.mark.integration


def _config(data_dir: Path, db: Path, prefix: str, **extra: object) -> HubConfig:
    return HubConfig(
        data_dir=data_dir,
        db_url=f"sqlite:///{db}",
        mqtt=BrokerEndpoint(port=1883),
        topic_prefix=prefix,
        offline_after_s=0,
        **extra,  # type: ignore[arg-type]
    )


def test_client_ids_come_from_identity_role_and_instance(tmp_path: Path) -> None:
    a = _config(tmp_path / "a", tmp_path / "hub.db", "p")
    first = hub_client_id_for(a, HubRole.INGEST)
    assert first.startswith("fedfleet-hub:ingest:")
    assert hub_client_id_for(a, HubRole.INGEST) == first  # persisted: a restart resumes it
    assert hub_client_id_for(a, HubRole.ROLLOUT) != first
    assert (
        hub_client_id_for(_config(tmp_path / "b", tmp_path / "hub.db", "p"), HubRole.INGEST)
        != first
    )
    # replicas sharing a data folder are told apart by their configured instance id
    r1 = _config(tmp_path / "a", tmp_path / "hub.db", "p", instance_id="replica-1")
    assert hub_client_id_for(r1, HubRole.INGEST) == "fedfleet-hub:ingest:replica-1"
    with pytest.raises(HubConfigError):
        hub_client_id("fedfleet-hub", HubRole.INGEST, "bad/instance")
    with pytest.raises(HubConfigError):
        HubConfig(instance_id="x:y")


def test_two_hubs_on_one_broker_both_stay_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"two-hubs-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "hub.db"
    servers = [
        build_hub(_config(tmp_path / name, db, prefix), rollout_engine=False)
        for name in ("hub-a", "hub-b")
    ]
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-dev")
    try:
        with caplog.at_level(logging.WARNING):
            for server in servers:
                server.start()
            ingests = [s.ingest for s in servers]
            assert all(i is not None for i in ingests)
            ids = {i.settings.client_id for i in ingests if i is not None}
            assert len(ids) == 2
            device.connect("127.0.0.1", 1883)
            device.loop_start()
            topic = f"{prefix}/v1/devices/dev-1/telemetry"
            # the old fixed id made them take turns every ~2 s: watch well past that
            deadline = time.monotonic() + 6
            seq = 0
            while time.monotonic() < deadline:
                seq += 1
                payload = Telemetry(device_id="dev-1", seq=seq, metrics={"cpu": 1.0}).encode()
                device.publish(topic, payload, qos=1).wait_for_publish(5)
                time.sleep(0.5)
            for ingest in ingests:
                assert ingest is not None and ingest.stats().connected
                assert ingest.stats().received >= seq - 1, ingest.stats()
            lost = [r.getMessage() for r in caplog.records if "lost the broker" in r.getMessage()]
            assert lost == []
    finally:
        device.loop_stop()
        device.disconnect()
        for server in servers:
            server.stop()


def test_the_serve_line_broker_config_prints_connects_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``broker-config`` tells the operator to run: the hub's ingest connects with the
    hub certificate to the hub listener of the broker started with the generated config."""
    import argparse
    import shlex

    from cloud_hub.commands import serve
    from tests.security._support_identity import broker_config, running_broker

    data = tmp_path / "hub"
    capsys.readouterr()
    setup = broker_config(data)
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if "cloud-hub serve" in ln)
    argv = shlex.split(line.strip())[1:]  # drop "cloud-hub"
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    config = serve.load_config(parser.parse_args(argv)).with_overrides(
        topic_prefix=setup.prefix, offline_after_s=0
    )
    assert config.mqtt.port == setup.hub_port and config.mqtt.mutual_tls
    with running_broker(setup):
        server = build_hub(config, rollout_engine=False)
        try:
            server.start()
            assert server.ingest is not None and server.ingest.stats().connected
            assert server.ingest.settings.client_id.startswith("fedfleet-hub:ingest:")
        finally:
            server.stop()
