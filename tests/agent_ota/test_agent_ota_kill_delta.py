"""SIGKILL while a delta bundle is being received and applied (slow: ``pytest -m slow``).

Each trial ships version k+1 as a delta against version k (a fine-tune: a few rows of the
weights move) and kills the agent at a random step. After every kill the active slot is
intact (version k or k+1); after the restart the deployment commits with the reconstructed
model, byte-identical to the full version k+1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.delta import make_delta_bundle
from edge_agent.ota.slots import SlotStore
from shared.messages import EventKind, Hello
from shared.signing import SigningKey, TrustRoot
from tests.agent_ota.agent_ota_helpers import (
    Authority,
    agent_bench,
    broker_available,
    make_bundle,
    make_offer,
    wait_for,
)
from tests.onnx_models import linear_onnx

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]

TRIALS = int(os.environ.get("OTA_KILL_DELTA_TRIALS", "12"))


class _Signer:
    def __init__(self, auth: Authority) -> None:
        self.auth = auth

    def signing_keys(self) -> list[SigningKey]:
        return [self.auth.signer]

    def keyring_envelope(self) -> dict[str, Any]:
        return self.auth.keyring()

    def trust_root(self) -> TrustRoot:  # the hub verifies what it derives a delta from (R1)
        return self.auth.trust


def test_sigkill_while_applying_deltas_always_recovers(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("OTA_KILL_SEED", "4321")))
    weights = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)  # 2 MiB
    with agent_bench(tmp_path, chunk_retry_s=0.3) as bench:
        topics, auth, hub, dev = bench.topics, bench.auth, bench.hub, bench.device_id
        signer = _Signer(auth)
        state_dir = tmp_path / dev
        proc = bench.start()
        assert wait_for(lambda: hub.of(dev, Hello), 20)
        full = make_bundle(
            auth, version=1, model=linear_onnx(weights, input_name="x", output_name="y")
        )
        first = make_offer(full, topics, chunk_size=32 * 1024)
        hub.deploy(first, [dev], settle_s=0.2)
        assert hub.wait_kind(dev, first.command.deployment_id, EventKind.COMMITTED, 60)
        previous_id = first.bundle_id
        for trial in range(TRIALS):
            version = trial + 2
            weights = weights.copy()
            weights[trial * 4 : trial * 4 + 4] += 0.01
            model = linear_onnx(weights, input_name="x", output_name="y")
            next_full = make_bundle(auth, version=version, model=model)
            delta = make_delta_bundle(next_full, full, signer)
            assert delta is not None and len(delta) < len(next_full) // 4
            offer = make_offer(delta, topics, chunk_size=8 * 1024)
            dep = offer.command.deployment_id
            hub.deploy(offer, [dev], settle_s=0.0)
            step = [None, EventKind.DOWNLOAD_COMPLETE, EventKind.VERIFIED, EventKind.INSTALLED][
                trial % 4
            ]
            if step is None:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                wait_for(lambda step=step, dep=dep: step in hub.kinds(dev, dep), 30, interval=0.002)
                time.sleep(rng.uniform(0.0, 0.02))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            slots = SlotStore(state_dir)
            active = slots.active()
            assert active is not None and slots.check(active.name), "active slot damaged"
            assert active.meta.bundle_id in {previous_id, offer.bundle_id}
            proc = bench.start()
            assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 60), (
                trial,
                hub.kinds(dev, dep),
                (tmp_path / "agent.log").read_text()[-3000:],
            )
            active = SlotStore(state_dir).active()
            assert active is not None
            assert (
                active.path / "model.onnx"
            ).read_bytes() == model  # byte-identical reconstruction
            assert wait_for(  # the event goes out just before the state is saved
                lambda: (
                    json.loads((state_dir / "ota_state.json").read_text())["deployment"]["phase"]
                    == "committed"
                ),
                10,
            )
            full, previous_id = next_full, offer.bundle_id
