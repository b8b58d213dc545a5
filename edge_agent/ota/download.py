"""A resumable bundle download on disk: a preallocated file, a received-chunk map and the
chunks' claimed hashes.

``downloads/{bundle_id}/``: ``bundle.part`` (chunks written at their offsets),
``received.map`` (one byte per chunk), ``chunks.sha256`` (each chunk's 32-byte sha256 as its
frame claimed it) and ``geometry.json``. A chunk's data is written as it arrives, without
waiting for the disk; the hashes and map entries are kept in memory and written with every
``RECORD_EVERY``-th chunk, when the last one arrives, on the updater's tick (a pause in
the flow leaves nothing unwritten for long) and at close — one write per chunk
instead of three, and a kill loses at most the last few entries (those chunks are fetched
again). A restarted agent reopens the same directory, re-hashes every chunk the map lists and
keeps only those whose bytes match their recorded hash (a kill or a power cut may have lost
or torn any of the three), then asks only for what is missing.
The same bundle offered again with another chunk size keeps the bytes it has: the map is
redrawn for the new chunks.

Durability is a commit point, not a per-chunk cost: while chunks stream in nothing waits for
the disk (the map is only a progress hint, re-checked on every open), and :meth:`sync` makes
the whole download durable at once when a later step must rely on it (the install resumes
from it). No writeback is started early: measured with 50 agents on one disk, hints while
chunks arrived halved the download's goodput and gained nothing by the commit. Either way
the assembled bundle is verified against the signed manifest, through :meth:`view` — a
mapping of the file, so a 20 MB bundle is hashed and installed from the pages the chunks
were written to instead of being copied into fresh memory first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
from pathlib import Path
from typing import Any

from edge_agent.errors import InstallError
from edge_agent.ota.persist import atomic_write_json
from shared.chunks import Chunk, ChunkAssembly, ChunkFrame, chunk_count
from shared.files import fsync_dir

__all__ = ["RECORD_EVERY", "BundleDownload", "regrid"]

log = logging.getLogger(__name__)

_DIGEST = hashlib.sha256().digest_size
_DATA, _MAP, _DIGESTS, _GEOMETRY = "bundle.part", "received.map", "chunks.sha256", "geometry.json"
RECORD_EVERY = 16  # chunks between writes of the hashes and map entries


class BundleDownload:
    """Chunks of one bundle being received. Not thread-safe: its ``ChunkTransfer`` serialises
    the network thread's intake and the worker's bookkeeping."""

    def __init__(
        self,
        directory: Path,
        *,
        bundle_id: str,
        total_size: int,
        chunk_size: int,
        fsync_chunks: bool = True,
    ) -> None:
        self.directory = directory
        self.fsync_chunks = fsync_chunks
        # whatever an earlier process wrote may still sit in the page cache: not durable yet
        self._durable = False
        self._fds: list[int] = []
        self._data_fd = self._map_fd = self._digest_fd = -1
        # this process's record of the chunks, written out in batches (see record)
        self._digests, self._map = bytearray(), bytearray()
        self._dirty: tuple[int, int] | None = None  # first and last unwritten entry
        self._unrecorded = 0
        geometry = {"bundle_id": bundle_id, "total_size": total_size, "chunk_size": chunk_size}
        geo_path = directory / _GEOMETRY
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
        try:
            self._data_fd = self._open(_DATA, total_size, preallocate=True)
            self._map_fd = self._open(_MAP, count)
            self._digest_fd = self._open(_DIGESTS, count * _DIGEST)
            for i in carried:  # the bytes are on disk and were checked: record their hashes
                os.pwrite(
                    self._digest_fd, hashlib.sha256(self._chunk_bytes(i)).digest(), i * _DIGEST
                )
                os.pwrite(self._map_fd, b"\x01", i)
            if not geo_path.exists():
                atomic_write_json(geo_path, geometry)
            self._digests = bytearray(os.pread(self._digest_fd, count * _DIGEST, 0))
            self._map = bytearray(os.pread(self._map_fd, count, 0))
            # trust nothing the map says: a kill or a power cut may have lost or torn the data
            listed = [i for i, b in enumerate(self._map) if b == 1]
            intact = self._intact(listed)
            for i in sorted(set(listed) - set(intact)):
                self._map[i] = 0
                os.pwrite(self._map_fd, b"\x00", i)
            if len(intact) < len(listed):
                log.info(
                    "download of %s: %d chunks on disk do not match their hash",
                    bundle_id[:12],
                    len(listed) - len(intact),
                )
            self.assembly.received.update(intact)
        except OSError as exc:
            self.close()
            raise InstallError(f"cannot prepare download in {directory}: {exc}") from exc

    def _open(self, name: str, size: int, *, preallocate: bool = False) -> int:
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o644)
        self._fds.append(fd)
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
            if preallocate and size and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:  # e.g. tmpfs without fallocate
                    log.debug("fallocate unsupported: %s", exc)
        return fd

    def _chunk_bytes(self, index: int) -> bytes:
        return os.pread(
            self._data_fd, self.assembly.expected_length(index), self.assembly.offset(index)
        )

    def _intact(self, listed: list[int]) -> list[int]:
        """The chunks among ``listed`` whose bytes on disk match their recorded hash."""
        if not listed:
            return []
        digests = self._digests
        return [
            i
            for i in listed
            if hashlib.sha256(self._chunk_bytes(i)).digest()
            == digests[i * _DIGEST : (i + 1) * _DIGEST]
        ]

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

    def mismatched(self) -> list[int]:
        """Received chunks whose bytes do not match the hash their frame claimed (corrupted
        on the way: found when the assembled bundle fails verification)."""
        received = sorted(self.assembly.received)
        return sorted(set(received) - set(self._intact(received)))

    def store(self, chunk: Chunk | ChunkFrame) -> bool:
        """Write ``chunk`` if new; returns whether it was. Raises ``ProtocolError`` /
        ``MixAndMatchError`` for a chunk that does not fit this transfer."""
        if not self.assembly.accept(chunk):
            return False
        index = chunk.index
        digest = (
            chunk.sha256 if isinstance(chunk, ChunkFrame) else hashlib.sha256(chunk.data).digest()
        )
        try:
            os.pwrite(self._data_fd, chunk.data, self.assembly.offset(index))
        except OSError as exc:
            self.assembly.received.discard(index)
            raise InstallError(f"cannot write chunk {index}: {exc}") from exc
        self._digests[index * _DIGEST : (index + 1) * _DIGEST] = digest
        self._map[index] = 1
        self._note(index)
        self._unrecorded += 1
        if self._unrecorded >= RECORD_EVERY or self.assembly.complete:
            try:
                self.record()
            except InstallError:  # not stored after all: a caller that counts stored
                self.assembly.received.discard(index)  # chunks must not meet it as a
                self._map[index] = 0  # duplicate next time
                raise
        self._durable = False
        return True

    def _note(self, index: int) -> None:
        lo, hi = self._dirty or (index, index)
        self._dirty = (min(lo, index), max(hi, index))

    def record(self) -> None:
        """Write the hashes, then the map entries, changed since the last call."""
        if self._dirty is not None:
            lo, hi = self._dirty
            try:
                os.pwrite(
                    self._digest_fd,
                    self._digests[lo * _DIGEST : (hi + 1) * _DIGEST],
                    lo * _DIGEST,
                )
                os.pwrite(self._map_fd, self._map[lo : hi + 1], lo)
            except OSError as exc:
                raise InstallError(f"cannot record chunks {lo}..{hi}: {exc}") from exc
        self._dirty, self._unrecorded = None, 0

    def sync(self) -> None:
        """The commit point (with ``fsync_chunks``): make every chunk on disk, its hash and
        its map entry durable, and the files' and the directory's names with them."""
        if self._durable:
            return
        self.record()
        if self.fsync_chunks:
            try:
                for fd in (self._data_fd, self._digest_fd, self._map_fd):
                    os.fdatasync(fd)
                fsync_dir(self.directory)
                fsync_dir(self.directory.parent)
            except OSError as exc:
                raise InstallError(f"cannot sync download: {exc}") from exc
        self._durable = True

    def view(self) -> memoryview:
        """The whole download as a read-only view of the file's pages (no copy: verifying
        and installing a bundle reads it where it lies). The mapping lives as long as a view
        of it does; the file is only ever unlinked, never shrunk, while one may exist."""
        size = self.assembly.total_size
        if os.fstat(self._data_fd).st_size != size:
            raise InstallError(f"download file is not {size} bytes")
        if not size:
            return memoryview(b"")
        try:
            mapped = mmap.mmap(self._data_fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot map download: {exc}") from exc
        if hasattr(mmap, "MADV_SEQUENTIAL"):  # read once, front to back
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        return memoryview(mapped)

    def read_all(self) -> bytes:
        size = self.assembly.total_size
        data = os.pread(self._data_fd, size, 0) if size else b""
        if len(data) != size:
            raise InstallError(f"download file is {len(data)} bytes, expected {size}")
        return data

    def forget(self, indices: list[int]) -> None:
        """Mark chunks missing again (verification found them corrupt)."""
        for i in indices:
            self.assembly.received.discard(i)
            self._map[i] = 0
            self._note(i)
        self.record()

    def close(self) -> None:
        """Release the file handles (nothing is synced: a reopen re-checks every chunk)."""
        if self._map_fd >= 0:
            with contextlib.suppress(InstallError):
                self.record()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._data_fd = self._map_fd = self._digest_fd = -1

    def remove(self) -> None:
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
    try:
        received = _intact_on_disk(directory, total, old_chunk)
        # geometry.json goes first: a kill in between leaves a directory that starts over
        for name in (_GEOMETRY, _MAP, _DIGESTS):
            (directory / name).unlink(missing_ok=True)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return set()
    carried = regrid(received, total, old_chunk, int(geometry["chunk_size"]))
    log.info(
        "download of %s re-offered with chunk size %d (was %d): %d chunks kept",
        str(geometry["bundle_id"])[:12],
        geometry["chunk_size"],
        old_chunk,
        len(carried),
    )
    return carried


def _intact_on_disk(directory: Path, total_size: int, chunk_size: int) -> set[int]:
    """The chunks of a closed download (``chunk_size`` layout) that its map lists and whose
    bytes match their recorded hash."""
    count = chunk_count(total_size, chunk_size)
    listed = (directory / _MAP).read_bytes()[:count]
    try:
        digests = (directory / _DIGESTS).read_bytes()
    except FileNotFoundError:
        return set()
    intact: set[int] = set()
    with open(directory / _DATA, "rb") as data:
        for i, b in enumerate(listed):
            if b != 1:
                continue
            data.seek(i * chunk_size)
            chunk = data.read(min(chunk_size, total_size - i * chunk_size))
            if hashlib.sha256(chunk).digest() == digests[i * _DIGEST : (i + 1) * _DIGEST]:
                intact.add(i)
    return intact
