"""R2 with shared subscriptions: the hub's ingest workers read the telemetry stream through
``$share/GROUP/...`` subscriptions on the hub listener; a device certificate gains nothing
from the ``$share`` form.

Mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE and checks read access per message, at
delivery. So a device's ``$share`` subscription to another device's or the whole fleet's
uplink is accepted but delivers nothing to it, and what it could read directly it may read
shared too. The one harm left would be joining the hub's own group (the broker would assign
it messages it then refuses to deliver): the hub's group name is a random secret kept in its
data directory (:func:`cloud_hub.ingest.workers.share_group`), so the guessable names a device
can try are other groups and the hub keeps receiving every message.

Real pieces: the Mosquitto config and ACLs that ``cloud-hub broker-config`` writes, devices
enrolled over HTTPS, the hub certificate on the hub listener.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud_hub.broker_client import HubRole, hub_client_id
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER
from cloud_hub.ingest.workers import share_group
from tests.identity.identity_support import MqttProbe
from tests.security._support_identity import (
    broker_config,
    enroll,
    running_broker,
    serving_enrollment,
)

pytestmark = pytest.mark.integration

MESSAGES = 6


def test_only_the_hub_reads_the_fleets_uplink_through_shared_subscriptions(
    tmp_path: Path,
) -> None:
    data = tmp_path / "hub"
    setup = broker_config(data)
    scheme = setup.scheme
    group = share_group(data)
    fleet_telemetry = scheme.all_devices("telemetry")
    probes: list[MqttProbe] = []
    with running_broker(setup), serving_enrollment(data) as hub:
        dev_a = enroll(hub, tmp_path / "devices", "dev-a")
        dev_b = enroll(hub, tmp_path / "devices", "dev-b")
        try:
            workers = []
            for n in range(2):  # two ingest workers of the hub, one group
                worker = MqttProbe(
                    setup.hub_port,
                    client_id=hub_client_id(DEFAULT_HUB_USER, HubRole.INGEST, f"test.w{n}"),
                    ca=setup.out / "ca.crt",
                    cert=setup.out / "hub.crt",
                    key=setup.out / "hub.key",
                )
                probes.append(worker)
                workers.append(worker)
                assert not worker.connect()[0].is_failure
                assert not worker.subscribe(f"$share/{group}/{fleet_telemetry}")[0].is_failure

            attacker = MqttProbe(
                setup.port, client_id="dev-a", ca=dev_a.ca, cert=dev_a.cert, key=dev_a.key
            )
            probes.append(attacker)
            assert not attacker.connect()[0].is_failure
            for topic in (
                f"$share/ingest/{fleet_telemetry}",  # guessable hub-like group names
                f"$share/hub/{fleet_telemetry}",
                f"$share/evil/{scheme.device('dev-b', 'telemetry')}",
                f"$share/evil/{scheme.device('dev-b', 'cmd')}",
                f"$share/evil/{scheme.root}/#",
            ):
                attacker.subscribe(topic)  # accepted by Mosquitto 2.0, delivers nothing
            own_cmd = scheme.device("dev-a", "cmd")
            assert not attacker.subscribe(f"$share/mine/{own_cmd}")[0].is_failure

            victim = MqttProbe(
                setup.port, client_id="dev-b", ca=dev_b.ca, cert=dev_b.cert, key=dev_b.key
            )
            probes.append(victim)
            assert not victim.connect()[0].is_failure
            for seq in range(MESSAGES):
                topic = scheme.device("dev-b", "telemetry")
                assert victim.publish(topic, b"t%d" % seq).value == 0
            hub_side = workers[0]
            assert hub_side.publish(scheme.device("dev-b", "cmd"), b"order").value == 0
            assert hub_side.publish(own_cmd, b"mine").value == 0

            # the hub's group got every message, split over its members ...
            def received() -> int:
                return sum(len(w.messages) for w in workers)

            deadline = time.monotonic() + 10
            while received() < MESSAGES and time.monotonic() < deadline:
                time.sleep(0.05)
            assert received() == MESSAGES
            assert all(w.messages for w in workers)
            # ... and the device only its own order, none of another device's uplink or orders
            assert attacker.wait_for(lambda: len(attacker.messages) >= 1)
            time.sleep(0.5)
            assert set(attacker.messages) == {(own_cmd, b"mine")}  # via two subscriptions
        finally:
            for p in probes:
                p.close()
