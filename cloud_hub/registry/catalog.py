"""Catalog repository: device classes, models, model versions and bundles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import insert_ignore, table_of, to_record
from cloud_hub.registry.errors import ConflictError, NotFoundError, RegistryInputError
from cloud_hub.registry.records import (
    BundleRecord,
    DeviceClassRecord,
    ModelRecord,
    ModelVersionRecord,
    Page,
)
from cloud_hub.registry.tables import Bundle, DeviceClass, Model, ModelVersion

__all__ = [
    "add_model_version",
    "ensure_model",
    "find_bundle",
    "find_full_bundle",
    "get_bundle",
    "get_model",
    "get_model_version",
    "list_bundles",
    "list_device_classes",
    "list_model_versions",
    "list_models",
    "register_bundle",
    "upsert_device_class",
]


def upsert_device_class(
    session: Session,
    name: str,
    *,
    description: str = "",
    profile: Mapping[str, Any] | None = None,
    now: float,
) -> DeviceClassRecord:
    row = session.get(DeviceClass, name)
    if row is None:
        row = DeviceClass(name=name, description=description, profile=dict(profile or {}))
        row.created_at = now
        session.add(row)
    else:
        row.description = description or row.description
        if profile is not None:
            row.profile = dict(profile)
    session.flush()
    return to_record(DeviceClassRecord, row)


def list_device_classes(session: Session) -> list[DeviceClassRecord]:
    rows = session.scalars(select(DeviceClass).order_by(DeviceClass.name))
    return [to_record(DeviceClassRecord, r) for r in rows]


def ensure_model(
    session: Session, name: str, *, task: str = "", description: str = "", now: float
) -> ModelRecord:
    """Create the model if it does not exist; return it either way."""
    if not name:
        raise RegistryInputError("model name must not be empty")
    insert_ignore(
        session,
        table_of(Model),
        [{"name": name, "task": task, "description": description, "created_at": now}],
        ["name"],
    )
    return get_model(session, name)


def get_model(session: Session, name: str) -> ModelRecord:
    row = session.get(Model, name)
    if row is None:
        raise NotFoundError(f"model {name!r} not found")
    return to_record(ModelRecord, row)


def list_models(session: Session) -> list[ModelRecord]:
    return [to_record(ModelRecord, r) for r in session.scalars(select(Model).order_by(Model.name))]


def add_model_version(
    session: Session,
    model_name: str,
    version: int,
    *,
    parent_version: int | None = None,
    training_run_id: str | None = None,
    lineage: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    now: float,
) -> ModelVersionRecord:
    """Record a model version (creating the model); idempotent for identical content."""
    if version < 1:
        raise RegistryInputError("model versions start at 1")
    ensure_model(session, model_name, now=now)
    existing = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_name == model_name, ModelVersion.version == version
        )
    )
    if existing is not None:  # fill in what a later, richer registration knows
        if metrics:
            existing.metrics = {**existing.metrics, **metrics}
        if lineage:
            existing.lineage = {**existing.lineage, **lineage}
        if parent_version is not None and existing.parent_version is None:
            existing.parent_version = parent_version
        if training_run_id is not None and existing.training_run_id is None:
            existing.training_run_id = training_run_id
        session.flush()
        return to_record(ModelVersionRecord, existing)
    row = ModelVersion(
        model_name=model_name,
        version=version,
        parent_version=parent_version,
        training_run_id=training_run_id,
        lineage=dict(lineage or {}),
        metrics=dict(metrics or {}),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return to_record(ModelVersionRecord, row)


def get_model_version(session: Session, model_name: str, version: int) -> ModelVersionRecord:
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_name == model_name, ModelVersion.version == version
        )
    )
    if row is None:
        raise NotFoundError(f"model {model_name!r} has no version {version}")
    return to_record(ModelVersionRecord, row)


def list_model_versions(session: Session, model_name: str) -> list[ModelVersionRecord]:
    rows = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_name == model_name)
        .order_by(ModelVersion.version)
    )
    return [to_record(ModelVersionRecord, r) for r in rows]


def register_bundle(
    session: Session,
    *,
    bundle_id: str,
    model_name: str,
    version: int,
    device_class: str,
    size: int,
    path: str = "",
    manifest: Mapping[str, Any] | None = None,
    kind: str = "full",
    base_bundle_id: str | None = None,
    now: float,
) -> BundleRecord:
    """Register a built bundle (and its model version); idempotent for the same content.

    Raises ``ConflictError`` if ``bundle_id`` is registered with different content.
    """
    if size < 0:
        raise RegistryInputError("bundle size must be >= 0")
    if kind not in ("full", "delta"):
        raise RegistryInputError("bundle kind must be 'full' or 'delta'")
    existing = session.get(Bundle, bundle_id)
    if existing is not None:
        same = (existing.model_name, existing.version, existing.device_class, existing.size)
        if same != (model_name, version, device_class, size):
            raise ConflictError(f"bundle {bundle_id!r} is registered with other content")
        return to_record(BundleRecord, existing)
    add_model_version(session, model_name, version, now=now)
    row = Bundle(
        bundle_id=bundle_id,
        model_name=model_name,
        version=version,
        device_class=device_class,
        kind=kind,
        base_bundle_id=base_bundle_id,
        size=size,
        path=path,
        manifest=dict(manifest or {}),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return to_record(BundleRecord, row)


def find_bundle(session: Session, bundle_id: str) -> BundleRecord | None:
    row = session.get(Bundle, bundle_id)
    return to_record(BundleRecord, row) if row is not None else None


def find_full_bundle(
    session: Session, *, model_name: str, device_class: str, version: int
) -> BundleRecord | None:
    """The one full bundle of ``model_name`` ``version`` for ``device_class``; ``None`` if
    there is none or more than one. A device that installed a delta (built for it, never
    indexed) runs exactly that bundle's artifacts: the delta speaks for it (R1)."""
    rows = session.scalars(
        select(Bundle)
        .where(
            Bundle.model_name == model_name,
            Bundle.device_class == device_class,
            Bundle.version == version,
            Bundle.kind == "full",
        )
        .limit(2)
    ).all()
    return to_record(BundleRecord, rows[0]) if len(rows) == 1 else None


def get_bundle(session: Session, bundle_id: str) -> BundleRecord:
    record = find_bundle(session, bundle_id)
    if record is None:
        raise NotFoundError(f"bundle {bundle_id!r} not found")
    return record


def list_bundles(
    session: Session,
    *,
    model_name: str | None = None,
    device_class: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[BundleRecord]:
    conds = []
    if model_name is not None:
        conds.append(Bundle.model_name == model_name)
    if device_class is not None:
        conds.append(Bundle.device_class == device_class)
    total = session.scalar(select(func.count()).select_from(Bundle).where(*conds)) or 0
    rows = session.scalars(
        select(Bundle)
        .where(*conds)
        .order_by(Bundle.created_at.desc(), Bundle.bundle_id)
        .limit(limit)
        .offset(offset)
    )
    return Page(
        items=[to_record(BundleRecord, r) for r in rows], total=total, limit=limit, offset=offset
    )
