"""The ingest core: fold device messages into one batch, then write it in one transaction.

:meth:`IngestBatch.apply` is pure (no I/O): it keeps only what the registry needs —
the newest hello and status per device, each event and drift report once by id, and
telemetry already reduced to per-minute aggregates. :func:`write_batch` stores a batch;
every write in it is idempotent, so replaying a batch (after a failed commit) or receiving
duplicates changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

from cloud_hub.ingest.intake import Inbound
from cloud_hub.registry import Session, devices, reports
from cloud_hub.registry.records import TelemetryAggregate
from shared.messages import DriftReport, Event, Hello, Status, Telemetry

__all__ = ["BatchCounts", "IngestBatch", "write_batch"]

MAX_TS = 1e11  # year 5138: beyond it a device clock is broken
_AggKey = tuple[str, int, int, str]  # device, minute, model version, metric
_M = TypeVar("_M")


@dataclass
class _Acc:
    count: int
    sum: float
    max: float
    last: float
    last_ts: float


@dataclass(frozen=True)
class BatchCounts:
    """What one written batch changed."""

    messages: int
    hellos: int
    statuses: int
    events_new: int
    drift_new: int
    telemetry_rows: int
    skipped_values: int
    removed_refused: int = 0  # messages of devices an operator removed, not written
    removed_devices: tuple[str, ...] = ()


@dataclass
class IngestBatch:
    """Messages folded since the last write (see module docstring)."""

    max_metrics: int = 64
    messages: int = 0
    skipped_values: int = 0
    hellos: dict[str, Hello] = field(default_factory=dict)
    statuses: dict[str, Status] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    drift: dict[str, DriftReport] = field(default_factory=dict)
    telemetry: dict[_AggKey, _Acc] = field(default_factory=dict)
    items: list[Inbound] = field(default_factory=list)  # to isolate an unstorable message
    received_at: list[float] = field(default_factory=list)  # per message, for lag metrics

    def __len__(self) -> int:
        return self.messages

    def apply(self, item: Inbound) -> None:
        """Fold one decoded message into the batch."""
        msg = item.message
        self.messages += 1
        self.items.append(item)
        self.received_at.append(item.received_at)
        seen = self.last_seen.get(item.device_id, 0.0)
        self.last_seen[item.device_id] = max(seen, item.received_at)
        if isinstance(msg, Hello):
            old = self.hellos.get(item.device_id)
            if old is None or msg.ts > old.ts:
                self.hellos[item.device_id] = msg
            self.online[item.device_id] = True
        elif isinstance(msg, Status):
            old_status = self.statuses.get(item.device_id)
            if old_status is None or msg.ts > old_status.ts:
                self.statuses[item.device_id] = msg
            self.online[item.device_id] = msg.online  # arrival order: the will comes last
        elif isinstance(msg, Event):
            self.events.setdefault(msg.event_id, msg)
        elif isinstance(msg, DriftReport):
            self.drift.setdefault(msg.report_id, msg)
        elif isinstance(msg, Telemetry):
            self._fold_telemetry(msg)

    def _fold_telemetry(self, msg: Telemetry) -> None:
        if not 0 <= msg.ts <= MAX_TS:  # a minute index must fit the column
            self.skipped_values += len(msg.metrics)
            return
        minute = int(msg.ts // 60)
        version = msg.model_version if msg.model_version is not None else 0
        for i, (name, raw) in enumerate(msg.metrics.items()):
            value = float(raw) if isinstance(raw, int | float) else math.nan
            bad_name = len(name) > 64 or "\x00" in name
            if i >= self.max_metrics or bad_name or not math.isfinite(value):
                self.skipped_values += 1
                continue
            key = (msg.device_id, minute, version, name)
            acc = self.telemetry.get(key)
            if acc is None:
                self.telemetry[key] = _Acc(1, value, value, value, msg.ts)
                continue
            acc.count += 1
            acc.sum += value
            acc.max = max(acc.max, value)
            if msg.ts >= acc.last_ts:
                acc.last, acc.last_ts = value, msg.ts

    def device_ids(self) -> set[str]:
        return {item.device_id for item in self.items}

    def without(self, device_ids: set[str]) -> IngestBatch:
        """The same batch minus every message of ``device_ids``."""
        kept = IngestBatch(max_metrics=self.max_metrics)
        for item in self.items:
            if item.device_id not in device_ids:
                kept.apply(item)
        return kept

    def aggregates(self) -> list[TelemetryAggregate]:
        """The telemetry rows, in key order (see :func:`write_batch`)."""
        return [
            TelemetryAggregate(d, m, v, name, a.count, a.sum, a.max, a.last, a.last_ts)
            for (d, m, v, name), a in sorted(self.telemetry.items(), key=_key)
        ]


def _key(item: tuple[_AggKey, _Acc]) -> _AggKey:
    return item[0]


def _by_key(messages: dict[str, _M]) -> list[_M]:
    return [messages[key] for key in sorted(messages)]


def write_batch(session: Session, batch: IngestBatch, *, now: float) -> BatchCounts:
    """Store ``batch`` (the caller owns the transaction). Messages of removed devices are
    not stored: a decommissioned device still online must not come back as a stub."""
    removed = devices.removed_among(session, batch.device_ids())
    full = batch
    if removed:
        batch = batch.without(removed)
    # Order matters: rows for new devices first, then the last-writer-wins updates. Rows
    # are written in key order: several ingest processes (shared subscriptions) write the
    # same devices' rows at once and lock them in one order, never in a deadlock.
    devices.touch_devices(session, dict(sorted(batch.last_seen.items())), now=now)
    devices.record_hellos(session, _by_key(batch.hellos), now=now)
    devices.record_statuses(session, _by_key(batch.statuses), now=now)
    devices.set_online(session, dict(sorted(batch.online.items())))
    events_new = reports.record_events(session, _by_key(batch.events), now=now)
    drift_new = reports.record_drift(session, _by_key(batch.drift), now=now)
    aggregates = batch.aggregates()
    reports.merge_telemetry(session, aggregates)
    return BatchCounts(
        messages=batch.messages,
        hellos=len(batch.hellos),
        statuses=len(batch.statuses),
        events_new=events_new,
        drift_new=drift_new,
        telemetry_rows=len(aggregates),
        skipped_values=batch.skipped_values,
        removed_refused=full.messages - batch.messages,
        removed_devices=tuple(sorted(removed)),
    )
