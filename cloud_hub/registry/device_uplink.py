"""What the devices say about themselves, written into the registry: the ingest's writers
(hellos in :mod:`.device_hellos`).

Hello and status are applied last-writer-wins by their ``ts``: an older message arriving
late never overwrites newer state. A hello never changes an enrolled device's class or
labels (see :mod:`.hello_identity`). ``online`` is the exception: it follows arrival order
(see :func:`set_online`), because the broker publishes the last will long after the
device stamped it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    bindparam,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from cloud_hub.registry._row_arrays import RowArrays, is_postgresql
from cloud_hub.registry._rows import insert_ignore, portable_insert, table_of
from cloud_hub.registry.tables import Device, DeviceClass
from shared.messages import Status

__all__ = [
    "INSTALLED_STMT",
    "ensure_classes",
    "ensure_devices",
    "installed_values",
    "mark_silent_offline",
    "record_statuses",
    "set_online",
    "touch_devices",
]

_T = table_of(Device)


def ensure_classes(session: Session, names: set[str], now: float) -> None:
    """Create the device classes in ``names`` not known yet (empty profile)."""
    rows = [{"name": n, "description": "", "profile": {}, "created_at": now} for n in names if n]
    if rows:  # a handful of classes: one multi-row statement
        insert = portable_insert(session, table_of(DeviceClass)).values(rows)
        session.execute(insert.on_conflict_do_nothing(index_elements=["name"]))


_TOUCHED = RowArrays("touched", (("device_id", String()), ("ts", Float())))


def _stub_columns(now: Any) -> dict[str, Any]:
    """The columns of a device row created before its hello (class unknown until then)."""
    return {
        "labels": literal({}, _T.c.labels.type),
        "runtimes": literal([], _T.c.runtimes.type),
        "first_seen": now,
        "last_seen": now,
    }


def _touch_statement() -> Any:
    """PostgreSQL: create the stubs and move ``last_seen`` forward in one statement."""
    seen = _TOUCHED.value("ts")
    stub = _stub_columns(seen)
    stmt = postgresql.insert(_T).from_select(
        ["device_id", *stub], select(_TOUCHED.value("device_id"), *stub.values())
    )
    return stmt.on_conflict_do_update(
        index_elements=["device_id"],
        set_={"last_seen": stmt.excluded.last_seen},
        where=_T.c.last_seen < stmt.excluded.last_seen,
    )


_TOUCH_STMT = _touch_statement()

_NEW_IDS = RowArrays("new_devices", (("device_id", String()), ("ts", Float())))


def _ensure_statement() -> Any:
    """PostgreSQL: create the stubs of the devices not known yet, in one statement."""
    stub = _stub_columns(_NEW_IDS.value("ts"))
    stmt = postgresql.insert(_T).from_select(
        ["device_id", *stub], select(_NEW_IDS.value("device_id"), *stub.values())
    )
    return stmt.on_conflict_do_nothing(index_elements=["device_id"])


_ENSURE_STMT = _ensure_statement()


def ensure_devices(session: Session, first_seen: Mapping[str, float]) -> None:
    """Create the devices not known yet as stubs (class unknown until their hello)."""
    if not first_seen:
        return
    if is_postgresql(session):
        rows = ((d, float(ts)) for d, ts in first_seen.items())
        session.execute(_ENSURE_STMT, _NEW_IDS.bind(rows))
        return
    stubs = [
        {"device_id": d, "labels": {}, "runtimes": [], "first_seen": ts, "last_seen": ts}
        for d, ts in first_seen.items()
    ]
    insert_ignore(session, _T, stubs, ["device_id"])


def touch_devices(session: Session, last_seen: Mapping[str, float], *, now: float) -> None:
    """Create unknown devices as stubs and move ``last_seen`` forward (never back)."""
    if not last_seen:
        return
    if is_postgresql(session):
        session.execute(_TOUCH_STMT, _TOUCHED.bind((d, float(ts)) for d, ts in last_seen.items()))
        return
    ensure_devices(session, last_seen)
    session.execute(
        update(_T)
        .where(_T.c.device_id == bindparam("b_id"), _T.c.last_seen < bindparam("b_ts"))
        .values(last_seen=bindparam("b_ts")),
        [{"b_id": d, "b_ts": ts} for d, ts in last_seen.items()],
    )


_ONLINE = RowArrays("flags", (("device_id", String()), ("online", Boolean())))
_ONLINE_STMT = (
    update(_T)
    .where(_T.c.device_id == _ONLINE.value("device_id"))
    .values(online=_ONLINE.value("online"))
)


def set_online(session: Session, online: Mapping[str, bool]) -> None:
    """Set the online flag as last received (hello → online, status → its ``online``)."""
    if not online:
        return
    if is_postgresql(session):
        session.execute(_ONLINE_STMT, _ONLINE.bind((d, bool(v)) for d, v in online.items()))
        return
    session.execute(
        update(_T).where(_T.c.device_id == bindparam("b_id")).values(online=bindparam("b_on")),
        [{"b_id": d, "b_on": bool(v)} for d, v in online.items()],
    )


def installed_values(installed: object) -> dict[str, object]:
    model = getattr(installed, "model_name", None)
    return {
        "b_model": model,
        "b_version": getattr(installed, "version", None),
        "b_bundle": getattr(installed, "bundle_id", None),
    }


INSTALLED_STMT = (
    update(_T)
    .where(
        _T.c.device_id == bindparam("b_id"),
        or_(_T.c.status_ts.is_(None), _T.c.status_ts <= bindparam("b_ts")),
    )
    .values(
        installed_model=bindparam("b_model"),
        installed_version=bindparam("b_version"),
        installed_bundle_id=bindparam("b_bundle"),
        status_ts=bindparam("b_ts"),
    )
)

_STATUSES = RowArrays(
    "statuses",
    (
        ("device_id", String()),
        ("status_ts", Float()),
        ("installed_model", String()),
        ("installed_version", Integer()),
        ("installed_bundle_id", String()),
        ("ota_state", String()),
        ("deployment_id", String()),
        ("runtime", String()),
        ("provider", String()),
        ("healthy", Boolean()),
    ),
)


def _status_statement() -> Any:
    """PostgreSQL: a stub for unknown devices and each status where it is the newest, in one
    statement (a new stub has no status yet, so its status always wins)."""
    names = [name for name, _ in _STATUSES.columns]
    stub = _stub_columns(bindparam("now", type_=Float()))
    stmt = postgresql.insert(_T).from_select(
        [*names, *stub], select(*(_STATUSES.value(n) for n in names), *stub.values())
    )
    return stmt.on_conflict_do_update(
        index_elements=["device_id"],
        set_={n: stmt.excluded[n] for n in names[1:]},
        where=or_(_T.c.status_ts.is_(None), _T.c.status_ts <= stmt.excluded.status_ts),
    )


_STATUS_STMT = _status_statement()


def record_statuses(session: Session, statuses: Sequence[Status], *, now: float) -> None:
    """Apply statuses (at most one per device), each only if newer than what is stored."""
    if not statuses:
        return
    if is_postgresql(session):
        rows = (
            (
                s.device_id,
                float(s.ts),
                *installed_values(s.installed).values(),
                s.ota_state,
                s.deployment_id,
                s.runtime,
                s.provider,
                bool(s.healthy),
            )
            for s in statuses
        )
        session.execute(_STATUS_STMT, {"now": now, **_STATUSES.bind(rows)})
        return
    ensure_devices(session, {s.device_id: now for s in statuses})
    session.execute(
        INSTALLED_STMT,
        [{"b_id": s.device_id, "b_ts": s.ts, **installed_values(s.installed)} for s in statuses],
    )
    # status_ts now equals s.ts exactly where this status won: update the rest of it there
    session.execute(
        update(_T)
        .where(_T.c.device_id == bindparam("b_id"), _T.c.status_ts == bindparam("b_ts"))
        .values(
            ota_state=bindparam("b_ota"),
            deployment_id=bindparam("b_dep"),
            runtime=bindparam("b_rt"),
            provider=bindparam("b_prov"),
            healthy=bindparam("b_healthy"),
        ),
        [
            {
                "b_id": s.device_id,
                "b_ts": s.ts,
                "b_ota": s.ota_state,
                "b_dep": s.deployment_id,
                "b_rt": s.runtime,
                "b_prov": s.provider,
                "b_healthy": s.healthy,
            }
            for s in statuses
        ],
    )


def mark_silent_offline(session: Session, *, silent_since: float) -> int:
    """Mark devices not heard from since ``silent_since`` offline; returns how many."""
    result = session.execute(
        update(Device)
        .where(Device.online.is_(True), Device.last_seen < silent_since)
        .values(online=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
