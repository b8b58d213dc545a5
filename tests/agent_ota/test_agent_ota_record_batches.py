"""A download's record (each chunk's hash and map entry) is written in batches: one write per
chunk while chunks stream in, and nothing left unwritten once the last chunk arrived, the
flow paused (the updater's tick) or the download was closed."""

from __future__ import annotations

from pathlib import Path

from edge_agent.ota.download import RECORD_EVERY, BundleDownload
from shared.chunks import split_chunks

BUNDLE_ID = "c" * 64
CHUNK = 100
DATA = bytes(range(256)) * (CHUNK * (2 * RECORD_EVERY + 3) // 256 + 1)
CHUNKS = split_chunks(BUNDLE_ID, DATA, CHUNK)


def _listed(directory: Path) -> list[int]:
    return [i for i, b in enumerate((directory / "received.map").read_bytes()) if b == 1]


def _open(directory: Path) -> BundleDownload:
    return BundleDownload(directory, bundle_id=BUNDLE_ID, total_size=len(DATA), chunk_size=CHUNK)


def test_entries_reach_the_file_every_batch_and_with_the_last_chunk(tmp_path: Path) -> None:
    d = tmp_path / "dl"
    dl = _open(d)
    for c in CHUNKS[: RECORD_EVERY - 1]:
        dl.store(c)
    assert _listed(d) == []  # not yet: a batch is not full
    dl.store(CHUNKS[RECORD_EVERY - 1])
    assert _listed(d) == list(range(RECORD_EVERY))
    for c in CHUNKS[RECORD_EVERY:]:
        dl.store(c)
    assert dl.complete and _listed(d) == list(range(len(CHUNKS)))
    dl.close()
    assert _open(d).complete  # and every hash matches: a reopen keeps them all


def test_a_pause_and_a_close_leave_nothing_unwritten(tmp_path: Path) -> None:
    d = tmp_path / "dl"
    dl = _open(d)
    dl.store(CHUNKS[3])
    dl.record()  # the updater's tick while the flow pauses
    assert _listed(d) == [3]
    dl.store(CHUNKS[5])
    dl.close()
    assert _listed(d) == [3, 5]
    assert _open(d).received_count == 2
