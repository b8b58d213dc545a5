"""Who gets the full bundle when a delta does not apply (``ChunkRequest(full=True)``).

A device that cannot apply a delta asks once for the full bundle; answering re-publishes the
whole bundle, so a request of 181 bytes costs the hub and the broker megabytes. The policy
here (pure bookkeeping; the publisher does the sending) makes that cheap to refuse:

- only a device the delta was offered to is served (R8: targets only);
- one fallback per (device, delta) is queued or in flight at a time; repeats are coalesced;
- after a fallback was sent, the same (device, delta) is refused for ``min_interval_s``;
- at most ``max_pending`` devices wait in all; devices waiting for the same full bundle
  are sent it together, in one batch (one fan-out instead of one per device).
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["FallbackBatch", "FallbackDecision", "FullFallbacks"]


class FallbackDecision(str, enum.Enum):
    QUEUED = "queued"  # a batch will send the full bundle to this device
    UNKNOWN = "unknown"  # not a delta this hub sent (or forgotten): nothing to send
    NOT_TARGET = "not_target"  # R8: the delta was not offered to this device
    COALESCED = "coalesced"  # already queued or being sent for this device
    RATE_LIMITED = "rate_limited"  # sent to this device recently
    BUSY = "busy"  # too many devices waiting


@dataclass(frozen=True)
class FallbackBatch:
    """Send ``full`` to ``device_ids`` as deployment ``deployment_id``."""

    delta_id: str
    full: bytes
    deployment_id: str
    device_ids: tuple[str, ...]


@dataclass
class _Delta:
    full: bytes
    deployment_id: str
    targets: set[str]
    waiting: set[str] = field(default_factory=set)
    sending: set[str] = field(default_factory=set)
    scheduled: bool = False  # a batch for this delta is queued or running


class FullFallbacks:
    """Thread-safe. ``request`` from the MQTT thread; ``take``/``done`` from the batch worker.

    Times are parameters (``now``): no clock is read here.
    """

    def __init__(self, *, max_deltas: int, max_pending: int, min_interval_s: float) -> None:
        self.max_deltas = max_deltas
        self.max_pending = max_pending
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._deltas: OrderedDict[str, _Delta] = OrderedDict()
        self._last_sent: OrderedDict[tuple[str, str], float] = OrderedDict()

    def offer(self, delta_id: str, full: bytes, deployment_id: str, targets: list[str]) -> None:
        """Record that delta ``delta_id`` (whose full bundle is ``full``) was offered to
        ``targets``; a repeated offer adds its devices."""
        with self._lock:
            entry = self._deltas.get(delta_id)
            if entry is None:
                entry = _Delta(full=full, deployment_id=deployment_id, targets=set())
                self._deltas[delta_id] = entry
            entry.targets.update(targets)
            self._deltas.move_to_end(delta_id)
            while len(self._deltas) > self.max_deltas:
                self._deltas.popitem(last=False)

    def request(self, device_id: str, delta_id: str, now: float) -> FallbackDecision:
        """A device asked for the full bundle of ``delta_id``: decide; with ``QUEUED`` the
        caller schedules a batch unless :meth:`needs_batch` says one is already coming."""
        with self._lock:
            entry = self._deltas.get(delta_id)
            if entry is None:
                return FallbackDecision.UNKNOWN
            if device_id not in entry.targets:
                return FallbackDecision.NOT_TARGET
            if device_id in entry.waiting or device_id in entry.sending:
                return FallbackDecision.COALESCED
            last = self._last_sent.get((device_id, delta_id))
            if last is not None and now - last < self.min_interval_s:
                return FallbackDecision.RATE_LIMITED
            if self._pending() >= self.max_pending:
                return FallbackDecision.BUSY
            entry.waiting.add(device_id)
            return FallbackDecision.QUEUED

    def needs_batch(self, delta_id: str) -> bool:
        """Whether the caller must schedule a batch for ``delta_id`` (marks it scheduled)."""
        with self._lock:
            entry = self._deltas.get(delta_id)
            if entry is None or entry.scheduled or not entry.waiting:
                return False
            entry.scheduled = True
            return True

    def take(self, delta_id: str) -> FallbackBatch | None:
        """Every device waiting for ``delta_id``'s full bundle, now being sent; ``None`` (and
        the batch unscheduled) when nobody waits."""
        with self._lock:
            entry = self._deltas.get(delta_id)
            if entry is None:
                return None
            if not entry.waiting:
                entry.scheduled = False
                return None
            devices = tuple(sorted(entry.waiting))
            entry.sending.update(devices)
            entry.waiting.clear()
            return FallbackBatch(delta_id, entry.full, entry.deployment_id, devices)

    def done(self, batch: FallbackBatch, now: float, *, sent: bool = True) -> None:
        """``batch`` was sent: its devices may ask again after the interval; one that failed
        to send (the hub's trouble, not theirs) may be asked for again at once."""
        with self._lock:
            entry = self._deltas.get(batch.delta_id)
            if entry is not None:
                entry.sending.difference_update(batch.device_ids)
            for device_id in batch.device_ids if sent else ():
                key = (device_id, batch.delta_id)
                self._last_sent[key] = now
                self._last_sent.move_to_end(key)
            # oldest first: forget what no longer limits anything (bounded by recent targets)
            while self._last_sent and now - next(iter(self._last_sent.values())) >= (
                self.min_interval_s
            ):
                self._last_sent.popitem(last=False)

    def _pending(self) -> int:
        return sum(len(e.waiting) + len(e.sending) for e in self._deltas.values())
