"""Network faults between agents and broker (through a fault-injecting TCP proxy) and a broker
restarted mid-transfer: the transfer completes or resumes and nothing is lost.

Agents are real ``edge-agent run`` processes; the broker is a private Mosquitto on a free port
(a restart must not disturb anyone else) or, for link faults, the shared one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import new_id
from simulations.harness.agents import LocalAgentFleet
from simulations.harness.mosquitto import LocalMosquitto

from .faultproxy import FaultProxy
from .ota_support import make_model_bundle

pytestmark = pytest.mark.integration
STEPS = ("download_started", "download_complete", "verified", "installed", "health_ok", "committed")
DOWNLOADED_OR_LATER = (
    DeliveryState.DOWNLOADED,
    DeliveryState.VERIFIED,
    DeliveryState.INSTALLED,
    DeliveryState.HEALTHY,
    DeliveryState.COMMITTED,
)
AGENT_TABLES: dict[str, dict[str, Any]] = {
    "timeouts": {"chunk_retry_s": 0.5},
    "limits": {"fsync_chunks": False},
    "mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 5},
}


def _fleet(tmp: Path, keys: KeyStore, port: int, prefix: str, n: int = 3) -> LocalAgentFleet:
    return LocalAgentFleet(
        root=tmp / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        prefix=prefix,
        n=n,
        tables=AGENT_TABLES,
    )


def _report(fleet: LocalAgentFleet, what: object) -> str:
    return f"{what}\n" + "\n".join(f"--- {d}\n{fleet.logs(d, 2000)}" for d in fleet.device_ids)


def test_flapping_link_cut_and_delay_transfer_resumes(tmp_path: Path) -> None:
    """Agents behind a proxy with 30 ms added delay; the link flaps 5 times while the bundle
    is in flight (every flap cuts all links): every agent commits, every step's event arrives."""
    keys = KeyStore.init(tmp_path / "hub")
    prefix = f"flt-{new_id()[:8]}"
    bundle = make_model_bundle(keys, version=1, padding=1_500_000)
    with (
        FaultProxy("127.0.0.1", 1883, delay_s=0.03) as proxy,
        _fleet(tmp_path, keys, proxy.port, prefix) as fleet,
    ):
        cfg = PublisherConfig(
            broker=BrokerEndpoint(port=1883), prefix=prefix, chunk_size=32 * 1024, start_grace_s=10
        )
        with FleetPublisher(cfg) as pub:
            assert not pub.wait_for_devices(fleet.device_ids, timeout=60), _report(fleet, "offline")
            connections_before = proxy.accepted
            dep = pub.deploy(bundle.data, fleet.device_ids)
            proxy.flap(times=5, down_s=0.3, up_s=0.6, wait=True)  # each flap cuts every link
            result = dep.wait(timeout=90)
            assert result.all_committed, _report(fleet, result.summary())
    assert proxy.cuts >= 5
    assert proxy.accepted - connections_before >= 3 * 5  # every agent reconnected each time
    assert result.repairs_sent > 0  # chunks lost on the cut links were asked for again
    assert result.chunks_published == -(-len(bundle.data) // (32 * 1024))
    for device_id, progress in result.devices.items():
        # nothing lost: each step's event made it through the outbox, in order
        seen = [k for k in progress.history if k in STEPS]
        assert seen == list(STEPS), (device_id, progress.history)


def test_broker_restarted_mid_transfer(tmp_path: Path) -> None:
    """A private Mosquitto restarts while the chunks are in flight (everything goes through a
    slow proxy so the transfer is still running): hub and agents reconnect, agents ask for
    what they lost, all commit."""
    keys = KeyStore.init(tmp_path / "hub")
    prefix = f"brk-{new_id()[:8]}"
    bundle = make_model_bundle(keys, version=1, padding=1_500_000)
    with (
        LocalMosquitto() as broker,
        FaultProxy("127.0.0.1", broker.port, delay_s=0.06) as proxy,
        _fleet(tmp_path, keys, proxy.port, prefix) as fleet,
    ):
        cfg = PublisherConfig(
            broker=BrokerEndpoint(port=proxy.port),
            prefix=prefix,
            chunk_size=32 * 1024,
            start_grace_s=10,
        )
        with FleetPublisher(cfg) as pub:
            assert not pub.wait_for_devices(fleet.device_ids, timeout=60), _report(fleet, "offline")
            box: dict[str, BaseException] = {}

            def deploy() -> None:
                try:
                    pub.deploy(bundle.data, fleet.device_ids, deployment_id="dep-restart")
                except BaseException as exc:  # surfaced below
                    box["error"] = exc

            thread = threading.Thread(target=deploy)
            thread.start()
            deadline = time.monotonic() + 30
            while True:  # restart as soon as chunks are flowing, before anyone has them all
                try:
                    snapshot = pub.deployment("dep-restart").result()
                except HubConfigError:
                    snapshot = None
                if snapshot is not None and snapshot.chunks_published > 0:
                    break
                assert time.monotonic() < deadline, "transfer never started"
                time.sleep(0.01)
            assert not snapshot.in_state(*DOWNLOADED_OR_LATER), snapshot.summary()
            broker.restart(down_s=1.0)
            thread.join(timeout=120)
            assert "error" not in box, box
            result = pub.deployment("dep-restart").wait(timeout=90)
            assert result.all_committed, _report(fleet, result.summary())
            assert pub.reconnects >= 1
            # the restart hit the transfer: chunks were lost and asked for again
            assert result.repairs_sent > 0, result
