"""A device whose link has latency and loss (a relay in its namespace, no netem here) still
enrolls over HTTPS and comes online over mTLS MQTT; its round trips to the hub are slower by
what was asked, the other device's are not. Real namespaces and processes."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from simulations.lab import FleetLab, LabConfig
from simulations.lab.relay import LinkShape

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("namespaces")]

DELAY_MS = 150.0


@pytest.mark.slow  # ~1 min; the relay itself is checked on loopback in the default suite
@pytest.mark.timeout(300)
def test_a_shaped_device_enrolls_comes_online_and_sees_the_latency(tmp_path: Path) -> None:
    config = LabConfig(
        root=tmp_path / "lab",
        devices=2,
        prefix="fls",
        subnet="10.213.10.0/24",
        shaped={"dev-002": LinkShape(delay_ms=DELAY_MS, loss=0.02)},
    )
    with FleetLab(config) as lab:  # start-up waits until the hub sees both online
        assert lab.online_devices() == {"dev-001", "dev-002"}
        relays = [p for p in lab.processes if p.name == "relay-dev-002"]
        assert len(relays) == 1 and relays[0].alive()
        direct = statistics.median(lab.timed_https_get("dev-001") for _ in range(3))
        shaped = statistics.median(lab.timed_https_get("dev-002") for _ in range(3))
    # TLS 1.3 handshake + request: at least two round trips of 2 x 150 ms each
    assert shaped >= 4 * DELAY_MS / 1000 * 0.9, shaped
    assert shaped > direct + 0.3, (direct, shaped)
