"""Device repository: listing with server-side filters, targeting, and the ingest writers.

Hello and status are applied last-writer-wins by their ``ts``: an older message arriving
late never overwrites newer state. A hello never changes an enrolled device's class or
labels (see :mod:`.hello_identity`). ``online`` is the exception: it follows arrival order
(see :func:`set_online`), because the broker publishes the last will long after the
device stamped it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloud_hub.registry import reports
from cloud_hub.registry._rows import insert_ignore, table_of, to_record
from cloud_hub.registry.errors import NotFoundError, RegistryInputError
from cloud_hub.registry.hello_identity import (
    AcceptedIdentity,
    StoredIdentity,
    accept_hello_identity,
)
from cloud_hub.registry.records import DeviceRecord, Page
from cloud_hub.registry.tables import Device, DeviceClass, DeviceLabel, RemovedDevice
from shared.device_facts import target_of
from shared.messages import Hello, Status

__all__ = [
    "MAX_PAGE",
    "DeviceQuery",
    "count_devices",
    "delete_device",
    "find_device",
    "find_devices",
    "get_device",
    "list_devices",
    "mark_silent_offline",
    "offline_among",
    "record_hellos",
    "record_statuses",
    "register_device",
    "removed_among",
    "select_device_ids",
    "set_labels",
    "set_online",
    "touch_devices",
]

MAX_PAGE = 1000
SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "device_id": Device.device_id,
    "last_seen": Device.last_seen,
    "device_class": Device.device_class,
    "installed_version": Device.installed_version,
    "first_seen": Device.first_seen,
}
_T = table_of(Device)


@dataclass(frozen=True)
class DeviceQuery:
    """Filters of the device listing; every filter is optional and they combine with AND."""

    device_class: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    online: bool | None = None
    installed_model: str | None = None
    installed_version: int | None = None
    search: str | None = None  # case-insensitive substring of the device id
    sort: str = "device_id"
    descending: bool = False
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise RegistryInputError(f"limit must be within 1..{MAX_PAGE}")
        if self.offset < 0:
            raise RegistryInputError("offset must be >= 0")
        if self.sort not in SORT_COLUMNS:
            raise RegistryInputError(f"sort must be one of {sorted(SORT_COLUMNS)}")


def _record(row: Device) -> DeviceRecord:
    return to_record(
        DeviceRecord, row, labels=dict(row.labels or {}), runtimes=list(row.runtimes or [])
    )


def _label_filters(labels: Mapping[str, str]) -> list[ColumnElement[bool]]:
    return [
        exists().where(
            DeviceLabel.device_id == Device.device_id,
            DeviceLabel.key == key,
            DeviceLabel.value == str(value),
        )
        for key, value in labels.items()
    ]


def list_devices(session: Session, query: DeviceQuery = DeviceQuery()) -> Page[DeviceRecord]:
    conds = _label_filters(query.labels)
    if query.device_class is not None:
        conds.append(Device.device_class == query.device_class)
    if query.online is not None:
        conds.append(Device.online.is_(query.online))
    if query.installed_model is not None:
        conds.append(Device.installed_model == query.installed_model)
    if query.installed_version is not None:
        conds.append(Device.installed_version == query.installed_version)
    if query.search:
        conds.append(Device.device_id.icontains(query.search, autoescape=True))
    where = and_(True, *conds)
    total = session.scalar(select(func.count()).select_from(Device).where(where)) or 0
    column = SORT_COLUMNS[query.sort]
    order = [column.desc() if query.descending else column.asc(), Device.device_id.asc()]
    rows = session.scalars(
        select(Device).where(where).order_by(*order).limit(query.limit).offset(query.offset)
    )
    return Page(
        items=[_record(r) for r in rows], total=total, limit=query.limit, offset=query.offset
    )


def find_device(session: Session, device_id: str) -> DeviceRecord | None:
    row = session.get(Device, device_id)
    return _record(row) if row is not None else None


def find_devices(session: Session, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
    """The known devices among ``device_ids``, by id (a few queries however many ids)."""
    ids = list(dict.fromkeys(device_ids))
    found: dict[str, DeviceRecord] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        part = ids[start : start + _IDS_PER_QUERY]
        for row in session.scalars(select(Device).where(Device.device_id.in_(part))):
            found[row.device_id] = _record(row)
    return found


_IDS_PER_QUERY = 500  # well under every backend's limit of bound parameters


def offline_among(session: Session, device_ids: Iterable[str]) -> set[str]:
    """Which of ``device_ids`` are known and offline (one column, a few queries)."""
    ids = list(dict.fromkeys(device_ids))
    offline: set[str] = set()
    for start in range(0, len(ids), _IDS_PER_QUERY):
        part = ids[start : start + _IDS_PER_QUERY]
        offline.update(
            session.scalars(
                select(Device.device_id).where(Device.device_id.in_(part), Device.online.is_(False))
            )
        )
    return offline


def get_device(session: Session, device_id: str) -> DeviceRecord:
    record = find_device(session, device_id)
    if record is None:
        raise NotFoundError(f"device {device_id!r} not found")
    return record


def count_devices(session: Session) -> tuple[int, int]:
    """``(total, online)``."""
    total = session.scalar(select(func.count()).select_from(Device)) or 0
    online = session.scalar(select(func.count()).where(Device.online.is_(True))) or 0
    return total, online


def select_device_ids(
    session: Session, *, device_class: str, labels: Mapping[str, str] | None = None
) -> list[str]:
    """Ids of every device of ``device_class`` carrying all ``labels`` (sorted)."""
    conds = [Device.device_class == device_class, *_label_filters(labels or {})]
    return list(session.scalars(select(Device.device_id).where(*conds).order_by(Device.device_id)))


def _ensure_classes(session: Session, names: set[str], now: float) -> None:
    rows = [{"name": n, "description": "", "profile": {}, "created_at": now} for n in names if n]
    insert_ignore(session, table_of(DeviceClass), rows, ["name"])


def _write_labels(session: Session, device_id: str, labels: Mapping[str, str]) -> None:
    if labels:
        session.execute(
            delete(DeviceLabel).where(
                DeviceLabel.device_id == device_id, DeviceLabel.key.in_(list(labels))
            )
        )
        session.add_all(
            DeviceLabel(device_id=device_id, key=k, value=str(v)) for k, v in labels.items()
        )


def set_labels(
    session: Session, device_id: str, labels: Mapping[str, str], *, replace: bool = False
) -> DeviceRecord:
    """Merge ``labels`` into the device's labels (or replace them all)."""
    row = session.get(Device, device_id)
    if row is None:
        raise NotFoundError(f"device {device_id!r} not found")
    if replace:
        session.execute(delete(DeviceLabel).where(DeviceLabel.device_id == device_id))
        merged = dict(labels)
    else:
        merged = {**(row.labels or {}), **labels}
    _write_labels(session, device_id, labels)
    row.labels = {k: str(v) for k, v in merged.items()}
    session.flush()
    return _record(row)


def register_device(
    session: Session,
    device_id: str,
    *,
    device_class: str,
    labels: Mapping[str, str] | None = None,
    now: float,
) -> DeviceRecord:
    """Create a device before it ever connects (enrollment, pre-provisioning); idempotent.
    Registering a removed device's id readmits it."""
    session.execute(delete(RemovedDevice).where(RemovedDevice.device_id == device_id))
    _ensure_classes(session, {device_class}, now)
    touch_devices(session, {device_id: now}, now=now)
    session.execute(
        update(Device).where(Device.device_id == device_id).values(device_class=device_class)
    )
    return set_labels(session, device_id, labels or {})


def delete_device(session: Session, device_id: str, *, now: float, by: str = "") -> None:
    """Forget a device and remember that it was removed: from now on the ingest refuses
    its messages (:func:`removed_among`), until the id is enrolled again."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} not found")
    session.execute(delete(DeviceLabel).where(DeviceLabel.device_id == device_id))
    session.execute(delete(Device).where(Device.device_id == device_id))
    session.merge(RemovedDevice(device_id=device_id, removed_at=now, removed_by=by[:128]))


def removed_among(session: Session, device_ids: Iterable[str]) -> set[str]:
    """Which of ``device_ids`` an operator removed (and nobody enrolled since)."""
    ids = list(device_ids)
    if not ids:
        return set()
    found = session.scalars(select(RemovedDevice.device_id).where(RemovedDevice.device_id.in_(ids)))
    return set(found)


def _ensure_devices(session: Session, first_seen: Mapping[str, float]) -> None:
    """Create the devices not known yet as stubs (class unknown until their hello)."""
    stubs = [
        {"device_id": d, "labels": {}, "runtimes": [], "first_seen": ts, "last_seen": ts}
        for d, ts in first_seen.items()
    ]
    insert_ignore(session, _T, stubs, ["device_id"])


def touch_devices(session: Session, last_seen: Mapping[str, float], *, now: float) -> None:
    """Create unknown devices as stubs and move ``last_seen`` forward (never back)."""
    if not last_seen:
        return
    _ensure_devices(session, last_seen)
    session.execute(
        update(_T)
        .where(_T.c.device_id == bindparam("b_id"), _T.c.last_seen < bindparam("b_ts"))
        .values(last_seen=bindparam("b_ts")),
        [{"b_id": d, "b_ts": ts} for d, ts in last_seen.items()],
    )


def set_online(session: Session, online: Mapping[str, bool]) -> None:
    """Set the online flag as last received (hello → online, status → its ``online``)."""
    if online:
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


def record_hellos(session: Session, hellos: Sequence[Hello], *, now: float) -> int:
    """Apply hellos (at most one per device), each only if newer than the stored one;
    returns how many won. Set-based: a reconnect storm of thousands is a few statements."""
    newest: dict[str, Hello] = {}
    for h in hellos:
        if h.device_id not in newest or h.ts > newest[h.device_id].ts:
            newest[h.device_id] = h
    hellos = list(newest.values())
    if not hellos:
        return 0
    _ensure_devices(session, {h.device_id: now for h in hellos})
    stored: dict[str, tuple[float | None, dict[str, str]]] = {}
    identity: dict[str, AcceptedIdentity] = {}
    ids = [h.device_id for h in hellos]
    for i in range(0, len(ids), 500):
        rows = session.execute(
            select(_T.c.device_id, _T.c.hello_ts, _T.c.labels, _T.c.device_class).where(
                _T.c.device_id.in_(ids[i : i + 500])
            )
        )
        for d, ts, labels, device_class in rows:
            stored[d] = (ts, dict(labels or {}))
            identity[d] = accept_hello_identity(
                StoredIdentity(device_class, stored[d][1]), newest[d], now=now
            )
    # R6: class and labels are the enrollment's; a hello claiming others is flagged, not applied
    _ensure_classes(session, {a.device_class for a in identity.values()}, now)
    reports.record_events(
        session, [a.mismatch for a in identity.values() if a.mismatch is not None], now=now
    )
    winners = [h for h in hellos if (stored[h.device_id][0] or float("-inf")) < h.ts]
    if winners:
        session.execute(
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
            ),
            [
                {
                    "b_id": h.device_id,
                    "b_ts": h.ts,
                    "b_class": identity[h.device_id].device_class,
                    "b_agent": h.agent_version,
                    "b_runtimes": list(h.runtimes),
                    "b_disk": h.free_disk_bytes,
                    "b_mem": h.free_mem_bytes,
                    "b_labels": identity[h.device_id].labels,
                    "b_facts": None if h.facts is None else h.facts.to_dict(),
                    "b_target": None if h.facts is None else target_of(h.facts),
                }
                for h in winners
            ],
        )
        pairs = [
            (h.device_id, k, str(v))
            for h in winners
            for k, v in identity[h.device_id].new_labels.items()
        ]
        if pairs:
            lt = table_of(DeviceLabel)
            session.execute(
                delete(lt).where(
                    lt.c.device_id == bindparam("b_id"), lt.c.key == bindparam("b_key")
                ),
                [{"b_id": d, "b_key": k} for d, k, _ in pairs],
            )
            session.execute(
                insert(lt), [{"device_id": d, "key": k, "value": v} for d, k, v in pairs]
            )
    session.execute(
        _INSTALLED_STMT,
        [{"b_id": h.device_id, "b_ts": h.ts, **_installed_values(h.installed)} for h in hellos],
    )
    return len(winners)


def record_statuses(session: Session, statuses: Sequence[Status], *, now: float) -> None:
    """Apply statuses (at most one per device), each only if newer than what is stored."""
    if not statuses:
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
