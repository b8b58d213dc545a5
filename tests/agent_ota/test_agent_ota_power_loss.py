"""A power cut in the middle of a download, on a real agent process over Mosquitto.

Nothing of a download is synced before its commit point, so a power cut may lose any page
written before it. The agent is killed (SIGKILL) and the losses are made by
hand on its files the way a cut leaves them (pages read as zeros, a map entry gone, a tail
missing); the restarted agent must ask for exactly those chunks and the ones it never got,
verify the bundle and install it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from edge_agent.ota.slots import SlotStore
from shared.messages import ChunkRequest, EventKind, Hello
from tests.agent_ota.agent_ota_helpers import (
    agent_bench,
    broker_available,
    make_bundle,
    make_offer,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]

CHUNK = 16 * 1024


def test_power_cut_mid_download_refetches_only_the_lost_chunks(tmp_path: Path) -> None:
    with agent_bench(tmp_path, answer_requests=False, chunk_retry_s=0.3) as bench:
        hub, dev = bench.hub, bench.device_id
        proc = bench.start()
        assert wait_for(lambda: hub.of(dev, Hello), 20)
        padding = (os.urandom(300_000), "other")
        offer = make_offer(
            make_bundle(bench.auth, version=1, extra_artifacts={"payload.bin": padding}),
            bench.topics,
            chunk_size=CHUNK,
        )
        count = len(offer.frames)
        sent = count - 4  # the cut comes before the last four chunks
        hub.deploy(offer, [dev], chunks=list(range(sent)))
        download = tmp_path / dev / "downloads" / offer.bundle_id
        assert wait_for(
            lambda: (
                (download / "received.map").exists()
                and sum((download / "received.map").read_bytes()) == sent
            ),
            30,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        state = json.loads((tmp_path / dev / "ota_state.json").read_text())
        assert state["deployment"]["phase"] == "downloading"

        # what the cut lost: chunks 2 and 3 (zeros), chunk 5's map entry, chunk 9 torn
        with open(download / "bundle.part", "r+b") as part:
            part.seek(2 * CHUNK)
            part.write(bytes(2 * CHUNK))
            part.seek(9 * CHUNK + 100)
            part.write(bytes(50))
        with open(download / "received.map", "r+b") as listed:
            listed.seek(5)
            listed.write(b"\x00")

        asked_before = len(hub.requests)
        hub.answer_requests = True
        bench.start("agent-restarted.log")
        dep = offer.command.deployment_id
        assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 60), (
            hub.kinds(dev, dep),
            (tmp_path / "agent-restarted.log").read_text()[-3000:],
        )
        requests = hub.requests[asked_before:]
        assert all(isinstance(r, ChunkRequest) for r in requests)
        # the restarted agent found the losses by re-hashing, before any verification failed
        assert requests[0].indices == [2, 3, 5, 9, *range(sent, count)]
        assert {i for r in requests for i in r.indices} == set(requests[0].indices)
        assert "chunks_repair" not in hub.kinds(dev, dep)
        assert "verified" in hub.kinds(dev, dep)
        slots = SlotStore(tmp_path / dev)
        active = slots.active()
        assert active is not None and active.meta.bundle_id == offer.bundle_id
        assert slots.check(active.name)
        assert (active.path / "payload.bin").read_bytes() == padding[0]
