"""Late joiners and restarted agents: an agent that was off during the fan-out gets the whole
bundle by repairs; an agent killed (SIGKILL) mid-download resumes from what it has on disk and
asks only for the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import new_id
from simulations.harness.agents import LocalAgentFleet

from .faultproxy import FaultProxy
from .ota_support import make_model_bundle

pytestmark = pytest.mark.integration
TABLES: dict[str, dict[str, Any]] = {
    "timeouts": {"chunk_retry_s": 0.5},
    "mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
}
CHUNK = 32 * 1024


def test_late_joiner_and_killed_agent_complete(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub")
    prefix = f"res-{new_id()[:8]}"
    bundle = make_model_bundle(keys, version=1, padding=1_200_000)
    count = -(-len(bundle.data) // CHUNK)
    with (
        FaultProxy("127.0.0.1", 1883, delay_s=0.05) as proxy,
        LocalAgentFleet(
            root=tmp_path / "fleet",
            trust_root=keys.trust_root().to_dict(),
            mqtt_url=f"mqtt://127.0.0.1:{proxy.port}",
            prefix=prefix,
            n=3,
            tables=TABLES,
        ) as fleet,
    ):
        late, killed, steady = fleet.device_ids
        cfg = PublisherConfig(
            broker=BrokerEndpoint(port=1883), prefix=prefix, chunk_size=CHUNK, start_grace_s=10
        )
        with FleetPublisher(cfg) as pub:
            assert not pub.wait_for_devices(fleet.device_ids, timeout=60)
            fleet.stop_one(late)  # offline (its persistent session keeps the command)
            dep = pub.deploy(bundle.data, fleet.device_ids, deployment_id="dep-res")
            # kill one agent in the middle of its download (the proxy delay keeps it slow)
            deadline = time.monotonic() + 30
            while dep.result().devices[killed].state is not DeliveryState.DOWNLOADING:
                assert time.monotonic() < deadline, dep.result().summary()
                time.sleep(0.02)
            time.sleep(0.5)
            fleet.kill(killed)
            partial = sum(
                1 for _ in (fleet.agent(killed).state_dir / "downloads").glob("*/received.map")
            )
            assert partial == 1  # a partial download is on disk
            fleet.start(killed)
            fleet.start(late)
            result = dep.wait(timeout=90)
            assert result.all_committed, (result.summary(), fleet.logs(killed), fleet.logs(late))
    assert result.chunks_published == count  # the fan-out was not repeated for anyone
    # the late joiner got everything by repairs; the killed agent only what it lacked
    assert result.repairs_sent >= count
    assert result.repairs_sent < 2 * count, "the killed agent re-downloaded everything"
    assert result.devices[steady].history[-1] == "committed"
