"""Getting one bundle's bytes: the resumable download on disk, the fan-out subscription, and
asking the hub for exactly the chunks that are missing.

Chunks arrive once on the bundle's fan-out topic; whatever was lost (joined late, a
disconnect, a corrupt frame, a restart) is requested with a ``ChunkRequest`` once no new
chunk has arrived for ``retry_s`` (backing off up to 8x while nothing comes), and the hub
answers on the device's own ``chunks`` topic.

Chunks of the current download are taken straight from the MQTT network thread
(:meth:`ChunkTransfer.take`) while the worker runs everything else. The two meet only at the
transfer's own lock, which guards the download object and its in-memory bookkeeping and
nothing more: it is never held across a disk sync, a file removal, an outbox write or a call
into the MQTT link, so the network thread never waits behind the worker's synced writes.
A chunk joins the download's received set before its bytes are written and counted, so the
worker reads whether the download is complete, and how many bytes it received, only under
that lock: never while the intake is half-way through a chunk.
"""

from __future__ import annotations

import enum
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import AgentLimits
from edge_agent.errors import InstallError
from edge_agent.ota.download import BundleDownload
from shared.chunks import Chunk, ChunkFrame
from shared.errors import ProtocolError
from shared.messages import ChunkRequest, Message, now
from shared.topics import TopicScheme

__all__ = ["ChunkTransfer", "Intake"]

log = logging.getLogger(__name__)


class Intake(enum.Enum):
    """What became of a chunk offered on the network thread (:meth:`ChunkTransfer.take`)."""

    STORED = "stored"  # written (or already had): nothing more to do
    COMPLETED = "completed"  # written, and the download is now complete: verify and install
    DEFERRED = "deferred"  # not for the running download, or refused: the worker decides


class ChunkTransfer:
    """At most one bundle transfer at a time. Called by the worker, except :meth:`take`
    (the network thread); ``_lock`` keeps the two apart around the download object."""

    def __init__(
        self,
        *,
        device_id: str,
        root: Path,
        topics: TopicScheme,
        limits: AgentLimits,
        retry_s: float,
        emit: Callable[[Message], None],
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.root = root
        self.topics = topics
        self.limits = limits
        self.retry_s = retry_s
        self._emit, self._subscribe, self._unsubscribe = emit, subscribe, unsubscribe
        self._clock = clock
        self.download: BundleDownload | None = None
        self._listening: str | None = None
        self._last_progress = 0.0
        self._last_request = 0.0
        self._idle_requests = 0
        # bytes of new chunks this process received for ``_counted_bundle`` (measured here,
        # reported with the download's completion: what the device really downloaded)
        self._bytes_received = 0
        self._counted_bundle: str | None = None
        self._completed_at: float | None = None  # when this process wrote the last chunk
        # the chunk intake's and the download bookkeeping's lock: never held across a sync,
        # a removal or a call into the MQTT link (those may wait behind the worker's disk)
        self._lock = threading.Lock()

    @property
    def bundle_id(self) -> str | None:
        return self.download.bundle_id if self.download is not None else None

    @property
    def complete(self) -> bool:
        """Whether every chunk is written and counted (waits for a chunk the intake is
        storing: it is in the received set before its bytes are on disk)."""
        with self._lock:
            return self.download is not None and self.download.complete

    @property
    def completed_at(self) -> float | None:
        """When this process stored the chunk that completed the download (wall clock, as
        events are stamped); ``None`` if it found the download complete on disk."""
        with self._lock:
            return self._completed_at

    @property
    def bytes_received(self) -> int:
        """Bytes of new chunks this process stored for the current bundle, the one being
        stored included."""
        with self._lock:
            return self._bytes_received

    def listen(self, bundle_id: str) -> None:
        """Subscribe to the bundle's fan-out topic (before announcing the download, so the
        broker has the subscription before the hub publishes)."""
        topic = self.topics.bundle_chunks(bundle_id)
        if self._listening != topic:
            self.stop_listening()
            self._subscribe(topic)
            self._listening = topic

    def stop_listening(self) -> None:
        if self._listening is not None:
            self._unsubscribe(self._listening)
            self._listening = None

    def open(self, bundle_id: str, *, total_size: int, chunk_size: int) -> None:
        """Start or resume the download of ``bundle_id`` from what is on disk."""
        if self.download is not None and self.download.bundle_id != bundle_id:
            self.release()
        elif self.download is not None and self.download.geometry != (total_size, chunk_size):
            # the same bundle re-offered with another chunk size: reopen under the new
            # geometry (the bytes on disk are kept; see BundleDownload)
            self._detach().close()
        download = self.download
        if download is None:  # prepared (and re-hashed) before the intake can see it
            download = BundleDownload(
                self.root / bundle_id,
                bundle_id=bundle_id,
                total_size=total_size,
                chunk_size=chunk_size,
                fsync_chunks=self.limits.fsync_chunks,
            )
        with self._lock:
            self.download = download
            if self._counted_bundle != bundle_id:
                self._counted_bundle, self._bytes_received = bundle_id, 0
            self._last_progress = self._clock()
            self._last_request = 0.0
            self._idle_requests = 0
            self._completed_at = None
        if not download.complete:
            self.listen(bundle_id)

    def _detach(self) -> BundleDownload:
        """Take the download away from the intake (the caller closes or removes it)."""
        with self._lock:
            download, self.download = self.download, None
        assert download is not None
        return download

    def accept(self, chunk: Chunk | ChunkFrame) -> bool:
        """Store a chunk of the current bundle; returns whether it was new. Raises
        ``ProtocolError`` for a chunk that does not fit, ``InstallError`` for disk trouble."""
        with self._lock:
            return self._store(chunk)

    def _store(self, chunk: Chunk | ChunkFrame) -> bool:
        assert self.download is not None
        fresh = self.download.store(chunk)
        if fresh:
            self._bytes_received += len(chunk.data)
            if self.download.complete:
                self._completed_at = now()
            self._last_progress = self._clock()
            self._idle_requests = 0
        return fresh

    def take(self, chunk: Chunk | ChunkFrame) -> Intake:
        """The network thread's intake: store a chunk of the running, incomplete download
        (write at its offset, record its hash and map entry in memory). Anything else —
        another bundle, no download, a chunk that does not fit, a failed write — is left to
        the worker (``DEFERRED``), which meets it exactly as if it had never been tried here
        (nothing was changed)."""
        with self._lock:
            dl = self.download
            if dl is None or dl.complete or chunk.bundle_id != dl.bundle_id:
                return Intake.DEFERRED
            try:
                self._store(chunk)
            except (ProtocolError, InstallError):
                return Intake.DEFERRED
            return Intake.COMPLETED if dl.complete else Intake.STORED

    def tick(self) -> None:
        """Write the download's pending record; ask for the missing chunks once the flow has
        stopped for a while."""
        now = self._clock()
        with self._lock:
            dl = self.download
            if dl is None or dl.complete:
                return
            dl.record()  # the hashes and map entries of the chunks since the last batch
            interval = self.retry_s * min(8, 2**self._idle_requests)
            due = now - self._last_progress >= interval and now - self._last_request >= interval
            missing = dl.missing() if due else []
            if due:
                self._idle_requests += 1
        if due:
            self._request(missing)

    def refetch(self, indices: list[int]) -> None:
        """Chunks found corrupt after assembly: forget them and ask for them now."""
        with self._lock:
            assert self.download is not None
            self.download.forget(indices)
            self._last_progress = self._clock()
            self._idle_requests = 1
            bundle_id = self.download.bundle_id
        self.listen(bundle_id)
        self._request(indices)

    def _request(self, indices: list[int]) -> None:
        assert self.download is not None
        wanted = indices[: self.limits.max_request_indices]
        self._emit(
            ChunkRequest(
                device_id=self.device_id, bundle_id=self.download.bundle_id, indices=wanted
            )
        )
        self._last_request = self._clock()
        log.info("asked for %d chunks of %s", len(wanted), self.download.bundle_id[:12])

    def sync(self) -> None:
        """Make the download durable (the commit point before the install relies on it)."""
        with self._lock:  # the record under the lock; the syncs without (nothing arrives:
            dl = self.download  # the download is complete before its commit point)
            if dl is None:
                return
            dl.record()
        dl.sync()

    def read_all(self) -> bytes:
        assert self.download is not None
        return self.download.read_all()

    def view(self) -> memoryview:
        """The downloaded bytes without a copy (see :meth:`BundleDownload.view`)."""
        assert self.download is not None
        return self.download.view()

    def release(self, *, keep: str | None = None) -> None:
        """Stop listening and delete the download (unless it is of bundle ``keep``)."""
        self.stop_listening()
        if self.download is not None and self.download.bundle_id != keep:
            self._detach().remove()

    def clear(self) -> None:
        """Stop listening and delete every download, open or left on disk by an earlier
        process (nothing downloaded is needed any more)."""
        self.release()
        self.remove_stale(None)

    def close(self) -> None:
        """Release file handles, keep everything on disk (process stop)."""
        if self.download is not None:
            self._detach().close()

    def remove_stale(self, keep: str | None) -> None:
        """Delete downloads of other bundles (left by a kill right after a deployment ended)."""
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale.name != keep:
                    shutil.rmtree(stale, ignore_errors=True)
