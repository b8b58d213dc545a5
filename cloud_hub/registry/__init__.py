"""The hub registry: what the hub knows about devices, models, bundles and rollouts.

Open it with :func:`open_registry` (migrates to the newest schema), then work inside one
transaction at a time through the repository modules::

    registry = open_registry("sqlite:///var/hub.db")
    with registry.session() as s:
        page = devices.list_devices(s, devices.DeviceQuery(device_class="rpi4", online=True))
        rollout = rollouts.get_rollout(s, "r-1")

Repository modules (plain functions over a ``Session``, returning frozen records):
``devices`` (the ingest's writers in ``device_uplink``), ``catalog`` (device classes,
models, versions, bundles), ``rollouts`` (rollouts, stages, targets), ``rollout_targets``
(targets in bulk, bytes shipped), ``reports`` (events, drift, telemetry aggregates),
``admin`` (training runs, audit log, API tokens), ``device_views`` (devices and events as
the rollout engine reads them) and ``fleet_views`` (the dashboard's fleet-wide reads). They
are the only modules that touch the ORM tables (``tables``); the rest of the hub names a
transaction's type as :class:`Session` and catches the database's failures as
:class:`~cloud_hub.registry.errors.DatabaseError` and its subclasses.
"""

from cloud_hub.registry import (
    admin,
    catalog,
    device_views,
    devices,
    fleet_views,
    reports,
    rollout_targets,
    rollouts,
)
from cloud_hub.registry.database import Registry, Session, open_registry
from cloud_hub.registry.errors import ConflictError, NotFoundError, RegistryInputError
from cloud_hub.registry.records import (
    ApiTokenRecord,
    AuditRecord,
    BundleRecord,
    DeviceClassRecord,
    DeviceRecord,
    DriftRecord,
    EventRecord,
    ModelRecord,
    ModelVersionRecord,
    Page,
    RolloutRecord,
    StageRecord,
    StageSpec,
    TargetRecord,
    TelemetryAggregate,
    TelemetrySummary,
    TrainingRunRecord,
)

__all__ = [
    "ApiTokenRecord",
    "AuditRecord",
    "BundleRecord",
    "ConflictError",
    "DeviceClassRecord",
    "DeviceRecord",
    "DriftRecord",
    "EventRecord",
    "ModelRecord",
    "ModelVersionRecord",
    "NotFoundError",
    "Page",
    "Registry",
    "RegistryInputError",
    "RolloutRecord",
    "Session",
    "StageRecord",
    "StageSpec",
    "TargetRecord",
    "TelemetryAggregate",
    "TelemetrySummary",
    "TrainingRunRecord",
    "admin",
    "catalog",
    "device_views",
    "devices",
    "fleet_views",
    "open_registry",
    "reports",
    "rollout_targets",
    "rollouts",
]
