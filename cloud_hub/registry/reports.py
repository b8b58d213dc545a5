"""What devices report: events, drift reports and per-minute telemetry aggregates.

Writers are idempotent: an event or drift report whose id is stored already is skipped,
so QoS 1 redeliveries and outbox replays never count twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Text, case, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from cloud_hub.registry._row_arrays import RowArrays, is_postgresql
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


def _insert_new_statement(rows: RowArrays, table: Any, key: str) -> Any:
    """PostgreSQL: insert the rows whose ``key`` is not stored yet, returning their keys."""
    names = [name for name, _ in rows.columns]
    stmt = postgresql.insert(table).from_select(names, select(*(rows.value(n) for n in names)))
    return stmt.on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])


_EVENTS = RowArrays(
    "events",
    (
        ("event_id", String()),
        ("device_id", String()),
        ("kind", String()),
        ("deployment_id", String()),
        ("detail", Text()),
        ("data", JSON()),
        ("ts", Float()),
        ("received_at", Float()),
    ),
)
_EVENTS_STMT = _insert_new_statement(_EVENTS, table_of(EventRow), "event_id")


def record_events(session: Session, events: Sequence[Event], *, now: float) -> int:
    """Store events not seen before (by ``event_id``); returns how many were new."""
    unique = {e.event_id: e for e in events}
    if not unique:
        return 0
    if is_postgresql(session):
        rows = (
            (
                e.event_id,
                e.device_id,
                e.kind[:64],
                e.deployment_id,
                e.detail,
                dict(e.data),
                float(e.ts),
                now,
            )
            for e in unique.values()
        )
        return len(session.execute(_EVENTS_STMT, _EVENTS.bind(rows)).all())
    known = existing_keys(session, EventRow.event_id, unique)
    fresh = [e for i, e in unique.items() if i not in known]
    if not fresh:
        return 0
    rows_ = [
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
    session.execute(stmt, rows_)
    return len(rows_)


_DRIFT = RowArrays(
    "drift",
    (
        ("report_id", String()),
        ("device_id", String()),
        ("model_name", String()),
        ("model_version", Integer()),
        ("window_size", BigInteger()),
        ("drift_score", Float()),
        ("drifted", Boolean()),
        ("confidence_drift", Boolean()),
        ("features", JSON()),
        ("ts", Float()),
        ("received_at", Float()),
    ),
)
_DRIFT_STMT = _insert_new_statement(_DRIFT, table_of(DriftRow), "report_id")


def _drift_row(r: DriftReport, now: float) -> dict[str, Any]:
    return {
        "report_id": r.report_id,
        "device_id": r.device_id,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "window_size": r.window_size,
        "drift_score": float(r.drift_score),
        "drifted": bool(r.drifted),
        "confidence_drift": bool(r.confidence_drift),
        "features": {name: {"psi": f.psi, "ks": f.ks, **f.extra} for name, f in r.features.items()},
        "ts": float(r.ts),
        "received_at": now,
    }


def record_drift(session: Session, reports: Sequence[DriftReport], *, now: float) -> int:
    """Store drift reports not seen before (by ``report_id``); returns how many were new."""
    unique = {r.report_id: r for r in reports}
    if not unique:
        return 0
    if is_postgresql(session):
        rows = (tuple(_drift_row(r, now).values()) for r in unique.values())
        return len(session.execute(_DRIFT_STMT, _DRIFT.bind(rows)).all())
    known = existing_keys(session, DriftRow.report_id, unique)
    fresh = [_drift_row(r, now) for rid, r in unique.items() if rid not in known]
    if fresh:
        stmt = portable_insert(session, table_of(DriftRow)).on_conflict_do_nothing(
            index_elements=["report_id"]
        )
        session.execute(stmt, fresh)
    return len(fresh)


_AGGREGATES = RowArrays(
    "aggregates",
    (
        ("device_id", String()),
        ("minute", Integer()),
        ("model_version", Integer()),
        ("metric", String()),
        ("count", Integer()),
        ("sum", Float()),
        ("max", Float()),
        ("last", Float()),
        ("last_ts", Float()),
    ),
)


def _merge_statement(insert: Any, greatest: Any) -> Any:
    """The upsert that adds aggregates into the stored ones (``insert``: from either form)."""
    table = table_of(TelemetryMinute)
    ex = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=["device_id", "minute", "model_version", "metric"],
        set_={
            "count": table.c.count + ex.count,
            "sum": table.c.sum + ex.sum,
            "max": greatest(table.c.max, ex.max),
            "last": case((ex.last_ts >= table.c.last_ts, ex.last), else_=table.c.last),
            "last_ts": greatest(table.c.last_ts, ex.last_ts),
        },
    )


_MERGE_STMT = _merge_statement(
    postgresql.insert(table_of(TelemetryMinute)).from_select(
        [n for n, _ in _AGGREGATES.columns],
        select(*(_AGGREGATES.value(n) for n, _ in _AGGREGATES.columns)),
    ),
    func.greatest,
)


def merge_telemetry(session: Session, aggregates: Sequence[TelemetryAggregate]) -> None:
    """Add per-minute aggregates into the stored ones (count and sum add, max is the max,
    last is the one with the newest timestamp)."""
    if not aggregates:
        return
    rows = [
        (
            a.device_id,
            a.minute,
            a.model_version,
            a.metric,
            a.count,
            float(a.sum),
            float(a.max),
            float(a.last),
            float(a.last_ts),
        )
        for a in aggregates
    ]
    if is_postgresql(session):
        session.execute(_MERGE_STMT, _AGGREGATES.bind(rows))
        return
    stmt = _merge_statement(portable_insert(session, table_of(TelemetryMinute)), func.max)
    names = [n for n, _ in _AGGREGATES.columns]
    session.execute(stmt, [dict(zip(names, row, strict=True)) for row in rows])


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
