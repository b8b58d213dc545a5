"""What the ingest's two threads share: the fair queue, held acknowledgements, counters.

paho's network thread admits messages (:mod:`.admission`), the writer thread drains and
commits them (:mod:`.writer`); both touch this state only under :attr:`IngestState.lock`,
which is also the condition the writer sleeps on.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.fairness import FairQueue, RecentKeys
from cloud_hub.ingest.intake import Inbound

__all__ = ["IngestState", "worth_logging"]

Ack = Callable[[], None]


@dataclass
class IngestState:
    """The queue between the threads and everything counted about it (guarded by ``lock``).

    ``held_acks``: QoS 1 acknowledgements of queued must-keep messages, keyed by the queued
    item's identity, released only after the message's batch commits: a hub killed between
    receipt and commit gets the message again from the broker (persistent session)."""

    queue: FairQueue[Inbound]
    recent: RecentKeys
    lock: threading.Condition = field(default_factory=threading.Condition)
    held_acks: dict[int, Ack] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    queued_since: float = float("-inf")  # monotonic: when the queue last stopped being empty

    @classmethod
    def for_config(cls, config: IngestConfig) -> IngestState:
        return cls(
            queue=FairQueue(
                capacity=config.per_device_queue,
                rate_per_s=config.telemetry_rate_per_s,
                burst=config.telemetry_burst,
                max_devices=config.max_devices,
            ),
            recent=RecentKeys(max_devices=config.max_devices),
        )

    def lag_p95(self) -> float:
        """Received → committed, 95th percentile over recent messages (caller holds the lock)."""
        lags = sorted(self.lags)
        return lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else 0.0


def worth_logging(seen: int) -> bool:
    """Log the first ten of a kind, then at powers of two: a flood of garbage logs sparsely."""
    return seen <= 10 or seen & (seen - 1) == 0
