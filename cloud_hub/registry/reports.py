"""What devices report: events, drift reports and per-minute telemetry aggregates.

Writers are idempotent: an event or drift report whose id is stored already is skipped,
so QoS 1 redeliveries and outbox replays never count twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import existing_keys, portable_insert, table_of, to_record
from cloud_hub.registry.records import (
    DriftRecord,
    EventRecord,
    Page,
    TelemetryAggregate,
    TelemetrySummary,
)
from cloud_hub.registry.tables import DriftRow, EventRow, TelemetryMinute
from shared.messages import DriftReport, Event

__all__ = [
    "list_drift",
    "list_events",
    "merge_telemetry",
    "record_drift",
    "record_events",
    "telemetry_series",
    "telemetry_summary",
]


def record_events(session: Session, events: Sequence[Event], *, now: float) -> int:
    """Store events not seen before (by ``event_id``); returns how many were new."""
    unique = {e.event_id: e for e in events}
    known = existing_keys(session, EventRow.event_id, unique)
    fresh = [e for i, e in unique.items() if i not in known]
    if not fresh:
        return 0
    rows = [
        {
            "event_id": e.event_id,
            "device_id": e.device_id,
            "kind": e.kind[:64],
            "deployment_id": e.deployment_id,
            "detail": e.detail,
            "data": dict(e.data),
            "ts": e.ts,
            "received_at": now,
        }
        for e in fresh
    ]
    stmt = portable_insert(session, table_of(EventRow)).on_conflict_do_nothing(
        index_elements=["event_id"]
    )
    session.execute(stmt, rows)
    return len(rows)


def record_drift(session: Session, reports: Sequence[DriftReport], *, now: float) -> int:
    """Store drift reports not seen before (by ``report_id``); returns how many were new."""
    unique = {r.report_id: r for r in reports}
    known = existing_keys(session, DriftRow.report_id, unique)
    rows = [
        {
            "report_id": r.report_id,
            "device_id": r.device_id,
            "model_name": r.model_name,
            "model_version": r.model_version,
            "window_size": r.window_size,
            "drift_score": r.drift_score,
            "drifted": r.drifted,
            "confidence_drift": r.confidence_drift,
            "features": {
                name: {"psi": f.psi, "ks": f.ks, **f.extra} for name, f in r.features.items()
            },
            "ts": r.ts,
            "received_at": now,
        }
        for rid, r in unique.items()
        if rid not in known
    ]
    if rows:
        stmt = portable_insert(session, table_of(DriftRow)).on_conflict_do_nothing(
            index_elements=["report_id"]
        )
        session.execute(stmt, rows)
    return len(rows)


def merge_telemetry(session: Session, aggregates: Sequence[TelemetryAggregate]) -> None:
    """Add per-minute aggregates into the stored ones (count and sum add, max is the max,
    last is the one with the newest timestamp)."""
    if not aggregates:
        return
    table = table_of(TelemetryMinute)
    insert = portable_insert(session, table)
    ex = insert.excluded
    greatest = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    stmt = insert.on_conflict_do_update(
        index_elements=["device_id", "minute", "model_version", "metric"],
        set_={
            "count": table.c.count + ex.count,
            "sum": table.c.sum + ex.sum,
            "max": greatest(table.c.max, ex.max),
            "last": case((ex.last_ts >= table.c.last_ts, ex.last), else_=table.c.last),
            "last_ts": greatest(table.c.last_ts, ex.last_ts),
        },
    )
    rows = [
        {
            "device_id": a.device_id,
            "minute": a.minute,
            "model_version": a.model_version,
            "metric": a.metric,
            "count": a.count,
            "sum": a.sum,
            "max": a.max,
            "last": a.last,
            "last_ts": a.last_ts,
        }
        for a in aggregates
    ]
    session.execute(stmt, rows)


def telemetry_series(
    session: Session,
    device_id: str,
    *,
    metric: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 5000,
) -> list[TelemetryAggregate]:
    """Per-minute aggregates of one device, oldest first."""
    conds = [TelemetryMinute.device_id == device_id]
    if metric is not None:
        conds.append(TelemetryMinute.metric == metric)
    if since is not None:
        conds.append(TelemetryMinute.minute >= int(since // 60))
    if until is not None:
        conds.append(TelemetryMinute.minute <= int(until // 60))
    rows = session.scalars(
        select(TelemetryMinute)
        .where(*conds)
        .order_by(TelemetryMinute.minute, TelemetryMinute.metric)
        .limit(limit)
    )
    return [to_record(TelemetryAggregate, r) for r in rows]


def telemetry_summary(
    session: Session,
    device_ids: Sequence[str],
    metric: str,
    *,
    since: float,
    until: float | None = None,
    model_version: int | None = None,
) -> dict[str, TelemetrySummary]:
    """One metric over ``[since, until]`` (minute resolution) per device."""
    summaries: dict[str, TelemetrySummary] = {}
    ids = list(dict.fromkeys(device_ids))
    tm = TelemetryMinute
    for i in range(0, len(ids), 500):
        conds = [tm.device_id.in_(ids[i : i + 500]), tm.metric == metric]
        conds.append(tm.minute >= int(since // 60))
        if until is not None:
            conds.append(tm.minute <= int(until // 60))
        if model_version is not None:
            conds.append(tm.model_version == model_version)
        rows = session.execute(
            select(tm.device_id, func.sum(tm.count), func.sum(tm.sum), func.max(tm.max))
            .where(*conds)
            .group_by(tm.device_id)
        )
        for device_id, count, total, peak in rows:
            summaries[device_id] = TelemetrySummary(
                device_id=device_id,
                metric=metric,
                count=int(count),
                mean=float(total) / int(count) if count else 0.0,
                max=float(peak),
                last=0.0,
            )
        last_rows = session.execute(
            select(tm.device_id, tm.last, tm.last_ts).where(*conds).order_by(tm.last_ts)
        )
        for device_id, last, _ts in last_rows:  # ascending: the newest one wins
            if device_id in summaries:
                s = summaries[device_id]
                summaries[device_id] = TelemetrySummary(
                    s.device_id, s.metric, s.count, s.mean, s.max, float(last)
                )
    return summaries


def list_events(
    session: Session,
    *,
    device_id: str | None = None,
    deployment_id: str | None = None,
    kinds: Sequence[str] | None = None,
    since: float | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[EventRecord]:
    """Events, newest first."""
    conds = []
    if device_id is not None:
        conds.append(EventRow.device_id == device_id)
    if deployment_id is not None:
        conds.append(EventRow.deployment_id == deployment_id)
    if kinds is not None:
        conds.append(EventRow.kind.in_(list(kinds)))
    if since is not None:
        conds.append(EventRow.ts >= since)
    total = session.scalar(select(func.count()).select_from(EventRow).where(*conds)) or 0
    rows = session.scalars(
        select(EventRow)
        .where(*conds)
        .order_by(EventRow.ts.desc(), EventRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return Page(
        items=[to_record(EventRecord, r) for r in rows], total=total, limit=limit, offset=offset
    )


def list_drift(
    session: Session,
    *,
    device_id: str | None = None,
    device_ids: Sequence[str] | None = None,
    model_version: int | None = None,
    drifted: bool | None = None,
    since: float | None = None,
    limit: int = 100,
    offset: int = 0,
    by_receipt: bool = False,
) -> Page[DriftRecord]:
    """Drift reports, newest first: by the device's ``ts``, or with ``by_receipt`` by when
    the hub received them (a device's clock cannot reorder those)."""
    conds = []
    if device_id is not None:
        conds.append(DriftRow.device_id == device_id)
    if device_ids is not None:
        conds.append(DriftRow.device_id.in_(list(device_ids)))
    if model_version is not None:
        conds.append(DriftRow.model_version == model_version)
    if drifted is not None:
        conds.append(DriftRow.drifted.is_(drifted))
    if since is not None:
        conds.append(DriftRow.ts >= since)
    total = session.scalar(select(func.count()).select_from(DriftRow).where(*conds)) or 0
    newest = DriftRow.received_at if by_receipt else DriftRow.ts
    rows = session.scalars(
        select(DriftRow)
        .where(*conds)
        .order_by(newest.desc(), DriftRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return Page(
        items=[to_record(DriftRecord, r) for r in rows], total=total, limit=limit, offset=offset
    )
