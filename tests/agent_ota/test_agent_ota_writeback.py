"""With fsync_chunks a download asks the kernel to start writing every few MB, so the sync
at its commit point finds little left; without it, never."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import edge_agent.ota.download as download_module
from edge_agent.ota.writeback import start_writeback
from shared.chunks import split_chunks


@pytest.mark.parametrize("fsync_chunks", [True, False])
def test_writeback_is_started_every_writeback_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_chunks: bool
) -> None:
    hinted: list[int] = []
    monkeypatch.setattr(download_module, "start_writeback", hinted.append)
    monkeypatch.setattr(download_module, "WRITEBACK_BYTES", 2000)
    data = bytes(10_000)
    dl = download_module.BundleDownload(
        tmp_path / "d",
        bundle_id="b" * 64,
        total_size=len(data),
        chunk_size=1000,
        fsync_chunks=fsync_chunks,
    )
    for c in split_chunks("b" * 64, data, 1000):
        dl.store(c)
    # a hint after every 2nd chunk, none of them waits for the disk
    assert hinted == ([dl._data_fd] * 5 if fsync_chunks else [])
    dl.close()


def test_start_writeback_on_a_real_file_returns(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        start_writeback(fd)
        start_writeback(-1)  # a bad descriptor is only logged
    finally:
        os.close(fd)
