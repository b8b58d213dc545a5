"""A resumable bundle download on disk: a preallocated file plus a received-chunk map.

``downloads/{bundle_id}/``: ``bundle.part`` (chunks written at their offsets),
``received.map`` (one byte per chunk) and ``geometry.json``. A restarted agent reopens the
same directory and asks only for what the map lacks. The same bundle offered again with
another chunk size keeps the bytes it has: the map is redrawn for the new chunks.

With ``fsync_chunks`` a chunk is marked in the map only after its data was fsynced, in
batches of ``sync_every`` chunks (and whenever the transfer goes idle): a power cut loses at
most the last unsynced batch, which is simply requested again, and one fsync per batch
instead of per chunk keeps 50 agents on one disk fast. Without it the map is written at once
(safe against a killed process, not against power loss). Either way the map is only a
progress hint: the assembled bundle is verified against the signed manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from edge_agent.errors import InstallError
from edge_agent.ota.persist import atomic_write_json
from shared.chunks import Chunk, ChunkAssembly, chunk_count

__all__ = ["BundleDownload", "regrid"]

log = logging.getLogger(__name__)


class BundleDownload:
    """Chunks of one bundle being received. Not thread-safe (the updater serialises)."""

    def __init__(
        self,
        directory: Path,
        *,
        bundle_id: str,
        total_size: int,
        chunk_size: int,
        fsync_chunks: bool = True,
        sync_every: int = 16,
    ) -> None:
        self.directory = directory
        self.fsync_chunks = fsync_chunks
        self.sync_every = max(1, sync_every)
        self._unsynced: list[int] = []
        geometry = {"bundle_id": bundle_id, "total_size": total_size, "chunk_size": chunk_size}
        geo_path = directory / "geometry.json"
        data_path, map_path = directory / "bundle.part", directory / "received.map"
        carried: set[int] = set()
        if directory.exists():
            previous = _read_json(geo_path)
            if previous != geometry:
                carried = _carry_over(directory, previous, geometry)
        directory.mkdir(parents=True, exist_ok=True)
        self.assembly = ChunkAssembly(
            bundle_id=bundle_id, total_size=total_size, chunk_size=chunk_size
        )
        count = self.assembly.count
        self._data_fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._map_fd = os.open(map_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(self._data_fd).st_size != total_size:
                os.ftruncate(self._data_fd, total_size)
                if total_size and hasattr(os, "posix_fallocate"):
                    try:
                        os.posix_fallocate(self._data_fd, 0, total_size)
                    except OSError as exc:  # e.g. tmpfs without fallocate
                        log.debug("fallocate unsupported: %s", exc)
            if os.fstat(self._map_fd).st_size != count:
                os.ftruncate(self._map_fd, count)
            for i in carried:
                os.pwrite(self._map_fd, b"\x01", i)
            if not geo_path.exists():
                atomic_write_json(geo_path, geometry)
            received = os.pread(self._map_fd, count, 0)
        except OSError as exc:
            self.close()
            raise InstallError(f"cannot prepare download in {directory}: {exc}") from exc
        self.assembly.received.update(i for i, b in enumerate(received) if b == 1)

    @property
    def bundle_id(self) -> str:
        return self.assembly.bundle_id

    @property
    def complete(self) -> bool:
        return self.assembly.complete

    @property
    def geometry(self) -> tuple[int, int]:
        """``(total_size, chunk_size)`` of this transfer."""
        return self.assembly.total_size, self.assembly.chunk_size

    @property
    def received_count(self) -> int:
        return len(self.assembly.received)

    def missing(self) -> list[int]:
        return self.assembly.missing()

    def store(self, chunk: Chunk) -> bool:
        """Write ``chunk`` if new; returns whether it was. Raises ``ProtocolError`` /
        ``MixAndMatchError`` for a chunk that does not fit this transfer."""
        if not self.assembly.accept(chunk):
            return False
        try:
            os.pwrite(self._data_fd, chunk.data, self.assembly.offset(chunk.index))
            if self.fsync_chunks:
                self._unsynced.append(chunk.index)
                if len(self._unsynced) >= self.sync_every:
                    self.sync()
            else:
                os.pwrite(self._map_fd, b"\x01", chunk.index)
        except OSError as exc:
            self.assembly.received.discard(chunk.index)
            raise InstallError(f"cannot write chunk {chunk.index}: {exc}") from exc
        return True

    def sync(self) -> None:
        """Make the chunks written so far durable, then record them in the map."""
        if not self._unsynced:
            return
        try:
            os.fdatasync(self._data_fd)
            for i in self._unsynced:
                os.pwrite(self._map_fd, b"\x01", i)
        except OSError as exc:
            raise InstallError(f"cannot sync download: {exc}") from exc
        self._unsynced.clear()

    def read_all(self) -> bytes:
        self.sync()
        size = self.assembly.total_size
        data = os.pread(self._data_fd, size, 0) if size else b""
        if len(data) != size:
            raise InstallError(f"download file is {len(data)} bytes, expected {size}")
        return data

    def forget(self, indices: list[int]) -> None:
        """Mark chunks missing again (verification found them corrupt)."""
        self.sync()
        for i in indices:
            self.assembly.received.discard(i)
            os.pwrite(self._map_fd, b"\x00", i)

    def close(self) -> None:
        if getattr(self, "_data_fd", -1) >= 0:
            with contextlib.suppress(InstallError):
                self.sync()
        for fd in (getattr(self, "_data_fd", -1), getattr(self, "_map_fd", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._data_fd = self._map_fd = -1

    def remove(self) -> None:
        self._unsynced.clear()
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def regrid(received: set[int], total_size: int, old_chunk: int, new_chunk: int) -> set[int]:
    """The chunks of a ``new_chunk``-sized split of the same bytes that lie wholly within
    chunks ``received`` under the ``old_chunk``-sized split (pure)."""
    out: set[int] = set()
    for j in range(chunk_count(total_size, new_chunk)):
        start, end = j * new_chunk, min((j + 1) * new_chunk, total_size)
        first, last = start // old_chunk, max(start, end - 1) // old_chunk
        if all(i in received for i in range(first, last + 1)):
            out.add(j)
    return out


def _carry_over(directory: Path, previous: object, geometry: dict[str, Any]) -> set[int]:
    """Prepare ``directory`` for a new layout of the same download: the same bundle offered
    again with another chunk size keeps the bytes already received (they sit at the same
    offsets) and returns the new chunks they fill; any other change starts over."""
    same_bytes = (
        isinstance(previous, dict)
        and previous.get("bundle_id") == geometry["bundle_id"]
        and previous.get("total_size") == geometry["total_size"]
        and isinstance(previous.get("chunk_size"), int)
        and previous["chunk_size"] > 0
    )
    if not same_bytes:
        shutil.rmtree(directory)
        return set()
    assert isinstance(previous, dict)
    total, old_chunk = int(geometry["total_size"]), int(previous["chunk_size"])
    map_path = directory / "received.map"
    try:
        old_map = map_path.read_bytes()[: chunk_count(total, old_chunk)]
        # geometry.json goes first: a kill in between leaves a directory that starts over
        (directory / "geometry.json").unlink()
        map_path.unlink()
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return set()
    received = {i for i, b in enumerate(old_map) if b == 1}
    carried = regrid(received, total, old_chunk, int(geometry["chunk_size"]))
    log.info(
        "download of %s re-offered with chunk size %d (was %d): %d chunks kept",
        str(geometry["bundle_id"])[:12],
        geometry["chunk_size"],
        old_chunk,
        len(carried),
    )
    return carried
