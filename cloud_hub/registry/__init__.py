"""The hub registry: what the hub knows about devices, models, bundles and rollouts.

Open it with :func:`open_registry` (migrates to the newest schema), then work inside one
transaction at a time through the repository modules::

    registry = open_registry("sqlite:///var/hub.db")
    with registry.session() as s:
        page = devices.list_devices(s, devices.DeviceQuery(device_class="rpi4", online=True))
        rollout = rollouts.get_rollout(s, "r-1")

Repository modules (plain functions over a ``Session``, returning frozen records):
``devices``, ``catalog`` (device classes, models, versions, bundles), ``rollouts``
(rollouts, stages, targets), ``reports`` (events, drift, telemetry aggregates) and ``admin``
(training runs, audit log, API tokens).
"""

from cloud_hub.registry import admin, catalog, devices, reports, rollouts
from cloud_hub.registry.database import Registry, open_registry
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
    "StageRecord",
    "StageSpec",
    "TargetRecord",
    "TelemetryAggregate",
    "TelemetrySummary",
    "TrainingRunRecord",
    "admin",
    "catalog",
    "devices",
    "open_registry",
    "reports",
    "rollouts",
]
