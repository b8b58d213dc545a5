"""Device repository: listing with server-side filters, targeting, and the operator's writes
(labels, registration, removal).

The ingest's writers live in :mod:`.device_uplink` (status, online, last seen) and
:mod:`.device_hellos`; they are importable from here too, where the hub has always found them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloud_hub.registry._rows import existing_keys, matching_slices, to_record
from cloud_hub.registry.device_hellos import record_hellos
from cloud_hub.registry.device_uplink import (
    ensure_classes,
    mark_silent_offline,
    record_statuses,
    set_online,
    touch_devices,
)
from cloud_hub.registry.errors import NotFoundError, RegistryInputError
from cloud_hub.registry.records import DeviceRecord, Page
from cloud_hub.registry.tables import Device, DeviceLabel, RemovedDevice

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
    found: dict[str, DeviceRecord] = {}
    for among in matching_slices(session, Device.device_id, device_ids):
        for row in session.scalars(select(Device).where(among)):
            found[row.device_id] = _record(row)
    return found


def offline_among(session: Session, device_ids: Iterable[str]) -> set[str]:
    """Which of ``device_ids`` are known and offline (one column, a few queries)."""
    return existing_keys(session, Device.device_id, device_ids, Device.online.is_(False))


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
    ensure_classes(session, {device_class}, now)
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
    """Which of ``device_ids`` an operator removed (and nobody enrolled since): one query
    with one array parameter on PostgreSQL, whatever the number of ids."""
    return existing_keys(session, RemovedDevice.device_id, device_ids)
