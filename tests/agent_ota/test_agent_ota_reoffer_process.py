"""#15 as an operator met it, on a real agent process over the real Mosquitto: the same bundle,
re-offered with another chunk size while the first transfer is half done, is finished under
the new geometry (bytes already received are kept) instead of staying in "downloading"
until the download timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.messages import ChunkRequest, EventKind, Hello
from tests.agent_ota.agent_ota_helpers import (
    agent_bench,
    broker_available,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with agent_bench(tmp_path, answer_requests=False) as bench:
        bench.start()
        dev, hub = bench.device_id, bench.hub
        assert wait_for(lambda: hub.of(dev, Hello), 30), (tmp_path / "agent.log").read_text()
        yield {"dev": dev, "topics": bench.topics, "auth": bench.auth, "hub": hub, "tmp": tmp_path}


def test_same_bundle_reoffered_with_another_chunk_size_commits(agent: dict[str, Any]) -> None:
    dev, topics, hub = agent["dev"], agent["topics"], agent["hub"]
    bundle = make_bundle(agent["auth"], version=1, model=onnx_model_bytes(128, 128, seed=1))
    first = make_offer(bundle, topics, chunk_size=4096)
    half = list(range(len(first.frames) // 2))
    hub.deploy(first, [dev], chunks=half)  # the first transfer stops half way
    assert wait_for(lambda: hub.of(dev, ChunkRequest), 20)  # the agent asks for the rest

    second = make_offer(bundle, topics, chunk_size=16384)  # the same bundle, another split
    hub.answer_requests = True
    started = time.monotonic()
    hub.deploy(second, [dev], chunks=[])  # offered; the agent asks for what it lacks
    log = agent["tmp"] / "agent.log"
    assert hub.wait_kind(dev, second.command.deployment_id, EventKind.COMMITTED, 60), (
        hub.kinds(dev, second.command.deployment_id),
        log.read_text(errors="replace")[-3000:],
    )
    assert time.monotonic() - started < 60  # not the 120 s download timeout
    assert EventKind.FAILED in hub.kinds(dev, first.command.deployment_id)  # superseded
    # only the chunks of the new split that the first half did not cover were asked for
    asked = {
        i
        for r in hub.of(dev, ChunkRequest)
        if r.bundle_id == second.bundle_id and r.indices
        for i in r.indices
    }
    kept = len(half) * 4096 // 16384
    assert kept > 0 and asked and min(asked) >= kept, (kept, sorted(asked))
    assert "re-offered with chunk size 16384" in log.read_text(errors="replace")
