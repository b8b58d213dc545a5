"""Flood control for the ingest (pure, clock injected): per-device token buckets, bounded
per-device queues drained round-robin, and a small window that drops redelivered telemetry.

A device that spams fills only its own queue (its oldest telemetry goes first) and gets
at most one message per drain round, so every other device keeps flowing.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Admission", "FairQueue", "RecentKeys", "TokenBucket"]

T = TypeVar("T")


class Admission(enum.Enum):
    ACCEPTED = "accepted"
    RATE_LIMITED = "rate_limited"  # over the device's telemetry rate: dropped
    OVERFLOW = "overflow"  # the device's queue is full of must-keep messages: dropped
    EVICTED_OLDEST = "evicted_oldest"  # accepted; the device's oldest telemetry was dropped
    TOO_MANY_DEVICES = "too_many_devices"


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Slot(Generic[T]):
    item: T
    droppable: bool


class FairQueue(Generic[T]):
    """Bounded per-device FIFO queues with round-robin draining.

    ``droppable`` items (telemetry) are rate-limited per device and are the first to go
    when the device's queue is full; the others (hello, status, events, drift) are only
    dropped when a device's whole queue is full of them.
    """

    def __init__(
        self,
        *,
        capacity: int,
        rate_per_s: float,
        burst: float,
        max_devices: int,
    ) -> None:
        self._capacity = capacity
        self._rate = rate_per_s
        self._burst = burst
        self._max_devices = max_devices
        self._queues: OrderedDict[str, deque[_Slot[T]]] = OrderedDict()  # round-robin order
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def queued(self, device_id: str) -> int:
        return len(self._queues.get(device_id, ()))

    def take_token(self, device_id: str, now: float) -> bool:
        """Spend one of the device's droppable-message tokens (``False``: over its rate)."""
        return self._bucket(device_id, now).take(now)

    def offer(
        self, device_id: str, item: T, *, droppable: bool, now: float, rate_checked: bool = False
    ) -> Admission:
        """Queue ``item``. ``rate_checked``: the caller already spent a token
        (:meth:`take_token`), e.g. before paying for decoding the message."""
        if droppable and not rate_checked and not self.take_token(device_id, now):
            return Admission.RATE_LIMITED
        queue = self._queues.get(device_id)
        if queue is None:
            if len(self._queues) >= self._max_devices:
                return Admission.TOO_MANY_DEVICES
            queue = self._queues[device_id] = deque()
        result = Admission.ACCEPTED
        if len(queue) >= self._capacity:
            victim = next((s for s in queue if s.droppable), None)
            if victim is None:
                return Admission.OVERFLOW
            queue.remove(victim)
            self._size -= 1
            result = Admission.EVICTED_OLDEST
        queue.append(_Slot(item, droppable))
        self._size += 1
        return result

    def drain(self, max_items: int) -> list[tuple[str, T]]:
        """Up to ``max_items``, one per device per round, in round-robin order."""
        out: list[tuple[str, T]] = []
        while self._queues and len(out) < max_items:
            device_id, queue = next(iter(self._queues.items()))
            out.append((device_id, queue.popleft().item))
            self._size -= 1
            if queue:
                self._queues.move_to_end(device_id)
            else:
                del self._queues[device_id]
        return out

    def _bucket(self, device_id: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._burst, now)
            self._buckets[device_id] = bucket
            if len(self._buckets) > self._max_devices:  # forget the least recently active
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device_id)
        return bucket


class RecentKeys:
    """Remembers the last ``per_device`` keys of each device (e.g. telemetry ``(seq, ts)``)
    to drop QoS 1 redeliveries; bounded in devices and keys."""

    def __init__(self, *, per_device: int = 64, max_devices: int = 100_000) -> None:
        self._per_device = per_device
        self._max_devices = max_devices
        self._seen: OrderedDict[str, tuple[set[Hashable], deque[Hashable]]] = OrderedDict()

    def seen_before(self, device_id: str, key: Hashable) -> bool:
        """Whether ``key`` was seen for this device; records it if not."""
        entry = self._seen.get(device_id)
        if entry is None:
            entry = (set(), deque())
            self._seen[device_id] = entry
            if len(self._seen) > self._max_devices:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(device_id)
        keys, order = entry
        if key in keys:
            return True
        keys.add(key)
        order.append(key)
        if len(order) > self._per_device:
            keys.discard(order.popleft())
        return False
