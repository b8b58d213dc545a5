"""Durability at the commit point, not per chunk: a download is synced once, before
Installing is persisted (an install resumes from it and cannot fetch again); everything
earlier is re-hashed on restart, so what a power cut lost is fetched again.

A power cut is modelled by what it can do to pages that were never synced: lose them (they
read as zeros, or the file is shorter) or keep them. The download's files are damaged that
way between a stopped updater and a fresh one over the same state directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edge_agent.ota.download as download_module
from edge_agent.config import AgentLimits
from shared.chunks import split_chunks
from shared.messages import EventKind
from tests.agent_ota.agent_ota_helpers import Authority, Clock, Harness


class Crash(BaseException):
    """Stands in for a power cut at a precise point (nothing after it runs)."""


@pytest.fixture
def durable(tmp_path: Path, authority: Authority) -> Harness:
    """An updater with the product's default durability (``fsync_chunks``)."""
    return Harness(
        state_dir=tmp_path / "state", auth=authority, clock=Clock(), limits=AgentLimits()
    )


def _phase(h: Harness) -> str:
    state = json.loads((h.state_dir / "ota_state.json").read_text())
    return str(state["deployment"]["phase"])


def test_download_is_synced_once_at_its_commit_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(download_module.os, "fdatasync", synced.append)
    data = bytes(10_000)
    dl = download_module.BundleDownload(
        tmp_path / "d", bundle_id="b" * 64, total_size=len(data), chunk_size=1000
    )
    for c in split_chunks("b" * 64, data, 1000):
        dl.store(c)
    assert synced == []  # no chunk waits for the disk
    dl.sync()
    assert sorted(synced) == sorted([dl._data_fd, dl._digest_fd, dl._map_fd])
    dl.sync()  # nothing new
    assert len(synced) == 3
    dl.close()
    assert len(synced) == 3  # closing does not sync either
    # a reopened download may hold pages an earlier process never synced
    again = download_module.BundleDownload(
        tmp_path / "d", bundle_id="b" * 64, total_size=len(data), chunk_size=1000
    )
    assert again.complete
    again.sync()
    assert len(synced) == 6
    again.close()
    unsynced = download_module.BundleDownload(
        tmp_path / "e",
        bundle_id="b" * 64,
        total_size=len(data),
        chunk_size=1000,
        fsync_chunks=False,
    )
    for c in split_chunks("b" * 64, data, 1000):
        unsynced.store(c)
    unsynced.sync()
    assert len(synced) == 6
    unsynced.close()


def test_the_download_is_durable_before_installing_is_persisted(
    durable: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one sync runs after the download completed (Verifying persisted: a restart
    re-hashes) and before Installing is (a restart rewrites the slot from the download)."""
    phases_at_sync: list[str] = []
    monkeypatch.setattr(
        download_module.os, "fdatasync", lambda fd: phases_at_sync.append(_phase(durable))
    )
    offer = durable.offer(1, chunk_size=128)
    durable.deliver(offer)
    dep = offer.command.deployment_id
    assert durable.events(dep)[-1] == EventKind.COMMITTED
    assert phases_at_sync == ["verifying"] * 3  # data, hashes, map: once each


def test_power_cut_in_verifying_refetches_exactly_the_lost_chunks(
    durable: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifying is persisted before the download is synced. A power cut there loses pages
    of the bundle (zeros), a tail of the file and the hashes of a chunk: the restarted agent
    re-hashes, fetches those chunks only, verifies and installs the bundle."""
    offer = durable.offer(1, chunk_size=128)
    count = len(offer.frames)
    assert count >= 12

    def cut() -> None:
        raise Crash

    monkeypatch.setattr(durable.updater, "_reverify", cut)
    with pytest.raises(Crash):
        durable.deliver(offer)
    assert _phase(durable) == "verifying"
    d = durable.state_dir / "downloads" / offer.bundle_id
    part = bytearray((d / "bundle.part").read_bytes())
    part[3 * 128 + 5 : 5 * 128 - 7] = bytes(2 * 128 - 12)  # chunks 3 and 4 lost (zeros)
    (d / "bundle.part").write_bytes(bytes(part[: (count - 2) * 128 + 1]))  # tail lost
    digests = bytearray((d / "chunks.sha256").read_bytes())
    digests[8 * 32 : 9 * 32] = bytes(32)  # chunk 8's hash lost
    (d / "chunks.sha256").write_bytes(bytes(digests))
    durable.restart()
    dep = offer.command.deployment_id
    assert durable.events(dep)[-1] == "chunks_repair"
    assert durable.requests()[-1].indices == [3, 4, 8, count - 2, count - 1]
    durable.answer(offer.frames)
    assert durable.events(dep)[-1] == EventKind.COMMITTED
    assert durable.active_bundle == offer.bundle_id
    assert durable.updater.slots.check(durable.updater.slots.active_name() or "")


def test_power_cut_while_downloading_resumes_from_what_survived(durable: Harness) -> None:
    """Nothing was synced during the download: a cut that lost some of the chunks costs
    only those (plus the ones never received)."""
    offer = durable.offer(1, chunk_size=128)
    count = len(offer.frames)
    durable.deliver(offer, indices=list(range(count - 4)))
    assert _phase(durable) == "downloading"
    durable.updater.close()
    d = durable.state_dir / "downloads" / offer.bundle_id
    part = bytearray((d / "bundle.part").read_bytes())
    part[128 : 2 * 128] = bytes(128)  # chunk 1 lost
    (d / "bundle.part").write_bytes(bytes(part))
    durable.restart()
    durable.clock.advance(2.0)  # the retry interval passes without chunks
    durable.updater.tick()
    assert durable.requests()[-1].indices == [1, *range(count - 4, count)]
    durable.answer(offer.frames)
    dep = offer.command.deployment_id
    assert durable.events(dep)[-1] == EventKind.COMMITTED
    assert durable.active_bundle == offer.bundle_id
