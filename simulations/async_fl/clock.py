"""Synchronous SecAgg+ FedAvg and asynchronous buffered SecAgg+ on one virtual clock.

Both modes use the same trace, the same fleet data, the same ClientApp and the same secure
exchange (:meth:`cloud_hub.fl.async_run.AsyncBufferedRun.fold_members`); both stop after
the same number of folded updates, so their final accuracies are comparable.

- **sync**: a round orders ``cohort`` devices online at its start, all from the current
  version, and waits until every one of them has trained *and* is online again to upload,
  or until ``round_deadline_s``; the secure exchange then folds whoever uploaded (at least
  3, SecAgg+'s minimum) into a plain mean (FedAvg, server learning rate 1). Late devices'
  work is lost. (Generous to sync: a device that uploaded is assumed to finish the
  remaining SecAgg+ stages even if it went offline afterwards.)
- **async**: up to ``concurrency`` devices train at once, each ordered when it is online
  and idle; a device holds its update (even offline) and a buffer runs as soon as ``K``
  ready holders are online through one exchange (FedBuff fold, staleness-weighted).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from cloud_hub.fl.async_run import AsyncBufferedRun, BufferRecord
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.fedbuff import FedBuffConfig
from simulations.async_fl.fleet import Fleet
from simulations.async_fl.trace import AvailabilityTrace

__all__ = ["ClockConfig", "ModeResult", "run_async", "run_sync"]

_MIN_SECURE = 3


@dataclass(frozen=True)
class ClockConfig:
    """Timing and sizes of both modes (virtual seconds)."""

    work_s: float = 600.0  # one local training at speed 1
    exchange_s: float = 30.0  # one SecAgg+ exchange
    tick_s: float = 60.0
    updates: int = 300  # folded updates after which each mode stops
    cohort: int = 10  # sync: devices per round
    round_deadline_s: float = 3 * 3_600.0
    buffer_size: int = 10  # async: K
    concurrency: int = 30
    max_staleness: int = 10
    server_lr: float = 1.0
    seed: int = 0


@dataclass
class ModeResult:
    """Accuracy over virtual time, and what each buffer (or round) did."""

    mode: str
    curve: list[tuple[float, float]] = field(default_factory=list)
    records: list[BufferRecord] = field(default_factory=list)
    folded_updates: int = 0
    failed: int = 0

    @property
    def buffers(self) -> int:
        return sum(1 for r in self.records if r.completed)

    @property
    def buffers_secure(self) -> int:
        return sum(1 for r in self.records if r.completed and r.secure)

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1][1]

    def time_to(self, target: float) -> float | None:
        return next((t for t, acc in self.curve if acc >= target), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "curve": [[t, acc] for t, acc in self.curve],
            "buffers": self.buffers,
            "buffers_secure": self.buffers_secure,
            "failed": self.failed,
            "folded_updates": self.folded_updates,
            "records": [r.to_dict() for r in self.records],
        }


def _secagg() -> SecAggConfig:
    return SecAggConfig(num_shares=1.0, reconstruction_threshold=0.6)


def _folded(result: ModeResult, record: BufferRecord, t: float, fleet: Fleet, w: Any) -> None:
    result.records.append(record)
    if record.completed:
        result.folded_updates += len(record.folded)
        result.curve.append((t, fleet.accuracy(w)))
    else:
        result.failed += 1


def run_sync(fleet: Fleet, trace: AvailabilityTrace, clock: ClockConfig) -> ModeResult:
    """Synchronous rounds (see the module docstring)."""
    rng = random.Random(clock.seed)
    run = AsyncBufferedRun(
        fleet.grid,
        fleet.initial,
        fedbuff=FedBuffConfig(buffer_size=clock.cohort, server_lr=1.0, max_staleness=0),
        secagg=_secagg(),
    )
    result = ModeResult("sync", [(0.0, fleet.accuracy(fleet.initial))])
    t, horizon, n = 0.0, trace.spec.horizon_s, len(fleet.nodes)
    while result.folded_updates < clock.updates and t < horizon:
        online = [d for d in range(n) if trace.online(d, t)]
        if len(online) < _MIN_SECURE:
            t += clock.tick_s
            continue
        cohort = rng.sample(online, min(clock.cohort, len(online)))
        run.order([fleet.nodes[d] for d in cohort])
        uploads = {
            d: trace.next_online(d, t + clock.work_s / float(trace.speeds[d])) for d in cohort
        }
        deadline = t + clock.round_deadline_s
        arrived = [d for d, u in uploads.items() if u <= deadline]
        close = max(uploads[d] for d in arrived) if len(arrived) == len(cohort) else deadline
        t = close + clock.exchange_s
        if len(arrived) < _MIN_SECURE:
            result.failed += 1
            continue
        holders = run.holders
        record = run.fold_members([holders[fleet.nodes[d]] for d in arrived])
        _folded(result, record, t, fleet, run.weights)
    return result


def run_async(fleet: Fleet, trace: AvailabilityTrace, clock: ClockConfig) -> ModeResult:
    """Asynchronous buffers (see the module docstring)."""
    rng = random.Random(clock.seed)
    run = AsyncBufferedRun(
        fleet.grid,
        fleet.initial,
        fedbuff=FedBuffConfig(
            buffer_size=clock.buffer_size,
            server_lr=clock.server_lr,
            max_staleness=clock.max_staleness,
        ),
        secagg=_secagg(),
    )
    index = {node: d for d, node in enumerate(fleet.nodes)}
    result = ModeResult("async", [(0.0, fleet.accuracy(fleet.initial))])
    ready_at: dict[int, float] = {}  # device -> when its training ends (training or holding)
    t, horizon, n = 0.0, trace.spec.horizon_s, len(fleet.nodes)
    while result.folded_updates < clock.updates and t < horizon:
        slots = clock.concurrency - len(ready_at)
        if slots > 0:
            idle = [d for d in range(n) if d not in ready_at and trace.online(d, t)]
            chosen = rng.sample(idle, min(slots, len(idle)))
            for ref in run.order([fleet.nodes[d] for d in chosen]):
                d = index[ref.device]
                ready_at[d] = t + clock.work_s / float(trace.speeds[d])
        ready = [
            d
            for d, end in ready_at.items()
            if end <= t and trace.online_through(d, t, t + clock.exchange_s)
        ]
        record = run.run_buffer(online=[fleet.nodes[d] for d in ready])
        holders = run.holders
        for d in ready:  # refused as too stale, or folded: the device is free again
            if fleet.nodes[d] not in holders:
                ready_at.pop(d, None)
        if record is not None:
            _folded(result, record, t + clock.exchange_s, fleet, run.weights)
        t += clock.tick_s
    return result
