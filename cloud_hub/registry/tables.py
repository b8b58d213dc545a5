"""SQLAlchemy 2.x table definitions of the hub registry.

Times are stored as UNIX epoch seconds (``float``), the unit every wire message uses, so
both backends compare them the same way and no timezone conversion ever happens.

Only the repository modules of :mod:`cloud_hub.registry` touch these classes; the rest of
the hub works with the frozen records they return. The schema itself is created by the
Alembic migrations in :mod:`cloud_hub.registry.migrations`, never by ``create_all``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "AsyncOrder",
    "AuditEntry",
    "Base",
    "Bundle",
    "Device",
    "DeviceClass",
    "DeviceLabel",
    "DriftRow",
    "EnrolledDeviceRow",
    "EnrollmentToken",
    "EventRow",
    "Model",
    "ModelVersion",
    "RemovedDevice",
    "RevokedCertificate",
    "Rollout",
    "RolloutStage",
    "RolloutTarget",
    "TelemetryMinute",
    "TrainingRun",
]

# Deterministic constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = 128  # device ids, bundle ids, rollout ids: topic-safe strings


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DeviceClass(Base):
    __tablename__ = "device_classes"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    device_class: Mapped[str | None] = mapped_column(String(ID), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    runtimes: Mapped[list[Any]] = mapped_column(default=list)
    installed_model: Mapped[str | None] = mapped_column(String(ID))
    installed_version: Mapped[int | None] = mapped_column(Integer, index=True)
    installed_bundle_id: Mapped[str | None] = mapped_column(String(ID))
    runtime: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(128))
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    ota_state: Mapped[str] = mapped_column(String(32), default="idle")
    deployment_id: Mapped[str | None] = mapped_column(String(ID))
    free_disk_bytes: Mapped[int | None] = mapped_column(BigInteger)
    free_mem_bytes: Mapped[int | None] = mapped_column(BigInteger)
    hello_ts: Mapped[float | None] = mapped_column(Float)
    status_ts: Mapped[float | None] = mapped_column(Float)
    # from hello: shared.device_facts.DeviceFacts, and the int8 target it implies (migration 0003)
    facts: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    target: Mapped[str | None] = mapped_column(String(32), index=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)


class RemovedDevice(Base):
    """A device an operator deleted (migration 0004): the ingest refuses its messages, so a
    device still online does not come back as a stub without class or labels. Enrolling the
    id again lifts it."""

    __tablename__ = "removed_devices"

    device_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    removed_at: Mapped[float] = mapped_column(Float)
    removed_by: Mapped[str] = mapped_column(String(128), default="")


class DeviceLabel(Base):
    """One row per label: the index behind ``label=site:plant-3`` filters on both backends."""

    __tablename__ = "device_labels"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.device_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(ID), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))

    __table_args__ = (Index("ix_device_labels_key_value", "key", "value"),)


class Model(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    task: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    training_run_id: Mapped[str | None] = mapped_column(String(ID))
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("model_name", "version"),)


class Bundle(Base):
    __tablename__ = "bundles"

    bundle_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(ID), index=True)
    version: Mapped[int] = mapped_column(Integer)
    device_class: Mapped[str] = mapped_column(String(ID), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="full")
    base_bundle_id: Mapped[str | None] = mapped_column(String(ID))
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text, default="")
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float)


class Rollout(Base):
    __tablename__ = "rollouts"

    rollout_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    bundle_id: Mapped[str] = mapped_column(String(ID), index=True)
    previous_bundle_id: Mapped[str | None] = mapped_column(String(ID))
    device_class: Mapped[str] = mapped_column(String(ID))
    target_labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(32), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    current_stage: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    revision: Mapped[int] = mapped_column(Integer, default=0)  # optimistic concurrency
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class RolloutStage(Base):
    __tablename__ = "rollout_stages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    percent: Mapped[float | None] = mapped_column(Float)
    device_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(32), default="pending")
    gate_results: Mapped[list[Any]] = mapped_column(default=list)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("rollout_id", "index"),)


class RolloutTarget(Base):
    __tablename__ = "rollout_targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(ID), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deployment_id: Mapped[str | None] = mapped_column(String(ID))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    last_attempt_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # what the device ran when first offered the rollout's bundle: its rollback target
    from_bundle_id: Mapped[str | None] = mapped_column(String(ID))
    from_version: Mapped[int | None] = mapped_column(Integer)
    from_sha256: Mapped[str | None] = mapped_column(String(64))
    # bundle bytes sent to the device by this rollout, and what full bundles would have cost
    # (migration 0006): the delivery totals read the same from every hub process
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_full: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id"),
        Index("ix_rollout_targets_rollout_stage", "rollout_id", "stage_index"),
    )


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(ID), unique=True)
    device_id: Mapped[str] = mapped_column(String(ID), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(ID), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ts: Mapped[float] = mapped_column(Float, index=True)
    received_at: Mapped[float] = mapped_column(Float)


class TelemetryMinute(Base):
    """Per device, minute, model version and metric: count, sum, max and the last value."""

    __tablename__ = "telemetry_minutes"

    device_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    minute: Mapped[int] = mapped_column(Integer, primary_key=True)  # epoch seconds // 60
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 = unknown
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    sum: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    last: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_telemetry_minutes_minute", "minute"),)


class DriftRow(Base):
    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(String(ID), unique=True)
    device_id: Mapped[str] = mapped_column(String(ID), index=True)
    model_name: Mapped[str] = mapped_column(String(ID))
    model_version: Mapped[int] = mapped_column(Integer)
    window_size: Mapped[int] = mapped_column(BigInteger)
    drift_score: Mapped[float] = mapped_column(Float)
    drifted: Mapped[bool] = mapped_column(Boolean, index=True)
    confidence_drift: Mapped[bool] = mapped_column(Boolean, default=False)
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ts: Mapped[float] = mapped_column(Float, index=True)
    received_at: Mapped[float] = mapped_column(Float)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    run_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(ID), index=True)
    state: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(64), default="manual")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result_version: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(
        String(16), index=True
    )  # HTTP method, CLI verb, rollout-move
    resource: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class EnrollmentToken(Base):
    """A one-time enrollment token, stored as its hash (migration 0005)."""

    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    device_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    used_by: Mapped[str | None] = mapped_column(String(128))


class EnrolledDeviceRow(Base):
    """A device's current certificate (migration 0005)."""

    __tablename__ = "enrolled_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cert_serial: Mapped[str] = mapped_column(String(64))  # 160-bit serials overflow BIGINT
    cert_fingerprint: Mapped[str] = mapped_column(String(80))
    cert_not_after: Mapped[float] = mapped_column(Float)
    enrolled_at: Mapped[float] = mapped_column(Float)
    token_id: Mapped[str] = mapped_column(String(16), default="")
    revoked_at: Mapped[float | None] = mapped_column(Float)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class RevokedCertificate(Base):
    """A revoked device certificate, for the CRL (migration 0005)."""

    __tablename__ = "revoked_certificates"

    cert_serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[float] = mapped_column(Float)


class AsyncOrder(Base):
    """One asynchronous training order (migration 0007): which device got it, from which
    base version, and what became of its update (``cloud_hub.fl.order_ledger.OrderState``).
    A hub restart reads its ledger back from here."""

    __tablename__ = "async_orders"

    order_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(ID), index=True)
    node_id: Mapped[str] = mapped_column(String(24))  # Flower's uint64 node id, in decimal
    device_id: Mapped[str | None] = mapped_column(String(ID), index=True)
    base_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    buffer: Mapped[int | None] = mapped_column(Integer)
    labelled_samples: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
