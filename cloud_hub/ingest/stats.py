"""The ingest's counters (:class:`IngestStats`), and their sum over the worker processes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["IngestStats", "merged"]


@dataclass(frozen=True)
class IngestStats:
    """A snapshot of the ingest counters (for ``/metrics`` and tests)."""

    received: int
    accepted: int
    queued: int
    written: int
    batches: int
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    write_errors: int = 0
    events_new: int = 0
    drift_new: int = 0
    lag_p95_s: float = 0.0  # received → committed, over recent messages
    connected: bool = False


def merged(own: IngestStats, workers: list[IngestStats]) -> IngestStats:
    """``own`` (the hub's connection) plus what the worker processes last reported: counts
    add up, the lag is the worst, connected means every connection is."""
    everyone = [own, *workers]
    rejected: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for s in everyone:
        rejected.update(s.rejected)
        dropped.update(s.dropped)
    return IngestStats(
        received=sum(s.received for s in everyone),
        accepted=sum(s.accepted for s in everyone),
        queued=sum(s.queued for s in everyone),
        written=sum(s.written for s in everyone),
        batches=sum(s.batches for s in everyone),
        rejected=dict(rejected),
        dropped=dict(dropped),
        duplicates=sum(s.duplicates for s in everyone),
        write_errors=sum(s.write_errors for s in everyone),
        events_new=sum(s.events_new for s in everyone),
        drift_new=sum(s.drift_new for s in everyone),
        lag_p95_s=max(s.lag_p95_s for s in everyone),
        connected=all(s.connected for s in everyone),
    )
