"""Where the demo's wall time goes: named phases, timed as they run, for the summary.

An operator reading ``summary.json`` (``phases_s``) sees which part of the loop took the
time: starting the hub and the fleet, each training run, each rollout, the serving the
driver does, and how long the hub took to notice the drift.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["PHASES", "PhaseClock"]

#: the demo's phases, in the order they run (what each covers, for the summary's readers)
PHASES: dict[str, str] = {
    "hub_start": "embedded broker, key store, hub (registry, ingest, engine, API)",
    "fleet_start": "device processes started until every device said hello",
    "initial_training": "first model: federated training, compression, signed bundle",
    "initial_rollout": "first model's staged rollout until every device serves it",
    "serve_before_drift": "inputs and labels streamed to every device before the drift",
    "drift_detection": "drift onset until the hub's policy started the retraining run",
    "retraining": "retraining run: federated training, compression, bundle and deltas",
    "rollout_to_drifted": "retrained model's rollout until every drifted device serves it",
    "serve_after_retrain": "inputs and labels streamed while the retrained model's rollout "
    "reaches the other sites, until it is done",
}


class PhaseClock:
    """Seconds spent per named phase (a phase timed twice adds up)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (also when it raises)."""
        started = self._clock()
        try:
            yield
        finally:
            self.record(name, self._clock() - started)

    def record(self, name: str, seconds: float) -> None:
        """Add ``seconds`` (measured elsewhere) to phase ``name``."""
        if name not in PHASES:
            raise KeyError(f"unknown demo phase {name!r}")
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def as_dict(self) -> dict[str, float]:
        """The phases timed so far, in :data:`PHASES` order, in seconds (3 decimals)."""
        return {name: round(self.seconds[name], 3) for name in PHASES if name in self.seconds}
