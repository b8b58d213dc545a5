"""The worker meets a download the network thread is still writing.

A chunk taken on the network thread becomes part of the download's received set before its
bytes are written and counted. A worker that looked at the download without the transfer's
lock in that moment saw it complete, reported ``download_complete`` with the bytes counted so
far — 0 for a one-chunk bundle, as a delta usually is — and verified a file the chunk had not
reached yet. These tests pause the intake right there (after the chunk was accepted, before
it was written) and let the worker look: it must wait for the intake, then report every byte
and install what it verified, without fetching anything again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.ota.transfer import Intake
from shared.chunks import Chunk, ChunkFrame
from shared.messages import Event, EventKind
from tests.agent_ota.agent_ota_helpers import Harness, Offer

_PAUSE_S = 0.5  # how long the intake stays inside a chunk unless the test lets it go


class _PausedIntake:
    """``take_chunk(frame)`` on its own thread, paused inside the download's store between
    accepting the chunk (it is in the received set) and writing its bytes."""

    def __init__(self, harness: Harness, frame: bytes) -> None:
        self.harness, self.frame = harness, frame
        self.paused, self.release = threading.Event(), threading.Event()
        self.outcome: list[Intake] = []
        self.thread = threading.Thread(target=self._take, name="network-thread", daemon=True)

    def start(self) -> None:
        download = self.harness.updater.transfer.download
        assert download is not None
        accept: Callable[[Chunk | ChunkFrame], bool] = download.assembly.accept

        def accept_then_pause(chunk: Chunk | ChunkFrame) -> bool:
            fresh = accept(chunk)
            self.paused.set()
            self.release.wait(_PAUSE_S)
            return fresh

        download.assembly.accept = accept_then_pause  # type: ignore[method-assign]
        self.thread.start()
        assert self.paused.wait(5), "the intake never reached the chunk's store"

    def finish(self) -> Intake:
        self.release.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.outcome[0]

    def _take(self) -> None:
        self.outcome.append(self.harness.updater.take_chunk(self.frame))


def _download_complete(harness: Harness, deployment_id: str) -> dict[str, Any]:
    events = [
        m
        for m in harness.sent
        if isinstance(m, Event)
        and m.deployment_id == deployment_id
        and m.kind == EventKind.DOWNLOAD_COMPLETE
    ]
    assert len(events) == 1, harness.events(deployment_id)
    return dict(events[0].data)


def _one_chunk_offer(harness: Harness) -> Offer:
    offer = harness.offer(1, chunk_size=1024 * 1024)
    assert len(offer.frames) == 1
    return offer


def test_deploy_meets_a_chunk_landing_right_after_the_download_opened(harness: Harness) -> None:
    """The short demo's case: the hub publishes a one-chunk delta as soon as the device
    announced the download, and the chunk lands on the network thread between the worker's
    ``transfer.open()`` and its look at whether the download is already complete."""
    offer = _one_chunk_offer(harness)
    transfer = harness.updater.transfer
    open_download = transfer.open
    intake = _PausedIntake(harness, offer.frames[0])

    def open_then_chunk_lands(bundle_id: str, *, total_size: int, chunk_size: int) -> None:
        open_download(bundle_id, total_size=total_size, chunk_size=chunk_size)
        intake.start()

    transfer.open = open_then_chunk_lands  # type: ignore[method-assign]
    harness.updater.handle_deploy(offer.command)
    assert intake.finish() in (Intake.STORED, Intake.COMPLETED)
    harness.updater.download_landed()
    dep = offer.command.deployment_id
    assert _download_complete(harness, dep)["bytes_received"] == len(offer.bundle)
    assert harness.events(dep)[-1] == EventKind.COMMITTED, harness.events(dep)
    assert "chunks_repair" not in harness.events(dep)
    assert harness.active_bundle == offer.bundle_id


def test_tick_meets_the_last_chunk_half_written(harness: Harness) -> None:
    """The worker's tick (which finds a completion whose hand-off was lost) while the last
    chunk of a many-chunk download is still being written."""
    offer = harness.offer(1, chunk_size=256)
    *first, last = offer.frames
    harness.updater.handle_deploy(offer.command)
    assert all(harness.updater.take_chunk(f) is Intake.STORED for f in first)
    intake = _PausedIntake(harness, last)
    intake.start()
    transfer = harness.updater.transfer
    assert transfer.complete  # once the intake is done with the chunk: its bytes are there
    assert transfer.read_all() == offer.bundle
    harness.updater.tick()
    assert intake.finish() is Intake.COMPLETED
    harness.updater.download_landed()
    dep = offer.command.deployment_id
    assert _download_complete(harness, dep)["bytes_received"] == len(offer.bundle)
    assert harness.events(dep)[-1] == EventKind.COMMITTED, harness.events(dep)
    assert "chunks_repair" not in harness.events(dep)


def test_a_chunk_whose_record_cannot_be_written_is_left_to_the_worker_unstored(
    harness: Harness,
) -> None:
    """The intake defers a chunk it could not finish storing (here: the last one, whose
    batch record fails); the worker then meets it as new — no completed download with a
    byte uncounted — and ends the deployment over the disk trouble, as it always did."""
    offer = harness.offer(1, chunk_size=256)
    *first, last = offer.frames
    harness.updater.handle_deploy(offer.command)
    for f in first:
        harness.updater.take_chunk(f)
    download = harness.updater.transfer.download
    assert download is not None
    counted = harness.updater.transfer.bytes_received
    # the record of the chunks' hashes cannot be written: its file is open read-only
    read_only = os.open(download.directory / "chunks.sha256", os.O_RDONLY)
    download._digest_fd = read_only
    try:
        assert harness.updater.take_chunk(last) is Intake.DEFERRED
        assert not harness.updater.transfer.complete
        assert harness.updater.transfer.bytes_received == counted
        harness.updater.handle_chunk(last)
    finally:
        os.close(read_only)
    dep = offer.command.deployment_id
    assert harness.events(dep)[-1] == EventKind.FAILED, harness.events(dep)
    assert EventKind.DOWNLOAD_COMPLETE not in harness.events(dep)


def test_download_complete_is_stamped_when_the_last_byte_was_written(harness: Harness) -> None:
    """The network thread wrote the last chunk; the worker reports it later (here 0.3 s):
    the report says when the download completed, not when the worker got to it."""
    offer = harness.offer(1, chunk_size=256)
    harness.updater.handle_deploy(offer.command)
    before = time.time()
    outcomes = [harness.updater.take_chunk(f) for f in offer.frames]
    written = time.time()
    assert outcomes[-1] is Intake.COMPLETED
    time.sleep(0.3)
    harness.updater.download_landed()
    complete = [
        m for m in harness.sent if isinstance(m, Event) and m.kind == EventKind.DOWNLOAD_COMPLETE
    ]
    assert len(complete) == 1
    assert before <= complete[0].ts <= written
    later = [m.ts for m in harness.sent if isinstance(m, Event) and m.kind == EventKind.VERIFIED]
    assert later and later[0] >= written + 0.3


def test_a_download_found_complete_on_disk_is_stamped_when_reported(harness: Harness) -> None:
    """Nothing was written by this process (a restart found every chunk on disk): the
    report carries the time it was made."""
    offer = harness.offer(1, chunk_size=256)
    harness.updater.handle_deploy(offer.command)
    for f in offer.frames:
        harness.updater.take_chunk(f)
    restarted = time.time()
    harness.restart()  # the hand-off was lost with the process: recovery finds it complete
    complete = [
        m for m in harness.sent if isinstance(m, Event) and m.kind == EventKind.DOWNLOAD_COMPLETE
    ]
    assert len(complete) == 1
    assert complete[0].ts >= restarted and complete[0].data["bytes_received"] == 0
