"""End to end: one hub (FleetPublisher) and real ``edge-agent run`` processes over the real
Mosquitto on 127.0.0.1:1883 (unique topic prefix per test)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import new_id
from simulations.harness.agents import LocalAgentFleet

from .ota_support import make_model_bundle

pytestmark = pytest.mark.integration
URL = "mqtt://127.0.0.1:1883"
FAST: dict[str, dict[str, Any]] = {
    "timeouts": {"chunk_retry_s": 0.5},
    "limits": {"fsync_chunks": False},
}


# One fleet of 5 agent processes for the module (starting one costs seconds); each test
# deploys a newer version than the last.
@pytest.fixture(scope="module")
def prefix() -> str:
    return f"e2e-{new_id()[:10]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def keys(workdir: Path) -> KeyStore:
    return KeyStore.init(workdir / "hub")


@pytest.fixture(scope="module")
def fleet(workdir: Path, keys: KeyStore, prefix: str) -> Iterator[LocalAgentFleet]:
    with LocalAgentFleet(
        root=workdir / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=URL,
        prefix=prefix,
        n=5,
        tables=FAST,
    ) as f:
        yield f


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _diagnose(fleet: LocalAgentFleet, result: object) -> str:
    return f"{result}\n" + "\n".join(f"--- {d}\n{fleet.logs(d, 1500)}" for d in fleet.device_ids)


def test_bundle_delivered_and_committed_on_five_agent_processes(
    keys: KeyStore, fleet: LocalAgentFleet, prefix: str
) -> None:
    v1 = make_model_bundle(keys, version=1, padding=400_000)
    cfg = PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix, chunk_size=64 * 1024)
    with FleetPublisher(cfg) as pub:
        missing = pub.wait_for_devices(fleet.device_ids, timeout=60)
        assert not missing, _diagnose(fleet, missing)
        result = pub.deploy(v1.data, fleet.device_ids).wait(timeout=60)
        assert result.all_committed, _diagnose(fleet, result.summary())
        assert result.chunks_published == -(-len(v1.data) // (64 * 1024))
        # the agents' retained status now reports v1 as installed
        _eventually(lambda: all(pub.devices()[d].installed_version == 1 for d in fleet.device_ids))
        # v2 replaces it; a replay of v1 (not newer) is refused by every agent, which keeps v2
        v2 = make_model_bundle(keys, version=2)
        assert pub.deploy(v2.data, fleet.device_ids).wait(timeout=60).all_committed
        replay = pub.deploy(v1.data, fleet.device_ids).wait(timeout=30)
    assert replay.done and set(replay.in_state(DeliveryState.REJECTED)) == set(fleet.device_ids)
    assert all("not newer" in p.detail for p in replay.devices.values()), replay.devices


def test_cli_publish_by_class_discovers_agents(
    keys: KeyStore,
    fleet: LocalAgentFleet,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``cloud-hub publish --class`` finds the online agents of that class on the broker
    (retained status + ping → hello) and delivers to all of them."""
    import json

    from cloud_hub.cli import main as hub_main

    path = tmp_path / "next.ffb"
    path.write_bytes(make_model_bundle(keys, version=10).data)
    with FleetPublisher(PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix)) as pub:
        assert not pub.wait_for_devices(fleet.device_ids, timeout=60)
    rc = hub_main(
        [
            "publish",
            str(path),
            "--dir",
            str(keys.directory),
            "--class",
            "x86-cpu",
            "--prefix",
            prefix,
            "--mqtt-url",
            URL,
            "--wait",
            "60",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out + _diagnose(fleet, "")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices"] == dict.fromkeys(fleet.device_ids, "committed")
