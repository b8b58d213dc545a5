"""SIGKILL at random points during download and install (slow: ``pytest -m slow``).

One agent process is killed once per trial while it receives version k+1 over version k,
then restarted. After every kill the disk must hold a working model (the active slot is
intact: version k or k+1) and a readable state; after the restart the deployment must
commit. The broker keeps the agent's session, so chunks published while it is dead wait
for it; the rest come back through chunk requests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_agent.ota.slots import SlotStore
from shared.messages import EventKind, Hello
from tests.agent_ota.agent_ota_helpers import (
    agent_bench,
    broker_available,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]

TRIALS = int(os.environ.get("OTA_KILL_TRIALS", "20"))


def _consistent(state_dir: Path, allowed: set[str]) -> str:
    """The on-disk invariant after a SIGKILL; returns the persisted phase."""
    slots = SlotStore(state_dir)
    active = slots.active()
    assert active is not None, "no active model after kill"
    assert active.meta.bundle_id in allowed, active.meta
    assert slots.check(active.name), "active slot damaged"
    state = json.loads((state_dir / "ota_state.json").read_text())
    dep = state["deployment"]
    return "none" if dep is None else str(dep["phase"])


def test_sigkill_at_random_points_always_recovers(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("OTA_KILL_SEED", "1234")))
    with agent_bench(tmp_path, chunk_retry_s=0.3) as bench:
        topics, auth, hub, dev = bench.topics, bench.auth, bench.hub, bench.device_id
        state_dir = tmp_path / dev
        model_size = (512, 2048)  # ~4 MiB of weights: download, install and load all take time
        proc = bench.start()
        phases: Counter[str] = Counter()
        assert wait_for(lambda: hub.of(dev, Hello), 20)
        first = make_offer(
            make_bundle(auth, version=1, model=onnx_model_bytes(*model_size, seed=1)),
            topics,
            chunk_size=32 * 1024,
        )
        t0 = time.monotonic()
        hub.deploy(first, [dev], settle_s=0.2)
        assert hub.wait_kind(dev, first.command.deployment_id, EventKind.COMMITTED, 60)
        span = time.monotonic() - t0  # how long one deployment takes here
        previous = first
        for trial in range(TRIALS):
            version = trial + 2
            offer = make_offer(
                make_bundle(
                    auth, version=version, model=onnx_model_bytes(*model_size, seed=version)
                ),
                topics,
                chunk_size=32 * 1024,
            )
            dep = offer.command.deployment_id
            hub.deploy(offer, [dev], settle_s=0.0)
            # a quarter of the kills at a random time, the rest just after a step was
            # reported, so the download, verification, install and health check all get hit
            step = [
                None,
                EventKind.DOWNLOAD_STARTED,
                EventKind.DOWNLOAD_COMPLETE,
                EventKind.INSTALLED,
            ][trial % 4]
            if step is None:
                time.sleep(rng.uniform(0.0, span * 1.1))
            else:
                wait_for(lambda step=step, dep=dep: step in hub.kinds(dev, dep), 30, interval=0.002)
                time.sleep(rng.uniform(0.0, 0.03))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            phases[_consistent(state_dir, {previous.bundle_id, offer.bundle_id})] += 1
            proc = bench.start()
            assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 60), (
                trial,
                hub.kinds(dev, dep),
                (tmp_path / "agent.log").read_text()[-3000:],
            )
            assert wait_for(
                lambda: (
                    json.loads((state_dir / "ota_state.json").read_text())["deployment"]["phase"]
                    == "committed"
                ),
                10,
            )
            _consistent(state_dir, {offer.bundle_id})
            previous = offer
    print(f"persisted phase at kill time over {TRIALS} trials: {dict(phases)}")
    assert sum(phases.values()) == TRIALS
