"""Chunks written on the MQTT network thread: the intake stores a chunk of the running
download without the worker, leaves everything else to the worker unchanged, and the worker
is handed only the download's completion.

The agent test runs a real ``EdgeAgent`` against the shared Mosquitto with its worker held
in a command handler (as it would be in a slow synced write): every chunk must still land.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from edge_agent.ota.transfer import Intake
from shared.chunks import Chunk, encode_chunk
from shared.messages import EventKind, Hello, PingCommand
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    Harness,
    broker_available,
    make_authority,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    unique_prefix,
    wait_for,
    write_agent_config,
)


def _received(harness: Harness) -> int:
    dl = harness.updater.transfer.download
    return 0 if dl is None else dl.received_count


def test_intake_stores_chunks_and_reports_completion(harness: Harness) -> None:
    offer = harness.offer(1, chunk_size=128)
    frames = offer.frames
    harness.updater.handle_deploy(offer.command)
    outcomes = [harness.updater.take_chunk(f) for f in frames]
    assert outcomes == [Intake.STORED] * (len(frames) - 1) + [Intake.COMPLETED]
    assert harness.updater.take_chunk(frames[0]) is Intake.DEFERRED  # complete: the worker's
    dep = offer.command.deployment_id
    assert EventKind.DOWNLOAD_COMPLETE not in harness.events(dep)  # nothing verified yet
    harness.updater.download_landed()
    assert harness.events(dep)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == offer.bundle_id


def test_lost_completion_hand_off_is_found_by_the_tick(harness: Harness) -> None:
    offer = harness.offer(1, chunk_size=256)
    harness.updater.handle_deploy(offer.command)
    for f in offer.frames:
        harness.updater.take_chunk(f)
    harness.updater.tick()  # the worker never got the hand-off (its inbox was full)
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED


def test_intake_leaves_everything_else_to_the_worker_untouched(harness: Harness) -> None:
    v1, other = harness.offer(1, chunk_size=256), harness.offer(2, chunk_size=256)
    assert harness.updater.take_chunk(v1.frames[0]) is Intake.DEFERRED  # no download
    harness.updater.handle_deploy(v1.command)
    n = len(v1.frames)
    wrong_length = encode_chunk(Chunk(v1.bundle_id, 0, n, b"x" * 7))
    wrong_count = encode_chunk(Chunk(v1.bundle_id, 0, n + 1, b"x" * 256))
    for frame in (b"FFCH garbage", other.frames[0], wrong_length, wrong_count):
        assert harness.updater.take_chunk(frame) is Intake.DEFERRED
    assert _received(harness) == 0  # nothing was written for any of them
    refusals = harness.updater.refusals
    for frame in (b"FFCH garbage", wrong_length, wrong_count):
        harness.updater.handle_chunk(frame)  # the worker refuses them as it always did
    assert refusals.counts == {"bad-chunk-frame": 1, "unfitting-chunk": 2}
    harness.updater.take_chunk(v1.frames[1])
    assert harness.updater.take_chunk(v1.frames[1]) is Intake.STORED  # a duplicate: no-op
    assert _received(harness) == 1


@pytest.mark.integration
def test_chunks_land_while_the_worker_is_held(tmp_path: Path) -> None:
    """The worker is stuck in a command handler (standing in for a slow synced write);
    the whole bundle still reaches the download file, and once the worker is free the
    download is verified, installed and committed."""
    if not broker_available():
        pytest.skip("needs Mosquitto on 127.0.0.1:1883")
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    hub = BundleSender(topics, answer_requests=False)
    cfg = write_agent_config(
        tmp_path,
        device_id=f"dev-{prefix}",
        prefix=prefix,
        trust_path=auth.write_trust(tmp_path / "trust.json"),
        chunk_retry_s=30.0,  # nothing may arrive by the way of a repair request
    )
    agent = EdgeAgent(load_config(cfg))
    held, release = threading.Event(), threading.Event()

    def hold_the_worker(_cmd: PingCommand) -> None:
        held.set()
        release.wait(30)

    agent.add_command_handler(PingCommand, hold_the_worker)
    dev = agent.config.device_id
    agent.start()
    try:
        assert wait_for(lambda: hub.of(dev, Hello), 15)
        offer = make_offer(
            make_bundle(auth, version=1, model=onnx_model_bytes(64, 32)), topics, chunk_size=1024
        )
        n = len(offer.frames)
        hub.deploy(offer, [dev], chunks=[])
        hub.send(dev, PingCommand(command_id="hold"))
        assert held.wait(10)
        hub.fanout(offer)
        landed = wait_for(lambda: agent.updater.transfer.complete, 20)
        dl = agent.updater.transfer.download
        assert landed, f"{0 if dl is None else dl.received_count} of {n} chunks while held"
        assert not release.is_set()
        release.set()
        dep = offer.command.deployment_id
        assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 30), hub.kinds(dev, dep)
        assert not any(r.bundle_id == offer.bundle_id for r in hub.requests)
    finally:
        release.set()
        agent.stop()
        hub.close()
