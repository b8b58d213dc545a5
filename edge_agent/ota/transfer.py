"""Getting one bundle's bytes: the resumable download on disk, the fan-out subscription, and
asking the hub for exactly the chunks that are missing.

Chunks arrive once on the bundle's fan-out topic; whatever was lost (joined late, a
disconnect, a corrupt frame, a restart) is requested with a ``ChunkRequest`` once no new
chunk has arrived for ``retry_s`` (backing off up to 8x while nothing comes), and the hub
answers on the device's own ``chunks`` topic.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import AgentLimits
from edge_agent.ota.download import BundleDownload
from shared.chunks import Chunk, ChunkFrame
from shared.messages import ChunkRequest, Message
from shared.topics import TopicScheme

__all__ = ["ChunkTransfer"]

log = logging.getLogger(__name__)


class ChunkTransfer:
    """At most one bundle transfer at a time. Not thread-safe (the updater serialises)."""

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
        self.bytes_received = 0
        self._counted_bundle: str | None = None

    @property
    def bundle_id(self) -> str | None:
        return self.download.bundle_id if self.download is not None else None

    @property
    def complete(self) -> bool:
        return self.download is not None and self.download.complete

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
            self.download.close()
            self.download = None
        if self.download is None:
            self.download = BundleDownload(
                self.root / bundle_id,
                bundle_id=bundle_id,
                total_size=total_size,
                chunk_size=chunk_size,
                fsync_chunks=self.limits.fsync_chunks,
            )
        if self._counted_bundle != bundle_id:
            self._counted_bundle, self.bytes_received = bundle_id, 0
        self._last_progress = self._clock()
        self._last_request = 0.0
        self._idle_requests = 0
        if not self.download.complete:
            self.listen(bundle_id)

    def accept(self, chunk: Chunk | ChunkFrame) -> bool:
        """Store a chunk of the current bundle; returns whether it was new. Raises
        ``ProtocolError`` for a chunk that does not fit, ``InstallError`` for disk trouble."""
        assert self.download is not None
        fresh = self.download.store(chunk)
        if fresh:
            self.bytes_received += len(chunk.data)
            self._last_progress = self._clock()
            self._idle_requests = 0
        return fresh

    def tick(self) -> None:
        """Write the download's pending record; ask for the missing chunks once the flow has
        stopped for a while."""
        dl, now = self.download, self._clock()
        if dl is None or dl.complete:
            return
        dl.record()  # the hashes and map entries of the chunks since the last batch
        interval = self.retry_s * min(8, 2**self._idle_requests)
        if now - self._last_progress >= interval and now - self._last_request >= interval:
            self._request(dl.missing())
            self._idle_requests += 1

    def refetch(self, indices: list[int]) -> None:
        """Chunks found corrupt after assembly: forget them and ask for them now."""
        assert self.download is not None
        self.download.forget(indices)
        self.listen(self.download.bundle_id)
        self._last_progress = self._clock()
        self._idle_requests = 1
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
        if self.download is not None:
            self.download.sync()

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
            self.download.remove()
            self.download = None

    def clear(self) -> None:
        """Stop listening and delete every download, open or left on disk by an earlier
        process (nothing downloaded is needed any more)."""
        self.release()
        self.remove_stale(None)

    def close(self) -> None:
        """Release file handles, keep everything on disk (process stop)."""
        if self.download is not None:
            self.download.close()
            self.download = None

    def remove_stale(self, keep: str | None) -> None:
        """Delete downloads of other bundles (left by a kill right after a deployment ended)."""
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale.name != keep:
                    shutil.rmtree(stale, ignore_errors=True)
