"""The repair queue: chunks devices asked for again, served round-robin between devices.

The hub keeps the encoded chunk frames of its most recent bundles (LRU) so it can answer
``ChunkRequest``s; each device's pending indices are deduplicated and bounded, so a device
that repeats its request while the first is being served adds nothing, and one device asking
for a whole bundle cannot starve the others.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cloud_hub.delivery.progress import plan_repair

__all__ = ["RepairItem", "RepairQueue"]


@dataclass(frozen=True)
class RepairItem:
    device_id: str
    bundle_id: str
    index: int
    frame: bytes


@dataclass
class _CachedBundle:
    frames: list[bytes]
    pending: dict[str, set[int]] = field(default_factory=dict)  # device -> queued indices


class RepairQueue:
    """Thread-safe: the MQTT thread adds requests, a worker thread takes items."""

    def __init__(self, *, max_cached_bundles: int, max_indices: int, max_pending: int) -> None:
        self.max_cached_bundles = max_cached_bundles
        self.max_indices = max_indices
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._bundles: OrderedDict[str, _CachedBundle] = OrderedDict()
        self._order: deque[tuple[str, str]] = deque()  # (device, bundle) with pending work
        self._queued: set[tuple[str, str]] = set()
        self._closed = False

    def cache(self, bundle_id: str, frames: list[bytes]) -> None:
        """Keep ``frames`` to answer requests; the least recently deployed bundle goes first."""
        with self._cond:
            cached = self._bundles.get(bundle_id)
            if cached is None or not _same_split(cached.frames, frames):
                # new, or the same bundle split with another chunk size: pending indices
                # named the old chunks, so they go (devices ask again under the new offer)
                self._bundles[bundle_id] = _CachedBundle(frames)
            self._bundles.move_to_end(bundle_id)
            while len(self._bundles) > self.max_cached_bundles:
                self._bundles.popitem(last=False)

    def request(
        self, device_id: str, bundle_id: str, indices: Iterable[int], *, full: bool = False
    ) -> int | None:
        """Queue what ``device_id`` asked for; returns how many chunks were queued, ``None``
        for a bundle this hub does not have (any more)."""
        with self._cond:
            cached = self._bundles.get(bundle_id)
            if cached is None:
                return None
            indices = list(indices)
            if full and not indices:
                indices = list(range(len(cached.frames)))
            pending = cached.pending.setdefault(device_id, set())
            total = sum(len(p) for b in self._bundles.values() for p in b.pending.values())
            plan = plan_repair(
                indices,
                chunk_count=len(cached.frames),
                pending=frozenset(pending),
                max_indices=max(0, min(self.max_indices, self.max_pending - total)),
            )
            if plan:
                key = (device_id, bundle_id)
                if key not in self._queued:
                    self._queued.add(key)
                    self._order.append(key)
                pending.update(plan)
                self._cond.notify_all()
            return len(plan)

    def next(self, timeout: float) -> RepairItem | None:
        """The next chunk to resend (round-robin between devices), or ``None`` after
        ``timeout`` or once closed."""
        with self._cond:
            if not self._order and not self._closed:
                self._cond.wait(timeout)
            while self._order and not self._closed:
                device_id, bundle_id = self._order[0]
                cached = self._bundles.get(bundle_id)
                pending = cached.pending.get(device_id) if cached is not None else None
                if cached is None or not pending:
                    self._queued.discard(self._order.popleft())
                    continue
                index = min(pending)
                pending.discard(index)
                self._order.rotate(-1)
                return RepairItem(device_id, bundle_id, index, cached.frames[index])
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def _same_split(old: list[bytes], new: list[bytes]) -> bool:
    """Whether two chunk lists of one bundle use the same chunk size (the first frame holds
    the first chunk's bytes, so equal first frames mean an equal split)."""
    return len(old) == len(new) and (not old or old[0] == new[0])
