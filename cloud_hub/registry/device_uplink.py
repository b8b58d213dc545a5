"""What the devices say about themselves, written into the registry: the ingest's writers.

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
    delete,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from cloud_hub.registry import reports
from cloud_hub.registry._row_arrays import RowArrays, is_postgresql
from cloud_hub.registry._rows import insert_ignore, table_of
from cloud_hub.registry.hello_identity import (
    AcceptedIdentity,
    StoredIdentity,
    accept_hello_identity,
)
from cloud_hub.registry.tables import Device, DeviceClass, DeviceLabel
from shared.device_facts import target_of
from shared.messages import Hello, Status

__all__ = [
    "ensure_classes",
    "mark_silent_offline",
    "record_hellos",
    "record_statuses",
    "set_online",
    "touch_devices",
]

_T = table_of(Device)
_IDS_PER_QUERY = 500  # well under every backend's limit of bound parameters


def ensure_classes(session: Session, names: set[str], now: float) -> None:
    """Create the device classes in ``names`` not known yet (empty profile)."""
    rows = [{"name": n, "description": "", "profile": {}, "created_at": now} for n in names if n]
    insert_ignore(session, table_of(DeviceClass), rows, ["name"])


def _ensure_devices(session: Session, first_seen: Mapping[str, float]) -> None:
    """Create the devices not known yet as stubs (class unknown until their hello)."""
    stubs = [
        {"device_id": d, "labels": {}, "runtimes": [], "first_seen": ts, "last_seen": ts}
        for d, ts in first_seen.items()
    ]
    insert_ignore(session, _T, stubs, ["device_id"])


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


def touch_devices(session: Session, last_seen: Mapping[str, float], *, now: float) -> None:
    """Create unknown devices as stubs and move ``last_seen`` forward (never back)."""
    if not last_seen:
        return
    if is_postgresql(session):
        session.execute(_TOUCH_STMT, _TOUCHED.bind((d, float(ts)) for d, ts in last_seen.items()))
        return
    _ensure_devices(session, last_seen)
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


def _installed_values(installed: object) -> dict[str, object]:
    model = getattr(installed, "model_name", None)
    return {
        "b_model": model,
        "b_version": getattr(installed, "version", None),
        "b_bundle": getattr(installed, "bundle_id", None),
    }


_INSTALLED_STMT = (
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

_HELLO_STMT = (
    update(_T)
    .where(
        _T.c.device_id == bindparam("b_id"),
        or_(_T.c.hello_ts.is_(None), _T.c.hello_ts < bindparam("b_ts")),
    )
    .values(
        device_class=bindparam("b_class"),
        agent_version=bindparam("b_agent"),
        runtimes=bindparam("b_runtimes"),
        free_disk_bytes=bindparam("b_disk"),
        free_mem_bytes=bindparam("b_mem"),
        labels=bindparam("b_labels"),
        hello_ts=bindparam("b_ts"),
        facts=bindparam("b_facts"),
        target=bindparam("b_target"),
    )
)


def _newest_per_device(hellos: Sequence[Hello]) -> dict[str, Hello]:
    newest: dict[str, Hello] = {}
    for h in hellos:
        if h.device_id not in newest or h.ts > newest[h.device_id].ts:
            newest[h.device_id] = h
    return newest


def _accept_identities(
    session: Session, newest: Mapping[str, Hello], *, now: float
) -> tuple[dict[str, float | None], dict[str, AcceptedIdentity]]:
    """Each device's stored hello ``ts`` and the class and labels its hello may set."""
    hello_ts: dict[str, float | None] = {}
    identity: dict[str, AcceptedIdentity] = {}
    ids = list(newest)
    for i in range(0, len(ids), _IDS_PER_QUERY):
        rows = session.execute(
            select(_T.c.device_id, _T.c.hello_ts, _T.c.labels, _T.c.device_class).where(
                _T.c.device_id.in_(ids[i : i + _IDS_PER_QUERY])
            )
        )
        for d, ts, labels, device_class in rows:
            hello_ts[d] = ts
            identity[d] = accept_hello_identity(
                StoredIdentity(device_class, dict(labels or {})), newest[d], now=now
            )
    return hello_ts, identity


def _hello_values(hello: Hello, identity: AcceptedIdentity) -> dict[str, object]:
    return {
        "b_id": hello.device_id,
        "b_ts": hello.ts,
        "b_class": identity.device_class,
        "b_agent": hello.agent_version,
        "b_runtimes": list(hello.runtimes),
        "b_disk": hello.free_disk_bytes,
        "b_mem": hello.free_mem_bytes,
        "b_labels": identity.labels,
        "b_facts": None if hello.facts is None else hello.facts.to_dict(),
        "b_target": None if hello.facts is None else target_of(hello.facts),
    }


def _write_new_labels(session: Session, pairs: Sequence[tuple[str, str, str]]) -> None:
    """Set ``(device_id, key, value)`` label rows, replacing the same keys."""
    if not pairs:
        return
    lt = table_of(DeviceLabel)
    session.execute(
        delete(lt).where(lt.c.device_id == bindparam("b_id"), lt.c.key == bindparam("b_key")),
        [{"b_id": d, "b_key": k} for d, k, _ in pairs],
    )
    session.execute(insert(lt), [{"device_id": d, "key": k, "value": v} for d, k, v in pairs])


def record_hellos(session: Session, hellos: Sequence[Hello], *, now: float) -> int:
    """Apply hellos (at most one per device), each only if newer than the stored one;
    returns how many won. Set-based: a reconnect storm of thousands is a few statements."""
    newest = _newest_per_device(hellos)
    if not newest:
        return 0
    _ensure_devices(session, {d: now for d in newest})
    hello_ts, identity = _accept_identities(session, newest, now=now)
    # R6: class and labels are the enrollment's; a hello claiming others is flagged, not applied
    ensure_classes(session, {a.device_class for a in identity.values()}, now)
    reports.record_events(
        session, [a.mismatch for a in identity.values() if a.mismatch is not None], now=now
    )
    winners = [h for h in newest.values() if (hello_ts[h.device_id] or float("-inf")) < h.ts]
    if winners:
        session.execute(_HELLO_STMT, [_hello_values(h, identity[h.device_id]) for h in winners])
        _write_new_labels(
            session,
            [
                (h.device_id, k, str(v))
                for h in winners
                for k, v in identity[h.device_id].new_labels.items()
            ],
        )
    session.execute(
        _INSTALLED_STMT,
        [
            {"b_id": h.device_id, "b_ts": h.ts, **_installed_values(h.installed)}
            for h in newest.values()
        ],
    )
    return len(winners)


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
                *_installed_values(s.installed).values(),
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
    _ensure_devices(session, {s.device_id: now for s in statuses})
    session.execute(
        _INSTALLED_STMT,
        [{"b_id": s.device_id, "b_ts": s.ts, **_installed_values(s.installed)} for s in statuses],
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
