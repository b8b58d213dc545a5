"""Frozen records returned by the registry repositories (detached from any session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "ApiTokenRecord",
    "AuditRecord",
    "BundleRecord",
    "DeviceClassRecord",
    "DeviceRecord",
    "DeviceRolloutEntry",
    "DeviceState",
    "DeviceVitals",
    "DriftRecord",
    "EventRecord",
    "FleetSummary",
    "ModelRecord",
    "ModelVersionRecord",
    "Page",
    "RolloutRecord",
    "StageRecord",
    "StageSpec",
    "TargetRecord",
    "TelemetryAggregate",
    "TelemetrySummary",
    "TrainingRunRecord",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a server-side paginated listing."""

    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    device_class: str | None
    labels: dict[str, str]
    online: bool
    agent_version: str | None
    runtimes: list[str]
    installed_model: str | None
    installed_version: int | None
    installed_bundle_id: str | None
    runtime: str | None
    provider: str | None
    healthy: bool
    ota_state: str
    deployment_id: str | None
    free_disk_bytes: int | None
    free_mem_bytes: int | None
    first_seen: float
    last_seen: float
    facts: dict[str, Any] | None = None  # CPU model, ISA flags, GPU, TensorRT (from hello)
    target: str | None = None  # the int8 target those facts imply


@dataclass(frozen=True)
class DeviceState:
    """One device as rollout targeting and retries need it."""

    device_id: str
    device_class: str | None
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = False
    last_seen: float = 0.0
    hello_ts: float | None = None
    installed_bundle_id: str | None = None
    status_ts: float | None = None
    installed_model: str | None = None
    installed_version: int | None = None


@dataclass(frozen=True)
class DeviceVitals:
    """What the health verdict of one device is judged from."""

    device_id: str
    hello_ts: float | None
    status_ts: float | None
    online: bool
    healthy: bool
    ota_state: str | None
    installed_model: str | None
    installed_version: int | None


@dataclass(frozen=True)
class DeviceRolloutEntry:
    """One rollout target of a device, with its rollout and the bundle it ships."""

    device_id: str
    target_state: str
    stage_index: int
    rollout_id: str
    rollout_name: str
    rollout_state: str
    model_name: str | None  # None if the bundle is not in the catalog
    version: int | None


@dataclass(frozen=True)
class FleetSummary:
    """Fleet-wide counts: devices, online, by class, by installed model version, and devices
    that fell back from GPU to CPU."""

    total: int
    online: int
    by_class: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)
    cpu_fallback: int = 0


@dataclass(frozen=True)
class DeviceClassRecord:
    name: str
    description: str
    profile: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class ModelRecord:
    name: str
    task: str
    description: str
    created_at: float


@dataclass(frozen=True)
class ModelVersionRecord:
    model_name: str
    version: int
    parent_version: int | None
    training_run_id: str | None
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class BundleRecord:
    bundle_id: str
    model_name: str
    version: int
    device_class: str
    kind: str
    base_bundle_id: str | None
    size: int
    path: str
    manifest: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class StageSpec:
    """What a rollout stage targets: a percentage of the target group, named devices, or
    devices carrying extra labels (exactly one of them)."""

    name: str
    percent: float | None = None
    device_ids: list[str] | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True)
class StageRecord:
    rollout_id: str
    index: int
    name: str
    percent: float | None
    device_ids: list[str] | None
    labels: dict[str, str] | None
    state: str
    gate_results: list[Any]
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class RolloutRecord:
    rollout_id: str
    name: str
    bundle_id: str
    previous_bundle_id: str | None
    device_class: str
    target_labels: dict[str, str]
    state: str
    config: dict[str, Any]
    current_stage: int
    reason: str
    created_by: str
    revision: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    stages: list[StageRecord] = field(default_factory=list)


@dataclass(frozen=True)
class TargetRecord:
    rollout_id: str
    device_id: str
    stage_index: int
    state: str
    attempts: int
    deployment_id: str | None
    detail: str
    created_at: float
    updated_at: float
    last_attempt_at: float | None
    finished_at: float | None
    from_bundle_id: str | None = None  # what the device ran before (its rollback target)
    from_version: int | None = None
    from_sha256: str | None = None
    bytes_sent: int = 0  # bundle bytes this rollout sent the device
    bytes_full: int = 0  # what the full bundle would have cost for the same offers


@dataclass(frozen=True)
class EventRecord:
    event_id: str
    device_id: str
    kind: str
    deployment_id: str | None
    detail: str
    data: dict[str, Any]
    ts: float
    received_at: float


@dataclass(frozen=True)
class DriftRecord:
    report_id: str
    device_id: str
    model_name: str
    model_version: int
    window_size: int
    drift_score: float
    drifted: bool
    confidence_drift: bool
    features: dict[str, Any]
    ts: float
    received_at: float


@dataclass(frozen=True)
class TelemetryAggregate:
    """Samples of one metric of one device in one minute (also the write unit of ingest)."""

    device_id: str
    minute: int
    model_version: int
    metric: str
    count: int
    sum: float
    max: float
    last: float
    last_ts: float

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


@dataclass(frozen=True)
class TelemetrySummary:
    """One metric over a window, per device: the basis of rollout gates."""

    device_id: str
    metric: str
    count: int
    mean: float
    max: float
    last: float


@dataclass(frozen=True)
class TrainingRunRecord:
    run_id: str
    model_name: str
    state: str
    trigger: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    result_version: int | None
    detail: str
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: float
    actor: str
    role: str
    action: str
    resource: str
    status: int
    detail: dict[str, Any]


@dataclass(frozen=True)
class ApiTokenRecord:
    token_id: str
    name: str
    role: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
