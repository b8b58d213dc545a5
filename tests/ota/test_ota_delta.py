"""Delta bundles end to end: real ``edge-agent run`` processes over the real Mosquitto.

A delta against the version the agents run is applied in the inactive slot, verified against
the signed full hash and installed; a delta against a base they do not have makes them ask
for the full bundle (``delta_fallback``), which the publisher then sends — never a broken slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.delivery import FleetPublisher, PublisherConfig
from cloud_hub.delta import make_delta_bundle
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import new_id
from simulations.harness.agents import LocalAgentFleet
from tests.onnx_models import linear_onnx

from .ota_support import make_model_bundle

pytestmark = pytest.mark.integration
URL = "mqtt://127.0.0.1:1883"
FAST: dict[str, dict[str, Any]] = {
    "timeouts": {"chunk_retry_s": 0.5},
    "limits": {"fsync_chunks": False},
}


def eventually(check: Callable[[], bool], timeout: float, diag: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, diag()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KeyStore, LocalAgentFleet, str]]:
    root: Path = tmp_path_factory.mktemp("delta-e2e")
    keys = KeyStore.init(root / "hub")
    prefix = f"delta-{new_id()[:10]}"
    with LocalAgentFleet(
        root=root / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=URL,
        prefix=prefix,
        n=2,
        tables=FAST,
    ) as fleet:
        yield keys, fleet, prefix


def test_delta_applies_and_wrong_base_falls_back_to_full(
    world: tuple[KeyStore, LocalAgentFleet, str],
) -> None:
    keys, fleet, prefix = world
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(256, 128)).astype(np.float32)  # 128 KiB of weights
    w2 = w1.copy()
    w2[:8] += 0.01  # a fine-tune touching a few rows
    w3 = w2.copy()
    w3[8:16] -= 0.01
    v1 = make_model_bundle(keys, version=1, model=linear_onnx(w1))
    v2 = make_model_bundle(keys, version=2, model=linear_onnx(w2))
    v3 = make_model_bundle(keys, version=3, model=linear_onnx(w3))
    delta_1_2 = make_delta_bundle(v2.data, v1.data, keys)
    delta_1_3 = make_delta_bundle(v3.data, v1.data, keys)  # the devices will have v2, not v1
    assert delta_1_2 is not None and delta_1_3 is not None
    assert len(delta_1_2) < 0.3 * len(v2.data)

    def diag() -> str:
        return "\n".join(f"--- {d}\n{fleet.logs(d, 2500)}" for d in fleet.device_ids)

    cfg = PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix, chunk_size=32 * 1024)
    with FleetPublisher(cfg) as pub:
        assert not pub.wait_for_devices(fleet.device_ids, timeout=60), diag()
        assert pub.deploy(v1.data, fleet.device_ids).wait(timeout=60).all_committed, diag()

        # the delta takes every device from v1 to v2
        result = pub.deploy(delta_1_2, fleet.device_ids, full_bundle=v2.data).wait(timeout=60)
        assert result.all_committed, diag()
        eventually(
            lambda: all(pub.devices()[d].installed_version == 2 for d in fleet.device_ids), 20, diag
        )

        # a delta against v1 does not apply to v2: each device asks for the full v3 and gets it
        pub.deploy(delta_1_3, fleet.device_ids, full_bundle=v3.data)
        eventually(
            lambda: all(pub.devices()[d].installed_version == 3 for d in fleet.device_ids), 60, diag
        )
    for d in fleet.device_ids:
        log = fleet.logs(d, 1_000_000)
        assert "asking for the full bundle" in log and "DeltaBaseError" in log
